package main

// Unit tests of flush.go: how each strategy chooses to ship an invocation.

import (
	"testing"
	"time"
)

func TestChooseFlush(t *testing.T) {
	now := time.Unix(1000, 0)
	const maxDelay = 10 * time.Second
	adaptive := flushStrategy{Mode: flushAdaptive}
	dense := flushFacts{now: now, gap: time.Second, buffered: 5, oldest: now.Add(-time.Second), telemetry: true}
	with := func(f flushFacts, change func(*flushFacts)) flushFacts { change(&f); return f }
	for _, tt := range []struct {
		name     string
		strategy flushStrategy
		facts    flushFacts
		want     flushChoice
	}{
		{"end is end", flushStrategy{Mode: flushEnd}, dense, shipBeforeNext},
		{"background is background", flushStrategy{Mode: flushBackground}, dense, shipInBackground},
		{"periodic, due", flushStrategy{Mode: flushPeriodic, Period: time.Second}, with(dense, func(f *flushFacts) { f.lastShip = now.Add(-2 * time.Second) }), shipInBackground},
		{"periodic, not due", flushStrategy{Mode: flushPeriodic, Period: time.Second}, with(dense, func(f *flushFacts) { f.lastShip = now.Add(-time.Millisecond) }), shipNothing},
		{"periodic, nothing buffered", flushStrategy{Mode: flushPeriodic, Period: time.Second}, with(dense, func(f *flushFacts) { f.buffered = 0 }), shipNothing},
		{"adaptive, dense", adaptive, dense, shipInBackground},
		{"adaptive, first invocation", adaptive, with(dense, func(f *flushFacts) { f.gap = 0 }), shipBeforeNextYielding},
		{"adaptive, sparse", adaptive, with(dense, func(f *flushFacts) { f.gap = 11 * time.Second }), shipBeforeNextYielding},
		{"adaptive, old data", adaptive, with(dense, func(f *flushFacts) { f.oldest = now.Add(-11 * time.Second) }), shipBeforeNextYielding},
		{"adaptive, old data while the stream pushes back", adaptive, with(dense, func(f *flushFacts) {
			f.oldest, f.pressured = now.Add(-11*time.Second), true
		}), shipInBackground},
		{"adaptive, sparse while the stream pushes back", adaptive, with(dense, func(f *flushFacts) {
			f.gap, f.pressured = 11*time.Second, true
		}), shipBeforeNextYielding},
		{"adaptive, no telemetry subscription", adaptive, with(dense, func(f *flushFacts) { f.telemetry, f.gap = false, 0 }), shipInBackground},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := chooseFlush(tt.strategy, maxDelay, tt.facts); got != tt.want {
				t.Errorf("got %s, want %s", got, tt.want)
			}
		})
	}
}
