package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// emfDoc is an EMF line decoded: the directive and every root member.
type emfDoc struct {
	Timestamp  int64
	Namespace  string
	Dimensions [][]string
	Units      map[string]string  // metric name -> unit, in the directive
	Values     map[string]float64 // metric name -> value
	Root       map[string]any
}

func decodeEMF(t testing.TB, line string) emfDoc {
	t.Helper()
	var root map[string]any
	if err := json.Unmarshal([]byte(line), &root); err != nil {
		t.Fatalf("EMF line is not JSON: %v: %s", err, line)
	}
	var meta struct {
		AWS struct {
			Timestamp         int64
			CloudWatchMetrics []struct {
				Namespace  string
				Dimensions [][]string
				Metrics    []struct{ Name, Unit string }
			}
		} `json:"_aws"`
	}
	json.Unmarshal([]byte(line), &meta)
	if len(meta.AWS.CloudWatchMetrics) != 1 {
		t.Fatalf("EMF line has %d directives, want 1: %s", len(meta.AWS.CloudWatchMetrics), line)
	}
	d := meta.AWS.CloudWatchMetrics[0]
	doc := emfDoc{Timestamp: meta.AWS.Timestamp, Namespace: d.Namespace, Dimensions: d.Dimensions,
		Units: map[string]string{}, Values: map[string]float64{}, Root: root}
	for _, m := range d.Metrics {
		doc.Units[m.Name] = m.Unit
		v, ok := root[m.Name].(float64)
		if !ok {
			t.Fatalf("metric %s has no numeric value: %s", m.Name, line)
		}
		doc.Values[m.Name] = v
	}
	return doc
}

// emfLines returns the EMF lines in the extension's output (stdout and stderr together).
func emfLines(out string) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, `{"_aws":`) {
			lines = append(lines, l)
		}
	}
	return lines
}

func emfConfigOf(t *testing.T, env map[string]string) metricsConfig {
	t.Helper()
	env["KINESIS_TELEMETRY_STREAM"] = "telemetry"
	c, err := parseConfig(envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	return c.Metrics
}

// TestEMFLineDeltas: each line carries what changed since the previous one (CloudWatch sums the
// values of a period, so totals would be counted again at every line), metrics that did not
// change are left out, and nothing changed means no line.
func TestEMFLineDeltas(t *testing.T) {
	cfg := emfConfigOf(t, map[string]string{"KINESIS_TELEMETRY_METRICS": "true", "AWS_LAMBDA_FUNCTION_NAME": "orders"})
	var out bytes.Buffer
	w := newEMFWriter(cfg)
	w.out = &out
	st := newStats()
	lines := func() []string { return strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") }

	st.delivered.Add(10)
	st.droppedFull.Add(2)
	st.rejected.add("InvalidArgumentException")
	st.throttles.Add(4)
	st.assumeRole.add("AccessDenied")
	st.lambdaDroppedRecords.Add(7)
	st.addPostRuntime(3 * time.Millisecond)
	st.addPostRuntime(5 * time.Millisecond)
	w.write(time.UnixMilli(1714557600123), st)
	first := decodeEMF(t, lines()[0])
	want := map[string]float64{"Delivered": 10, "Dropped": 3, "DroppedBufferFull": 2, "DroppedRejected": 1, "LambdaDropped": 7,
		"ThrottledEntries": 4, "AssumeRoleErrors": 1, "PostRuntimeDuration": 8, "PostRuntimeInvocations": 2}
	if !reflect.DeepEqual(first.Values, want) {
		t.Errorf("first line: got %v, want %v", first.Values, want)
	}
	if first.Timestamp != 1714557600123 || first.Namespace != "KinesisTelemetryExtension" || first.Root["FunctionName"] != "orders" ||
		!reflect.DeepEqual(first.Dimensions, [][]string{{"FunctionName"}, {}}) || first.Root["type"] != emfType {
		t.Errorf("first line: %s", lines()[0])
	}
	if first.Units["PostRuntimeDuration"] != "Milliseconds" || first.Units["Delivered"] != "Count" {
		t.Errorf("units: %v", first.Units)
	}

	st.delivered.Add(5)
	st.droppedShutdown.Add(1)
	w.write(time.UnixMilli(1714557660123), st)
	if n := len(lines()); n != 2 {
		t.Fatalf("got %d lines, want 2", n)
	}
	second := decodeEMF(t, lines()[1])
	if want := map[string]float64{"Delivered": 5, "Dropped": 1, "DroppedShutdown": 1}; !reflect.DeepEqual(second.Values, want) {
		t.Errorf("second line: got %v, want the changes only, %v", second.Values, want)
	}

	w.write(time.UnixMilli(1714557720123), st)
	if n := len(lines()); n != 2 {
		t.Errorf("nothing changed, yet a line was written: %d lines", n)
	}
	var off *emfWriter = newEMFWriter(metricsConfig{})
	off.write(time.Now(), st) // metrics off: a nil writer, which must not panic
}

// TestEMFConfig: off by default, the function's name as the dimension, fixed pairs, none; and
// errors that name the variable, including for dimensions that would explode the cardinality.
func TestEMFConfig(t *testing.T) {
	c := emfConfigOf(t, map[string]string{"AWS_LAMBDA_FUNCTION_NAME": "orders"})
	if c.On || c.Namespace != "KinesisTelemetryExtension" {
		t.Errorf("defaults: %+v", c)
	}
	for _, tt := range []struct {
		dims string
		want [][]string
	}{
		{"", [][]string{{"FunctionName"}, {}}},
		{"none", [][]string{{}}},
		{"FunctionName,FunctionVersion", [][]string{{"FunctionName", "FunctionVersion"}, {}}},
		{"FunctionName, Team=payments", [][]string{{"FunctionName", "Team"}, {"Team"}}},
		{"Team=payments", [][]string{{"Team"}}},
	} {
		c := emfConfigOf(t, map[string]string{"KINESIS_TELEMETRY_METRICS": "true", "KINESIS_TELEMETRY_METRICS_DIMENSIONS": tt.dims,
			"AWS_LAMBDA_FUNCTION_NAME": "orders", "AWS_LAMBDA_FUNCTION_VERSION": "7"})
		if got := c.dimensionSets(); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%q: dimension sets %v, want %v", tt.dims, got, tt.want)
		}
	}
	for _, tt := range []struct {
		env  map[string]string
		says string
	}{
		{map[string]string{"KINESIS_TELEMETRY_METRICS_DIMENSIONS": "RequestId"}, "per-request"},
		{map[string]string{"KINESIS_TELEMETRY_METRICS_DIMENSIONS": "FunctionName,FunctionName"}, "twice"},
		{map[string]string{"KINESIS_TELEMETRY_METRICS_DIMENSIONS": "Delivered=x"}, "a metric's name"},
		{map[string]string{"KINESIS_TELEMETRY_METRICS_DIMENSIONS": "Team="}, "a value"},
		{map[string]string{"KINESIS_TELEMETRY_METRICS_DIMENSIONS": "Team=équipe"}, "ASCII"},
		{map[string]string{"KINESIS_TELEMETRY_METRICS_DIMENSIONS": "FunctionVersion"}, "Lambda did not set"},
		{map[string]string{"KINESIS_TELEMETRY_METRICS_NAMESPACE": "AWS/Lambda"}, "not starting with AWS/"},
		{map[string]string{"KINESIS_TELEMETRY_METRICS_NAMESPACE": "a;b"}, "CloudWatch namespace"},
		{map[string]string{"KINESIS_TELEMETRY_METRICS": "yes please"}, "true or false"},
	} {
		env := map[string]string{"KINESIS_TELEMETRY_STREAM": "telemetry", "KINESIS_TELEMETRY_METRICS": "true", "AWS_LAMBDA_FUNCTION_NAME": "orders"}
		for k, v := range tt.env {
			env[k] = v
		}
		_, err := parseConfig(envOf(env))
		var variable string
		for k := range tt.env {
			variable = k
		}
		if err == nil || !strings.Contains(err.Error(), variable+"=") || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("%v: got %v, want an error naming %s that says %q", tt.env, err, variable, tt.says)
		}
	}
	// Metrics off: their settings are not checked, so a stale one cannot stop the extension.
	if _, err := parseConfig(envOf(map[string]string{"KINESIS_TELEMETRY_STREAM": "t", "KINESIS_TELEMETRY_METRICS_DIMENSIONS": "RequestId"})); err != nil {
		t.Errorf("metrics off, dimensions ignored: got %v", err)
	}
}

// validateEMF runs testdata/peers/emf-validate.js (ajv with the EMF specification's schema, then
// AWS's aws-embedded-metrics as a second opinion) over lines and returns each line's errors.
func validateEMF(t *testing.T, lines []string) [][]string {
	t.Helper()
	node, modules := nodeAndModules(t)
	for _, pkg := range []string{"ajv", "aws-embedded-metrics"} {
		if _, err := os.Stat(filepath.Join(modules, pkg, "package.json")); err != nil {
			requirePeers(t, fmt.Sprintf("%s not installed: %v", pkg, err))
		}
	}
	root, _ := peerRepoRoot()
	body, _ := json.Marshal(lines)
	cmd := exec.Command(node, launcherPath(t, "emf-validate.js"), modules, filepath.Join(root, "testdata", "emf", "schema.json"))
	cmd.Stdin = bytes.NewReader(body)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("emf-validate.js: %v: %s", err, stderr.String())
	}
	var verdicts []struct{ Errors []string }
	if err := json.Unmarshal(out, &verdicts); err != nil || len(verdicts) != len(lines) {
		t.Fatalf("emf-validate.js answered %d verdicts for %d lines (%v): %s", len(verdicts), len(lines), err, out)
	}
	res := make([][]string, len(lines))
	for i, v := range verdicts {
		res[i] = v.Errors
	}
	return res
}

// TestEMFLinesValid validates lines of every shape the extension writes (each metric, every
// dimension choice, a long namespace) against the specification's schema and AWS's library,
// and checks that the validator refuses lines broken the ways a bug would break them.
func TestEMFLinesValid(t *testing.T) {
	all := emfTotals{1, 2, 3, 4, 5, 6, 7, 8, 9, 12345}
	now := time.Now()
	var lines []string
	for _, env := range []map[string]string{
		{},
		{"KINESIS_TELEMETRY_METRICS_DIMENSIONS": "none"},
		{"KINESIS_TELEMETRY_METRICS_DIMENSIONS": "FunctionName,FunctionVersion,Team=payments,Cost Center=42"},
		{"KINESIS_TELEMETRY_METRICS_NAMESPACE": "Org/" + strings.Repeat("x", 251)},
	} {
		env["KINESIS_TELEMETRY_METRICS"] = "true"
		env["AWS_LAMBDA_FUNCTION_NAME"] = `orders-"quoted"`
		env["AWS_LAMBDA_FUNCTION_VERSION"] = "$LATEST"
		cfg := emfConfigOf(t, env)
		lines = append(lines, string(bytes.TrimSuffix(cfg.line(now, all), []byte("\n"))),
			string(bytes.TrimSuffix(cfg.line(now, emfTotals{delivered: 1}), []byte("\n"))))
	}
	good := len(lines)
	base := lines[0]
	lines = append(lines,
		strings.Replace(base, `"Unit":"Count"`, `"Unit":"Counts"`, 1),            // not a CloudWatch unit
		strings.Replace(base, `"Delivered":1,`, `"Delivered":"1",`, 1),           // a metric value as a string
		strings.Replace(base, `"FunctionName":"orders`, `"Function":"orders`, 1), // a dimension without its member
		strings.Replace(base, `"Timestamp":`, `"Timestamp":-`, 1),                // no valid time
		`[kinesis-telemetry-extension] `+base,                                    // not a JSON object on its own
		// Caught by aws-embedded-metrics only: the schema allows any namespace and dimension value.
		strings.Replace(base, `"Namespace":"KinesisTelemetryExtension"`, `"Namespace":"bad;namespace"`, 1),
		strings.Replace(base, `"FunctionName":"orders-\"quoted\""`, `"FunctionName":""`, 1),
	)
	for i, errs := range validateEMF(t, lines) {
		switch {
		case i < good && len(errs) > 0:
			t.Errorf("line %d is refused: %v\n%s", i, errs, lines[i])
		case i >= good && len(errs) == 0:
			t.Errorf("broken line %d passes: %s", i, lines[i])
		case i >= good:
			t.Logf("broken line %d refused: %v", i, errs)
		}
	}
}

// TestEMFEndToEnd runs the extension with metrics on under the fake Lambda, subscribed to the
// extension type. Lambda sends an extension's stdout and stderr lines back as "extension" events;
// the fake does not, so the test does: every line the extension has written so far, EMF and log
// lines, as a string record (Text log format) and as an object (JSON log format), and another
// extension's EMF line. None of the extension's own may be shipped, the other one must be; the
// EMF lines must be valid, and their values must add up to the last counts record's numbers.
func TestEMFEndToEnd(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_METRICS", "true", "AWS_LAMBDA_FUNCTION_NAME", "orders",
		"KINESIS_TELEMETRY_TYPES", "platform,function,extension"))
	fl.init()
	fl.invoke(invocation{requestID: "r1", textLines: 3})
	fl.invoke(invocation{requestID: "r2", jsonLines: 2, logsDropped: 5}) // a loss makes a counts record (and a line) due
	fl.invoke(invocation{requestID: "r3", textLines: 1})

	// Feed back what the extension wrote so far, as Lambda would.
	deadline := time.Now().Add(5 * time.Second)
	for len(emfLines(ext.stderr.String())) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	var own []postedEvent
	for _, line := range strings.Split(strings.TrimSpace(ext.stderr.String()), "\n") {
		text, _ := json.Marshal(line)
		own = append(own, fl.ev("extension", string(text)))
		if strings.HasPrefix(line, "{") {
			own = append(own, fl.ev("extension", line)) // JSON log format: the object itself
		} else {
			own = append(own, fl.ev("extension", `{"timestamp":"2024-05-01T10:00:00Z","level":"INFO","message":`+string(text)+`}`))
		}
	}
	fedEMF := len(emfLines(ext.stderr.String()))
	if fedEMF == 0 {
		t.Fatalf("no EMF line after three invocations and a loss; output:\n%s", ext.stderr.String())
	}
	other := fl.ev("extension", `"{\"_aws\":{\"Timestamp\":1714557600000,\"CloudWatchMetrics\":[{\"Namespace\":\"Other\",\"Dimensions\":[[]],\"Metrics\":[{\"Name\":\"Hits\"}]}]},\"Hits\":1}"`)
	fl.post("r3", append(own, other)...)
	fl.invoke(invocation{requestID: "r4", textLines: 2})
	fl.shutdownAndWait(ext)

	events, counts := fk.decoded(t)
	for _, e := range events {
		if e.Type == "extension" && (bytes.Contains(e.Event, []byte(emfType)) || bytes.Contains(e.Event, []byte(logPrefix))) {
			t.Errorf("the extension's own line was shipped: %s", e.Event)
		}
	}
	shippedOther := false
	for _, e := range events {
		shippedOther = shippedOther || (e.Type == "extension" && bytes.Contains(e.Event, []byte(`\"Namespace\":\"Other\"`)))
	}
	if !shippedOther {
		t.Error("another extension's EMF line was not shipped")
	}
	last := lastCounts(t, counts)
	if last.Filtered.OwnLogs != uint64(len(own)) {
		t.Errorf("filtered.ownLogs %d, want the %d lines fed back", last.Filtered.OwnLogs, len(own))
	}

	lines := emfLines(ext.stderr.String())
	if len(lines) <= fedEMF {
		t.Fatalf("got %d EMF lines, %d of them before the feedback: want one more at shutdown", len(lines), fedEMF)
	}
	for i, errs := range validateEMF(t, lines) {
		if len(errs) > 0 {
			t.Errorf("EMF line %d is not valid: %v\n%s", i, errs, lines[i])
		}
	}
	sum := map[string]float64{}
	for _, l := range lines {
		d := decodeEMF(t, l)
		if d.Root["FunctionName"] != "orders" || !reflect.DeepEqual(d.Dimensions, [][]string{{"FunctionName"}, {}}) {
			t.Errorf("dimensions: %s", l)
		}
		for k, v := range d.Values {
			sum[k] += v
		}
	}
	// The last EMF line is written with the last counts record: the sums of the deltas are its totals.
	want := map[string]float64{
		"Delivered": float64(last.Delivered), "Dropped": float64(last.Dropped.Total), "Unknown": float64(last.Unknown),
		"LambdaDropped": float64(last.LambdaDropped.Records), "ThrottledEntries": float64(last.Kinesis.Throttles),
		"PostRuntimeInvocations": float64(last.PostRuntimeMs.Count),
	}
	for k, v := range want {
		if sum[k] != v {
			t.Errorf("sum of %s over the EMF lines %v, want the counts record's %v", k, sum[k], v)
		}
	}
	if mean := sum["PostRuntimeDuration"] / sum["PostRuntimeInvocations"]; last.PostRuntimeMs.Count == 0 || abs(mean-last.PostRuntimeMs.Mean) > 0.001 {
		t.Errorf("mean time added from the EMF lines %.4f ms, counts record's %.4f ms", mean, last.PostRuntimeMs.Mean)
	}
	if sum["LambdaDropped"] != 5 || sum["Delivered"] == 0 {
		t.Errorf("sums %v: want LambdaDropped 5 and some delivered", sum)
	}
}

func abs(x float64) float64 {
	if x < 0 {
		return -x
	}
	return x
}

// EMF lines are billed as CloudWatch Logs ingestion: $0.50 per GB in US East (N. Virginia), the
// CloudWatch pricing page's standard log class when this was written (check it for your region).
const logIngestionPerGB = 0.50

// TestEMFLineCost measures the EMF lines the extension writes (the binary under the fake Lambda,
// a 15-character function name, default dimensions) and prints what they cost per million
// invocations; docs/operating.md quotes its output
// (go test -count=1 -run TestEMFLineCost -v .). A line is written with each counts record: at
// the first ship round, at least once a minute while telemetry flows, after any loss, and at
// shutdown; so at most one per invocation, and about one per minute per busy environment.
func TestEMFLineCost(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_METRICS", "true", "AWS_LAMBDA_FUNCTION_NAME", "orders-api-prod"))
	fl.init()
	fl.invoke(invocation{requestID: "r1", textLines: 20})
	fl.invoke(invocation{requestID: "r2", textLines: 20, logsDropped: 3})
	fl.invoke(invocation{requestID: "r3", textLines: 20})
	fl.shutdownAndWait(ext)
	lines := emfLines(ext.stderr.String())
	if len(lines) < 2 {
		t.Fatalf("got %d EMF lines, want at least 2", len(lines))
	}
	cfg := emfConfigOf(t, map[string]string{"KINESIS_TELEMETRY_METRICS": "true", "AWS_LAMBDA_FUNCTION_NAME": "orders-api-prod"})
	// The longest line: every metric moved, with six-digit counts and a long added time.
	worst := strings.TrimSpace(string(cfg.line(time.Now(), emfTotals{999999, 999999, 999999, 999999, 999999, 999999, 999999, 999999, 999999, 999999999})))
	type row struct {
		what  string
		bytes int
	}
	var rows []row
	for i, l := range lines {
		rows = append(rows, row{fmt.Sprintf("line %d of the run (%d metrics)", i+1, len(decodeEMF(t, l).Values)), len(l)})
	}
	rows = append(rows, row{fmt.Sprintf("every metric, large values (%d metrics)", len(emfMetrics)), len(worst)})
	var b strings.Builder
	fmt.Fprintf(&b, "\n| EMF line | bytes | $ per million invocations, a line each (the worst case) | $ per million invocations, 10 invocations/s per environment (a line a minute) |\n|---|---|---|---|\n")
	for _, r := range rows {
		perMillion := float64(r.bytes) * 1e6 / 1e9 * logIngestionPerGB
		fmt.Fprintf(&b, "| %s | %d | %.3f | %.5f |\n", r.what, r.bytes, perMillion, perMillion/600)
	}
	t.Log(b.String())
	for _, r := range rows {
		if r.bytes > 1024 {
			t.Errorf("%s: %d bytes; the lines should stay small (log ingestion is billed per byte)", r.what, r.bytes)
		}
	}
}
