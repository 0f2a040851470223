package main

// The Telemetry API side: the subscription, the HTTP listener Lambda posts event batches to and
// its server, the buffered event (event, eventType) and the bounded in-memory buffer between the
// listener and the Kinesis sender (two queues, the drop policy, take and put back, the waits for
// runtimeDone and report), and the filter that applies the user's controls (exclusion, level,
// sampling, redaction) before anything is buffered. Batches are decoded by json.go's scanner.

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log"
	"math"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// subscription is the outcome of the Telemetry API subscription.
type subscription struct {
	Active bool   // Lambda answered 200: batches will arrive
	Detail string // why not, when not active
}

// Telemetry API schema versions: the classic one, and the only one Lambda Managed Instances accept.
const (
	telemetrySchema        = "2022-12-13"
	telemetrySchemaManaged = "2025-01-29"
)

// subscribeTelemetry asks Lambda to post the configured telemetry types to the listener. A refusal
// is not an error: the extension keeps running without telemetry, and the caller says so once.
func subscribeTelemetry(ctx context.Context, api *extensionsClient, cfg config) (subscription, error) {
	schema := telemetrySchema
	if cfg.Managed {
		schema = telemetrySchemaManaged
	}
	body, err := json.Marshal(map[string]any{
		"schemaVersion": schema,
		"destination":   map[string]any{"protocol": "HTTP", "URI": "http://sandbox.localdomain:" + strconv.Itoa(cfg.Port)},
		"types":         cfg.Types,
		"buffering":     map[string]any{"maxItems": cfg.BufferItems, "maxBytes": cfg.BufferBytes, "timeoutMs": cfg.BufferTimeoutMS},
	})
	if err != nil {
		return subscription{}, fmt.Errorf("subscribe telemetry: %w", err)
	}
	status, answer, err := api.do(ctx, http.MethodPut, api.telemetryURL, body, nil)
	if err != nil {
		return subscription{}, fmt.Errorf("subscribe telemetry: %w", err)
	}
	if status == http.StatusOK {
		return subscription{Active: true}, nil
	}
	var apiErr struct{ ErrorType, ErrorMessage string }
	_ = json.Unmarshal(answer, &apiErr)
	detail := fmt.Sprintf("HTTP %d %s %s", status, apiErr.ErrorType, apiErr.ErrorMessage)
	return subscription{Detail: strings.TrimSpace(detail)}, nil
}

// resolveListenHost returns the address that sandbox.localdomain resolves to, which is where
// Lambda delivers telemetry, or 127.0.0.1 where it does not resolve (emulators, tests). It never
// returns an address that listens on all interfaces.
func resolveListenHost(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	// IPv4 only: Lambda's sandbox address is IPv4, and one DNS question is faster than two.
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip4", "sandbox.localdomain")
	if err == nil {
		for _, ip := range ips {
			if !ip.IsUnspecified() {
				return ip.String()
			}
		}
	}
	return "127.0.0.1"
}

// listener receives the batches Lambda posts. It answers as soon as the batch is in the buffer:
// a slow answer makes Lambda buffer, retry and eventually drop telemetry.
type listener struct {
	buf     *buffer
	stats   *stats
	maxBody int64
	filter  *filter
	bodies  sync.Pool
}

func newListener(buf *buffer, st *stats, cfg config) *listener {
	// Lambda's batches reach about twice maxBytes; leave room for one more.
	return &listener{buf: buf, stats: st, maxBody: int64(3*cfg.BufferBytes + 1<<20), filter: newFilter(cfg)}
}

func (l *listener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, _ := l.bodies.Get().(*bytes.Buffer)
	if body == nil {
		body = new(bytes.Buffer)
	}
	defer l.bodies.Put(body)
	body.Reset()
	_, err := body.ReadFrom(http.MaxBytesReader(w, r.Body, l.maxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		l.stats.badBatches.Add(1)
		http.Error(w, fmt.Sprintf("body larger than %d bytes", l.maxBody), http.StatusRequestEntityTooLarge)
		return
	case err != nil:
		l.stats.badBatches.Add(1)
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := l.accept(body.Bytes()); err != nil {
		l.stats.badBatches.Add(1)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// serveListener serves l on ln. Its goroutine is owned by the caller through the returned stop
// function, which closes the server and waits for the goroutine.
func serveListener(ln net.Listener, l *listener, errorLog *log.Logger) (stop func()) {
	srv := &http.Server{Handler: l, ReadHeaderTimeout: 5 * time.Second, ErrorLog: errorLog}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // returns http.ErrServerClosed after Close
	}()
	return func() {
		_ = srv.Close()
		<-done
	}
}

// accept decodes one posted batch and adds its events to the buffer. A body that is not a JSON
// array is refused whole; elements that are not event objects are counted and skipped.
func (l *listener) accept(body []byte) error {
	// One copy of the whole batch, instead of one allocation per event: log lines keep pointing
	// into it (they are shipped and dropped oldest first, so batches are freed in order), while
	// platform events, which may outlive the log lines around them, get copies of their own.
	arena := bytes.Clone(body)
	evs := make([]event, 0, 64)
	err := scanBatch(arena, func(f eventFields) {
		if !f.object || f.typ == nil {
			l.stats.badEvents.Add(1)
			return
		}
		evs = append(evs, newEvent(f))
	})
	if err != nil {
		return fmt.Errorf("telemetry batch: %w", err)
	}
	l.stats.received.Add(uint64(len(evs)))
	l.buf.add(evs, l.filter)
	return nil
}

// event is one Telemetry API event as it waits in the buffer.
type event struct {
	raw       []byte // the event exactly as received (invalid UTF-8 replaced)
	typ       eventType
	requestID string // the event's own, or the invocation it was printed in
	level     int8   // index into logLevels for JSON log lines, -1 when unknown
	text      bool   // record is a string (a text log line)
	idPrefix  string // with seq, the event's id
	seq       uint64
	arrived   time.Time
	traceID   string // Root of the invocation's X-Amzn-Trace-Id, from its platform.start
	tenantID  string // the invocation's tenant (functions with tenant isolation)

	// What the sender learnt about the event: tried, it was in a call that did not store it
	// (a re-send is a retry); maybeStored, it was in a call of unknown outcome (a re-send may
	// be a duplicate, and if it is never confirmed its fate is unknown, not dropped).
	tried, maybeStored bool
}

// eventType is a Telemetry API event's type. Lambda adds types over time: any name is valid and
// shipped as it is; these are the ones the extension acts on.
type eventType string

const (
	typeFunction            eventType = "function"
	typeExtension           eventType = "extension"
	typePlatformInitStart   eventType = "platform.initStart"
	typePlatformStart       eventType = "platform.start"
	typePlatformRuntimeDone eventType = "platform.runtimeDone"
	typePlatformReport      eventType = "platform.report"
	typePlatformRestore     eventType = "platform.restoreStart"
	typePlatformLogsDropped eventType = "platform.logsDropped"
)

// isPlatform reports whether the event is a platform event, which are never dropped to make room.
func (e *event) isPlatform() bool { return !isLogType(e.typ) }

func isLogType(t eventType) bool { return t == typeFunction || t == typeExtension }

// size is what the event costs the buffer: its bytes plus bookkeeping.
func (e *event) size() int { return len(e.raw) + 128 }

// newEvent makes the buffered event of a scanned one. Log lines keep f.raw's memory; other
// events get their own copy.
func newEvent(f eventFields) event {
	typ := internType(unquote(f.typ))
	raw := f.raw[:len(f.raw):len(f.raw)]
	switch {
	case f.badUTF8:
		raw = bytes.ToValidUTF8(raw, []byte("\uFFFD"))
	case !isLogType(typ):
		raw = bytes.Clone(raw)
	}
	e := event{raw: raw, typ: typ, level: -1, text: f.recordText}
	if f.requestID != nil {
		e.requestID = unquote(f.requestID)
	}
	if f.level != nil {
		e.level = int8(levelIndex(unquote(f.level)))
	}
	if !isLogType(typ) {
		// Only Lambda's own records: a JSON log line's "tenantId" or "tracing" is the user's.
		e.traceID = traceRoot(unquote(f.traceValue))
		e.tenantID = unquote(f.tenantID)
	}
	return e
}

// traceRoot returns the Root of an X-Amzn-Trace-Id value ("Root=1-…;Parent=…;Sampled=1").
func traceRoot(v string) string {
	for part := range strings.SplitSeq(v, ";") {
		if root, ok := strings.CutPrefix(strings.TrimSpace(part), "Root="); ok {
			return root
		}
	}
	return ""
}

// internType avoids an allocation per event for the common types.
func internType(t string) eventType {
	switch eventType(t) {
	case typeFunction:
		return typeFunction
	case typeExtension:
		return typeExtension
	case typePlatformStart:
		return typePlatformStart
	case typePlatformRuntimeDone:
		return typePlatformRuntimeDone
	case typePlatformReport:
		return typePlatformReport
	}
	return eventType(t)
}

func levelIndex(s string) int {
	for i, l := range logLevels {
		if strings.EqualFold(s, l) {
			return i
		}
	}
	// Common spellings that are not in the list.
	switch strings.ToUpper(s) {
	case "WARNING":
		return 3
	case "CRITICAL":
		return 5
	}
	return -1
}

// buffer holds events between the listener and the sender, bounded in bytes. Platform events and
// log lines wait in two queues so that, when full, the oldest log lines can be dropped first
// without disturbing the platform events. Each queue is kept in arrival order; the sender takes
// from the oldest end, or at a short shutdown from the newest (takeNewest).
type buffer struct {
	mu       sync.Mutex
	platform eventQueue
	logs     eventQueue
	bytes    int // in the queues
	inFlight int // taken by the sender and not yet confirmed or put back
	held     int // telemetry events (not the extension's own) queued or in flight: "buffered"
	max      int
	stats    *stats

	seq       uint64
	idPrefix  string
	lastStart string // request id of the last platform.start: log lines without one belong to it
	tags      tagSet // trace and tenant of recent invocations, from their platform.start
	newest    uint64 // seq of the last platform.start: the newest invocation's events are at or after it
	done      recentSet
	reported  recentSet
	changed   chan struct{} // closed whenever events arrive
}

func newBuffer(maxBytes int, idPrefix string, st *stats) *buffer {
	return &buffer{
		max: maxBytes, idPrefix: idPrefix, stats: st, changed: make(chan struct{}),
		done: newRecentSet(256), reported: newRecentSet(256), tags: newTagSet(256),
	}
}

// add appends a decoded batch, attributing log lines to their invocation and making room by
// dropping the oldest log lines when the buffer is full.
func (b *buffer) add(evs []event, f *filter) {
	now := time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range evs {
		e := &evs[i]
		switch e.typ {
		case typePlatformStart:
			if e.requestID != "" {
				b.lastStart = e.requestID
				b.tags.add(e.requestID, invocationTags{trace: e.traceID, tenant: e.tenantID})
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
		if t, ok := b.tags.at[e.requestID]; ok {
			e.traceID, e.tenantID = cmp.Or(e.traceID, t.trace), cmp.Or(e.tenantID, t.tenant)
		}
		if !f.keep(e, b.stats) {
			continue
		}
		e.seq, e.idPrefix, e.arrived = b.seq, b.idPrefix, now
		b.seq++
		if e.isPlatform() {
			b.platform.push(*e)
		} else {
			b.logs.push(*e)
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
		q := &b.logs
		if q.len() == 0 {
			q = &b.platform
		}
		e, ok := q.popFront()
		if !ok {
			return
		}
		b.bytes -= e.size()
		b.forget(&e, outcome{kind: droppedFull})
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
	return b.takeWhile(n, maxBytes, size, func() (*eventQueue, bool) {
		q := b.oldestQueue()
		if q == nil || q.front().seq >= before {
			return nil, false
		}
		return q, false
	})
}

// takeNewest is take for a shutdown short of time: it takes what matters most first — the newest
// invocation's platform events (its runtimeDone, with status timeout after a timeout, and its
// report), then its log lines newest first, then older platform events and older log lines, each
// newest first.
func (b *buffer) takeNewest(n, maxBytes int, size func(*event) int) []event {
	return b.takeWhile(n, maxBytes, size, func() (*eventQueue, bool) {
		switch {
		case b.platform.len() > 0 && b.platform.back().seq >= b.newest:
			return &b.platform, true
		case b.logs.len() > 0 && b.logs.back().seq >= b.newest:
			return &b.logs, true
		case b.platform.len() > 0:
			return &b.platform, true
		case b.logs.len() > 0:
			return &b.logs, true
		}
		return nil, true
	})
}

// takeWhile takes events one at a time from the queue end that next names (nil: stop; back: the
// newest end, else the oldest), at most n of them and, by size, at most maxBytes (but always at
// least one). They count as in flight until released or put back. b.mu is taken here.
func (b *buffer) takeWhile(n, maxBytes int, size func(*event) int, next func() (q *eventQueue, back bool)) []event {
	b.mu.Lock()
	defer b.mu.Unlock()
	// Sized once: grown by append, 200 events (150 bytes each) allocated 76 KB instead of 30.
	out := make([]event, 0, min(n, b.platform.len()+b.logs.len()))
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

// oldestQueue is the queue whose front arrived first, or nil when both are empty.
func (b *buffer) oldestQueue() *eventQueue {
	switch {
	case b.platform.len() == 0 && b.logs.len() == 0:
		return nil
	case b.logs.len() == 0:
		return &b.platform
	case b.platform.len() == 0:
		return &b.logs
	case b.platform.front().seq < b.logs.front().seq:
		return &b.platform
	}
	return &b.logs
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
	var platform, logs []event
	for i := range evs {
		if evs[i].isPlatform() {
			platform = append(platform, evs[i])
		} else {
			logs = append(logs, evs[i])
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range evs {
		b.inFlight -= evs[i].size()
		b.bytes += evs[i].size()
	}
	b.platform.insert(platform)
	b.logs.insert(logs)
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
	e.seq, e.idPrefix, e.arrived = b.seq, b.idPrefix, time.Now()
	b.seq++
	b.platform.push(e)
	b.bytes += e.size()
	b.makeRoom()
}

// state reports how many events wait and when the oldest of them arrived.
func (b *buffer) state() (n int, oldest time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q := b.oldestQueue(); q != nil {
		oldest = q.front().arrived
	}
	return b.platform.len() + b.logs.len(), oldest
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

func (b *buffer) wait(ctx context.Context, set *recentSet, requestID string) (time.Time, bool) {
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

// recentSet remembers the last n request ids seen with a time, forgetting the oldest.
type recentSet struct {
	at    map[string]time.Time
	order []string
	n     int
}

func newRecentSet(n int) recentSet { return recentSet{at: map[string]time.Time{}, n: n} }

func (s *recentSet) add(id string, t time.Time) {
	if id == "" {
		return
	}
	if _, ok := s.at[id]; ok {
		return
	}
	if len(s.order) >= s.n {
		delete(s.at, s.order[0])
		s.order = s.order[1:]
	}
	s.at[id] = t
	s.order = append(s.order, id)
}

func (s *recentSet) get(id string) (time.Time, bool) {
	t, ok := s.at[id]
	return t, ok
}

// invocationTags are what every event of an invocation carries from its platform.start.
type invocationTags struct{ trace, tenant string }

// tagSet remembers the tags of the last n invocations, forgetting the oldest.
type tagSet struct {
	at    map[string]invocationTags
	order []string
	n     int
}

func newTagSet(n int) tagSet { return tagSet{at: map[string]invocationTags{}, n: n} }

func (s *tagSet) add(id string, t invocationTags) {
	if _, ok := s.at[id]; !ok {
		if len(s.order) >= s.n {
			delete(s.at, s.order[0])
			s.order = s.order[1:]
		}
		s.order = append(s.order, id)
	}
	s.at[id] = t
}

// filter applies the user's controls to each event before it is buffered: exclusion by type,
// a minimum level for JSON log lines, per-invocation sampling of function logs, redaction. It also
// keeps the extension's own log lines out of the stream when the extension type is subscribed.
type filter struct {
	exclude  map[string]bool
	minLevel int
	sample   float64
	redact   []*regexp.Regexp
}

func newFilter(cfg config) *filter {
	return &filter{exclude: cfg.Exclude, minLevel: cfg.MinLevel, sample: cfg.Sample, redact: cfg.Redact}
}

// ownLogMarker is how the extension's own lines look inside an extension event's record.
var ownLogMarker = []byte(`"` + logPrefix)

// keep reports whether e is shipped, counting why not; it may redact e.raw.
func (f *filter) keep(e *event, st *stats) bool {
	switch {
	case e.typ == typeExtension && bytes.Contains(e.raw, ownLogMarker):
		st.filteredOwn.Add(1)
		return false
	case f.exclude[string(e.typ)]:
		st.filteredExcluded.Add(1)
		return false
	case isLogType(e.typ) && e.level >= 0 && int(e.level) < f.minLevel:
		st.filteredLevel.Add(1)
		return false
	case e.typ == typeFunction && f.sample < 1 && e.level < levelError && !sampled(e.requestID, f.sample):
		st.filteredSampled.Add(1)
		return false
	}
	if len(f.redact) > 0 && isLogType(e.typ) {
		e.raw = redactRecord(e.raw, f.redact)
	}
	return true
}

// levelError is the index of ERROR in logLevels: error lines survive sampling.
const levelError = 4

// sampled decides per invocation, so that an invocation's log lines are kept or dropped whole.
// Lines printed outside any invocation (init) are always kept.
func sampled(requestID string, fraction float64) bool {
	if requestID == "" {
		return true
	}
	h := fnv.New64a()
	h.Write([]byte(requestID))
	return float64(h.Sum64()>>11)/(1<<53) < fraction
}

const redacted = "[REDACTED]"

// redactRecord replaces matches in every string value of the event's record (log line text, or
// the string fields of a JSON log line). Events whose text cannot match are returned unchanged,
// byte for byte; a changed event is re-encoded with its members in their original order.
func redactRecord(raw []byte, res []*regexp.Regexp) []byte {
	if bytes.IndexByte(raw, '\\') < 0 {
		// Without escapes the raw text is the decoded text: no match here, no match anywhere.
		hit := false
		for _, re := range res {
			if re.Match(raw) {
				hit = true
				break
			}
		}
		if !hit {
			return raw
		}
	}
	out, changed, err := rewriteRecordStrings(raw, func(s string) string {
		for _, re := range res {
			s = re.ReplaceAllLiteralString(s, redacted)
		}
		return s
	})
	if err != nil || !changed {
		return raw
	}
	return out
}

// rewriteRecordStrings re-encodes a JSON event token by token, passing every string value inside
// its "record" member through fn. Numbers keep their text; member order is kept.
func rewriteRecordStrings(raw []byte, fn func(string) string) ([]byte, bool, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	type frame struct {
		object, inRecord bool
		n                int // tokens written in this container
	}
	var stack []frame
	var out []byte
	changed := false
	key := "" // the last top-level key
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return out, changed, nil
		}
		if err != nil {
			return nil, false, err
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			out = append(out, byte(d))
			continue
		}
		isKey, inRecord := false, false
		if len(stack) > 0 {
			top := &stack[len(stack)-1]
			switch {
			case top.n > 0 && top.object && top.n%2 == 1:
				out = append(out, ':')
			case top.n > 0:
				out = append(out, ',')
			}
			isKey = top.object && top.n%2 == 0
			inRecord = top.inRecord || (len(stack) == 1 && !isKey && key == "record")
			top.n++
		}
		switch t := tok.(type) {
		case json.Delim: // { or [
			stack = append(stack, frame{object: t == '{', inRecord: inRecord})
			out = append(out, byte(t))
		case string:
			switch {
			case isKey && len(stack) == 1:
				key = t
			case !isKey && inRecord:
				if r := fn(t); r != t {
					t, changed = r, true
				}
			}
			out = appendJSONString(out, t)
		case json.Number:
			out = append(out, t...)
		case bool:
			out = strconv.AppendBool(out, t)
		case nil:
			out = append(out, "null"...)
		}
	}
}
