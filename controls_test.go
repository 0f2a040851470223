package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// runControls drives one extension with the given settings through n invocations against a
// real kinesalite stream of the given shards, and returns what landed.
func runControls(t *testing.T, shards, n int, settings ...string) (*fakeLambda, []storedRecord) {
	t.Helper()
	const stream = "telemetry"
	peer := startKinesalite(t, streamSpec{Name: stream, Shards: shards})
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, extensionEnvFor(peer, stream, peer.Endpoint, false, append([]string{"KINESIS_TELEMETRY_FLUSH", "end"}, settings...)...))
	fl.init()
	for i := range n {
		fl.invoke(invocation{requestID: fmt.Sprintf("%08x-aaaa-bbbb-cccc-%012d", i*2654435761, i), textLines: 50, jsonLines: 50})
	}
	fl.shutdownAndWait(ext)
	return fl, peer.readAll(t, stream)
}

// TestPartitionKeyDistribution shows, on a 4-shard stream, how each partition key mode spreads
// the records: request ids spread by invocation, the function key uses one shard, random spreads
// evenly. It prints the distribution.
func TestPartitionKeyDistribution(t *testing.T) {
	for _, tt := range []struct {
		mode  string
		check func(perShard map[string]int, total int) string
	}{
		{"request", func(s map[string]int, total int) string {
			if len(s) < 3 {
				return "invocations should spread over the shards"
			}
			return ""
		}},
		{"function", func(s map[string]int, total int) string {
			if len(s) != 1 {
				return "all records should be on one shard"
			}
			return ""
		}},
		{"random", func(s map[string]int, total int) string {
			for shard, n := range s {
				if float64(n) < 0.15*float64(total) || float64(n) > 0.35*float64(total) {
					return fmt.Sprintf("%s holds %d of %d: not even", shard, n, total)
				}
			}
			if len(s) != 4 {
				return "random keys should reach every shard"
			}
			return ""
		}},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			_, recs := runControls(t, 4, 20, "KINESIS_TELEMETRY_PARTITION_KEY", tt.mode)
			perShard := map[string]int{}
			for _, r := range recs {
				perShard[r.ShardID]++
			}
			var shards []string
			for s := range perShard {
				shards = append(shards, s)
			}
			sort.Strings(shards)
			var line []string
			for _, s := range shards {
				line = append(line, fmt.Sprintf("%s=%d", s, perShard[s]))
			}
			t.Logf("%-8s %d records: %s", tt.mode, len(recs), strings.Join(line, " "))
			if msg := tt.check(perShard, len(recs)); msg != "" {
				t.Error(msg)
			}
		})
	}
}

// Prices used by TestRecordFormatsOnKinesis, US East (N. Virginia), from
// https://aws.amazon.com/kinesis/data-streams/pricing/ (see docs/formats.md, "Cheaper records").
const (
	pricePerMillionPutUnits = 0.014 // provisioned: per 1,000,000 PUT payload units of 25 KB
	pricePerGBOnDemand      = 0.08  // on-demand: per GB of data in, each record rounded up to 1 KB
)

// formatConsumers says which tools read each format natively.
var formatConsumers = map[recordFormat]string{
	formatEvent:      "any JSON consumer; Firehose (+AppendDelimiterToRecord)",
	formatNDJSON:     "line-oriented consumers; Firehose (RecordDeAggregation JSON)",
	formatKPL:        "KCL, Firehose; Lambda ESM with kinesis-aggregation",
	formatCloudWatch: "Firehose CloudWatch processing, Datadog Forwarder, Vector, CrowdSec, aws-lambda-go events",
}

// TestRecordFormatsOnKinesis ships the same traffic (10 invocations of 50 short text lines, 50 JSON
// lines and their platform events) in every record format to kinesalite, reads it back and decodes
// it as each format's consumers do (the kpl records also with awslabs' aws-kinesis-agg from npm,
// checksums verified): every event arrives exactly once, with an id to de-duplicate by. It prints
// the cost table of docs/formats.md, "Cheaper records", from what was stored.
func TestRecordFormatsOnKinesis(t *testing.T) {
	type row struct {
		format                recordFormat
		records, bytes, units int
		onDemandKB            int
		provisioned, onDemand float64
	}
	var rows []row
	for _, format := range []recordFormat{formatEvent, formatNDJSON, formatKPL, formatCloudWatch} {
		fl, recs := runControls(t, 2, 10, "KINESIS_TELEMETRY_RECORD_FORMAT", string(format), "AWS_LAMBDA_LOG_FORMAT", "JSON")
		posted := fl.postedEvents()
		if format == formatCloudWatch {
			checkCloudWatchExactlyOnce(t, posted, recs)
		} else {
			data, keys := userRecords(t, format, recs)
			events, _ := decodeShipped(t, data, keys)
			checkExactlyOnce(t, posted, events)
			checkTraced(t, events)
			if format == formatKPL {
				checkDeaggregatedByNPM(t, recs, data, keys)
			}
		}
		r := row{format: format, records: len(recs)}
		for _, rec := range recs {
			size := len(rec.Data) + len(rec.PartitionKey)
			r.bytes += size
			r.units += (size + 25*1024 - 1) / (25 * 1024)
			r.onDemandKB += (size + 1023) / 1024
		}
		const invocations = 10
		r.provisioned = float64(r.units) / invocations * 1e6 * pricePerMillionPutUnits / 1e6
		r.onDemand = float64(r.onDemandKB) * 1024 / (1 << 30) / invocations * 1e6 * pricePerGBOnDemand
		rows = append(rows, r)
	}
	var b strings.Builder
	b.WriteString("\n| format | records | bytes stored | PUT units | on-demand billed KB | $ / million invocations, provisioned | $ / million invocations, on-demand | read natively by |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&b, "| `%s` | %d | %d | %d | %d | %.2f | %.2f | %s |\n", r.format, r.records, r.bytes, r.units, r.onDemandKB, r.provisioned, r.onDemand, formatConsumers[r.format])
	}
	t.Logf("10 invocations x 100 log lines (50 text, 50 JSON) and their platform events, on kinesalite:%s", b.String())
	checkCostTable(t, func(f recordFormat) []string {
		for _, r := range rows {
			if r.format == f {
				// Bytes stored vary by a few bytes between runs (the counts records' numbers).
				return []string{fmt.Sprint(r.records), fmt.Sprint(r.units), fmt.Sprint(r.onDemandKB), fmt.Sprintf("%.2f", r.provisioned), fmt.Sprintf("%.2f", r.onDemand)}
			}
		}
		return nil
	})
	event, ndjson := rows[0], rows[1]
	if ndjson.records*10 > event.records || ndjson.units*10 > event.units {
		t.Errorf("ndjson should cut records and payload units at least tenfold")
	}
	for _, r := range rows[1:] {
		if r.onDemandKB >= event.onDemandKB {
			t.Errorf("%s: %d billed KB on demand, not fewer than one record per event (%d)", r.format, r.onDemandKB, event.onDemandKB)
		}
	}
}

// userRecords is what a consumer of an event, ndjson or kpl stream reads from the stored records,
// with its partition key: each record's data (event), each of its lines (ndjson), each of its user
// records, de-aggregated (kpl).
func userRecords(t testing.TB, format recordFormat, recs []storedRecord) (data [][]byte, keys []string) {
	t.Helper()
	if format == formatEvent {
		return storedData(recs)
	}
	for _, r := range recs {
		switch format {
		case formatNDJSON:
			for _, line := range strings.Split(strings.TrimSuffix(string(r.Data), "\n"), "\n") {
				data, keys = append(data, []byte(line)), append(keys, r.PartitionKey)
			}
		case formatKPL:
			for _, u := range decodeKPL(t, r.Data) {
				data, keys = append(data, u.data), append(keys, u.key)
			}
		default:
			t.Fatalf("userRecords: no user records in format %s", format)
		}
	}
	return data, keys
}

// TestCloudWatchDefaultLogNames: without Lambda's log group and stream variables, cloudwatch
// records use Lambda's documented naming, and the extension says so in one log line.
func TestCloudWatchDefaultLogNames(t *testing.T) {
	const stream = "telemetry"
	peer := startKinesalite(t, streamSpec{Name: stream, Shards: 1})
	fl := newFakeLambda(t)
	env := extensionEnvFor(peer, stream, peer.Endpoint, false, "KINESIS_TELEMETRY_FLUSH", "end",
		"KINESIS_TELEMETRY_RECORD_FORMAT", "cloudwatch", "AWS_LAMBDA_FUNCTION_NAME", "orders")
	delete(env, "AWS_LAMBDA_LOG_STREAM_NAME")
	delete(env, "AWS_LAMBDA_LOG_GROUP_NAME")
	ext := startExtension(t, fl, env)
	fl.init()
	fl.invoke(invocation{requestID: "r1", textLines: 3})
	fl.shutdownAndWait(ext)
	recs := peer.readAll(t, stream)
	if len(recs) == 0 {
		t.Fatal("nothing landed")
	}
	for _, r := range recs {
		d := decodeCloudWatch(t, r.Data)
		if d.LogGroup != "/aws/lambda/orders" || !regexp.MustCompile(`^\d{4}/\d\d/\d\d/\[\$LATEST\][a-z2-7]+$`).MatchString(d.LogStream) || r.PartitionKey != d.LogStream {
			t.Errorf("log group %q, stream %q, key %q", d.LogGroup, d.LogStream, r.PartitionKey)
		}
	}
	out := ext.stderr.String()
	if n := strings.Count(out, "Lambda did not set"); n != 1 || !strings.Contains(out, "AWS_LAMBDA_LOG_GROUP_NAME=/aws/lambda/orders") || !strings.Contains(out, "AWS_LAMBDA_LOG_STREAM_NAME=") {
		t.Errorf("want one line naming both defaults, got %d:\n%s", n, out)
	}
}

// checkTraced: every event of an invocation carries the trace Root of the fake Lambda's
// platform.start ("Root=1"), text log lines included; events outside invocations carry none.
func checkTraced(t *testing.T, events []shipped) {
	t.Helper()
	for _, e := range events {
		if want := map[bool]string{true: "1", false: ""}[e.RequestID != ""]; e.TraceID != want || e.TenantID != "" {
			t.Fatalf("%s event of request %q: traceId %q tenantId %q, want traceId %q", e.Type, e.RequestID, e.TraceID, e.TenantID, want)
		}
	}
}

// checkCostTable fails when the "Cheaper records" table of docs/formats.md no longer shows what
// was measured (records, PUT units, billed KB and prices of each format), so that it cannot drift.
func checkCostTable(t *testing.T, measured func(recordFormat) []string) {
	t.Helper()
	root, err := peerRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "docs", "formats.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []recordFormat{formatEvent, formatNDJSON, formatKPL, formatCloudWatch} {
		want := measured(f)
		found := false
		for _, line := range strings.Split(string(readme), "\n") {
			cols := strings.Split(line, " | ")
			if len(cols) < 8 || cols[0] != "| `"+string(f)+"`" {
				continue
			}
			found = true
			if got := []string{cols[1], cols[3], cols[4], cols[5], cols[6]}; strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("docs/formats.md \"Cheaper records\", %s: records, PUT units, billed KB, $ provisioned, $ on-demand are %v, measured %v: update the table from this test's output", f, got, want)
			}
		}
		if !found {
			t.Errorf("docs/formats.md has no cost table row for %s", f)
		}
	}
}

// checkDeaggregatedByNPM runs awslabs' de-aggregator over the stored kpl records and checks that
// it finds, checksums verified, exactly the user records the Go decoder found.
func checkDeaggregatedByNPM(t *testing.T, recs []storedRecord, data [][]byte, keys []string) {
	t.Helper()
	node, modules := nodeAndModules(t)
	pkg := filepath.Join(modules, "aws-kinesis-agg")
	if _, err := os.Stat(filepath.Join(pkg, "index.js")); err != nil {
		requirePeers(t, fmt.Sprintf("aws-kinesis-agg not installed: %v", err))
	}
	var in []map[string]string
	for _, r := range recs {
		in = append(in, map[string]string{"partitionKey": r.PartitionKey, "data": base64.StdEncoding.EncodeToString(r.Data), "sequenceNumber": r.SequenceNumber})
	}
	body, _ := json.Marshal(in)
	cmd := exec.Command(node, launcherPath(t, "kpl-deagg.js"), pkg)
	cmd.Stdin = bytes.NewReader(body)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("aws-kinesis-agg: %v: %s", err, stderr.String())
	}
	var users []struct {
		PartitionKey string
		Data         []byte
	}
	if err := json.Unmarshal(out, &users); err != nil {
		t.Fatal(err)
	}
	if len(users) != len(data) {
		t.Fatalf("aws-kinesis-agg found %d user records, want %d", len(users), len(data))
	}
	for i, u := range users {
		if u.PartitionKey != keys[i] || !bytes.Equal(u.Data, data[i]) {
			t.Fatalf("user record %d differs: %q %.100s", i, u.PartitionKey, u.Data)
		}
	}
	t.Logf("aws-kinesis-agg de-aggregated %d records into %d user records, checksums verified", len(recs), len(users))
}

// checkCloudWatchExactlyOnce decodes the stored cloudwatch records with aws-lambda-go's types and
// checks that every posted event's message (JSON log format) arrived exactly once, in posting
// order, under a unique id, besides the counts messages.
func checkCloudWatchExactlyOnce(t *testing.T, posted []postedEvent, recs []storedRecord) {
	t.Helper()
	want := map[string]int{}
	order := map[string]int{}
	for i, p := range posted {
		m := cloudWatchMessage(p.raw)
		want[m]++
		order[m] = i
	}
	seen := map[string]int{}
	ids := map[string]string{}
	last, counts := -1, 0
	for _, r := range recs {
		d := decodeCloudWatch(t, r.Data)
		if r.PartitionKey != d.LogStream || d.LogGroup == "" || d.Owner == "" {
			t.Fatalf("record keyed %q for stream %q, group %q, owner %q", r.PartitionKey, d.LogStream, d.LogGroup, d.Owner)
		}
		for _, le := range d.LogEvents {
			if prev, ok := ids[le.ID]; ok {
				t.Errorf("id %s used twice (%.80s, %.80s)", le.ID, prev, le.Message)
			}
			ids[le.ID] = le.Message
			if _, ok := want[le.Message]; !ok {
				var c map[string]any
				if json.Unmarshal([]byte(le.Message), &c) == nil && c["received"] != nil && c["delivered"] != nil {
					counts++
					continue
				}
				t.Errorf("a message that was never posted: %.200s", le.Message)
				continue
			}
			seen[le.Message]++
			if order[le.Message] < last {
				t.Errorf("message out of order: %.100s", le.Message)
			}
			last = order[le.Message]
		}
	}
	for m, n := range want {
		if seen[m] != n {
			t.Errorf("message arrived %d times, posted %d: %.200s", seen[m], n, m)
		}
	}
	if counts == 0 {
		t.Error("no counts message")
	}
}

// TestFiltersOnKinesis: exclusion, minimum level, redaction and sampling, checked on what lands.
func TestFiltersOnKinesis(t *testing.T) {
	fl, recs := runControls(t, 1, 40,
		"KINESIS_TELEMETRY_EXCLUDE", "platform.runtimeDone",
		"KINESIS_TELEMETRY_MIN_LEVEL", "WARN",
		"KINESIS_TELEMETRY_REDACT", `text line \d+`,
		"KINESIS_TELEMETRY_SAMPLE", "0.5")
	data, keys := storedData(recs)
	events, counts := decodeShipped(t, data, keys)
	kept := map[string]bool{}
	for _, e := range events {
		var ev struct {
			Type   string
			Record json.RawMessage
		}
		json.Unmarshal(e.Event, &ev)
		switch {
		case ev.Type == "platform.runtimeDone":
			t.Fatal("an excluded type landed")
		case ev.Type == "function" && strings.Contains(string(ev.Record), `"level":"INFO"`):
			t.Fatal("an INFO line landed with MIN_LEVEL=WARN")
		case ev.Type == "function" && strings.Contains(string(ev.Record), "text line"):
			t.Fatalf("a redacted pattern landed: %s", ev.Record)
		case ev.Type == "function":
			kept[e.RequestID] = true
		}
	}
	// Text lines survive the level filter; sampling keeps about half of the invocations whole.
	if len(kept) < 10 || len(kept) > 30 {
		t.Errorf("function lines of %d of 40 invocations landed, want about half", len(kept))
	}
	platform := 0
	for _, p := range fl.postedEvents() {
		if strings.Contains(p.raw, `"type":"platform.`) && !strings.Contains(p.raw, "runtimeDone") {
			platform++
		}
	}
	if got := len(events) - countFunction(events); got != platform {
		t.Errorf("%d platform events landed, want all %d", got, platform)
	}
	f := lastCounts(t, counts).Filtered
	t.Logf("filtered: %+v", f)
	if f.Excluded != 40 || f.BelowLevel == 0 || f.SampledOut == 0 {
		t.Errorf("filter counts %+v", f)
	}
}

func countFunction(evs []shipped) int {
	n := 0
	for _, e := range evs {
		if e.Type == "function" {
			n++
		}
	}
	return n
}
