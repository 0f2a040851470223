package main

// Unit tests of buffer.go: attribution, the drop policy, take and put back, the waits, the queue.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

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
	b.release(all, outcome{kind: outcomeDelivered})
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
	taken[0].inDoubt = true
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
