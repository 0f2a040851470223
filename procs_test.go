package main

import (
	"runtime"
	"testing"
)

// TestLimitProcs: the extension runs on one P unless GOMAXPROCS is set (BenchmarkCPUShare
// measures why).
func TestLimitProcs(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(2)
	limitProcs(envOf(map[string]string{"GOMAXPROCS": "2"}))
	if n := runtime.GOMAXPROCS(0); n != 2 {
		t.Errorf("GOMAXPROCS set by the user: %d processors, want the 2 it says", n)
	}
	limitProcs(envOf(nil))
	if n := runtime.GOMAXPROCS(0); n != 1 {
		t.Errorf("GOMAXPROCS unset: %d processors, want 1", n)
	}
}
