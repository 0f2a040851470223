package main

// Unit tests of counts.go: how each end of an event is counted, and the counts record's fields.
// The accounting identity over whole runs is checked end to end (checkAccounting, the fleet).

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// TestCountsRecordFields: each outcome lands in its own counter; a drop of an event that may
// already be stored counts as unknown, not dropped; dropped.total is the certain losses only; the
// record decodes strictly into countsRecord.
func TestCountsRecordFields(t *testing.T) {
	st := newStats()
	st.received.Add(9)
	plain, maybe := &event{}, &event{inDoubt: true}
	st.settle(plain, outcome{kind: outcomeDelivered})
	st.settle(maybe, outcome{kind: outcomeDelivered}) // confirmed after all: delivered
	st.settle(plain, outcome{kind: outcomeFull})
	st.settle(plain, outcome{kind: outcomeShutdown})
	st.settle(plain, outcome{kind: outcomeRejected, code: "AccessDeniedException"})
	st.settle(plain, outcome{kind: outcomeRejected, code: "AccessDeniedException"})
	st.settle(maybe, outcome{kind: outcomeFull})
	st.settle(maybe, outcome{kind: outcomeRejected, code: "ResourceNotFoundException"})
	st.lambdaDropped([]byte(`{"time":"t","type":"platform.logsDropped","record":{"reason":"r","droppedRecords":12,"droppedBytes":3456}}`))
	st.lambdaDropped([]byte(`not json`)) // ignored, not a panic
	st.addPostRuntime(10 * time.Millisecond)
	st.addPostRuntime(30 * time.Millisecond)
	st.addPostRuntime(-time.Millisecond) // a clock step back counts as 0

	dec := json.NewDecoder(bytes.NewReader(st.json(1)))
	dec.DisallowUnknownFields()
	var c countsRecord
	if err := dec.Decode(&c); err != nil {
		t.Fatalf("counts record does not decode strictly: %v", err)
	}
	if c.Delivered != 2 || c.Unknown != 2 || c.Buffered != 1 {
		t.Errorf("delivered %d, unknown %d, buffered %d; want 2, 2, 1", c.Delivered, c.Unknown, c.Buffered)
	}
	if d := c.Dropped; d.BufferFull != 1 || d.Shutdown != 1 || d.Rejected["AccessDeniedException"] != 2 || len(d.Rejected) != 1 || d.Total != 4 {
		t.Errorf("dropped %+v: want bufferFull 1, shutdown 1, rejected AccessDeniedException 2 and nothing else, total 4", d)
	}
	if sum := c.Delivered + c.Dropped.Total + uint64(c.Buffered) + c.Unknown; sum != c.Received {
		t.Errorf("received %d != delivered + dropped + buffered + unknown = %d", c.Received, sum)
	}
	if c.LambdaDropped.Records != 12 || c.LambdaDropped.Bytes != 3456 {
		t.Errorf("lambdaDropped %+v, want 12 records, 3456 bytes", c.LambdaDropped)
	}
	if p := c.PostRuntimeMs; p.Count != 3 || p.Max != 30 || p.Last != 0 || p.Mean < 13.3 || p.Mean > 13.4 {
		t.Errorf("postRuntimeMs %+v: want count 3, max 30, last 0, mean 13.33", p)
	}
	if _, err := time.Parse(time.RFC3339Nano, c.Since); err != nil {
		t.Errorf("since %q: %v", c.Since, err)
	}
}

// TestLossMarks: the marks that make a counts record due move with every loss and not with a
// delivery.
func TestLossMarks(t *testing.T) {
	st := newStats()
	before := st.marks()
	st.settle(&event{}, outcome{kind: outcomeDelivered})
	if st.marks() != before {
		t.Errorf("a delivery moved the loss marks: %+v -> %+v", before, st.marks())
	}
	for _, lose := range []func(){
		func() { st.settle(&event{}, outcome{kind: outcomeFull}) },
		func() { st.settle(&event{}, outcome{kind: outcomeRejected, code: "X"}) },
		func() { st.settle(&event{}, outcome{kind: outcomeShutdown}) },
		func() { st.settle(&event{inDoubt: true}, outcome{kind: outcomeFull}) },
		func() { st.lambdaDropped([]byte(`{"record":{"droppedRecords":1}}`)) },
		func() { st.badBatches.Add(1) },
	} {
		m := st.marks()
		lose()
		if st.marks() == m {
			t.Errorf("a loss left the marks at %+v", m)
		}
	}
}

// TestToShipLeavesFilteredOut: what the function offers the stream (the crowd's measure,
// shards.go) is what was received less every filter's drops.
func TestToShipLeavesFilteredOut(t *testing.T) {
	st := newStats()
	st.received.Add(100)
	st.filteredExcluded.Add(10)
	st.filteredLevel.Add(20)
	st.filteredSampled.Add(5)
	st.filteredOwn.Add(1)
	if got := st.toShip(); got != 64 {
		t.Errorf("toShip %d of 100 received with 36 filtered, want 64", got)
	}
}
