package main

import (
	"bytes"
	"compress/gzip"
	"crypto/md5"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"google.golang.org/protobuf/encoding/protowire"
)

// Fixtures shaped like AWS's documented Telemetry API examples (telemetry-schema-reference), with
// the tracing and tenantId fields of a traced, tenant-isolated function.
const (
	fxInitStart   = `{"time":"2024-05-01T10:00:00.000Z","type":"platform.initStart","record":{"initializationType":"on-demand","phase":"init","runtimeVersion":"python:3.13.v14","runtimeVersionArn":"arn:aws:lambda:eu-south-1::runtime:7b620fc2e66107a1046b140b9d320295811af3ad5d4c6a011fad1fa65127e9e6I","functionName":"fn","functionVersion":"$LATEST"}}`
	fxStart       = `{"time":"2024-05-01T10:00:01.000Z","type":"platform.start","record":{"requestId":"8fc6f963-411b-58b5-8483-a32130c0f45d","version":"$LATEST","tenantId":"tenant-42","tracing":{"spanId":"107ea78a5750a811","type":"X-Amzn-Trace-Id","value":"Root=1-61c86fa4-59b3c6d959653c527fd10966;Parent=53995c3f42cd8ad8;Sampled=1"}}}`
	fxText        = `{"time":"2024-05-01T10:00:01.100Z","type":"function","record":"2024-05-01T10:00:01.100Z\t8fc6f963-411b-58b5-8483-a32130c0f45d\tINFO\thello \"world\"\n"}`
	fxJSON        = `{"time":"2024-05-01T10:00:01.200Z","type":"function","record":{"timestamp":"2024-05-01T10:00:01.200Z", "level":"INFO","requestId":"8fc6f963-411b-58b5-8483-a32130c0f45d","message":"json line"}}`
	fxRuntimeDone = `{"time":"2024-05-01T10:00:01.300Z","type":"platform.runtimeDone","record":{"requestId":"8fc6f963-411b-58b5-8483-a32130c0f45d","status":"success","metrics":{"durationMs":201.67,"producedBytes":12},"tracing":{"spanId":"107ea78a5750a811","type":"X-Amzn-Trace-Id","value":"Root=1-61c86fa4-59b3c6d959653c527fd10966;Parent=53995c3f42cd8ad8;Sampled=1"}}}`
	fxReport      = `{"time":"2024-05-01T10:00:01.400Z","type":"platform.report","record":{"requestId":"8fc6f963-411b-58b5-8483-a32130c0f45d","status":"success","metrics":{"durationMs":201.67,"billedDurationMs":202,"memorySizeMB":2048,"maxMemoryUsedMB":81,"initDurationMs":480.25},"tracing":{"spanId":"107ea78a5750a811","type":"X-Amzn-Trace-Id","value":"Root=1-61c86fa4-59b3c6d959653c527fd10966;Parent=53995c3f42cd8ad8;Sampled=1"}}}`
	fxDropped     = `{"time":"2024-05-01T10:00:01.500Z","type":"platform.logsDropped","record":{"reason":"Consumer seems to have fallen behind","droppedRecords":3,"droppedBytes":300}}`
	fxUntraced    = `{"time":"2024-05-01T10:00:02.000Z","type":"platform.start","record":{"requestId":"r2","version":"$LATEST"}}`
	fxUntracedLog = `{"time":"2024-05-01T10:00:02.100Z","type":"function","record":"untraced line"}`
	// A JSON log line's own tenantId and tracing are the function's, not Lambda's: never stamped.
	fxOwnFields = `{"time":"2024-05-01T10:00:02.200Z","type":"function","record":{"level":"INFO","requestId":"r2","tenantId":"mine","tracing":{"value":"Root=1-00000000-000000000000000000000000"},"message":"m"}}`
)

var fixtureBatch = "[" + strings.Join([]string{fxInitStart, fxStart, fxText, fxJSON, fxRuntimeDone, fxReport, fxDropped, fxUntraced, fxUntracedLog, fxOwnFields}, ",") + "]"

// bufferedFixtures runs the fixture batch through the listener's scanner and the buffer, as the
// extension does, and returns the buffered events.
func bufferedFixtures(t *testing.T) []event {
	t.Helper()
	st := newStats()
	buf := newBuffer(1<<30, "fx", st)
	l := newListener(buf, st, config{BufferBytes: minBufferBytes, Sample: 1})
	if err := l.accept([]byte(fixtureBatch)); err != nil {
		t.Fatal(err)
	}
	return buf.take(everything, 1000, 1<<30, func(*event) int { return 1 })
}

// The Text-format lines Lambda writes, from AWS's documentation (see textLine for the pages).
func TestTextFormatLinesGolden(t *testing.T) {
	for _, tt := range []struct {
		typ          eventType
		record, want string
	}{
		{"platform.initStart", `{"runtimeVersion":"python:3.13.v14","runtimeVersionArn":"arn:aws:lambda:eu-south-1::runtime:7b620fc2e66107a1046b140b9d320295811af3ad5d4c6a011fad1fa65127e9e6I"}`,
			"INIT_START Runtime Version: python:3.13.v14\tRuntime Version ARN: arn:aws:lambda:eu-south-1::runtime:7b620fc2e66107a1046b140b9d320295811af3ad5d4c6a011fad1fa65127e9e6I"},
		{"platform.start", `{"requestId":"c793869b-ee49-115b-a5b6-4fd21e8dedac","version":"$LATEST"}`,
			"START RequestId: c793869b-ee49-115b-a5b6-4fd21e8dedac Version: $LATEST"},
		{"platform.runtimeDone", `{"requestId":"c793869b-ee49-115b-a5b6-4fd21e8dedac","status":"success"}`,
			"END RequestId: c793869b-ee49-115b-a5b6-4fd21e8dedac"},
		{"platform.report", `{"requestId":"c793869b-ee49-115b-a5b6-4fd21e8dedac","status":"success","metrics":{"durationMs":170.19,"billedDurationMs":171,"memorySizeMB":128,"maxMemoryUsedMB":73,"initDurationMs":347.7}}`,
			"REPORT RequestId: c793869b-ee49-115b-a5b6-4fd21e8dedac\tDuration: 170.19 ms\tBilled Duration: 171 ms\tMemory Size: 128 MB\tMax Memory Used: 73 MB\tInit Duration: 347.70 ms"},
		{"platform.report", `{"requestId":"8fc6f963-411b-58b5-8483-a32130c0f45d","metrics":{"durationMs":201.67,"billedDurationMs":202,"memorySizeMB":2048,"maxMemoryUsedMB":81,"initDurationMs":480.25},"tracing":{"spanId":"107ea78a5750a811","type":"X-Amzn-Trace-Id","value":"Root=1-61c86fa4-59b3c6d959653c527fd10966;Parent=53995c3f42cd8ad8;Sampled=1"}}`,
			"REPORT RequestId: 8fc6f963-411b-58b5-8483-a32130c0f45d\tDuration: 201.67 ms\tBilled Duration: 202 ms\tMemory Size: 2048 MB\tMax Memory Used: 81 MB\tInit Duration: 480.25 ms\nXRAY TraceId: 1-61c86fa4-59b3c6d959653c527fd10966\tSegmentId: 107ea78a5750a811\tSampled: true"},
		{"platform.report", `{"requestId":"r","metrics":{"durationMs":1.5,"billedDurationMs":2,"memorySizeMB":128,"maxMemoryUsedMB":64},"tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5e34a614-10bdxmplf1fb44f07bc535a1;Parent=3d752xmpl1bbe37e;Sampled=0"}}`,
			"REPORT RequestId: r\tDuration: 1.50 ms\tBilled Duration: 2 ms\tMemory Size: 128 MB\tMax Memory Used: 64 MB\nXRAY TraceId: 1-5e34a614-10bdxmplf1fb44f07bc535a1\tSegmentId: 3d752xmpl1bbe37e\tSampled: false"},
		{"platform.initReport", `{"phase":"init","status":"success","metrics":{"durationMs":1}}`, ""},
	} {
		if got := string(textLine(tt.typ, []byte(tt.record))); got != tt.want {
			t.Errorf("%s:\n got %q\nwant %q", tt.typ, got, tt.want)
		}
	}
}

// decodeCloudWatch gunzips one record and decodes it with aws-lambda-go's types, unknown fields
// refused, and checks that no object in it has a key CloudWatch's records do not have.
func decodeCloudWatch(t testing.TB, data []byte) events.CloudwatchLogsData {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("not gzip: %v", err)
	}
	js, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	var d events.CloudwatchLogsData
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("not a CloudWatch Logs record: %v: %.300s", err, js)
	}
	if dec.More() {
		t.Fatal("data after the message")
	}
	var keys struct {
		Top    map[string]json.RawMessage
		Events []map[string]json.RawMessage
	}
	json.Unmarshal(js, &keys.Top)
	json.Unmarshal(keys.Top["logEvents"], &keys.Events)
	want := []string{"logEvents", "logGroup", "logStream", "messageType", "owner", "subscriptionFilters"}
	if got := slices.Sorted(mapKeys(keys.Top)); !slices.Equal(got, want) {
		t.Fatalf("keys %v, want exactly %v", got, want)
	}
	for _, e := range keys.Events {
		if got := slices.Sorted(mapKeys(e)); !slices.Equal(got, []string{"id", "message", "timestamp"}) {
			t.Fatalf("log event keys %v", got)
		}
	}
	// The same data through the SDK's own path: base64, gunzip, decode.
	viaSDK, err := events.CloudwatchLogsRawData{Data: base64.StdEncoding.EncodeToString(data)}.Parse()
	if err != nil || len(viaSDK.LogEvents) != len(d.LogEvents) {
		t.Fatalf("aws-lambda-go's Parse: %v", err)
	}
	return d
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func cloudWatchMeta(format logFormat) recordMeta {
	return testMeta(config{RecordFormat: formatCloudWatch, LogFormat: format, LogGroup: "/aws/lambda/fn",
		LogStream: "2024/05/01/[$LATEST]3893xmpl7fac4485b47bb75b671a283c", SubscriptionFilter: "kinesis-telemetry-extension"})
}

// TestCloudWatchRecords: the fixtures in both log formats decode strictly as CloudWatch Logs
// subscription records, with Lambda's messages, 56-digit ids stable across rebuilds, epoch-ms
// timestamps, the log stream as the partition key.
func TestCloudWatchRecords(t *testing.T) {
	evs := bufferedFixtures(t)
	for _, tt := range []struct {
		format logFormat
		want   []string
	}{
		{logText, []string{
			"INIT_START Runtime Version: python:3.13.v14\tRuntime Version ARN: arn:aws:lambda:eu-south-1::runtime:7b620fc2e66107a1046b140b9d320295811af3ad5d4c6a011fad1fa65127e9e6I",
			"START RequestId: 8fc6f963-411b-58b5-8483-a32130c0f45d Version: $LATEST",
			"2024-05-01T10:00:01.100Z\t8fc6f963-411b-58b5-8483-a32130c0f45d\tINFO\thello \"world\"\n",
			`{"timestamp":"2024-05-01T10:00:01.200Z","level":"INFO","requestId":"8fc6f963-411b-58b5-8483-a32130c0f45d","message":"json line"}`,
			"END RequestId: 8fc6f963-411b-58b5-8483-a32130c0f45d",
			"REPORT RequestId: 8fc6f963-411b-58b5-8483-a32130c0f45d\tDuration: 201.67 ms\tBilled Duration: 202 ms\tMemory Size: 2048 MB\tMax Memory Used: 81 MB\tInit Duration: 480.25 ms\nXRAY TraceId: 1-61c86fa4-59b3c6d959653c527fd10966\tSegmentId: 107ea78a5750a811\tSampled: true",
			fxDropped,
			"START RequestId: r2 Version: $LATEST",
			"untraced line",
			`{"level":"INFO","requestId":"r2","tenantId":"mine","tracing":{"value":"Root=1-00000000-000000000000000000000000"},"message":"m"}`,
		}},
		{logJSON, []string{
			fxInitStart, fxStart,
			"2024-05-01T10:00:01.100Z\t8fc6f963-411b-58b5-8483-a32130c0f45d\tINFO\thello \"world\"\n",
			`{"timestamp":"2024-05-01T10:00:01.200Z","level":"INFO","requestId":"8fc6f963-411b-58b5-8483-a32130c0f45d","message":"json line"}`,
			fxRuntimeDone, fxReport, fxDropped, fxUntraced, "untraced line",
			`{"level":"INFO","requestId":"r2","tenantId":"mine","tracing":{"value":"Root=1-00000000-000000000000000000000000"},"message":"m"}`,
		}},
	} {
		t.Run(string(tt.format), func(t *testing.T) {
			m := cloudWatchMeta(tt.format)
			var zw *gzip.Writer
			recs := m.packCloudWatch(evs, 262144, &zw)
			if len(recs) != 1 || recs[0].key != m.cloudWatch.stream || recs[0].size != len(recs[0].data) {
				t.Fatalf("%d records, key %q", len(recs), recs[0].key)
			}
			d := decodeCloudWatch(t, recs[0].data)
			if d.MessageType != "DATA_MESSAGE" || d.Owner != "123456789012" || d.LogGroup != "/aws/lambda/fn" ||
				d.LogStream != m.cloudWatch.stream || !slices.Equal(d.SubscriptionFilters, []string{"kinesis-telemetry-extension"}) {
				t.Errorf("header %+v", d)
			}
			if len(d.LogEvents) != len(tt.want) {
				t.Fatalf("%d log events, want %d", len(d.LogEvents), len(tt.want))
			}
			again := decodeCloudWatch(t, m.packCloudWatch(evs, 262144, &zw)[0].data)
			ids := map[string]bool{}
			for i, le := range d.LogEvents {
				if le.Message != tt.want[i] {
					t.Errorf("event %d message\n got %q\nwant %q", i, le.Message, tt.want[i])
				}
				var ev struct{ Time time.Time }
				json.Unmarshal(evs[i].raw, &ev)
				if le.Timestamp != ev.Time.UnixMilli() {
					t.Errorf("event %d timestamp %d, want %d", i, le.Timestamp, ev.Time.UnixMilli())
				}
				if len(le.ID) != 56 || strings.Trim(le.ID, "0123456789") != "" || ids[le.ID] {
					t.Errorf("event %d id %q: want 56 unique digits", i, le.ID)
				}
				ids[le.ID] = true
				if again.LogEvents[i].ID != le.ID {
					t.Errorf("event %d id changed between builds", i)
				}
			}
		})
	}
}

// TestCloudWatchIDsSortByTime: ids are CloudWatch-shaped (timestamp << 144 plus less), so their
// order is time order, and events of other environments get other ids.
func TestCloudWatchIDsSortByTime(t *testing.T) {
	// AWS's documented example: id 31953106606966983378809025079804211143289615424298221568 for
	// timestamp 1432826855000, which is the id shifted right by 144 bits.
	msOf := func(id string) int64 {
		n, _ := new(big.Int).SetString(id, 10)
		return n.Rsh(n, 144).Int64()
	}
	if msOf("31953106606966983378809025079804211143289615424298221568") != 1432826855000 {
		t.Fatal("the model of CloudWatch ids is wrong")
	}
	a := string(appendCloudWatchID(nil, 1432826855000, "p", 0))
	if msOf(a) != 1432826855000 || len(a) != 56 {
		t.Errorf("id %s does not hold its timestamp as CloudWatch's do", a)
	}
	b := string(appendCloudWatchID(nil, 1432826855000, "p", 1))
	c := string(appendCloudWatchID(nil, 1432826855001, "p", 0))
	d := string(appendCloudWatchID(nil, 1432826855000, "q", 0))
	if !(a < b && b < c) || a == d || len(d) != 56 {
		t.Errorf("ids %s %s %s %s", a, b, c, d)
	}
}

// TestCloudWatchGroupingLimits: many events split into records within the record bound and
// CloudWatch's 10,000-event batches; a message over 256 KB is cut, never dropped.
func TestCloudWatchGroupingLimits(t *testing.T) {
	m := cloudWatchMeta(logText)
	var evs []event
	for i := range 25000 {
		evs = append(evs, event{raw: []byte(fmt.Sprintf(`{"time":"2024-05-01T10:00:00.000Z","type":"function","record":"l%d"}`, i)), typ: "function", text: true, idPrefix: "p", seq: uint64(i)})
	}
	big := strings.Repeat("é\x01", 400*1024)
	evs = append(evs, event{raw: []byte(`{"time":"2024-05-01T10:00:00.000Z","type":"function","record":` + string(appendJSONString(nil, big)) + `}`), typ: "function", text: true, idPrefix: "p", seq: 99999})
	var zw *gzip.Writer
	recs := m.packCloudWatch(evs, 1<<20-4096, &zw)
	n := 0
	for _, r := range recs {
		d := decodeCloudWatch(t, r.data)
		if len(d.LogEvents) > 10000 || len(d.LogEvents) != len(r.events) || len(r.data)+len(r.key) > maxRecordBytes {
			t.Fatalf("record of %d events (%d bytes)", len(d.LogEvents), len(r.data))
		}
		for _, le := range d.LogEvents {
			if n < 25000 && le.Message != fmt.Sprintf("l%d", n) {
				t.Fatalf("event %d: %q", n, le.Message)
			}
			if n == 25000 && (len(le.Message) > 256*1024 || !strings.HasPrefix(big, le.Message) || len(le.Message) < 100000) {
				t.Fatalf("long message of %d bytes, not a cut of the line", len(le.Message))
			}
			n++
		}
	}
	if n != len(evs) {
		t.Fatalf("%d of %d events in the records", n, len(evs))
	}
	t.Logf("%d events in %d records", n, len(recs))
}

// kplUser is one user record of a KPL aggregated record.
type kplUser struct {
	key  string
	data []byte
}

// decodeKPL is an independent decoder of aggregation-format.md, with protowire: it checks the
// magic bytes and the MD5 and returns the user records.
func decodeKPL(t testing.TB, rec []byte) []kplUser {
	t.Helper()
	if len(rec) < 20 || !bytes.Equal(rec[:4], []byte{0xF3, 0x89, 0x9A, 0xC2}) {
		t.Fatalf("no KPL magic: % x", rec[:min(len(rec), 4)])
	}
	pb, sum := rec[4:len(rec)-16], rec[len(rec)-16:]
	if got := md5.Sum(pb); !bytes.Equal(got[:], sum) {
		t.Fatal("KPL checksum mismatch")
	}
	var keys []string
	var raw [][]byte
	for len(pb) > 0 {
		num, typ, n := protowire.ConsumeTag(pb)
		if n < 0 || typ != protowire.BytesType {
			t.Fatalf("bad tag %d/%d", num, typ)
		}
		pb = pb[n:]
		v, n := protowire.ConsumeBytes(pb)
		if n < 0 {
			t.Fatal("bad length")
		}
		pb = pb[n:]
		switch num {
		case 1:
			keys = append(keys, string(v))
		case 3:
			raw = append(raw, v)
		default:
			t.Fatalf("unexpected field %d", num)
		}
	}
	var out []kplUser
	for _, r := range raw {
		var u kplUser
		idx := -1
		for len(r) > 0 {
			num, typ, n := protowire.ConsumeTag(r)
			r = r[n:]
			switch {
			case num == 1 && typ == protowire.VarintType:
				v, n := protowire.ConsumeVarint(r)
				idx, r = int(v), r[n:]
			case num == 3 && typ == protowire.BytesType:
				v, n := protowire.ConsumeBytes(r)
				u.data, r = v, r[n:]
			default:
				t.Fatalf("unexpected record field %d/%d", num, typ)
			}
		}
		if idx < 0 || idx >= len(keys) {
			t.Fatalf("partition key index %d of %d", idx, len(keys))
		}
		u.key = keys[idx]
		out = append(out, u)
	}
	return out
}

// TestKPLRecords: aggregated records decode with an independent protobuf decoder into today's
// envelopes, with each user record's partition key, within the size bound; an event too large
// for a record is truncated inside it.
func TestKPLRecords(t *testing.T) {
	evs := bufferedFixtures(t)
	big := event{raw: []byte(`{"time":"t","type":"function","record":"` + strings.Repeat("x", 1200000) + `"}`), typ: "function", text: true, requestID: "r2", idPrefix: "fx", seq: 100}
	evs = append(evs, big)
	for _, mode := range []partitionMode{partitionRequest, partitionRandom} {
		m := testMeta(config{RecordFormat: formatKPL, PartitionKey: mode})
		recs := m.packKPL(evs, 4096)
		var got []kplUser
		for _, r := range recs {
			if len(r.data)+len(r.key) > maxRecordBytes || (len(r.events) > 1 && len(r.data) > 4096) || r.size != len(r.data) {
				t.Fatalf("%s: record of %d bytes for %d events", mode, len(r.data), len(r.events))
			}
			users := decodeKPL(t, r.data)
			if len(users) != len(r.events) {
				t.Fatalf("%d user records for %d events", len(users), len(r.events))
			}
			for i, u := range users {
				if want := m.appendData(nil, &r.events[i], len(u.key)); u.key != m.partitionKey(&r.events[i]) ||
					(len(want) == len(u.data) && !bytes.Equal(u.data, want)) {
					t.Errorf("user record %d: key %q, data %.100s", i, u.key, u.data)
				}
			}
			got = append(got, users...)
		}
		if len(got) != len(evs) {
			t.Fatalf("%s: %d user records for %d events", mode, len(got), len(evs))
		}
		var env envelopeOf
		if err := json.Unmarshal(got[len(got)-1].data, &env); err != nil || env.TruncatedBytes == nil {
			t.Errorf("the big event should arrive truncated: %v", err)
		}
		t.Logf("%s: %d events in %d records", mode, len(evs), len(recs))
	}
}

// TestTraceAndTenantStamped: every event of a traced invocation carries the Root of its
// platform.start's trace header and its tenantId, log lines included; an untraced invocation's
// events carry neither field.
func TestTraceAndTenantStamped(t *testing.T) {
	evs := bufferedFixtures(t)
	m := testMeta(config{})
	for i := range evs {
		var env struct {
			TraceID  *string `json:"traceId"`
			TenantID *string `json:"tenantId"`
		}
		data := m.appendData(nil, &evs[i], 10)
		if len(data) != m.dataSize(&evs[i], 10) {
			t.Errorf("dataSize wrong with trace fields")
		}
		json.Unmarshal(data, &env)
		switch evs[i].requestID {
		case "8fc6f963-411b-58b5-8483-a32130c0f45d":
			if env.TraceID == nil || *env.TraceID != "1-61c86fa4-59b3c6d959653c527fd10966" || env.TenantID == nil || *env.TenantID != "tenant-42" {
				t.Errorf("%s: traceId %v tenantId %v", evs[i].typ, env.TraceID, env.TenantID)
			}
		default:
			if env.TraceID != nil || env.TenantID != nil {
				t.Errorf("%s of an untraced invocation: %s", evs[i].typ, data)
			}
		}
	}
}

// TestUnknownRecordFormat: a configuration error naming the variable and the allowed values.
func TestUnknownRecordFormat(t *testing.T) {
	_, err := parseConfig(func(k string) string {
		return map[string]string{"KINESIS_TELEMETRY_STREAM": "s", "KINESIS_TELEMETRY_RECORD_FORMAT": "protobuf"}[k]
	})
	if err == nil || !strings.Contains(err.Error(), "KINESIS_TELEMETRY_RECORD_FORMAT") || !strings.Contains(err.Error(), "event, ndjson, kpl, cloudwatch") {
		t.Fatalf("error %v", err)
	}
	c, err := parseConfig(func(k string) string {
		return map[string]string{"KINESIS_TELEMETRY_STREAM": "s", "KINESIS_TELEMETRY_RECORD_FORMAT": "cloudwatch", "AWS_LAMBDA_FUNCTION_NAME": "fn", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST"}[k]
	})
	if err != nil || c.LogGroup != "/aws/lambda/fn" || !strings.Contains(c.LogStream, "/[$LATEST]") || len(c.DefaultLogNames) != 2 || c.SubscriptionFilter != "kinesis-telemetry-extension" || c.LogFormat != logText {
		t.Fatalf("defaults: %+v %v", c, err)
	}
}

// openSearchConflicts models OpenSearch's dynamic mapping: the first document to hold a field
// fixes it as an object or a concrete value; a later document with the other kind is rejected
// (mapper_parsing_exception). It returns the rejected documents.
func openSearchConflicts(docs [][]byte) []string {
	kind := map[string]bool{} // path -> is an object
	var rejected []string
	var walk func(path string, v any) bool
	walk = func(path string, v any) bool {
		obj, isObj := v.(map[string]any)
		if prev, ok := kind[path]; ok && prev != isObj {
			return false
		}
		kind[path] = isObj
		for k, c := range obj {
			if !walk(path+"."+k, c) {
				return false
			}
		}
		if arr, ok := v.([]any); ok {
			for _, c := range arr {
				if !walk(path, c) {
					return false
				}
			}
		}
		return true
	}
	for _, d := range docs {
		var v any
		json.Unmarshal(d, &v)
		if !walk("", v) {
			rejected = append(rejected, string(d))
		}
	}
	return rejected
}

// TestOpenSearchSafeRecords: the default envelope puts a string in event.record for text lines and
// an object otherwise, which OpenSearch rejects; KINESIS_TELEMETRY_TEXT_RECORD=object makes every
// document map, truncated events included, and keeps the text.
func TestOpenSearchSafeRecords(t *testing.T) {
	evs := bufferedFixtures(t)
	evs = append(evs, event{raw: []byte(`{"time":"t","type":"function","record":{"level":"INFO","message":"` + strings.Repeat("y", 1100000) + `"}}`), typ: "function", idPrefix: "fx", seq: 200})
	docs := func(textRecord textRecord) [][]byte {
		m := testMeta(config{TextRecord: textRecord})
		var out [][]byte
		for i := range evs {
			d := m.appendData(nil, &evs[i], 10)
			if len(d) != m.dataSize(&evs[i], 10) || len(d)+10 > maxRecordBytes {
				t.Fatalf("size %d, predicted %d", len(d), m.dataSize(&evs[i], 10))
			}
			out = append(out, d)
		}
		return out
	}
	if got := openSearchConflicts(docs(textAsString)); len(got) == 0 {
		t.Error("the model should reject the default format's mixed event.record")
	}
	safe := docs(textAsObject)
	if got := openSearchConflicts(safe); len(got) != 0 {
		t.Errorf("with object text records %d documents are rejected: %.200s", len(got), got[0])
	}
	var env struct {
		Event struct{ Record map[string]any }
	}
	json.Unmarshal(safe[2], &env)
	if env.Event.Record["message"] != "2024-05-01T10:00:01.100Z\t8fc6f963-411b-58b5-8483-a32130c0f45d\tINFO\thello \"world\"\n" {
		t.Errorf("text line record %v", env.Event.Record)
	}
}

// cloudWatchMessage is, independently of the extension's code, what Lambda writes to CloudWatch
// Logs in the JSON log format for a posted event.
func cloudWatchMessage(raw string) string {
	var ev struct {
		Type   string
		Record json.RawMessage
	}
	json.Unmarshal([]byte(raw), &ev)
	if ev.Type != "function" && ev.Type != "extension" {
		return raw
	}
	var s string
	if json.Unmarshal(ev.Record, &s) == nil {
		return s
	}
	var b bytes.Buffer
	json.Compact(&b, ev.Record)
	return b.String()
}

// sortedCounts formats a count map for logs.
func sortedCounts(m map[string]int) string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	var b strings.Builder
	for _, k := range ks {
		fmt.Fprintf(&b, "%s=%d ", k, m[k])
	}
	return b.String()
}

// TestNDJSONAtMost500Lines: an ndjson record never holds more lines than Firehose's JSON
// de-aggregation splits out of one record (500), however small the lines.
func TestNDJSONAtMost500Lines(t *testing.T) {
	cfg := config{RecordFormat: formatNDJSON, RecordBytes: maxRecordBytes - 4096, Stream: streamRef{Name: "s"}}
	s := newShipper(cfg, nil, newStats(), newLogger(io.Discard), testMeta(cfg))
	evs := make([]event, 1700)
	for i := range evs {
		evs[i] = logEvent(fmt.Sprintf("l%d", i))
		evs[i].requestID, evs[i].idPrefix, evs[i].seq = "r", "p", uint64(i)
	}
	recs := s.meta.pack(evs, s.cfg.RecordBytes, &s.gz)
	n := 0
	for _, r := range recs {
		if len(r.events) > 500 {
			t.Fatalf("ndjson record of %d lines", len(r.events))
		}
		n += len(r.events)
	}
	if n != len(evs) || len(recs) != 4 {
		t.Errorf("%d events in %d records, want %d in 4", n, len(recs), len(evs))
	}
}
