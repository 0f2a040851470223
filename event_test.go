package main

// Unit tests of event.go: the trace header and log levels.

import "testing"

// TestParseTraceHeader: the parts of an X-Amzn-Trace-Id value, as Lambda sends it and malformed.
// It is the one parser: the envelope's traceId and the cloudwatch format's XRAY line use it.
func TestParseTraceHeader(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want traceHeader
	}{
		{"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
			traceHeader{Root: "1-5759e988-bd862e3fe1be46a994272793", Parent: "53995c3f42cd8ad8", Sampled: true}},
		{" Sampled=0 ; Root=1-a-b ", traceHeader{Root: "1-a-b"}},
		{"Root=1-a;Lineage=x:1", traceHeader{Root: "1-a"}},
		{"", traceHeader{}},
		{"Root", traceHeader{}},
		{"Root;Root=1-b", traceHeader{Root: "1-b"}},     // a part without "=" is passed over
		{"Root=1-a;Root=1-b", traceHeader{Root: "1-a"}}, // the first one counts
	} {
		if got := parseTraceHeader(tt.in); got != tt.want {
			t.Errorf("parseTraceHeader(%q) = %+v, want %+v", tt.in, got, tt.want)
		}
	}
}

// TestLevels: names in any case, the spellings log lines use beside them, and what the
// configuration accepts.
func TestLevels(t *testing.T) {
	for _, tt := range []struct {
		in          string
		parse, line int
	}{
		{"TRACE", levelTrace, levelTrace},
		{"info", levelInfo, levelInfo},
		{"Warn", levelWarn, levelWarn},
		{"WARNING", levelUnknown, levelWarn},
		{"critical", levelUnknown, levelFatal},
		{"ERROR", levelError, levelError},
		{"FATAL", levelFatal, levelFatal},
		{"NOTICE", levelUnknown, levelUnknown},
		{"", levelUnknown, levelUnknown},
	} {
		if got := parseLevel(tt.in); got != tt.parse {
			t.Errorf("parseLevel(%q) = %d, want %d", tt.in, got, tt.parse)
		}
		if got := lineLevel(tt.in); got != tt.line {
			t.Errorf("lineLevel(%q) = %d, want %d", tt.in, got, tt.line)
		}
	}
	if logLevels[levelError] != "ERROR" || len(logLevels) != levelFatal+1 {
		t.Errorf("logLevels %v do not match the named levels", logLevels)
	}
}
