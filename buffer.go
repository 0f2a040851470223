package main

// The bounded in-memory buffer between the listener and the Kinesis sender: two queues (platform
// events and log lines), the drop policy, take and put back, the waits for runtimeDone and report,
// and the bounded sets of recent invocations it remembers.

import (
	"cmp"
	"context"
	"math"
	"slices"
	"sync"
	"time"
)

// buffer holds events between the listener and the sender, bounded in bytes. Platform events and
// log lines wait in two queues so that, when full, the oldest log lines can be dropped first
// without disturbing the platform events. Each queue is kept in arrival order; the sender takes
// from the oldest end, or at a short shutdown from the newest (takeNewest).
type buffer struct {
	mu       sync.Mutex
	platform eventQueue
	lines    eventQueue
	bytes    int // in the queues
	inFlight int // taken by the sender and not yet confirmed or put back
	held     int // telemetry events (not the extension's own) queued or in flight: "buffered"
	max      int
	stats    *stats

	seq       uint64
	idPrefix  string
	lastStart string                     // request id of the last platform.start: log lines without one belong to it
	tags      boundedSet[invocationTags] // trace and tenant of recent invocations, from their platform.start
	newest    uint64                     // seq of the last platform.start: the newest invocation's events are at or after it
	done      boundedSet[time.Time]      // when runtimeDone of recent invocations arrived
	reported  boundedSet[time.Time]      // when their report arrived
	changed   chan struct{}              // closed whenever events arrive
}

func newBuffer(maxBytes int, idPrefix string, st *stats) *buffer {
	return &buffer{
		max: maxBytes, idPrefix: idPrefix, stats: st, changed: make(chan struct{}),
		done:     newBoundedSet[time.Time](recentInvocations),
		reported: newBoundedSet[time.Time](recentInvocations),
		tags:     newBoundedSet[invocationTags](recentInvocations),
	}
}

// add appends a decoded batch through the filter, attributing log lines to their invocation and
// making room by dropping the oldest log lines when the buffer is full.
func (b *buffer) add(evs []event, f *filter) {
	now := time.Now()
	// Before the lock: what the filter decides from each event alone, and redaction.
	passed := make([]bool, len(evs))
	for i := range evs {
		passed[i] = f.screen(&evs[i], b.stats)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range evs {
		e := &evs[i]
		switch e.typ {
		case typePlatformStart:
			if e.requestID != "" {
				b.lastStart = e.requestID
				b.tags.put(e.requestID, invocationTags{trace: e.traceID, tenant: e.tenantID})
			}
			b.newest = b.seq
		case typePlatformRuntimeDone:
			b.done.add(e.requestID, now)
		case typePlatformReport:
			b.reported.add(e.requestID, now)
		case typePlatformRestore:
			// A SnapStart restore clones this process: ids must not repeat across clones.
			b.idPrefix = newIDPrefix()
		case typePlatformLogsDropped:
			b.stats.lambdaDropped(e.raw)
		}
		if e.requestID == "" && isLogType(e.typ) {
			e.requestID = b.lastStart
		}
		if t, ok := b.tags.get(e.requestID); ok {
			e.traceID, e.tenantID = cmp.Or(e.traceID, t.trace), cmp.Or(e.tenantID, t.tenant)
		}
		if !passed[i] || f.sampledOut(e, b.stats) {
			continue
		}
		e.seq, e.idPrefix, e.arrived = b.seq, b.idPrefix, now
		b.seq++
		if e.isPlatform() {
			b.platform.push(*e)
		} else {
			b.lines.push(*e)
		}
		b.bytes += e.size()
		b.held++
	}
	b.makeRoom()
	close(b.changed)
	b.changed = make(chan struct{})
}

// makeRoom drops the oldest log lines, and only when there are none the oldest platform events,
// until the buffer fits its cap.
func (b *buffer) makeRoom() {
	for b.bytes+b.inFlight > b.max {
		q := &b.lines
		if q.len() == 0 {
			q = &b.platform
		}
		e, ok := q.popFront()
		if !ok {
			return
		}
		b.bytes -= e.size()
		b.forget(&e, outcome{kind: outcomeFull})
	}
}

// forget ends a held event's life in the buffer, counting its fate.
func (b *buffer) forget(e *event, o outcome) {
	if e.typ == countsType {
		return
	}
	b.held--
	b.stats.settle(e, o)
}

// take removes and returns the oldest events that arrived before the mark, at most n of them
// and, by the size function, at most maxBytes (but always at least one). They count as in flight
// until confirmed or put back.
func (b *buffer) take(before uint64, n, maxBytes int, size func(*event) int) []event {
	return b.takeWhile(n, maxBytes, size, nil, b.oldestBefore(before))
}

// oldestBefore is take's order: the oldest event first, up to the mark.
func (b *buffer) oldestBefore(before uint64) func() (*eventQueue, bool) {
	return func() (*eventQueue, bool) {
		q := b.oldestQueue()
		if q == nil || q.front().seq >= before {
			return nil, false
		}
		return q, false
	}
}

// takeNewest is take for a shutdown short of time: it takes what matters most first — the newest
// invocation's platform events (its runtimeDone, with status timeout after a timeout, and its
// report), then its log lines newest first, then older platform events and older log lines, each
// newest first.
func (b *buffer) takeNewest(n, maxBytes int, size func(*event) int) []event {
	return b.takeWhile(n, maxBytes, size, nil, b.newestFirst)
}

// takeSkipping is take, or with newest takeNewest, skipping the events skip names (at
// most maxSkipped of them, so that a backlog of such events costs a bounded time under the
// lock): they stay in the buffer, at their places.
func (b *buffer) takeSkipping(before uint64, newest bool, n, maxBytes int, size func(*event) int, skip func(*event) bool) []event {
	if newest {
		return b.takeWhile(n, maxBytes, size, skip, b.newestFirst)
	}
	return b.takeWhile(n, maxBytes, size, skip, b.oldestBefore(before))
}

// maxSkipped is the most events one takeSkipping skips.
const maxSkipped = 2 * 500

// newestFirst is takeNewest's order.
func (b *buffer) newestFirst() (*eventQueue, bool) {
	switch {
	case b.platform.len() > 0 && b.platform.back().seq >= b.newest:
		return &b.platform, true
	case b.lines.len() > 0 && b.lines.back().seq >= b.newest:
		return &b.lines, true
	case b.platform.len() > 0:
		return &b.platform, true
	case b.lines.len() > 0:
		return &b.lines, true
	}
	return nil, true
}

// takeWhile takes events one at a time from the queue end that next names (nil: stop; back: the
// newest end, else the oldest), at most n of them and, by size, at most maxBytes (but always at
// least one). They count as in flight until released or put back. b.mu is taken here.
func (b *buffer) takeWhile(n, maxBytes int, size func(*event) int, skip func(*event) bool, next func() (q *eventQueue, back bool)) []event {
	b.mu.Lock()
	defer b.mu.Unlock()
	// Sized once: growing it by append allocated about 2.5 times what it holds.
	out := make([]event, 0, min(n, b.platform.len()+b.lines.len()))
	var skipped []event
	defer func() {
		// Skipped events go back where they were: to the end they came from, without a copy of
		// the queue.
		b.restore(skipped)
	}()
	total := 0
	for len(out) < n {
		q, back := next()
		if q == nil {
			break
		}
		end, pop := q.front, q.popFront
		if back {
			end, pop = q.back, q.popBack
		}
		if skip != nil && skip(end()) {
			if len(skipped) >= maxSkipped {
				break
			}
			e, _ := pop()
			skipped = append(skipped, e)
			continue
		}
		s := size(end())
		if len(out) > 0 && total+s > maxBytes {
			break
		}
		e, _ := pop()
		total += s
		b.bytes -= e.size()
		b.inFlight += e.size()
		out = append(out, e)
	}
	return out
}

// restore puts events popped and not taken back into their queues; b.mu is held.
func (b *buffer) restore(evs []event) {
	if len(evs) == 0 {
		return
	}
	var platform, lines []event
	for i := range evs {
		if evs[i].isPlatform() {
			platform = append(platform, evs[i])
		} else {
			lines = append(lines, evs[i])
		}
	}
	b.platform.insert(platform)
	b.lines.insert(lines)
}

// oldestQueue is the queue whose front arrived first, or nil when both are empty.
func (b *buffer) oldestQueue() *eventQueue {
	switch {
	case b.platform.len() == 0 && b.lines.len() == 0:
		return nil
	case b.lines.len() == 0:
		return &b.platform
	case b.platform.len() == 0:
		return &b.lines
	case b.platform.front().seq < b.lines.front().seq:
		return &b.platform
	}
	return &b.lines
}

// mark returns a position in the arrival order: the events buffered so far are before it.
func (b *buffer) mark() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seq
}

// everything is a mark after every event.
const everything = math.MaxUint64

// putBack returns taken events to the buffer, each at its place in the arrival order. The events
// are split by queue once and each part is inserted with one copy, so that putting back k events
// costs O(k) when they go to an end and O(k + queue) at worst, never O(k × queue).
func (b *buffer) putBack(evs []event) {
	if len(evs) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range evs {
		b.inFlight -= evs[i].size()
		b.bytes += evs[i].size()
	}
	b.restore(evs)
	b.makeRoom()
}

// release forgets taken events whose fate is known: delivered, rejected or of unknown outcome.
func (b *buffer) release(evs []event, o outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range evs {
		b.inFlight -= evs[i].size()
		b.forget(&evs[i], o)
	}
}

// addOwn buffers a record the extension makes itself (the counts record).
func (b *buffer) addOwn(e event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	// A counts record holds totals: a newer one makes an older one still waiting say nothing
	// more, and would land after it.
	kept := b.platform.items[:b.platform.head]
	for _, o := range b.platform.items[b.platform.head:] {
		if o.typ == countsType {
			b.bytes -= o.size()
			continue
		}
		kept = append(kept, o)
	}
	clear(b.platform.items[len(kept):])
	b.platform.items = kept
	e.seq, e.idPrefix, e.arrived = b.seq, b.idPrefix, time.Now()
	b.seq++
	b.platform.push(e)
	b.bytes += e.size()
	b.makeRoom()
}

// takeCounts takes the newest counts record waiting, if there is one, so that it can go first.
func (b *buffer) takeCounts() (event, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := &b.platform
	for i := len(q.items) - 1; i >= q.head; i-- {
		if q.items[i].typ != countsType {
			continue
		}
		e := q.items[i]
		q.items = slices.Delete(q.items, i, i+1)
		if q.head == len(q.items) {
			q.items, q.head = q.items[:0], 0
		}
		b.bytes -= e.size()
		b.inFlight += e.size()
		return e, true
	}
	return event{}, false
}

// state reports how many events wait and when the oldest of them arrived.
func (b *buffer) state() (n int, oldest time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q := b.oldestQueue(); q != nil {
		oldest = q.front().arrived
	}
	return b.platform.len() + b.lines.len(), oldest
}

// buffered is the number of telemetry events held, queued or in flight.
func (b *buffer) buffered() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.held
}

// waitRuntimeDone waits until platform.runtimeDone for the request has arrived and returns when
// it did, or false when ctx ends first.
func (b *buffer) waitRuntimeDone(ctx context.Context, requestID string) (time.Time, bool) {
	return b.wait(ctx, &b.done, requestID)
}

// waitReport waits until platform.report for the request has arrived.
func (b *buffer) waitReport(ctx context.Context, requestID string) bool {
	_, ok := b.wait(ctx, &b.reported, requestID)
	return ok
}

func (b *buffer) wait(ctx context.Context, set *boundedSet[time.Time], requestID string) (time.Time, bool) {
	for {
		b.mu.Lock()
		at, ok := set.get(requestID)
		changed := b.changed
		b.mu.Unlock()
		if ok {
			return at, true
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return time.Time{}, false
		}
	}
}

// waitQuiet returns once no telemetry has arrived for the quiet period, or when ctx ends.
func (b *buffer) waitQuiet(ctx context.Context, quiet time.Duration) {
	t := time.NewTimer(quiet)
	defer t.Stop()
	for {
		b.mu.Lock()
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
			t.Reset(quiet)
		case <-t.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// runtimeDoneAt returns when platform.runtimeDone for the request arrived, if it has.
func (b *buffer) runtimeDoneAt(requestID string) (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.done.get(requestID)
}

// eventQueue is a deque of events in arrival (seq) order: pushed at the back, taken from either
// end, and taken events can be inserted back at their place.
type eventQueue struct {
	items []event
	head  int
}

func (q *eventQueue) len() int      { return len(q.items) - q.head }
func (q *eventQueue) front() *event { return &q.items[q.head] }
func (q *eventQueue) back() *event  { return &q.items[len(q.items)-1] }

func (q *eventQueue) push(e event) {
	if q.head > 0 && q.head >= len(q.items)/2 {
		// Reuse the consumed half instead of growing forever.
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
	q.items = append(q.items, e)
}

func (q *eventQueue) popFront() (event, bool) {
	if q.len() == 0 {
		return event{}, false
	}
	e := q.items[q.head]
	q.items[q.head] = event{}
	q.head++
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	return e, true
}

func (q *eventQueue) popBack() (event, bool) {
	if q.len() == 0 {
		return event{}, false
	}
	e := q.items[len(q.items)-1]
	q.items[len(q.items)-1] = event{}
	q.items = q.items[:len(q.items)-1]
	if q.head == len(q.items) {
		q.items, q.head = q.items[:0], 0
	}
	return e, true
}

// insert puts evs (taken from this queue, in any order) back at their places by seq: in front,
// at the back, or merged in, with one copy of the queue at most.
func (q *eventQueue) insert(evs []event) {
	if len(evs) == 0 {
		return
	}
	if !slices.IsSortedFunc(evs, bySeq) {
		slices.SortFunc(evs, bySeq)
	}
	k := len(evs)
	switch {
	case q.len() == 0 || evs[k-1].seq < q.front().seq:
		if q.head >= k {
			// Room in the consumed part: no allocation.
			q.head -= k
			copy(q.items[q.head:], evs)
			return
		}
		grown := make([]event, k+q.len(), k+q.len()+max(q.len()/4, 8))
		copy(grown, evs)
		copy(grown[k:], q.items[q.head:])
		clear(q.items)
		q.items, q.head = grown, 0
	case evs[0].seq > q.back().seq:
		q.items = append(q.items, evs...)
	default:
		merged := make([]event, 0, k+q.len()+max(q.len()/4, 8))
		rest := q.items[q.head:]
		for len(evs) > 0 && len(rest) > 0 {
			if evs[0].seq < rest[0].seq {
				merged, evs = append(merged, evs[0]), evs[1:]
			} else {
				merged, rest = append(merged, rest[0]), rest[1:]
			}
		}
		merged = append(append(merged, evs...), rest...)
		clear(q.items)
		q.items, q.head = merged, 0
	}
}

func bySeq(a, b event) int { return cmp.Compare(a.seq, b.seq) }

// invocationTags are what every event of an invocation carries from its platform.start.
type invocationTags struct{ trace, tenant string }

// recentInvocations is how many invocations the buffer remembers the runtimeDone, report and tags
// of: far more than can be waiting at once.
const recentInvocations = 256

// boundedSet remembers a value for each of the last n request ids added, forgetting the oldest.
// The empty id is never remembered.
type boundedSet[V any] struct {
	at    map[string]V
	order []string
	n     int
}

func newBoundedSet[V any](n int) boundedSet[V] { return boundedSet[V]{at: map[string]V{}, n: n} }

// add remembers v for id unless id is already there: the first arrival counts.
func (s *boundedSet[V]) add(id string, v V) {
	if _, ok := s.at[id]; !ok {
		s.put(id, v)
	}
}

// put remembers v for id, replacing what was there (keeping its place in the order).
func (s *boundedSet[V]) put(id string, v V) {
	if id == "" {
		return
	}
	if _, ok := s.at[id]; !ok {
		if len(s.order) >= s.n {
			delete(s.at, s.order[0])
			s.order = s.order[1:]
		}
		s.order = append(s.order, id)
	}
	s.at[id] = v
}

func (s *boundedSet[V]) get(id string) (V, bool) {
	v, ok := s.at[id]
	return v, ok
}
