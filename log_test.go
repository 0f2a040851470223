package main

// Unit tests of log.go. That the extension's own lines never come back into the stream, once
// Lambda has wrapped them as "extension" events, is for filter_test.go's
// TestOwnLogLinesNeverLoopBack and the end-to-end catalogue.

import (
	"strings"
	"sync"
	"testing"
)

// TestLoggerLines: every line, printf's and once's, is one line that starts with logPrefix (the
// mark the own-line filter looks for), with nothing before it.
func TestLoggerLines(t *testing.T) {
	var out strings.Builder
	l := newLogger(&out)
	l.printf("shipped %d events", 3)
	l.once("k", "first %s", "time")
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	want := []string{logPrefix + "shipped 3 events", logPrefix + "first time"}
	if len(lines) != len(want) {
		t.Fatalf("got %d lines %q, want %q", len(lines), lines, want)
	}
	for i := range want {
		if lines[i] != want[i] {
			t.Errorf("line %d: got %q, want %q", i, lines[i], want[i])
		}
	}
}

// TestLoggerOnce: a line under a key is written the first time only, however many goroutines
// say it at once; another key is another line.
func TestLoggerOnce(t *testing.T) {
	out := &syncBuffer{}
	l := newLogger(out)
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { l.once("drop:AccessDeniedException", "kinesis: access denied") })
	}
	wg.Wait()
	l.once("drop:ResourceNotFoundException", "kinesis: no such stream")
	l.once("drop:AccessDeniedException", "kinesis: access denied")
	got := out.String()
	if n := strings.Count(got, "access denied"); n != 1 {
		t.Errorf("the same key written %d times, want once:\n%s", n, got)
	}
	if n := strings.Count(got, "no such stream"); n != 1 {
		t.Errorf("another key written %d times, want once:\n%s", n, got)
	}
}
