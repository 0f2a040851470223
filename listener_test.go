package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// scanned is what scanBatch reports for one element, as strings for easy comparison.
type scanned struct {
	raw, typ, requestID, level string
	object, text, badUTF8      bool
}

func scanAll(t *testing.T, body string) ([]scanned, error) {
	t.Helper()
	var out []scanned
	err := scanBatch([]byte(body), func(f eventFields) {
		out = append(out, scanned{
			raw: string(f.raw), typ: unquote(f.typ), requestID: unquote(f.requestID), level: unquote(f.level),
			object: f.object, text: f.recordText, badUTF8: f.badUTF8,
		})
	})
	return out, err
}

func TestScanBatch(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []scanned
	}{
		{"empty array", ` [ ] `, nil},
		{"platform event", `[{"time":"2024-01-01T00:00:00.000Z","type":"platform.start","record":{"requestId":"r1","version":"$LATEST"}}]`,
			[]scanned{{raw: `{"time":"2024-01-01T00:00:00.000Z","type":"platform.start","record":{"requestId":"r1","version":"$LATEST"}}`, typ: "platform.start", requestID: "r1", object: true}}},
		{"text log line", `[{"time":"t","type":"function","record":"hello \"world\"\n"}]`,
			[]scanned{{raw: `{"time":"t","type":"function","record":"hello \"world\"\n"}`, typ: "function", object: true, text: true}}},
		{"json log line", `[{"type":"function","record":{"timestamp":"t","level":"WARN","requestId":"r\u0032","message":"m","nested":{"requestId":"no"}}}]`,
			[]scanned{{raw: `{"type":"function","record":{"timestamp":"t","level":"WARN","requestId":"r\u0032","message":"m","nested":{"requestId":"no"}}}`, typ: "function", requestID: "r2", level: "WARN", object: true}}},
		{"record before type, extra members kept", ` [ {"record" : {"requestId":"a"} , "future":[1,2.5e3,true,null,{}], "type":"platform.newThing"} ] `,
			[]scanned{{raw: `{"record" : {"requestId":"a"} , "future":[1,2.5e3,true,null,{}], "type":"platform.newThing"}`, typ: "platform.newThing", requestID: "a", object: true}}},
		{"elements of the wrong shape", `[1,"x",{"type":7},{"record":"r"}]`,
			[]scanned{{raw: `1`}, {raw: `"x"`}, {raw: `{"type":7}`, object: true}, {raw: `{"record":"r"}`, object: true, text: true}}},
		{"invalid UTF-8 is flagged", "[{\"type\":\"function\",\"record\":\"a\xffb\"}]",
			[]scanned{{raw: "{\"type\":\"function\",\"record\":\"a\xffb\"}", typ: "function", object: true, text: true, badUTF8: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := scanAll(t, tt.body)
			if err != nil {
				t.Fatalf("scanBatch: %v", err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestScanBatchRejects(t *testing.T) {
	for _, body := range []string{
		``, `{}`, `"x"`, `[`, `[{"type":"function"}`, `[{"type":"function",}]`, `[1,]`, `[1 2]`,
		`[{"a" 1}]`, `[{"a":}]`, `[tru]`, `[01]`, `[1.]`, `[1e]`, `[-]`, `["a\x01"]`, `["\q"]`, `["\u12G4"]`,
		`[] []`, `["unterminated]`, `[{"type":"x","record":{"requestId":"r"]`, `[[[[[[`,
	} {
		if _, err := scanAll(t, body); err == nil {
			t.Errorf("scanBatch(%q) accepted invalid input", body)
		} else if json.Valid([]byte(body)) && strings.HasPrefix(strings.TrimSpace(body), "[") {
			t.Errorf("scanBatch(%q) rejected valid JSON: %v", body, err)
		}
	}
}

func TestScanBatchDeepNesting(t *testing.T) {
	// Far deeper than encoding/json's limit: the scanner must neither recurse nor give up.
	depth := 200000
	body := `[{"type":"function","record":{"deep":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}}]`
	got, err := scanAll(t, body)
	if err != nil {
		t.Fatalf("scanBatch: %v", err)
	}
	if len(got) != 1 || got[0].typ != "function" {
		t.Fatalf("got %d events, want 1 function event", len(got))
	}
}

// FuzzScanBatch checks the scanner against encoding/json: it accepts exactly the JSON arrays that
// encoding/json accepts, and finds the same type, record.requestId and record.level.
func FuzzScanBatch(f *testing.F) {
	for _, s := range []string{
		`[]`, `[{"time":"2024-01-01T00:00:00.000Z","type":"platform.start","record":{"requestId":"r1"}}]`,
		`[{"type":"function","record":{"level":"INFO","requestId":"r","message":"m\u00e9"}}, {"type":"function","record":"text"}]`,
		`[1,{"type":7},{"record":{"requestId":1}}]`, `[{"type":"a","type":"b"}]`, `[[{"type":"x"}]]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var got []eventFields
		err := scanBatch(body, func(f eventFields) { got = append(got, f) })
		var elems []json.RawMessage
		jerr := json.Unmarshal(body, &elems)
		if (err == nil) != (jerr == nil) {
			// encoding/json rejects a top-level non-array through Unmarshal too, so both agree
			// on what a batch is; only a depth beyond encoding/json's limit may differ.
			if !(err == nil && strings.Contains(jerr.Error(), "nested too deeply")) {
				t.Fatalf("scanBatch err=%v, encoding/json err=%v for %q", err, jerr, body)
			}
			return
		}
		if err != nil {
			return
		}
		if len(got) != len(elems) {
			t.Fatalf("got %d elements, encoding/json %d", len(got), len(elems))
		}
		for i, e := range elems {
			if !bytes.Equal(bytes.TrimSpace(e), got[i].raw) && !got[i].badUTF8 {
				t.Fatalf("element %d raw %q, want %q", i, got[i].raw, e)
			}
			var obj map[string]json.RawMessage
			if json.Unmarshal(e, &obj) != nil {
				if got[i].object {
					t.Fatalf("element %d reported as an object: %q", i, e)
				}
				continue
			}
			var typ string
			if json.Unmarshal(obj["type"], &typ) != nil {
				typ = ""
			}
			var rec map[string]json.RawMessage
			var rid, lvl string
			if json.Unmarshal(obj["record"], &rec) == nil {
				_ = json.Unmarshal(rec["requestId"], &rid)
				_ = json.Unmarshal(rec["level"], &lvl)
			}
			if got[i].badUTF8 {
				return // encoding/json replaces invalid UTF-8, so the strings differ by design
			}
			if unquote(got[i].typ) != typ || unquote(got[i].requestID) != rid || unquote(got[i].level) != lvl {
				t.Fatalf("element %d: got type %q requestId %q level %q, want %q %q %q",
					i, unquote(got[i].typ), unquote(got[i].requestID), unquote(got[i].level), typ, rid, lvl)
			}
		}
	})
}

func newTestBuffer(max int) (*buffer, *stats) {
	st := newStats()
	return newBuffer(max, "p", st), st
}

func platformEvent(typ, req string) event {
	raw := fmt.Sprintf(`{"time":"t","type":%q,"record":{"requestId":%q}}`, typ, req)
	return event{raw: []byte(raw), typ: eventType(typ), requestID: req, level: -1}
}

func logEvent(msg string) event {
	return event{raw: []byte(fmt.Sprintf(`{"time":"t","type":"function","record":%q}`, msg)), typ: "function", level: -1, text: true}
}

func TestBufferAttributesLogLinesToTheInvocation(t *testing.T) {
	b, _ := newTestBuffer(1 << 20)
	f := &filter{sample: 1}
	b.add([]event{logEvent("init line")}, f)
	b.add([]event{platformEvent("platform.start", "r1"), logEvent("in r1")}, f)
	b.add([]event{platformEvent("platform.runtimeDone", "r1"), logEvent("after r1")}, f)
	b.add([]event{platformEvent("platform.start", "r2"), logEvent("in r2")}, f)

	got := b.take(everything, 100, 1<<30, func(*event) int { return 1 })
	var reqs []string
	for _, e := range got {
		reqs = append(reqs, string(e.typ)+"="+e.requestID)
	}
	want := "function= platform.start=r1 function=r1 platform.runtimeDone=r1 function=r1 platform.start=r2 function=r2"
	if strings.Join(reqs, " ") != want {
		t.Errorf("got  %s\nwant %s", strings.Join(reqs, " "), want)
	}
	for i := 1; i < len(got); i++ {
		if got[i].seq <= got[i-1].seq {
			t.Errorf("events out of arrival order at %d", i)
		}
	}
}

func TestBufferDropsOldestLogLinesFirst(t *testing.T) {
	one := logEvent("0123456789")
	b, st := newTestBuffer(10 * one.size())
	f := &filter{sample: 1}
	b.add([]event{platformEvent("platform.start", "r1")}, f)
	for i := range 20 {
		b.add([]event{logEvent(fmt.Sprintf("line %04d!!", i))}, f)
	}
	b.add([]event{platformEvent("platform.runtimeDone", "r1")}, f)

	got := b.take(everything, 100, 1<<30, func(*event) int { return 1 })
	var kept []string
	platforms := 0
	for _, e := range got {
		if e.isPlatform() {
			platforms++
			continue
		}
		kept = append(kept, string(e.raw[strings.Index(string(e.raw), "line"):][:9]))
	}
	if platforms != 2 {
		t.Errorf("kept %d platform events, want both", platforms)
	}
	if len(kept) == 0 || kept[len(kept)-1] != "line 0019" {
		t.Errorf("newest log lines should survive, kept %v", kept)
	}
	if kept[0] == "line 0000" {
		t.Errorf("oldest log line survived: %v", kept)
	}
	if dropped := st.droppedFull.Load(); int(dropped) != 20-len(kept) {
		t.Errorf("counted %d drops, want %d", dropped, 20-len(kept))
	}
}

func TestBufferPutBackKeepsOrder(t *testing.T) {
	b, _ := newTestBuffer(1 << 20)
	f := &filter{sample: 1}
	b.add([]event{platformEvent("platform.start", "r"), logEvent("a"), logEvent("b"), platformEvent("platform.runtimeDone", "r"), logEvent("c")}, f)
	first := b.take(everything, 3, 1<<30, func(*event) int { return 1 })
	b.add([]event{logEvent("d")}, f)
	b.putBack(first)
	all := b.take(everything, 100, 1<<30, func(*event) int { return 1 })
	if len(all) != 6 {
		t.Fatalf("got %d events, want 6", len(all))
	}
	for i := 1; i < len(all); i++ {
		if all[i].seq != all[i-1].seq+1 {
			t.Fatalf("order broken after putBack: seqs %d then %d", all[i-1].seq, all[i].seq)
		}
	}
	if b.inFlight != sizeOf(all) {
		t.Errorf("inFlight %d, want %d", b.inFlight, sizeOf(all))
	}
	b.release(all, outcome{kind: wasDelivered})
	if b.inFlight != 0 || b.bytes != 0 {
		t.Errorf("after release: inFlight %d bytes %d, want 0 0", b.inFlight, b.bytes)
	}
}

func sizeOf(evs []event) int {
	n := 0
	for i := range evs {
		n += evs[i].size()
	}
	return n
}

func TestBufferTakeRespectsSize(t *testing.T) {
	b, _ := newTestBuffer(1 << 20)
	f := &filter{sample: 1}
	for range 10 {
		b.add([]event{logEvent("x")}, f)
	}
	got := b.take(everything, 100, 35, func(*event) int { return 10 })
	if len(got) != 3 {
		t.Errorf("took %d events of size 10 under 35 bytes, want 3", len(got))
	}
	got = b.take(everything, 100, 5, func(*event) int { return 10 })
	if len(got) != 1 {
		t.Errorf("took %d events larger than the limit, want 1 (always at least one)", len(got))
	}
}

func TestBufferWaitRuntimeDone(t *testing.T) {
	b, _ := newTestBuffer(1 << 20)
	go func() {
		time.Sleep(20 * time.Millisecond)
		b.add([]event{platformEvent("platform.runtimeDone", "other")}, &filter{sample: 1})
		b.add([]event{platformEvent("platform.runtimeDone", "mine")}, &filter{sample: 1})
	}()
	ctx, cancel := contextWithTimeout(2 * time.Second)
	defer cancel()
	if _, ok := b.waitRuntimeDone(ctx, "mine"); !ok {
		t.Fatal("waitRuntimeDone gave up before its runtimeDone arrived")
	}
	ctx2, cancel2 := contextWithTimeout(30 * time.Millisecond)
	defer cancel2()
	if _, ok := b.waitRuntimeDone(ctx2, "never"); ok {
		t.Fatal("waitRuntimeDone reported a runtimeDone that never came")
	}
}

func TestListenerAnswers(t *testing.T) {
	cfg := config{BufferBytes: minBufferBytes, Sample: 1}
	b, st := newTestBuffer(1 << 30)
	l := newListener(b, st, cfg)
	srv := httptest.NewServer(l)
	defer srv.Close()

	post := func(method, path, body string) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	good := `[{"time":"t","type":"platform.start","record":{"requestId":"r"}},{"time":"t","type":"platform.somethingNew","record":{"x":1}}]`
	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"a batch", "POST", "/", good, 200},
		{"unknown event types are kept", "POST", "/", `[{"type":"brand.new","record":[1]}]`, 200},
		{"wrong method", "GET", "/", "", 405},
		{"wrong path", "POST", "/other", good, 404},
		{"not JSON", "POST", "/", "hello", 400},
		{"truncated", "POST", "/", good[:40], 400},
		{"wrong shape", "POST", "/", `{"type":"function"}`, 400},
		{"too big", "POST", "/", "[" + strings.Repeat(`"x",`, int(l.maxBody)/4) + `"x"]`, 413},
		{"elements of the wrong shape are skipped", "POST", "/", `[1,{"type":"function","record":"ok"}]`, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := post(tt.method, tt.path, tt.body); got != tt.want {
				t.Errorf("got HTTP %d, want %d", got, tt.want)
			}
		})
	}
	if n, _ := b.state(); n != 4 {
		t.Errorf("buffered %d events, want 4 (2 + 1 + 1)", n)
	}
	if got := st.badBatches.Load(); got != 4 {
		t.Errorf("counted %d bad batches, want 4", got)
	}
	if got := st.badEvents.Load(); got != 1 {
		t.Errorf("counted %d bad events, want 1", got)
	}
}

func TestListenerReplacesInvalidUTF8(t *testing.T) {
	b, st := newTestBuffer(1 << 30)
	l := newListener(b, st, config{BufferBytes: minBufferBytes, Sample: 1})
	if err := l.accept([]byte("[{\"type\":\"function\",\"record\":\"bad \xff\xfe byte\"}]")); err != nil {
		t.Fatal(err)
	}
	evs := b.take(everything, 10, 1<<30, func(*event) int { return 1 })
	if len(evs) != 1 || !json.Valid(evs[0].raw) || !strings.Contains(string(evs[0].raw), "bad \uFFFD byte") {
		t.Fatalf("got %q, want valid JSON with U+FFFD", evs[0].raw)
	}
}

func filterOf(t *testing.T, env map[string]string) *filter {
	t.Helper()
	env["KINESIS_TELEMETRY_STREAM"] = "s"
	cfg, err := parseConfig(envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	return cfg.filter()
}

// keepEvent is the whole filter for one event whose invocation is known, as buffer.add applies
// it: screen before the buffer's lock, then sampling under it.
func keepEvent(f *filter, e *event, st *stats) bool {
	return f.screen(e, st) && !f.sampledOut(e, st)
}

// scanOne decodes a single event as the listener does.
func scanOne(t *testing.T, raw string) event {
	t.Helper()
	var e event
	n := 0
	if err := scanBatch([]byte("["+raw+"]"), func(f eventFields) { e = newEvent(f); n++ }); err != nil || n != 1 {
		t.Fatalf("scan %s: %v", raw, err)
	}
	return e
}

func TestFilterExcludeAndLevel(t *testing.T) {
	f := filterOf(t, map[string]string{"KINESIS_TELEMETRY_EXCLUDE": "platform.start, platform.runtimeDone", "KINESIS_TELEMETRY_MIN_LEVEL": "warn"})
	st := newStats()
	for _, tt := range []struct {
		raw  string
		keep bool
	}{
		{`{"type":"platform.start","record":{"requestId":"r"}}`, false},
		{`{"type":"platform.runtimeDone","record":{"requestId":"r"}}`, false},
		{`{"type":"platform.report","record":{"requestId":"r"}}`, true},
		{`{"type":"function","record":{"level":"DEBUG","message":"m"}}`, false},
		{`{"type":"function","record":{"level":"INFO","message":"m"}}`, false},
		{`{"type":"function","record":{"level":"WARN","message":"m"}}`, true},
		{`{"type":"function","record":{"level":"error","message":"m"}}`, true},
		{`{"type":"function","record":{"level":"CRITICAL","message":"m"}}`, true},
		{`{"type":"function","record":"DEBUG a text line is always kept"}`, true},
		{`{"type":"function","record":{"message":"no level: kept"}}`, true},
	} {
		e := scanOne(t, tt.raw)
		if got := keepEvent(f, &e, st); got != tt.keep {
			t.Errorf("%s: keep=%v, want %v", tt.raw, got, tt.keep)
		}
	}
	if st.filteredExcluded.Load() != 2 || st.filteredLevel.Load() != 2 {
		t.Errorf("counted excluded %d, below level %d, want 2 and 2", st.filteredExcluded.Load(), st.filteredLevel.Load())
	}
}

func TestFilterSampleKeepsOrDropsInvocationsWhole(t *testing.T) {
	f := filterOf(t, map[string]string{"KINESIS_TELEMETRY_SAMPLE": "0.25"})
	st := newStats()
	kept := 0
	const requests = 4000
	for i := range requests {
		req := fmt.Sprintf("%08x-1111-2222-3333-%012d", i*7919, i)
		var decisions []bool
		for _, raw := range []string{
			`{"type":"function","record":"line one"}`,
			`{"type":"function","record":{"level":"INFO","requestId":"` + req + `","message":"json"}}`,
			`{"type":"function","record":"line three"}`,
		} {
			e := scanOne(t, raw)
			if e.requestID == "" {
				e.requestID = req
			}
			decisions = append(decisions, keepEvent(f, &e, st))
		}
		if decisions[0] != decisions[1] || decisions[1] != decisions[2] {
			t.Fatalf("request %s split: %v", req, decisions)
		}
		if decisions[0] {
			kept++
		}
		for _, raw := range []string{
			`{"type":"platform.report","record":{"requestId":"` + req + `"}}`,
			`{"type":"function","record":{"level":"ERROR","requestId":"` + req + `","message":"always"}}`,
		} {
			e := scanOne(t, raw)
			if !keepEvent(f, &e, st) {
				t.Fatalf("sampling dropped %s", raw)
			}
		}
	}
	if share := float64(kept) / requests; share < 0.22 || share > 0.28 {
		t.Errorf("kept %.3f of invocations, want about 0.25", share)
	}
	if int(st.filteredSampled.Load()) != 3*(requests-kept) {
		t.Errorf("counted %d sampled out, want %d", st.filteredSampled.Load(), 3*(requests-kept))
	}
}

func TestRedaction(t *testing.T) {
	f := filterOf(t, map[string]string{"KINESIS_TELEMETRY_REDACT": `["order-\\d+", "sk_live_[a-z0-9]+"]`, "KINESIS_TELEMETRY_REDACT_SECRETS": "true"})
	st := newStats()
	for _, tt := range []struct{ name, in, want string }{
		{"text line",
			`{"time":"t","type":"function","record":"login password=hunter2 key AKIAIOSFODNN7EXAMPLE for order-42\n"}`,
			`{"time":"t","type":"function","record":"login [REDACTED] key [REDACTED] for [REDACTED]\n"}`},
		{"string fields of a JSON line, numbers and order kept",
			`{"time":"t","type":"function","record":{"timestamp":"t","level":"INFO","message":"Authorization: Bearer eyJhbGciOi.x.y","n":1.000,"nested":{"card":"sk_live_abc123","list":["order-7",2]}}}`,
			`{"time":"t","type":"function","record":{"timestamp":"t","level":"INFO","message":"Authorization: [REDACTED]","n":1.000,"nested":{"card":"[REDACTED]","list":["[REDACTED]",2]}}}`},
		{"inside escapes",
			`{"time":"t","type":"function","record":"a \"token: abc\u0064ef\" b"}`,
			`{"time":"t","type":"function","record":"a \"[REDACTED]\" b"}`},
		{"no match: byte for byte",
			`{"time":"t",  "type":"function","record":{"message":"fine \u00e9", "n":1e3}}`,
			`{"time":"t",  "type":"function","record":{"message":"fine \u00e9", "n":1e3}}`},
		{"platform events untouched",
			`{"time":"t","type":"platform.start","record":{"requestId":"order-1"}}`,
			`{"time":"t","type":"platform.start","record":{"requestId":"order-1"}}`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := scanOne(t, tt.in)
			if !keepEvent(f, &e, st) {
				t.Fatal("redaction dropped the event")
			}
			if string(e.raw) != tt.want {
				t.Errorf("got  %s\nwant %s", e.raw, tt.want)
			}
		})
	}
}

func TestOwnLogLinesNeverLoopBack(t *testing.T) {
	f := filterOf(t, map[string]string{"KINESIS_TELEMETRY_TYPES": "platform,function,extension"})
	st := newStats()
	own := scanOne(t, `{"time":"t","type":"extension","record":"`+logPrefix+`kinesis: PutRecords failed"}`)
	ownJSON := scanOne(t, `{"time":"t","type":"extension","record":{"message":"`+logPrefix+`shutdown"}}`)
	other := scanOne(t, `{"time":"t","type":"extension","record":"[other-extension] ready"}`)
	if keepEvent(f, &own, st) || keepEvent(f, &ownJSON, st) || !keepEvent(f, &other, st) {
		t.Error("own log lines must be filtered out, other extensions' kept")
	}
	if st.filteredOwn.Load() != 2 {
		t.Errorf("counted %d own lines, want 2", st.filteredOwn.Load())
	}
}

// TestBufferTakeNewestFirst: at a short shutdown the newest invocation's platform events come
// first, then its log lines newest first, then older platform events, then older lines.
func TestBufferTakeNewestFirst(t *testing.T) {
	b, _ := newTestBuffer(1 << 20)
	f := &filter{sample: 1}
	b.add([]event{platformEvent("platform.start", "r1"), logEvent("r1 a"), platformEvent("platform.runtimeDone", "r1")}, f)
	b.add([]event{platformEvent("platform.start", "r2"), logEvent("r2 a"), logEvent("r2 b"), platformEvent("platform.runtimeDone", "r2")}, f)
	b.add([]event{platformEvent("platform.report", "r2")}, f)
	got := b.takeNewest(100, 1<<30, func(*event) int { return 1 })
	var order []string
	for _, e := range got {
		s := string(e.typ) + "=" + e.requestID
		if !e.isPlatform() {
			s = strings.TrimSuffix(string(e.raw[strings.Index(string(e.raw), `"record":"`)+10:]), `"}`)
		}
		order = append(order, s)
	}
	want := "platform.report=r2 platform.runtimeDone=r2 platform.start=r2 r2 b r2 a platform.runtimeDone=r1 platform.start=r1 r1 a"
	if strings.Join(order, " ") != want {
		t.Errorf("got  %s\nwant %s", strings.Join(order, " "), want)
	}
	// Put back (with new arrivals in between), they are in arrival order again.
	b.add([]event{logEvent("late")}, f)
	b.putBack(got[:5])
	all := b.take(everything, 100, 1<<30, func(*event) int { return 1 })
	if len(all) != 6 || !slices.IsSortedFunc(all, bySeq) {
		t.Errorf("after putting back newest-first events: %d events, sorted %v", len(all), slices.IsSortedFunc(all, bySeq))
	}
}

func TestEventQueueInsert(t *testing.T) {
	mk := func(seqs ...uint64) []event {
		var out []event
		for _, s := range seqs {
			out = append(out, event{seq: s})
		}
		return out
	}
	for _, tt := range []struct {
		name        string
		queue, back []uint64
		popFront    int
	}{
		{"front, no room", []uint64{5, 6, 7}, []uint64{2, 3, 4}, 0},
		{"front, room in the consumed part", []uint64{1, 2, 3, 4, 5, 6, 7}, []uint64{1, 2, 3}, 3},
		{"back", []uint64{1, 2}, []uint64{3, 4}, 0},
		{"merged", []uint64{1, 4, 6}, []uint64{5, 2, 3}, 0},
		{"into empty", nil, []uint64{9, 8}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var q eventQueue
			for _, e := range mk(tt.queue...) {
				q.push(e)
			}
			for range tt.popFront {
				q.popFront()
			}
			q.insert(mk(tt.back...))
			var got []uint64
			for q.len() > 0 {
				e, _ := q.popFront()
				got = append(got, e.seq)
			}
			if !slices.IsSorted(got) || len(got) != len(tt.queue)-tt.popFront+len(tt.back) {
				t.Errorf("got %v", got)
			}
		})
	}
}

// TestBufferDropsOfMaybeStoredEventsAreUnknown: an event that was in a call of unknown outcome
// may be in the stream: dropped for room it counts as unknown, not as dropped.
func TestBufferDropsOfMaybeStoredEventsAreUnknown(t *testing.T) {
	one := logEvent("0123456789")
	b, st := newTestBuffer(4 * one.size())
	f := &filter{sample: 1}
	b.add([]event{logEvent("0123456789"), logEvent("0123456789")}, f)
	taken := b.take(everything, 2, 1<<30, func(*event) int { return 1 })
	taken[0].maybeStored = true
	b.putBack(taken)
	b.add([]event{logEvent("0123456789"), logEvent("0123456789"), logEvent("0123456789"), logEvent("0123456789")}, f)
	if st.unknown.Load() != 1 || st.droppedFull.Load() != 1 || b.buffered() != 4 {
		t.Errorf("unknown %d, dropped %d, buffered %d; want 1, 1, 4", st.unknown.Load(), st.droppedFull.Load(), b.buffered())
	}
}

// BenchmarkPutBack puts k events back into a buffer holding 10,000: the cost must grow with k,
// not with k × the buffer (ns/op and allocs/op per size show it).
func BenchmarkPutBack(b *testing.B) {
	for _, k := range []int{100, 1000, 10000} {
		b.Run(fmt.Sprintf("k=%d", k), func(b *testing.B) {
			buf, _ := newTestBuffer(1 << 30)
			f := &filter{sample: 1}
			evs := make([]event, 10000+k)
			for i := range evs {
				evs[i] = logEvent("line")
			}
			buf.add(evs, f)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				taken := buf.take(everything, k, 1<<62, func(*event) int { return 1 })
				buf.putBack(taken)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(k), "ns/event")
		})
	}
}
