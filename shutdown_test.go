package main

// Unit tests of shutdown.go; the shutdown scenarios end to end are in main_test.go's catalogue.

import (
	"testing"
	"time"
)

// TestCallsWithin: the calls expected within a time fit one slowest answer and the rest at the
// usual one.
func TestCallsWithin(t *testing.T) {
	for _, tt := range []struct {
		name    string
		answers []time.Duration
		left    time.Duration
		want    int
	}{
		{"unmeasured", nil, time.Second, 1 + int((time.Second-unmeasuredAnswer)/unmeasuredAnswer)},
		{"unmeasured, too little time", nil, unmeasuredAnswer - time.Millisecond, 0},
		{"20 ms with a 600 ms spike", []time.Duration{20 * time.Millisecond, 600 * time.Millisecond, 20 * time.Millisecond}, time.Second, 1 + 400/20},
		{"time for one slow answer only", []time.Duration{20 * time.Millisecond, 600 * time.Millisecond, 20 * time.Millisecond}, 500 * time.Millisecond, 1},
		{"very fast answers count minCallTime", []time.Duration{time.Microsecond}, 100 * time.Millisecond, 1 + int((100*time.Millisecond-time.Microsecond)/minCallTime)},
	} {
		s := &shipper{}
		for _, d := range tt.answers {
			s.answers.add(d)
		}
		if got := s.callsWithin(tt.left); got != tt.want {
			t.Errorf("%s: callsWithin(%v) = %d, want %d", tt.name, tt.left, got, tt.want)
		}
	}
}
