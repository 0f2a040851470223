package main

import (
	"context"
	"math"
	"time"
)

// What a SHUTDOWN ships: the time left holds so many calls at the stream's answer times, and what
// does not fit is dropped (and counted) before anything is sent, so that the counts record, which
// heads the first call, already says what the shutdown loses (lifecycle.go's onShutdown).

// dropRemaining empties the buffer at shutdown, counting what could not be sent in time: as
// dropped, or as unknown where a call of unknown outcome may have stored it. It returns how many
// telemetry events that was, and whether a counts record was left too (not stored).
func (s *shipper) dropRemaining() (telemetry uint64, counts bool) {
	for {
		evs := s.buf.take(everything, 1<<20, 1<<62, func(*event) int { return 0 })
		if len(evs) == 0 {
			return telemetry, counts
		}
		n := telemetryEvents(evs)
		telemetry += n
		counts = counts || n < uint64(len(evs))
		s.buf.release(evs, outcome{kind: outcomeShutdown})
	}
}

// keepWhatFits drops, as lost to the shutdown, what the time left cannot ship (and returns how
// many telemetry events that was), and keeps the
// most valuable events (takeNewest's order) in the buffer: as many full calls as the stream's
// usual answer time fits in left after one of its slowest answers. It plans for calls that store
// what they carry, whatever the pacers granted until now (they are told to hurry): a stream that
// refused everything a moment ago may take everything now. What the round then cannot send is
// dropped at its end, and the last counts record goes by itself (shipCounts).
func (s *shipper) keepWhatFits(left time.Duration) (dropped uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pace.hurry()
	for _, p := range s.shardPace.pacers {
		p.hurry()
	}
	calls := s.callsWithin(left)
	entries := calls * maxRecordsPerCall
	if s.downStreak >= outageAfter {
		entries = calls * probeEntries
	}
	if s.meta.format.aggregated() {
		// Aggregated records hold many events each: the call's byte limit is what binds.
		entries = calls * s.meta.format.eventsPerCall()
	}
	if n, _ := s.buf.state(); n <= entries {
		return 0
	}
	keep := s.buf.takeNewest(entries, calls*maxCallBytes, s.meta.callSize)
	dropped, _ = s.dropRemaining()
	s.buf.putBack(keep)
	return dropped
}

// callsWithin is how many calls, one after another, are expected to answer within left: one at
// the slowest recent answer time, the others at the usual one. Before any answer, calls are
// taken to answer in unmeasuredAnswer.
func (s *shipper) callsWithin(left time.Duration) int {
	usual, slowest := max(s.usualAnswer(), minCallTime), s.answers.slowest()
	if s.answers.n == 0 {
		slowest = unmeasuredAnswer
	}
	if left < usual {
		return 0
	}
	if left < slowest {
		return 1
	}
	return 1 + int((left-slowest)/usual)
}

// usualAnswer is the stream's usual answer time: the recent median, or unmeasuredAnswer before
// the first answer.
func (s *shipper) usualAnswer() time.Duration {
	if s.answers.n == 0 {
		return unmeasuredAnswer
	}
	return s.answers.typical()
}

// unmeasuredAnswer is what a call is taken to cost before the stream has answered one: a first
// call also loads credentials and opens a connection. minCallTime is the least a call is taken
// to cost, encoding included.
const (
	unmeasuredAnswer = 200 * time.Millisecond
	minCallTime      = 5 * time.Millisecond
)

// shipCounts sends the waiting counts record by itself until it is stored or ctx ends: the
// shutdown's last word, one entry, whatever the pacers say (they have cut for the data; this is
// one record). A refused one goes again after countsRetry. A refused entry is not written, and a
// shard's limits are on what it writes (1,000 records and 1 MiB a second; so the simulation's
// model and the shard proxy count them), and each try of one entry on a shard that refuses most
// of what it is sent is a lottery whose draws come every few milliseconds as the shard's budget
// refills: the more tries in the time kept, the likelier one is stored. (Pauses that doubled after
// each refusal for throughput, up to 80 ms, left a dozen tries in the 900 ms kept under pushback,
// sent more of them in copies, and copies stored together took the room of other environments'
// last words: simulated, 1,000 environments that spin down together on a stream cut to a quarter
// of its capacity, 921 last words at once, 349 copies stored beside one already stored, and 21 of
// them missing or short in the stream; with the pause kept, 1. BENCHMARKS.md, "The last counts
// record's pause after a refusal for throughput".) Only a stream that does not answer, refuses
// whole calls for throughput, or a role that cannot be assumed, has the pause double, up to
// countsRetryMax: there the next try would not fare better at once. From the second try on it
// goes to another shard than its own that is not paced, if the answers have shown one
// (copyRoutes): a hot shard would refuse it whatever the pause. Where the stream refuses most
// entries, a try carries copies of it to several shards, and where KMS refuses most calls whole,
// it goes in several calls at once (countsSpread).
func (s *shipper) shipCounts(ctx context.Context) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready(ctx) {
		return
	}
	for try, pause := 0, countsRetry; ctx.Err() == nil; try++ {
		e, ok := s.buf.takeCounts()
		if !ok {
			return // stored
		}
		recs := s.meta.pack([]event{e}, s.cfg.RecordBytes, &s.gz)
		r := &round{}
		if len(recs) == 1 {
			// After a refusal, round its shard: another may take it; and where the stream
			// refuses most entries, in copies; where KMS refuses most calls, in calls at once
			// (countsSpread, shardPacers.copyRoutes).
			n, calls := s.countsSpread(ctx, pause)
			r.calls = calls
			one := recs[0]
			recs = recs[:0]
			for _, route := range s.shardPace.copyRoutes(one.key, try, n) {
				one.hashKey = route
				recs = append(recs, one)
			}
			r.copies = n > 1
		}
		_, _, pushback := s.send(ctx, r, recs)
		t := time.NewTimer(pause)
		if pushback != noPushback && pushback != refusedWhole {
			pause = longerCountsPause(pause) // not answering, or refusing whole calls for throughput: the next try waits longer
		}
		select {
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
}

// countsSpread is how a try of the last counts record spreads, the next pause being pause: in
// copies of it in one call (copies), and in identical calls at once (calls). Each is enough that
// the tries left before ctx's deadline are all refused but for a chance of lastWordMiss, up to
// countsCopiesMax and countsCallsMax; one while the tries left suffice.
//
// Copies answer the share of entries the stream's recent calls refused entry by entry
// (entryRefused). A call refused whole (KMS throttling) takes every copy with it, so those
// refusals do not count there. The copies are the same record (same id): readers of the counts
// records take an environment's latest, as the template's query does (the largest totals), and
// one copy stored is enough. They go to different shards (shardPacers.copyRoutes), so that where
// the stream refuses entries at random, or where its shards are full at different moments, each
// has its own chance. (One entry a try, a shutdown's last counts record on a stream that refuses
// nine entries in ten needs 66 tries, about a whole shutdown: simulated, 1,000 environments under
// `end`, 268 of them left it out of the stream; with copies, 1. BENCHMARKS.md, "A counts record
// left alone, and copies of the last counts record".)
//
// Calls at once answer the share of calls refused whole whatever the rate (wholeRefused): KMS
// refuses each call on its own, and more calls cost the stream's shards nothing. Calls refused
// whole for throughput say the stream has more calls than it takes, and more at once would only
// add to them: those do not count. (Simulated, 1,000 environments whose calls KMS refuses nine
// times in ten under `end`: 30 last counts records missing or short, none with calls at once.
// BENCHMARKS.md, "Calls at once for the last counts record".)
func (s *shipper) countsSpread(ctx context.Context, pause time.Duration) (copies, calls int) {
	deadline, ok := ctx.Deadline()
	if !ok {
		return 1, 1
	}
	fit := max(1, int(time.Until(deadline)/(max(s.usualAnswer(), minCallTime)+pause)))
	spread := func(q float64, most int) int { return min(most, (triesFor(q)+fit-1)/fit) }
	return spread(s.entryRefused.mean(), countsCopiesMax), spread(s.wholeRefused.mean(), countsCallsMax)
}

// countsCopiesMax bounds the copies of the last counts record in one call, countsCallsMax the
// calls of one try.
const (
	countsCopiesMax = 8
	countsCallsMax  = 8
)

// countsRetry is the first pause between two tries of the last counts record, countsRetryMax the
// longest.
const (
	countsRetry    = 10 * time.Millisecond
	countsRetryMax = 80 * time.Millisecond
)

// longerCountsPause is the pause after a try of the last counts record that went unanswered or
// was refused whole for throughput: twice the one before, up to countsRetryMax.
func longerCountsPause(pause time.Duration) time.Duration { return min(2*pause, countsRetryMax) }

// lastWordTime is how long shipCounts is expected to need to store the last counts record, but
// for a chance of lastWordMiss: as many tries as the stream's recent refused share (refusedShares)
// leaves all refused that rarely, each an answer at the usual time and a pause that doubles from
// countsRetry to countsRetryMax. A stream that refuses every call takes lastWordForever. The
// pauses are longer than shipCounts now makes after a refusal for throughput (countsRetry): a
// reserve that follows them gives the data more time and the last word less, and more last words
// were missing (simulated, 1,000 environments that spin down together on a stream cut to a
// quarter of its capacity: 1 short with this reserve, 27 with the shorter. BENCHMARKS.md, "The
// last counts record's pause after a refusal for throughput").
func (s *shipper) lastWordTime() time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.refused.mean()
	if q >= 1 {
		return lastWordForever
	}
	answer := s.usualAnswer()
	tries := triesFor(q)
	var d time.Duration
	for i, pause := 0, countsRetry; i < tries; i++ {
		d += answer + pause
		pause = longerCountsPause(pause)
	}
	return d
}

// triesFor is how many one-entry tries a stream that refuses a share q of entries needs, all
// refused but for a chance of lastWordMiss, up to lastWordMaxTries (all of them for q ≥ 1).
func triesFor(q float64) int {
	switch {
	case q <= 0:
		return 1
	case q >= 1:
		return lastWordMaxTries
	}
	return min(lastWordMaxTries, int(math.Ceil(math.Log(lastWordMiss)/math.Log(q))))
}

// lastWordMiss is the chance lastWordTime allows the last counts record's tries to be all
// refused; lastWordMaxTries bounds its count (a shutdown has time for about 25 at most), and
// lastWordForever is what it returns for a stream that refuses every call.
const (
	lastWordMiss     = 0.001
	lastWordMaxTries = 100
	lastWordForever  = time.Hour
)
