package main

// Unit tests of shutdown.go; the shutdown scenarios end to end are in main_test.go's catalogue.

import (
	"context"
	"testing"
	"testing/synctest"
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

// TestLastCountsRecordBacksOff: the shutdown's last counts record goes by itself until it is
// stored, each pause twice the one before, from countsRetry: a fleet that spins down together
// must not fill the stream with tries. On a synctest clock, calls answered at once: five refusals,
// then stored.
func TestLastCountsRecordBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var at []time.Duration
		start := time.Now()
		p := &scriptedPutter{answer: func(call, n int) ([]putResult, error) {
			at = append(at, time.Since(start))
			if call < 5 {
				return throttledAll(call, n)
			}
			return storedAll(call, n)
		}}
		s, buf, _ := scriptedShipper(t, p)
		s.emitCounts(time.Now())
		ctx, cancel := context.WithTimeout(context.Background(), pressedCountsReserve)
		defer cancel()
		s.shipCounts(ctx)
		if _, left := buf.takeCounts(); left || len(at) != 6 {
			t.Fatalf("%d tries, counts record still waiting: %v; want 6 tries, the last one stored", len(at), left)
		}
		for i := 1; i < len(at); i++ {
			if gap, want := at[i]-at[i-1], countsRetry<<(i-1); gap != want {
				t.Errorf("try %d came %v after the one before, want %v", i+1, gap, want)
			}
		}
	})
}
