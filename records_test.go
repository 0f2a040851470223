package main

// Unit tests of records.go: the envelope, truncation, partition keys, the call limits, ndjson;
// FuzzRecordBuilding covers every format (formats.go too).

import (
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

var testReg = registration{FunctionName: "fn", FunctionVersion: "$LATEST", AccountID: "123456789012"}

func testMeta(cfg config) recordMeta {
	if cfg.PartitionKey == "" {
		cfg.PartitionKey = "request"
	}
	if cfg.Stream.Name == "" {
		cfg.Stream = streamRef{Name: "s"}
	}
	return newRecordMeta(testReg.function(), cfg.recordSettings(), "eu-west-1", "env1")
}

// envelopeOf decodes one record's data.
type envelopeOf struct {
	ID             string          `json:"id"`
	Function       string          `json:"function"`
	Version        string          `json:"version"`
	Account        string          `json:"account"`
	Region         string          `json:"region"`
	RequestID      string          `json:"requestId"`
	TraceID        string          `json:"traceId"`
	TenantID       string          `json:"tenantId"`
	TruncatedBytes *int            `json:"truncatedBytes"`
	Event          json.RawMessage `json:"event"`
}

func TestEnvelope(t *testing.T) {
	m := testMeta(config{})
	e := event{raw: []byte(`{"time":"t","type":"function","record":"hi"}`), typ: "function", requestID: "req-\"1\"", idPrefix: "abc", seq: 42}
	data := m.appendData(nil, &e, 5)
	if len(data) != m.dataSize(&e, 5) {
		t.Errorf("dataSize %d, appendData wrote %d", m.dataSize(&e, 5), len(data))
	}
	var got envelopeOf
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatalf("record data is not JSON: %v: %s", err, data)
	}
	want := envelopeOf{ID: "abc-42", Function: "fn", Version: "$LATEST", Account: "123456789012", Region: "eu-west-1", RequestID: "req-\"1\"", Event: e.raw}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("got  %+v\nwant %+v", got, want)
	}
}

func TestOversizedEventIsTruncatedNotDropped(t *testing.T) {
	m := testMeta(config{})
	for _, tt := range []struct {
		name   string
		record string
	}{
		{"text line", `"` + strings.Repeat("é\\n", 400000) + `"`},
		{"json record", `{"message":"` + strings.Repeat("x", 1200000) + `"}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			raw := `{"time":"2024-01-01T00:00:00.000Z","type":"function","record":` + tt.record + `}`
			e := event{raw: []byte(raw), typ: "function", requestID: "r1", idPrefix: "p", seq: 1, text: strings.HasPrefix(tt.record, `"`)}
			key := m.partitionKey(&e)
			data := m.appendData(nil, &e, len(key))
			if n := len(data) + len(key); n > maxRecordBytes {
				t.Fatalf("record is %d bytes with its key, over the %d limit", n, maxRecordBytes)
			}
			if len(data) != m.dataSize(&e, len(key)) {
				t.Errorf("dataSize %d, appendData wrote %d", m.dataSize(&e, len(key)), len(data))
			}
			var got envelopeOf
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatalf("truncated record is not JSON: %v", err)
			}
			var ev struct {
				Time, Type, Record string
			}
			if err := json.Unmarshal(got.Event, &ev); err != nil {
				t.Fatalf("truncated event: %v", err)
			}
			var full string
			if e.text {
				json.Unmarshal([]byte(tt.record), &full)
			} else {
				full = tt.record
			}
			if got.TruncatedBytes == nil || *got.TruncatedBytes != len(full)-len(ev.Record) || *got.TruncatedBytes <= 0 {
				t.Fatalf("truncatedBytes %v, want %d", got.TruncatedBytes, len(full)-len(ev.Record))
			}
			if !strings.HasPrefix(full, ev.Record) || ev.Time != "2024-01-01T00:00:00.000Z" || ev.Type != "function" {
				t.Errorf("truncated event does not keep the start of the record and its time and type")
			}
			if len(data) < maxRecordBytes-2000 {
				t.Errorf("cut too much: %d bytes left of %d", len(data), maxRecordBytes)
			}
		})
	}
}

func TestFitCallLimits(t *testing.T) {
	small := make([]pendingRecord, 1200)
	for i := range small {
		small[i] = pendingRecord{key: "k", size: 100}
	}
	if n := fitCall(small); n != 500 {
		t.Errorf("small records per call %d, want 500", n)
	}
	big := make([]pendingRecord, 10)
	for i := range big {
		big[i] = pendingRecord{key: "kk", size: 1<<20 - 2}
	}
	if n := fitCall(big); n != 5 {
		t.Errorf("1 MiB records per call %d, want 5", n)
	}
}

func keys(m map[string]json.RawMessage) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func TestPartitionKeys(t *testing.T) {
	e := event{requestID: "req", idPrefix: "p", seq: 7}
	none := event{idPrefix: "p", seq: 8}
	for _, tt := range []struct {
		mode      partitionMode
		want      string
		wantNoReq string
	}{
		{"request", "req", "env1"},
		{"function", "fn", "fn"},
	} {
		m := testMeta(config{PartitionKey: tt.mode})
		if got := m.partitionKey(&e); got != tt.want {
			t.Errorf("%s: got %q, want %q", tt.mode, got, tt.want)
		}
		if got := m.partitionKey(&none); got != tt.wantNoReq {
			t.Errorf("%s without request id: got %q, want %q", tt.mode, got, tt.wantNoReq)
		}
	}
	m := testMeta(config{PartitionKey: "random"})
	if m.partitionKey(&e) != m.partitionKey(&e) {
		t.Error("random keys must be stable for one event, so a retry lands on the same shard")
	}
	if m.partitionKey(&e) == m.partitionKey(&none) {
		t.Error("random keys of two events are equal")
	}
}

func TestNDJSONAggregation(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	cfg := config{RecordFormat: "ndjson", RecordBytes: 4096}
	s, buf, st := testShipper(t, cfg, fk.URL)
	evs := make([]event, 0, 300)
	for i := range 300 {
		e := logEvent(fmt.Sprintf("line %d", i))
		e.requestID = fmt.Sprintf("q%d", i/100)
		evs = append(evs, e)
	}
	buf.add(evs, &filter{sample: 1})
	if err := s.ship(context.Background(), everything); err != nil {
		t.Fatal(err)
	}
	var lines, records int
	for _, c := range fk.received() {
		for _, r := range c.Records {
			records++
			d, _ := base64.StdEncoding.DecodeString(r.Data)
			if len(d)+len(r.PartitionKey) > cfg.RecordBytes {
				t.Errorf("aggregated record of %d bytes, over %d", len(d), cfg.RecordBytes)
			}
			for _, line := range strings.Split(strings.TrimSuffix(string(d), "\n"), "\n") {
				var env envelopeOf
				if err := json.Unmarshal([]byte(line), &env); err != nil {
					t.Fatalf("ndjson line is not an envelope: %v", err)
				}
				if env.RequestID != r.PartitionKey {
					t.Errorf("line of %s in a record keyed %s", env.RequestID, r.PartitionKey)
				}
				lines++
			}
		}
	}
	if lines != 300 || st.delivered.Load() != 300 {
		t.Errorf("decoded %d lines, delivered %d, want 300", lines, st.delivered.Load())
	}
	if records > 30 {
		t.Errorf("%d records for 300 events of 3 requests: aggregation should pack them", records)
	}
}

// FuzzRecordBuilding builds records from arbitrary (valid) events and request ids: the data is
// always one valid JSON envelope within the record limit, carrying the event unchanged unless it
// had to be truncated, and dataSize predicts its length.
func FuzzRecordBuilding(f *testing.F) {
	f.Add(`{"time":"2024-05-01T10:00:00.000Z","type":"function","record":"hello\n"}`, "79b4f56e-95b1-4643-9700-2807f4e68189", 0)
	f.Add(`{"type":"platform.report","record":{"requestId":"r","metrics":{"durationMs":1.000}}}`, "r\"\x00é", 3)
	f.Add(`{"type":"function","record":{"level":"INFO","message":"\u00e9\ud83d\ude00"}}`, "", 1100000)
	// Fields that are not the record can be large too (CI's fuzzing found these): a type, and a
	// request id from a function's own JSON line.
	f.Add(`{"time":"t","record":"r","type":"function"}`, "r", 12000)
	f.Add(`{"time":"t","type":"function","record":"r"}`, strings.Repeat("\x01é", 4000), 0)
	f.Fuzz(func(t *testing.T, raw, requestID string, pad int) {
		if pad > 0 && pad < 3<<20 && strings.HasSuffix(raw, `"}`) {
			// Grow a string near the end so that some inputs exceed a record.
			raw = raw[:len(raw)-2] + strings.Repeat("x", pad) + `"}`
		}
		var e event
		ok := false
		if scanBatch([]byte("["+raw+"]"), func(ef eventFields) {
			if ef.object && ef.typ != nil && !ok {
				e, ok = newEvent(ef), true
			}
		}) != nil || !ok {
			return
		}
		e.requestID, e.idPrefix, e.seq = requestID, "p", 7
		for _, mode := range []partitionMode{partitionRequest, partitionRandom} {
			m := testMeta(config{PartitionKey: mode})
			key := m.partitionKey(&e)
			if key == "" || len(key) > 256 {
				t.Fatalf("partition key %q", key)
			}
			data := m.appendData(nil, &e, len(key))
			if len(data) != m.dataSize(&e, len(key)) {
				t.Fatalf("dataSize %d, wrote %d", m.dataSize(&e, len(key)), len(data))
			}
			if len(data)+len(key) > maxRecordBytes {
				t.Fatalf("record of %d bytes over the limit", len(data)+len(key))
			}
			var env envelopeOf
			if err := json.Unmarshal(data, &env); err != nil {
				t.Fatalf("not JSON: %v: %.300s", err, data)
			}
			if env.TruncatedBytes == nil && string(env.Event) != string(e.raw) {
				t.Fatalf("event changed: %s, want %s", env.Event, e.raw)
			}
			if env.ID != "p-7" || !strings.HasPrefix(string(data), `{"id":"p-7",`) {
				t.Fatalf("id %q", env.ID)
			}
		}
		checkAggregatedFormats(t, e)
	})
}

// checkAggregatedFormats builds the kpl and cloudwatch records of one event (also with trace
// fields and text records as objects): within the Kinesis record limit, decodable, the event
// whole unless truncated.
func checkAggregatedFormats(t *testing.T, e event) {
	e.traceID, e.tenantID, e.arrived = "1-5759e988-bd862e3fe1be46a994272793", "t\"1", time.Unix(1700000000, 0)
	for _, tr := range []textRecord{textAsString, textAsObject} {
		m := testMeta(config{RecordFormat: formatKPL, TextRecord: tr})
		recs := m.packKPL([]event{e, e}, 1<<20-4096)
		n := 0
		for _, r := range recs {
			if len(r.data)+len(r.key) > maxRecordBytes {
				t.Fatalf("kpl record of %d bytes", len(r.data)+len(r.key))
			}
			for _, u := range decodeKPL(t, r.data) {
				var env envelopeOf
				if err := json.Unmarshal(u.data, &env); err != nil {
					t.Fatalf("kpl user record is not an envelope: %v", err)
				}
				if tr == textAsString && env.TruncatedBytes == nil && string(env.Event) != string(e.raw) {
					t.Fatalf("kpl: event changed")
				}
				n++
			}
		}
		if n != 2 {
			t.Fatalf("kpl: %d user records for 2 events", n)
		}
		if d := m.dataSizeWithin(&e, 5000); d > 5000 || d != len(m.appendDataWithin(nil, &e, 5000)) {
			t.Fatalf("dataSizeWithin %d", d)
		}
	}
	for _, f := range []logFormat{logText, logJSON} {
		m := testMeta(config{RecordFormat: formatCloudWatch, LogFormat: f, LogStream: "s", LogGroup: "g"})
		var zw *gzip.Writer
		for _, r := range m.packCloudWatch([]event{e, e}, 1<<20-4096, &zw) {
			if len(r.data)+len(r.key) > maxRecordBytes {
				t.Fatalf("cloudwatch record of %d bytes", len(r.data)+len(r.key))
			}
			for _, le := range decodeCloudWatch(t, r.data).LogEvents {
				if len(le.ID) != 56 || len(le.Message) > 256*1024 {
					t.Fatalf("log event id %q, message of %d bytes", le.ID, len(le.Message))
				}
			}
		}
	}
}
