package main

// Unit tests of filter.go: exclusion, level, sampling, redaction, and the extension's own lines.

import (
	"fmt"
	"testing"
)

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
