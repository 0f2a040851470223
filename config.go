package main

// The configuration: config, parseConfig with every KINESIS_TELEMETRY_* variable and its default,
// the envParser that reports all errors at once, the flush strategy, stream names and ARNs, role
// ARNs, endpoints, redaction patterns, log levels, and the memory limit derived from the buffer
// cap. Every environment variable is read here, once.

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
)

// config is the whole configuration, parsed and validated in one place. docs/configuration.md
// mirrors it.
type config struct {
	Stream   streamRef
	Endpoint string // endpoint URL override; empty means the public regional endpoint
	Role     roleConfig

	Port            int
	Types           []string
	BufferItems     int
	BufferBytes     int
	BufferTimeoutMS int

	Flush          flushStrategy
	FlushBudget    time.Duration
	MaxDelay       time.Duration
	RequestTimeout time.Duration
	MaxBufferBytes int

	Exclude      map[string]bool
	MinLevel     int // index into logLevels (event.go); 0 keeps everything
	Redact       []*regexp.Regexp
	RecordFormat recordFormat
	RecordBytes  int // upper bound of an aggregated (ndjson, kpl, cloudwatch before gzip) record
	PartitionKey partitionMode
	TextRecord   textRecord // how text log lines appear in the envelope
	Sample       float64

	// What the cloudwatch format says about the log it mirrors. LogGroup and LogStream are
	// Lambda's, or documented defaults (DefaultLogNames lists which) when Lambda did not set them.
	SubscriptionFilter string
	LogFormat          logFormat
	LogGroup           string
	LogStream          string
	DefaultLogNames    []string

	Region string // AWS_REGION, for the envelope; empty: the AWS configuration's, at the first send

	Metrics metricsConfig // EMF lines on stdout (emf.go)

	Managed     bool // Lambda Managed Instances: SHUTDOWN-only registration, schema 2025-01-29
	FailOnError bool
}

// Limits of the Telemetry API's buffering configuration.
const (
	minBufferItems, maxBufferItems = 1000, 10000
	minBufferBytes, maxBufferBytes = 262144, 1048576
	minBufferTimeout, maxBufferTO  = 25, 30000
)

// parseConfig reads every KINESIS_TELEMETRY_* variable, with its default beside it. All problems
// are reported together, each naming the variable and how to fix it. The returned config is
// usable for the fields that parsed (Managed and FailOnError in particular) even on error.
func parseConfig(getenv func(string) string) (config, error) {
	p := envParser{getenv: getenv}
	c := config{
		Managed:     getenv("AWS_LAMBDA_INITIALIZATION_TYPE") == "lambda-managed-instances",
		FailOnError: p.boolean("KINESIS_TELEMETRY_FAIL_ON_ERROR", false),
	}

	c.Stream = p.stream("KINESIS_TELEMETRY_STREAM")
	c.Endpoint = p.endpoint("KINESIS_TELEMETRY_ENDPOINT")
	c.Role = p.role("KINESIS_TELEMETRY_ROLE_ARN", "KINESIS_TELEMETRY_ROLE_EXTERNAL_ID", "AWS_ENDPOINT_URL_STS")
	c.Port = p.port("KINESIS_TELEMETRY_PORT", 4243)
	c.Types = p.list("KINESIS_TELEMETRY_TYPES", "platform,function", []string{"platform", "function", "extension"})
	c.BufferItems = p.integer("KINESIS_TELEMETRY_BUFFER_ITEMS", 1000, minBufferItems, maxBufferItems)
	c.BufferBytes = p.integer("KINESIS_TELEMETRY_BUFFER_BYTES", 262144, minBufferBytes, maxBufferBytes)
	c.BufferTimeoutMS = p.integer("KINESIS_TELEMETRY_BUFFER_TIMEOUT_MS", 25, minBufferTimeout, maxBufferTO)

	c.Flush = p.flush("KINESIS_TELEMETRY_FLUSH", "adaptive", 100, 3600000)
	c.FlushBudget = p.millis("KINESIS_TELEMETRY_FLUSH_BUDGET_MS", 1000, 10, 60000)
	c.MaxDelay = p.millis("KINESIS_TELEMETRY_MAX_DELAY_MS", 10000, 100, 3600000)
	c.RequestTimeout = p.millis("KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS", 2000, 100, 60000)
	c.MaxBufferBytes = p.integer("KINESIS_TELEMETRY_MAX_BUFFER_BYTES", defaultMaxBuffer(getenv), 1<<20, 1<<30)

	c.Exclude = p.set("KINESIS_TELEMETRY_EXCLUDE")
	c.MinLevel = p.level("KINESIS_TELEMETRY_MIN_LEVEL")
	c.Redact = p.redact("KINESIS_TELEMETRY_REDACT", p.boolean("KINESIS_TELEMETRY_REDACT_SECRETS", false))
	c.RecordFormat = recordFormat(p.choice("KINESIS_TELEMETRY_RECORD_FORMAT", string(formatEvent), recordFormatNames...))
	c.RecordBytes = p.integer("KINESIS_TELEMETRY_RECORD_MAX_BYTES", 262144, 1024, maxRecordBytes-4096)
	c.PartitionKey = partitionMode(p.choice("KINESIS_TELEMETRY_PARTITION_KEY", string(partitionRequest), string(partitionRequest), string(partitionFunction), string(partitionRandom)))
	c.TextRecord = textRecord(p.choice("KINESIS_TELEMETRY_TEXT_RECORD", string(textAsString), string(textAsString), string(textAsObject)))
	p.cloudWatchNames(&c)
	c.Region = p.value("AWS_REGION")
	c.Sample = p.fraction("KINESIS_TELEMETRY_SAMPLE", 1)
	// CloudWatch metrics as EMF lines (emf.go): off by default, since they bill custom metrics
	// per function and write into the function's log group (docs/operating.md).
	c.Metrics.On = p.boolean("KINESIS_TELEMETRY_METRICS", false)
	c.Metrics.Namespace = p.metricsNamespace("KINESIS_TELEMETRY_METRICS_NAMESPACE", "KinesisTelemetryExtension")
	c.Metrics.Dimensions = p.metricDimensions("KINESIS_TELEMETRY_METRICS_DIMENSIONS", "FunctionName", c.Metrics.On, map[string]string{
		"FunctionName": p.value("AWS_LAMBDA_FUNCTION_NAME"), "FunctionVersion": p.value("AWS_LAMBDA_FUNCTION_VERSION")})

	if c.Managed {
		// Managed instances never freeze and send no platform.runtimeDone: only a timer can
		// decide when to ship.
		if c.Flush.Mode != flushPeriodic {
			c.Flush = flushStrategy{Mode: flushPeriodic, Period: managedFlushPeriod}
		}
	}
	return c, errors.Join(p.errs...)
}

// cloudWatchNames reads what the cloudwatch format says about the log it mirrors: the
// subscription filter's name and Lambda's own variables. AWS_LAMBDA_LOG_FORMAT is JSON when the
// function logs in JSON; anything else is Lambda's default, Text.
func (p *envParser) cloudWatchNames(c *config) {
	c.SubscriptionFilter = p.value("KINESIS_TELEMETRY_SUBSCRIPTION_FILTER")
	if c.SubscriptionFilter == "" {
		c.SubscriptionFilter = "kinesis-telemetry-extension"
	}
	c.LogFormat = logText
	if strings.EqualFold(p.value("AWS_LAMBDA_LOG_FORMAT"), "JSON") {
		c.LogFormat = logJSON
	}
	c.LogGroup, c.LogStream = p.value("AWS_LAMBDA_LOG_GROUP_NAME"), p.value("AWS_LAMBDA_LOG_STREAM_NAME")
	if c.LogGroup == "" {
		// Lambda's default log group: https://docs.aws.amazon.com/lambda/latest/dg/monitoring-cloudwatchlogs.html
		c.LogGroup = "/aws/lambda/" + p.value("AWS_LAMBDA_FUNCTION_NAME")
		c.DefaultLogNames = append(c.DefaultLogNames, "AWS_LAMBDA_LOG_GROUP_NAME="+c.LogGroup)
	}
	if c.LogStream == "" {
		// Lambda's stream naming, YYYY/MM/DD/[version]<environment id>; the id part is made up.
		c.LogStream = time.Now().UTC().Format("2006/01/02") + "/[" + cmp.Or(p.value("AWS_LAMBDA_FUNCTION_VERSION"), "$LATEST") + "]" + newIDPrefix()
		c.DefaultLogNames = append(c.DefaultLogNames, "AWS_LAMBDA_LOG_STREAM_NAME="+c.LogStream)
	}
}

// managedFlushPeriod is the timer of Lambda Managed Instances unless periodic,<ms> is set.
const managedFlushPeriod = time.Second

// recordSettings are the settings that shape records (records.go).
func (c config) recordSettings() recordSettings {
	return recordSettings{
		Format: c.RecordFormat, Partition: c.PartitionKey, Text: c.TextRecord, LogFormat: c.LogFormat,
		LogGroup: c.LogGroup, LogStream: c.LogStream, SubscriptionFilter: c.SubscriptionFilter,
		StreamAccount: c.Stream.Account,
	}
}

// clientSettings are the settings the Kinesis client is built by (kinesis.go).
func (c config) clientSettings() clientSettings {
	return clientSettings{Stream: c.Stream, Endpoint: c.Endpoint, Role: c.Role, Timeout: c.RequestTimeout}
}

// limitProcs runs the extension's goroutines on one processor (P) unless the user set GOMAXPROCS.
// Its work is waiting on the network, and a function's share of a CPU is small (7% of one at
// 128 MB): a second P buys no parallelism, only CPU, since each wake-up (a Telemetry POST, a
// Kinesis answer) also wakes a second thread to look for work. Measured in BENCHMARKS.md, "CPU
// share": a third less CPU per event. Setting it also stops the runtime's periodic re-reading of
// the cgroup's CPU limit.
func limitProcs(getenv func(string) string) {
	if getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
}

// limitMemory sets a soft memory limit of the buffer cap plus memoryHeadroom, and a lower GC
// target, unless the user set GOMEMLIMIT or GOGC: the extension shares the function's memory, and
// the collector's default (heap up to twice what is live) lets a burst through the buffer leave
// megabytes behind. See docs/flushing.md, Bounded memory.
func limitMemory(getenv func(string) string, bufferCap int) {
	if getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(int64(bufferCap) + memoryHeadroom)
	}
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
}

// memoryHeadroom is what the Go runtime may use beyond the buffer (its own heap, stacks, request
// bodies); gcPercent the collector's target (Go's default is 100).
const (
	memoryHeadroom = 4 << 20
	gcPercent      = 50
)

// defaultMaxBuffer is a sixteenth of the function's memory (8 MiB for 128 MB), between 4 and 64
// MiB; 8 MiB when Lambda does not say (emulators).
func defaultMaxBuffer(getenv func(string) string) int {
	const (
		share         = 16
		least, most   = 4 << 20, 64 << 20
		memoryUnknown = 8 << 20
	)
	mb, err := strconv.Atoi(getenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE"))
	if err != nil || mb <= 0 {
		return memoryUnknown
	}
	return min(max(mb<<20/share, least), most)
}

// envParser collects configuration errors so that all of them are reported at once.
type envParser struct {
	getenv func(string) string
	errs   []error
}

// value is the variable's value without surrounding space; "" means unset.
func (p *envParser) value(name string) string {
	return strings.TrimSpace(p.getenv(name))
}

func (p *envParser) fail(name, value, format string, args ...any) {
	p.errs = append(p.errs, fmt.Errorf("%s=%q: %s", name, value, fmt.Sprintf(format, args...)))
}

// parsed reads a variable with parse, which reports whether the text is valid: unset gives def,
// and an invalid value is reported with the fix (a format for args) and gives def.
func parsed[T any](p *envParser, name string, def T, parse func(string) (T, bool), fix string, args ...any) T {
	s := p.value(name)
	if s == "" {
		return def
	}
	v, ok := parse(s)
	if !ok {
		p.fail(name, s, fix, args...)
		return def
	}
	return v
}

func (p *envParser) integer(name string, def, lo, hi int) int {
	return parsed(p, name, def, func(s string) (int, bool) {
		n, err := strconv.Atoi(s)
		return n, err == nil && n >= lo && n <= hi
	}, "set a whole number from %d to %d, or unset it for the default %d", lo, hi, def)
}

func (p *envParser) millis(name string, def, lo, hi int) time.Duration {
	return time.Duration(p.integer(name, def, lo, hi)) * time.Millisecond
}

func (p *envParser) port(name string, def int) int {
	n := p.integer(name, def, 1024, 65535)
	if n == 9001 {
		p.fail(name, "9001", "port 9001 is reserved by Lambda; choose another port from 1024 to 65535")
		return def
	}
	return n
}

func (p *envParser) boolean(name string, def bool) bool {
	return parsed(p, name, def, func(s string) (bool, bool) {
		b, err := strconv.ParseBool(s)
		return b, err == nil
	}, "set true or false (default %t)", def)
}

func (p *envParser) fraction(name string, def float64) float64 {
	return parsed(p, name, def, func(s string) (float64, bool) {
		f, err := strconv.ParseFloat(s, 64)
		return f, err == nil && f >= 0 && f <= 1
	}, "set a fraction from 0 to 1 (for example 0.1 ships one invocation in ten), or unset it to ship all")
}

func (p *envParser) choice(name, def string, allowed ...string) string {
	return parsed(p, name, def, func(s string) (string, bool) {
		return s, slices.Contains(allowed, s)
	}, "set one of %s (default %s)", strings.Join(allowed, ", "), def)
}

// list parses a comma-separated list whose items must be in allowed.
func (p *envParser) list(name, def string, allowed []string) []string {
	s := p.value(name)
	if s == "" {
		s = def
	}
	var out []string
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		ok := false
		for _, a := range allowed {
			ok = ok || item == a
		}
		if !ok {
			p.fail(name, s, "%q is not a telemetry type; use a comma-separated list of %s", item, strings.Join(allowed, ", "))
			return strings.Split(def, ",")
		}
		out = append(out, item)
	}
	if len(out) == 0 {
		p.fail(name, s, "list at least one of %s", strings.Join(allowed, ", "))
		return strings.Split(def, ",")
	}
	return out
}

// set parses a comma-separated list of event types (any name: Lambda adds types over time).
func (p *envParser) set(name string) map[string]bool {
	s := p.value(name)
	if s == "" {
		return nil
	}
	m := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			m[item] = true
		}
	}
	return m
}

func (p *envParser) level(name string) int {
	s := strings.ToUpper(p.value(name))
	if s == "" {
		return 0
	}
	if i := parseLevel(s); i != levelUnknown {
		return i
	}
	p.fail(name, s, "set one of %s", strings.Join(logLevels, ", "))
	return 0
}

// validStreamName reports whether s is a Kinesis stream name: 1-128 of a-z, A-Z, 0-9, _ . -.
// (Plain code rather than a package-level regexp: compiling one at start-up costs a millisecond.)
func validStreamName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == '-') {
			return false
		}
	}
	return true
}

// parseStreamARN parses arn:<partition>:kinesis:<region>:<account>:stream/<name>.
func parseStreamARN(s string) (streamRef, bool) {
	f := strings.Split(s, ":")
	if len(f) != 6 || f[0] != "arn" || !strings.HasPrefix(f[1], "aws") || f[2] != "kinesis" || f[3] == "" {
		return streamRef{}, false
	}
	name, ok := strings.CutPrefix(f[5], "stream/")
	if !ok || !validStreamName(name) || !isAccountID(f[4]) ||
		strings.Trim(f[3], "abcdefghijklmnopqrstuvwxyz0123456789-") != "" {
		return streamRef{}, false
	}
	return streamRef{Name: name, ARN: s, Region: f[3], Account: f[4]}, true
}

func isAccountID(s string) bool { return len(s) == 12 && strings.Trim(s, "0123456789") == "" }

// stream parses the stream's name or ARN.
func (p *envParser) stream(name string) streamRef {
	s := p.value(name)
	switch {
	case s == "":
		p.fail(name, s, "set it to the name or ARN of the Kinesis data stream to ship telemetry to")
	case strings.HasPrefix(s, "arn:"):
		ref, ok := parseStreamARN(s)
		if !ok {
			p.fail(name, s, "not a Kinesis stream ARN; expected arn:aws:kinesis:<region>:<account>:stream/<name>")
		}
		return ref
	case !validStreamName(s):
		p.fail(name, s, "not a stream name (1-128 of a-z, A-Z, 0-9, _ . -) or a stream ARN")
	default:
		return streamRef{Name: s}
	}
	return streamRef{}
}

// role parses the role to assume, its external id, and the STS endpoint override.
func (p *envParser) role(arnVar, externalIDVar, stsVar string) roleConfig {
	r := roleConfig{ARN: p.value(arnVar), ExternalID: p.value(externalIDVar)}
	if r.ARN != "" && !validRoleARN(r.ARN) {
		p.fail(arnVar, r.ARN, "not an IAM role ARN; expected arn:aws:iam::<account>:role/<name> (the role in the stream's account that the function's role may assume)")
		r.ARN = ""
	}
	switch {
	case r.ExternalID == "":
	case p.value(arnVar) == "":
		p.fail(externalIDVar, r.ExternalID, "an external id is used only when assuming a role: set %s too, or unset it", arnVar)
	case len(r.ExternalID) < 2 || len(r.ExternalID) > 1224 || strings.Trim(r.ExternalID, stsNameChars+":/") != "":
		p.fail(externalIDVar, r.ExternalID, "set 2 to 1224 of a-z, A-Z, 0-9 and +=,.@:/-_ (the value of the role trust policy's sts:ExternalId condition)")
	}
	if r.ARN != "" {
		r.STSEndpoint = p.endpoint(stsVar)
	}
	return r
}

// validRoleARN reports whether s is arn:<partition>:iam::<account>:role/<path/><name>.
func validRoleARN(s string) bool {
	f := strings.SplitN(s, ":", 6)
	if len(f) != 6 || f[0] != "arn" || !strings.HasPrefix(f[1], "aws") || f[2] != "iam" || f[3] != "" || !isAccountID(f[4]) {
		return false
	}
	rest, ok := strings.CutPrefix(f[5], "role/")
	name := rest[strings.LastIndexByte(rest, '/')+1:]
	return ok && len(s) <= 2048 && len(name) >= 1 && len(name) <= 64 && strings.Trim(rest, stsNameChars+"/") == ""
}

// endpoint validates an endpoint override. Signed requests carry credentials-derived signatures
// and the telemetry itself, so plain HTTP is accepted only to this machine (emulators, tests).
func (p *envParser) endpoint(name string) string {
	s := p.value(name)
	if s == "" {
		return ""
	}
	if err := checkEndpoint(s); err != nil {
		p.fail(name, s, "%v", err)
		return ""
	}
	return strings.TrimRight(s, "/")
}

// checkEndpoint accepts https endpoints, and http only to a loopback address.
func checkEndpoint(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return errors.New("not a URL; expected for example https://kinesis.eu-west-1.amazonaws.com")
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host == "localhost" || (ip != nil && ip.IsLoopback()) {
			return nil
		}
		return errors.New("plain http is allowed only to a loopback address (for emulators); use https")
	}
	return errors.New("the scheme must be https")
}

// flush parses a flush strategy: adaptive, end, background, or periodic,<ms> with ms from lo to hi.
func (p *envParser) flush(name, def string, lo, hi int) flushStrategy {
	s := p.value(name)
	if s == "" {
		s = def
	}
	word, arg, hasArg := strings.Cut(s, ",")
	switch mode := flushMode(word); {
	case (mode == flushAdaptive || mode == flushEnd || mode == flushBackground) && !hasArg:
		return flushStrategy{Mode: mode}
	case mode == flushPeriodic:
		ms, err := strconv.Atoi(strings.TrimSpace(arg))
		if err == nil && ms >= lo && ms <= hi {
			return flushStrategy{Mode: mode, Period: time.Duration(ms) * time.Millisecond}
		}
	}
	p.fail(name, s, "set adaptive (default), end, background, or periodic,<ms> with ms from %d to %d", lo, hi)
	return flushStrategy{Mode: flushMode(def)}
}

// builtinSecrets are the opt-in patterns of KINESIS_TELEMETRY_REDACT_SECRETS.
var builtinSecrets = []string{
	`\b(?:AKIA|ASIA|AIDA|AROA)[A-Z0-9]{16}\b`,                                                       // AWS access key ids
	`(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*`,                                                          // bearer tokens
	`(?i)\b(?:password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*("[^"]*"|'[^']*'|[^\s,;&"']+)`, // key=value secrets
}

// redact compiles KINESIS_TELEMETRY_REDACT: one RE2 expression, or a JSON array of them.
func (p *envParser) redact(name string, secrets bool) []*regexp.Regexp {
	var exprs []string
	if secrets {
		exprs = append(exprs, builtinSecrets...)
	}
	s := p.value(name)
	switch {
	case s == "":
	case strings.HasPrefix(s, "["):
		var list []string
		if err := json.Unmarshal([]byte(s), &list); err != nil {
			p.fail(name, s, "a value starting with [ must be a JSON array of strings: %v", err)
			return nil
		}
		exprs = append(exprs, list...)
	default:
		exprs = append(exprs, s)
	}
	var res []*regexp.Regexp
	for _, e := range exprs {
		re, err := regexp.Compile(e)
		if err != nil {
			p.fail(name, s, "invalid regular expression (Go RE2 syntax): %v", err)
			continue
		}
		res = append(res, re)
	}
	return res
}

// filter is the filter the configured controls make (filter.go).
func (c config) filter() *filter {
	return &filter{exclude: c.Exclude, minLevel: c.MinLevel, sample: c.Sample, redact: c.Redact}
}

// metricsNamespace validates a CloudWatch namespace: 1-255 of 0-9A-Za-z . - _ / # : and space,
// not starting with AWS/ (reserved for AWS's own).
func (p *envParser) metricsNamespace(name, def string) string {
	return parsed(p, name, def, func(s string) (string, bool) {
		return s, len(s) <= 255 && !strings.HasPrefix(s, "AWS/") && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_/#: ") == ""
	}, "set a CloudWatch namespace: 1 to 255 of A-Z a-z 0-9 . - _ / # : and space, not starting with AWS/ (default %s)", def)
}

// metricDimensions parses a comma-separated list of FunctionName, FunctionVersion and fixed
// Name=Value pairs, or "none" (no per-function dimension: the account-wide total only). values
// holds the function's values by dimension name. The setting is checked only when metrics are
// on, so that an unused one cannot stop the extension.
func (p *envParser) metricDimensions(name, def string, on bool, values map[string]string) []metricDimension {
	s := p.value(name)
	if s == "" {
		s = def
	}
	if !on || s == "none" {
		return nil
	}
	var out []metricDimension
	seen := map[string]bool{}
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		d := metricDimension{Name: item, Value: values[item]}
		if k, v, ok := strings.Cut(item, "="); ok {
			d = metricDimension{Name: strings.TrimSpace(k), Value: strings.TrimSpace(v), Fixed: true}
		}
		switch {
		case !d.Fixed && !slices.Contains(functionDimensions, d.Name):
			p.fail(name, s, "%q: use a comma-separated list of %s and fixed Name=Value pairs, or none (default %s); per-request or per-environment dimensions are not offered: each value would be a new metric", item, strings.Join(functionDimensions, ", "), def)
		case !d.Fixed && d.Value == "":
			p.fail(name, s, "%s: Lambda did not set the function's %s; remove it from the list", d.Name, d.Name)
		case !dimensionText(d.Name, 250) || d.Name[0] == ':' || !dimensionText(d.Value, 1024) || reservedEMFName(d.Name):
			p.fail(name, s, "%q: a dimension needs a name (1-250 ASCII characters, not starting with ':', not _aws, type or a metric's name) and a value (1-1024 ASCII characters)", item)
		case seen[d.Name]:
			p.fail(name, s, "%s is listed twice", d.Name)
		default:
			seen[d.Name] = true
			out = append(out, d)
			continue
		}
		return nil
	}
	if len(out) > maxEMFDimensions {
		p.fail(name, s, "at most %d dimensions", maxEMFDimensions)
		return nil
	}
	return out
}
