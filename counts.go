package main

// The extension's own accounting: the counters every part updates, and the counts record that
// ships them. Every event Lambda sends ends in exactly one of delivered, dropped (certainly not
// stored), filtered, unknown (sent in a call whose answer never came, never confirmed since) or is
// still buffered, so that for every extension start
//
//	received = delivered + dropped.total + filtered + buffered + unknown.

import (
	"encoding/json"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// stats are the extension's own counters, shipped as the counts record.
type stats struct {
	start time.Time

	received, delivered, records                     atomic.Uint64
	droppedFull, droppedShutdown, unknown            atomic.Uint64
	badBatches, badEvents                            atomic.Uint64
	lambdaDroppedRecords, lambdaDroppedBytes         atomic.Uint64
	calls, retries, throttles, bytesSent, entries    atomic.Uint64
	unconfirmed                                      atomic.Uint64 // events of calls of unknown outcome: maybe stored, sent again
	certRefused                                      atomic.Uint64 // calls not sent: the endpoint's TLS certificate was refused
	filteredExcluded, filteredLevel, filteredSampled atomic.Uint64
	filteredOwn                                      atomic.Uint64
	invocations, postRuntimeCount, postRuntimeMicros atomic.Uint64
	postRuntimeMaxMicros, postRuntimeLastMicros      atomic.Uint64
	rejected                                         codeCounts    // dropped by error code
	assumeRole                                       codeCounts    // failed AssumeRole calls by error code (credentials.go)
	mu                                               sync.Mutex    // guards lastFlush
	lastFlush                                        flushCounters // what the last ship round did
}

func newStats() *stats { return &stats{start: time.Now()} }

// toShip is how many events were received to be shipped: all but those filtered out. (An event
// is counted received before it is filtered: the filtered are read first, and never outnumber
// the received read after them.)
func (s *stats) toShip() uint64 {
	filtered := s.filteredExcluded.Load() + s.filteredLevel.Load() + s.filteredSampled.Load() + s.filteredOwn.Load()
	return s.received.Load() - filtered
}

// codeCounts counts failures by error code; the zero value is ready to use.
type codeCounts struct {
	mu sync.Mutex
	m  map[string]uint64
}

func (c *codeCounts) add(code string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]uint64{}
	}
	c.m[code]++
}

// total is the sum of the counts.
func (c *codeCounts) total() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	var n uint64
	for _, v := range c.m {
		n += v
	}
	return n
}

// snapshot returns the counts so far (never nil, so that the counts record shows {}).
func (c *codeCounts) snapshot() map[string]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]uint64, len(c.m))
	maps.Copy(out, c.m)
	return out
}

// outcomeKind is how an event's time in the buffer ended.
type outcomeKind int

const (
	outcomeDelivered outcomeKind = iota // Kinesis confirmed it
	outcomeFull                         // dropped to make room
	outcomeRejected                     // Kinesis refused it for good
	outcomeShutdown                     // not sent before the shutdown deadline
)

// outcome is an event's end, with the error code of a rejection.
type outcome struct {
	kind outcomeKind
	code string
}

// settle counts the end of one telemetry event. A drop of an event that may already be stored
// (it was in a call of unknown outcome) is not a certain loss: it counts as unknown.
func (s *stats) settle(e *event, o outcome) {
	switch {
	case o.kind == outcomeDelivered:
		s.delivered.Add(1)
	case e.inDoubt:
		s.unknown.Add(1)
	case o.kind == outcomeFull:
		s.droppedFull.Add(1)
	case o.kind == outcomeShutdown:
		s.droppedShutdown.Add(1)
	default:
		s.rejected.add(o.code)
	}
}

// flushCounters describe one ship round (or, as a snapshot, the totals before it).
type flushCounters struct {
	Events, Records, Bytes, Calls, Retries, Throttles, Dropped uint64
	Ms                                                         float64
}

func (s *stats) flushCounters() flushCounters {
	m := s.marks()
	return flushCounters{
		Events: s.delivered.Load(), Records: s.records.Load(), Bytes: s.bytesSent.Load(), Calls: s.calls.Load(),
		Retries: s.retries.Load(), Throttles: s.throttles.Load(), Dropped: m.full + m.rejected + m.shutdown,
	}
}

// noteFlush records what a ship round that started at start with the totals before did.
func (s *stats) noteFlush(start time.Time, before flushCounters) {
	after := s.flushCounters()
	f := flushCounters{
		Events: after.Events - before.Events, Records: after.Records - before.Records, Bytes: after.Bytes - before.Bytes,
		Calls: after.Calls - before.Calls, Retries: after.Retries - before.Retries, Throttles: after.Throttles - before.Throttles,
		Dropped: after.Dropped - before.Dropped, Ms: float64(time.Since(start).Microseconds()) / 1000,
	}
	s.mu.Lock()
	s.lastFlush = f
	s.mu.Unlock()
}

func (s *stats) addPostRuntime(d time.Duration) {
	us := uint64(max(d, 0) / time.Microsecond)
	s.postRuntimeCount.Add(1)
	s.postRuntimeMicros.Add(us)
	s.postRuntimeLastMicros.Store(us)
	for {
		old := s.postRuntimeMaxMicros.Load()
		if us <= old || s.postRuntimeMaxMicros.CompareAndSwap(old, us) {
			return
		}
	}
}

// lambdaDropped counts a platform.logsDropped event: telemetry Lambda dropped before it reached
// the extension.
func (s *stats) lambdaDropped(raw []byte) {
	var ev struct {
		Record struct {
			DroppedRecords uint64 `json:"droppedRecords"`
			DroppedBytes   uint64 `json:"droppedBytes"`
		} `json:"record"`
	}
	if json.Unmarshal(raw, &ev) == nil {
		s.lambdaDroppedRecords.Add(ev.Record.DroppedRecords)
		s.lambdaDroppedBytes.Add(ev.Record.DroppedBytes)
	}
}

// lossMarks are the counters whose change makes a counts record due at once.
type lossMarks struct{ full, rejected, shutdown, unknown, lambda, bad uint64 }

func (s *stats) marks() lossMarks {
	return lossMarks{s.droppedFull.Load(), s.rejected.total(), s.droppedShutdown.Load(), s.unknown.Load(),
		s.lambdaDroppedRecords.Load(), s.badBatches.Load() + s.badEvents.Load()}
}

// countsType is the event type of the counts record.
const countsType = "kinesis-telemetry-extension.counts"

// countsRecord is the "record" of a counts record. Field names are an interface: dashboards and
// the fleet test read them.
type countsRecord struct {
	Since     string `json:"since"`
	Received  uint64 `json:"received"`
	Delivered uint64 `json:"delivered"`
	Buffered  int    `json:"buffered"`
	// Unknown counts events sent in a call whose outcome never came (cut, timed out, connection
	// lost after the request was written) and not confirmed by a later call: maybe stored, maybe
	// not. Never part of dropped.
	Unknown uint64 `json:"unknown"`
	Dropped struct {
		Total      uint64            `json:"total"` // certainly not stored
		BufferFull uint64            `json:"bufferFull"`
		Rejected   map[string]uint64 `json:"rejected"`
		Shutdown   uint64            `json:"shutdown"`
	} `json:"dropped"`
	Filtered struct {
		Excluded   uint64 `json:"excluded"`
		BelowLevel uint64 `json:"belowLevel"`
		SampledOut uint64 `json:"sampledOut"`
		OwnLogs    uint64 `json:"ownLogs"`
	} `json:"filtered"`
	Malformed struct {
		Batches uint64 `json:"batches"`
		Events  uint64 `json:"events"`
	} `json:"malformed"`
	LambdaDropped struct {
		Records uint64 `json:"records"`
		Bytes   uint64 `json:"bytes"`
	} `json:"lambdaDropped"`
	Kinesis struct {
		Calls       uint64 `json:"calls"`
		Entries     uint64 `json:"entries"` // PutRecords entries sent, re-sends included
		Records     uint64 `json:"records"` // records stored
		Bytes       uint64 `json:"bytes"`
		Retries     uint64 `json:"retries"`
		Throttles   uint64 `json:"throttles"`
		Unconfirmed uint64 `json:"unconfirmed"` // events of calls of unknown outcome: the only possible duplicates
		// CertificateRefused counts calls not sent because the endpoint's TLS certificate was
		// expired, for another host or not trusted.
		CertificateRefused uint64 `json:"certificateRefused,omitempty"`
	} `json:"kinesis"`
	LastFlush struct {
		Events    uint64  `json:"events"`
		Records   uint64  `json:"records"`
		Bytes     uint64  `json:"bytes"`
		Calls     uint64  `json:"calls"`
		Retries   uint64  `json:"retries"`
		Throttles uint64  `json:"throttles"`
		Dropped   uint64  `json:"dropped"`
		Ms        float64 `json:"ms"`
	} `json:"lastFlush"`
	Invocations uint64 `json:"invocations"`
	// AssumeRoleErrors counts refused or failed AssumeRole calls by STS error code, when the
	// extension writes through a role (KINESIS_TELEMETRY_ROLE_ARN).
	AssumeRoleErrors map[string]uint64 `json:"assumeRoleErrors"`
	PostRuntimeMs    struct {
		Count uint64  `json:"count"`
		Mean  float64 `json:"mean"`
		Max   float64 `json:"max"`
		Last  float64 `json:"last"`
	} `json:"postRuntimeMs"`
}

// json renders the counters, with the number of events buffered, as a counts record's "record".
func (s *stats) json(buffered int) []byte {
	var c countsRecord
	c.Since = s.start.UTC().Format(time.RFC3339Nano)
	c.Received, c.Delivered, c.Buffered, c.Unknown = s.received.Load(), s.delivered.Load(), buffered, s.unknown.Load()
	s.mu.Lock()
	lf := s.lastFlush
	s.mu.Unlock()
	c.Dropped.Rejected = s.rejected.snapshot()
	var rejected uint64
	for _, v := range c.Dropped.Rejected {
		rejected += v
	}
	c.Dropped.BufferFull, c.Dropped.Shutdown = s.droppedFull.Load(), s.droppedShutdown.Load()
	c.Dropped.Total = c.Dropped.BufferFull + rejected + c.Dropped.Shutdown
	c.Filtered.Excluded, c.Filtered.BelowLevel = s.filteredExcluded.Load(), s.filteredLevel.Load()
	c.Filtered.SampledOut, c.Filtered.OwnLogs = s.filteredSampled.Load(), s.filteredOwn.Load()
	c.Malformed.Batches, c.Malformed.Events = s.badBatches.Load(), s.badEvents.Load()
	c.LambdaDropped.Records, c.LambdaDropped.Bytes = s.lambdaDroppedRecords.Load(), s.lambdaDroppedBytes.Load()
	k := &c.Kinesis
	k.Calls, k.Entries, k.Records, k.Bytes = s.calls.Load(), s.entries.Load(), s.records.Load(), s.bytesSent.Load()
	k.Retries, k.Throttles, k.Unconfirmed = s.retries.Load(), s.throttles.Load(), s.unconfirmed.Load()
	k.CertificateRefused = s.certRefused.Load()
	c.LastFlush.Events, c.LastFlush.Records, c.LastFlush.Bytes, c.LastFlush.Calls = lf.Events, lf.Records, lf.Bytes, lf.Calls
	c.LastFlush.Retries, c.LastFlush.Throttles, c.LastFlush.Dropped, c.LastFlush.Ms = lf.Retries, lf.Throttles, lf.Dropped, lf.Ms
	c.Invocations = s.invocations.Load()
	c.AssumeRoleErrors = s.assumeRole.snapshot()
	ms := func(us uint64) float64 { return float64(us) / 1000 }
	p := &c.PostRuntimeMs
	p.Count, p.Max, p.Last = s.postRuntimeCount.Load(), ms(s.postRuntimeMaxMicros.Load()), ms(s.postRuntimeLastMicros.Load())
	if p.Count > 0 {
		p.Mean = ms(s.postRuntimeMicros.Load()) / float64(p.Count)
	}
	out, _ := json.Marshal(c)
	return out
}

// summary is the one-line account logged at shutdown.
func (s *stats) summary(buffered int) string {
	m := s.marks()
	line := fmt.Sprintf("received %d, delivered %d, dropped %d (buffer full %d, rejected %d, shutdown %d), Lambda dropped %d, malformed %d, %d PutRecords calls, %d retries, %d events sent again after a call of unknown outcome, unknown %d, buffered %d, %d entries sent",
		s.received.Load(), s.delivered.Load(), m.full+m.rejected+m.shutdown, m.full, m.rejected, m.shutdown, m.lambda, m.bad,
		s.calls.Load(), s.retries.Load(), s.unconfirmed.Load(), m.unknown, buffered, s.entries.Load())
	if n := s.certRefused.Load(); n > 0 {
		line += fmt.Sprintf(", %d calls not sent: TLS certificate refused", n)
	}
	return line
}

// telemetryEvents counts the events that came from Lambda, leaving out the extension's own
// counts records.
func telemetryEvents(evs []event) uint64 {
	var n uint64
	for i := range evs {
		if evs[i].typ != countsType {
			n++
		}
	}
	return n
}
