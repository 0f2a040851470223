package main

// The extension's own numbers as CloudWatch metrics, with no consumer: with every counts record
// (counts.go; shipper.go's emitCounts) the extension also writes one CloudWatch Embedded Metric
// Format (EMF) line to its stdout, which Lambda stores in the function's log group and
// CloudWatch turns into metrics.
// Specification: https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html
//
// Deltas, not totals. CloudWatch adds up the values that land in a period (Sum), across every
// line of every environment of the function. The counts record is cumulative per extension
// start; shipped as such, each line would add everything since the start again, and Sum would
// grow with the number of lines rather than with the loss. So each line carries what happened
// since the previous line of this extension start: Sum over a period is then exactly the
// events delivered (dropped, …) in that period, whatever the number of environments.
//
// Cardinality. Dimensions are the function's name (default) or version, and fixed Name=Value
// pairs: never a request, environment or instance id, which would make a metric per
// environment. Every line also goes to the dimension set of the fixed pairs alone (no dimension
// by default), an account-wide total: one metric per name whatever the fleet's size, which the
// template's alarms watch.
//
// Cost. Metrics with nothing to report (no drop since the last line) are left out of the line,
// and a line with nothing at all is not written: CloudWatch bills a custom metric for each hour in
// which it gets a value, so a healthy function pays only for Delivered and the added time.
//
// The lines come back to the extension as "extension" events when it subscribes to that type;
// emfType in each line is how the filter (filter.go) recognises them and keeps them out.

import (
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// emfType marks the extension's EMF lines, as countsType marks its counts records.
const emfType = "kinesis-telemetry-extension.metrics"

// emfMarker is how an EMF line looks inside an extension event, whatever Lambda's log format
// (the line as a string, with its quotes escaped, or as an object): no byte of it is escaped.
var emfMarker = []byte(emfType)

// metricsConfig is KINESIS_TELEMETRY_METRICS and its companions, parsed with the configuration.
type metricsConfig struct {
	On         bool
	Namespace  string
	Dimensions []metricDimension // the per-function dimension set, in the order given
}

// metricDimension is one dimension with its value, fixed (a Name=Value pair) or the function's.
type metricDimension struct {
	Name, Value string
	Fixed       bool
}

// metricDef is one metric of the EMF line: its name, unit and value from the totals.
type metricDef struct {
	Name, Unit string
	value      func(emfTotals) float64
}

// emfMetrics are the metrics every line may carry, in the order they appear. Their names are an
// interface: the template's alarms and dashboard use them (template_test.go checks it).
var emfMetrics = []metricDef{
	{"Delivered", "Count", func(t emfTotals) float64 { return float64(t.delivered) }},
	{"Dropped", "Count", func(t emfTotals) float64 { return float64(t.full + t.rejected + t.shutdown) }},
	{"DroppedBufferFull", "Count", func(t emfTotals) float64 { return float64(t.full) }},
	{"DroppedRejected", "Count", func(t emfTotals) float64 { return float64(t.rejected) }},
	{"DroppedShutdown", "Count", func(t emfTotals) float64 { return float64(t.shutdown) }},
	{"Unknown", "Count", func(t emfTotals) float64 { return float64(t.unknown) }},
	{"LambdaDropped", "Count", func(t emfTotals) float64 { return float64(t.lambdaDropped) }},
	{"ThrottledEntries", "Count", func(t emfTotals) float64 { return float64(t.throttles) }},
	{"AssumeRoleErrors", "Count", func(t emfTotals) float64 { return float64(t.assumeRole) }},
	// The time added after the runtime, as a sum and a count: Sum(PostRuntimeDuration) /
	// Sum(PostRuntimeInvocations) is the mean per invocation in any period (the dashboard's
	// metric math); an average of per-line means would weigh a quiet environment like a busy one.
	{"PostRuntimeDuration", "Milliseconds", func(t emfTotals) float64 { return float64(t.postMicros) / 1000 }},
	{"PostRuntimeInvocations", "Count", func(t emfTotals) float64 { return float64(t.postCount) }},
}

// emfTotals are the counters the metrics come from, cumulative since the extension started:
// the same numbers as the counts record's.
type emfTotals struct {
	delivered, full, rejected, shutdown, unknown, lambdaDropped uint64
	throttles, assumeRole, postCount, postMicros                uint64
}

func totalsOf(s *stats) emfTotals {
	m := s.marks()
	var assume uint64
	for _, n := range s.assumeRole.snapshot() {
		assume += n
	}
	return emfTotals{
		delivered: s.delivered.Load(), full: m.full, rejected: m.rejected, shutdown: m.shutdown, unknown: m.unknown,
		lambdaDropped: m.lambda, throttles: s.throttles.Load(), assumeRole: assume,
		postCount: s.postRuntimeCount.Load(), postMicros: s.postRuntimeMicros.Load(),
	}
}

// sub is t - before, counter by counter.
func (t emfTotals) sub(before emfTotals) emfTotals {
	return emfTotals{
		t.delivered - before.delivered, t.full - before.full, t.rejected - before.rejected, t.shutdown - before.shutdown,
		t.unknown - before.unknown, t.lambdaDropped - before.lambdaDropped, t.throttles - before.throttles,
		t.assumeRole - before.assumeRole, t.postCount - before.postCount, t.postMicros - before.postMicros,
	}
}

// emfWriter writes the EMF lines. A nil *emfWriter (metrics off) writes nothing.
type emfWriter struct {
	cfg metricsConfig
	out io.Writer

	mu   sync.Mutex
	last emfTotals // what the previous line covered
}

// newEMFWriter writes to stdout, which Lambda sends to the function's log group (the logger
// has stderr).
func newEMFWriter(cfg metricsConfig) *emfWriter {
	if !cfg.On {
		return nil
	}
	return &emfWriter{cfg: cfg, out: os.Stdout}
}

// write writes one line with what changed since the previous one, if anything did. A failed
// write is not retried: the counts record in the stream has the same numbers.
func (w *emfWriter) write(now time.Time, s *stats) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	total := totalsOf(s)
	line := w.cfg.line(now, total.sub(w.last))
	w.last = total
	if line != nil {
		_, _ = w.out.Write(line)
	}
}

// line renders one EMF line (ending in a newline) with the metrics of d that are not zero, or
// nil when all are.
func (c metricsConfig) line(now time.Time, d emfTotals) []byte {
	var names []string
	var values []float64
	for _, m := range emfMetrics {
		if v := m.value(d); v != 0 {
			names, values = append(names, m.Name), append(values, v)
		}
	}
	if len(names) == 0 {
		return nil
	}
	b := make([]byte, 0, 512)
	b = append(b, `{"_aws":{"Timestamp":`...)
	b = strconv.AppendInt(b, now.UnixMilli(), 10)
	b = append(b, `,"CloudWatchMetrics":[{"Namespace":`...)
	b = appendJSONString(b, c.Namespace)
	b = append(b, `,"Dimensions":`...)
	b = appendDimensionSets(b, c.dimensionSets())
	b = append(b, `,"Metrics":[`...)
	for i, name := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"Name":`...)
		b = appendJSONString(b, name)
		b = append(b, `,"Unit":`...)
		b = appendJSONString(b, unitOf(name))
		b = append(b, '}')
	}
	b = append(b, `]}]}`...)
	for _, d := range c.Dimensions {
		b = append(b, ',')
		b = appendJSONString(b, d.Name)
		b = append(b, ':')
		b = appendJSONString(b, d.Value)
	}
	for i, name := range names {
		b = append(b, ',')
		b = appendJSONString(b, name)
		b = append(b, ':')
		b = strconv.AppendFloat(b, values[i], 'f', -1, 64)
	}
	b = append(b, `,"type":"`+emfType+`"}`+"\n"...)
	return b
}

func unitOf(name string) string {
	for _, m := range emfMetrics {
		if m.Name == name {
			return m.Unit
		}
	}
	return "None"
}

// dimensionSets are the per-function set and the account-wide set of the fixed dimensions alone
// (empty without fixed dimensions); one set when they are the same.
func (c metricsConfig) dimensionSets() [][]string {
	all, fixed := []string{}, []string{}
	for _, d := range c.Dimensions {
		all = append(all, d.Name)
		if d.Fixed {
			fixed = append(fixed, d.Name)
		}
	}
	if len(all) == len(fixed) {
		return [][]string{all}
	}
	return [][]string{all, fixed}
}

func appendDimensionSets(b []byte, sets [][]string) []byte {
	b = append(b, '[')
	for i, set := range sets {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '[')
		for j, name := range set {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, name)
		}
		b = append(b, ']')
	}
	return append(b, ']')
}

// Limits from the EMF specification and CloudWatch's Dimension reference, as AWS's
// aws-embedded-metrics library enforces them: a dimension set holds at most 30 keys; names are
// 1-250 characters, values 1-1024, both ASCII and not only spaces.
const maxEMFDimensions = 30

// functionDimensions are the dimensions whose value is the function's (parseConfig takes it from
// Lambda's variables). Nothing per environment or per request is offered.
var functionDimensions = []string{"FunctionName", "FunctionVersion"}

// dimensionText reports whether s is 1 to max printable ASCII characters, not only spaces.
func dimensionText(s string, max int) bool {
	if len(s) > max || strings.TrimSpace(s) == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// reservedEMFName reports whether a dimension name would collide with a member of the line.
func reservedEMFName(name string) bool {
	if name == "_aws" || name == "type" {
		return true
	}
	for _, m := range emfMetrics {
		if m.Name == name {
			return true
		}
	}
	return false
}
