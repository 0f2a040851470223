package main

// The shipper: ship rounds that move events from the buffer into Kinesis, call by call, within
// the round's policy (flush.go) and the pacer's grants (pacer.go), and settle every record's end:
// delivered, dropped, of unknown outcome, or back in the buffer (counts.go). Records are built by
// records.go and sent by the Kinesis client (kinesis.go).

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// shipper moves events from the buffer into Kinesis. One ship round runs at a time; every event
// it takes from the buffer ends delivered, dropped, of unknown outcome, or back in the buffer,
// and is counted (counts.go).
//
// Pushback — throttled entries, KMS throttling, 5xx answers, lost answers, an unreachable
// endpoint, credentials that cannot be had — never costs the function time: what was not stored
// goes back to the buffer, the pacer lowers the rate, and the data waits for a later round.
type shipper struct {
	cfg   config
	buf   *buffer
	stats *stats
	logs  *logger
	meta  recordMeta
	pace  *pacer // the stream's: whole calls refused, and entries of no paced shard
	// shardPace paces each shard that has refused entries (shards.go); starved names the shards
	// whose entries the last take left in the buffer; unsharded is what the last call's entries
	// of no paced shard did, for the stream's pacer.
	shardPace *shardPacers
	starved   map[string]bool
	allowed   map[string]int  // what each paced shard's pacer granted the call being taken
	strangers map[string]bool // keys of the call's entries that no paced shard gates
	unsharded shardCall

	mu       sync.Mutex // one round at a time; guards the fields below
	client   recordPutter
	body     []byte       // reused request body
	scratch  []byte       // reused record data
	gz       *gzip.Writer // reused by cloudwatch records
	countsAt time.Time
	countsOf lossMarks
	metrics  *emfWriter // an EMF line with each counts record (emf.go); nil: off
	// failStreak counts calls failed whole in a row (no answer, a 5xx, KMS throttling); while
	// it is not zero, calls wait for retryAt, the backoff, across rounds. downStreak counts
	// those of them that were not refusals whatever the rate: from outageAfter on, calls carry
	// at most probeEntries. A call refused for KMS throttling costs the shards nothing whatever
	// its size, and the one that is stored takes the backlog, so it stays full (simulated, 90%
	// of calls refused under `end`: 0.68–0.83 of the events delivered with probes, 0.89–0.96
	// with full calls; BENCHMARKS.md, "Whole-call refusals").
	failStreak int
	downStreak int
	retryAt    time.Time
	// answers holds the answer times of the last calls: what a call is expected to take (the
	// median, which one spike does not move) and how long it may take (the slowest).
	answers answerTimes
	// refused holds the shares of entries the last answered calls had refused: how likely a
	// one-entry call is to be refused now (lastWordTime).
	refused refusedShares
	// entryRefused holds the same shares for the calls answered entry by entry only, not refused
	// whole: how likely one copy of the last counts record is to be refused (countsSpread).
	entryRefused refusedShares
	// wholeRefused holds, for the same calls and those KMS refused whole, 1 for the latter and 0
	// for the former: how likely one call of the last counts record is to be refused whole
	// whatever its entries (countsSpread).
	wholeRefused refusedShares
	// lastWhole: the last answered call was refused whole (throughput, KMS throttling).
	lastWhole bool

	sending    atomic.Bool  // a PutRecords call is on the wire (read without mu)
	pushbackAt atomic.Int64 // unix nanoseconds of the last pushback (read without mu)
	unanswered atomic.Bool  // the last call got no answer: the next one may hang too

	// jitter draws backoffs (rand.Int64N); the simulation seeds its own, to replay a run.
	jitter func(n int64) int64

	// newClient builds the Kinesis client on first use, so that loading the AWS configuration
	// stays off the start-up path. Tests replace it.
	newClient func(ctx context.Context) (recordPutter, error)
}

// recordPutter is what a ship round needs of Kinesis: one PutRecords call, and a way to drop
// credentials that expired. kinesisClient is the production one; tests put a model of a stream
// here to run the round logic in process, on a virtual clock.
type recordPutter interface {
	putRecords(ctx context.Context, body []byte, n int) ([]putResult, error)
	invalidateCredentials()
}

func newShipper(cfg config, buf *buffer, st *stats, logs *logger, meta recordMeta) *shipper {
	s := &shipper{cfg: cfg, buf: buf, stats: st, logs: logs, meta: meta, pace: newPacer(time.Now),
		starved: map[string]bool{}, allowed: map[string]int{}, strangers: map[string]bool{}, metrics: newEMFWriter(cfg.Metrics), jitter: rand.Int64N}
	s.shardPace = newShardPacers(func() *pacer { return newShardPacer(s.pace.now) })
	s.newClient = func(ctx context.Context) (recordPutter, error) {
		c, region, err := loadKinesisClient(ctx, cfg.clientSettings(), s.meta.function, st, logs)
		if err == nil && s.meta.region == "" {
			s.meta.setRegion(region) // the envelope's region, once the AWS configuration says it
		}
		return c, err
	}
	return s
}

// pressured reports whether the stream pushed back within pressureMemory.
func (s *shipper) pressured(now time.Time) bool {
	at := s.pushbackAt.Load()
	return at != 0 && now.Sub(time.Unix(0, at)) < pressureMemory
}

// lastRefusedWhole reports whether the last answered call was refused whole, however long ago:
// it stored nothing, and no answer since says the stream takes anything.
func (s *shipper) lastRefusedWhole() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastWhole
}

// ship sends the events buffered before the mark until none is left or ctx ends, waiting for the
// pacer and backoffs as needed; it returns ctx's error when ctx ended it.
func (s *shipper) ship(ctx context.Context, before uint64) error {
	return s.shipRound(ctx, &round{before: before})
}

// shipRound runs one round (see round) over the events buffered before r.before. It returns ctx's
// error when ctx ended it, or errOutOfTime when its deadline was too near for another call.
func (s *shipper) shipRound(ctx context.Context, r *round) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, _ := s.buf.state(); n == 0 || !s.ready(ctx) {
		return nil
	}
	defer s.stats.noteFlush(time.Now(), s.stats.flushCounters())
	waited := false
	for ctx.Err() == nil {
		if at, ok := r.afterSoft(); ok && (r.pushed.Load() || time.Since(at)+s.answers.typical() >= r.reach()) {
			return nil
		}
		if s.failStreak > 0 && !waited {
			// Calls are failing whole (an outage, 5xx): wait out the backoff, across rounds.
			if d := time.Until(s.retryAt); d > 0 {
				if !s.pause(ctx, r, d) {
					break
				}
				waited = true
				continue
			}
		}
		waited = false
		queued, _ := s.buf.state()
		want := min(queued, maxRecordsPerCall)
		if s.downStreak >= outageAfter {
			want = min(want, probeEntries)
		}
		n := s.pace.grant(want)
		if n == 0 {
			if want == 0 {
				return nil
			}
			if !s.pause(ctx, r, s.pace.wait(want)) {
				break
			}
			continue
		}
		if !s.answerable(ctx, 0) {
			s.pace.refund(n)
			return errOutOfTime
		}
		recs := s.takeRecords(r, n)
		var rest int // what the call leaves queued, for a round that may leave refusals
		if r.leaveRefused {
			rest, _ = s.buf.state()
		}
		if len(recs) == 0 {
			s.pace.refund(n)
			if wait := s.shardWait(); wait > 0 && s.pause(ctx, r, wait) {
				continue // what is left waits for its shards' pacers
			}
			return nil
		}
		s.pace.refund(n - len(recs))
		throttled, anyway, pushback := s.send(ctx, r, recs)
		if !s.learn(r, len(recs), n < want, throttled, pushback) {
			return nil
		}
		if r.leaveRefused {
			if rest == 0 && anyway > 0 && throttled == 0 && pushback == noPushback {
				r.triedAnyway++
			} else {
				r.triedAnyway = 0
			}
			if r.triedAnyway >= triesAnyway {
				return nil // the rest goes with the next round
			}
		}
	}
	if r.outOfTime {
		return errOutOfTime
	}
	return ctx.Err()
}

// errOutOfTime ends a round whose deadline no call would beat (answerable): ctx's deadline, met
// a little early.
var errOutOfTime = fmt.Errorf("no call would be answered before the round's deadline: %w", context.DeadlineExceeded)

// triesAnyway is how many calls a round that may leave entries refused whatever the rate
// (round.leaveRefused) gives them: each try stores each entry with the same chance, so the
// backlog shrinks by that share per call, and its last few would hold the invocation a call
// each (30% refused at random: 50 entries take about five calls, 3 leave 1 or 2 for the next
// round).
const triesAnyway = 3

// ready makes sure the Kinesis client exists, and reports whether it does.
func (s *shipper) ready(ctx context.Context) bool {
	if s.client != nil {
		return true
	}
	c, err := s.newClient(ctx)
	if err != nil {
		// Without a region or configuration nothing can ever be sent: keep the events while the
		// buffer has room (the cap drops and counts the oldest), and say so once.
		s.logs.once("client", "kinesis: %v; telemetry is buffered and dropped when the buffer is full", err)
		return false
	}
	s.client = c
	return true
}

// learn takes in how one call of sent entries met the stream (starved: the pacer granted less
// than the backlog wanted), and reports whether the round may go on.
//
// The pacer learns from throughput pushback only, as the SDKs' adaptive mode does. A slow answer
// is not pushback: a stream that answers late still stores what it is sent, and sending less
// would only leave the backlog to the shutdown. An outage or 5xx says nothing about the stream's
// rate either, and is met with backoff (and, when calls keep failing whole, small probing calls).
func (s *shipper) learn(r *round, sent int, starved bool, throttled int, pushback callPushback) bool {
	if pushback == noCredentials {
		s.pushbackAt.Store(time.Now().UnixNano())
		r.pushed.Store(true)
		return false
	}
	if pushback == throughput {
		s.pace.observe(sent, 0, sent, true, starved)
	} else {
		s.pace.observe(s.unsharded.sent, s.unsharded.accepted, s.unsharded.throttled, false, starved)
	}
	if pushback == failure || pushback == refusedWhole {
		s.failStreak++
		s.retryAt = time.Now().Add(backoff(s.failStreak-1, s.jitter))
	} else {
		s.failStreak = 0
	}
	if pushback == failure {
		s.downStreak++
	} else {
		s.downStreak = 0
	}
	if throttled > 0 || pushback != noPushback {
		s.pushbackAt.Store(time.Now().UnixNano())
		r.pushed.Store(true)
		r.urgent = r.urgent || r.escalate
	}
	return true
}

// takeRecords takes the next call's records from the buffer: at most n records within the call
// limits, oldest first before the mark, or most valuable first when the round is urgent.
func (s *shipper) takeRecords(r *round, n int) []pendingRecord {
	// n counts records; an aggregated record holds many events.
	events := min(n, s.meta.format.eventsPerCall())
	if s.meta.format.aggregated() {
		events = s.meta.format.eventsPerCall()
	}
	// A paced shard's entries get what its pacer grants the call; the rest stay in the buffer,
	// and the call carries the shards that accept.
	clear(s.starved)
	clear(s.allowed)
	clear(s.strangers)
	var skip func(*event) bool
	if s.shardPace.paced() {
		for shard, p := range s.shardPace.pacers {
			if p.paced {
				s.allowed[shard] = p.grant(maxRecordsPerCall)
			}
		}
		strangers := s.shardPace.strangerWindow()
		skip = func(e *event) bool {
			key := s.meta.partitionKey(e)
			shard, known := s.shardPace.gate(key)
			switch {
			case shard == "" && strangers == 0:
				return true // the next call, once this one's strangers are answered
			case shard == "":
				strangers--
				s.strangers[key] = true
				return false
			case s.allowed[shard] <= 0 && (known || s.allowed[shard] < 0 || !s.shardPace.lend(shard, s.pace.now())):
				s.starved[shard] = true
				return true
			}
			s.allowed[shard]-- // below zero: lent (shardPacers.lend), repaid by the refund below
			return false
		}
	}
	var evs []event
	room := maxCallBytes
	if r.countsFirst {
		// The round's first call carries it whatever the pacers say; later calls carry it first
		// while it waits, as its shard's pacer allows (a refused counts record must not be
		// re-sent in a loop).
		if e, ok := s.buf.takeCounts(); ok && s.countsMayGo(r, &e) {
			evs = append(evs, e)
			events--
			room -= s.meta.callSize(&e)
		}
	}
	evs = append(evs, s.buf.takeSkipping(r.before, r.urgent, events, room, s.meta.callSize, skip)...)
	for shard, left := range s.allowed {
		s.shardPace.pacers[shard].refund(left)
	}
	if len(evs) == 0 {
		return nil
	}
	recs := s.meta.pack(evs, s.cfg.RecordBytes, &s.gz)
	if k := min(fitCall(recs), n); k < len(recs) {
		s.buf.putBack(eventsOf(recs[k:]))
		recs = recs[:k]
	}
	return recs
}

// pause waits d, as the round allows: never once the invocation's runtime is done, and never
// through ctx's deadline (it leaves time for another attempt before it). It reports whether the
// round may go on.
func (s *shipper) pause(ctx context.Context, r *round, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	if _, ok := r.afterSoft(); ok {
		return false
	}
	if deadline, ok := ctx.Deadline(); ok {
		left := time.Until(deadline)
		d = min(d, left/2)
		if d > 0 && !s.answerable(ctx, d) {
			r.outOfTime = true // a call started after the pause would not be answered in time (answerable)
			return false
		}
		if d <= 0 {
			// The deadline is a nanosecond away: no time for another attempt. (Without this the
			// round waits ever shorter halves; on a virtual clock, which stands still while the
			// round runs, it would never reach the deadline.) The round ends with ctx.
			<-ctx.Done()
			return false
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-r.softDone():
		return false
	}
}

// answerable reports whether a call started after waiting `after` is expected to be answered
// before ctx's deadline, at the stream's usual answer time (before the first answer nothing is
// known, and it is). A call that is not would be cut on the wire: its entries of unknown outcome
// (stored perhaps, and sent again), and the time and the shard's room it took lost to what comes
// after it (at shutdown, the last counts record). Simulated, 10,000 environments at 2× overload
// that end together: BENCHMARKS.md, "Calls the deadline would cut".
func (s *shipper) answerable(ctx context.Context, after time.Duration) bool {
	deadline, ok := ctx.Deadline()
	return !ok || time.Until(deadline)-after >= s.answers.typical()
}

// countsMayGo reports whether a counts record may head the round's next call: in its first call
// always, later as its shard's pacer allows. One that may not is put back.
func (s *shipper) countsMayGo(r *round, e *event) bool {
	first := !r.countsSent
	r.countsSent = true
	if first {
		return true
	}
	if s.shardPace.grantOne(s.meta.partitionKey(e)) {
		return true
	}
	s.buf.putBack([]event{*e})
	return false
}

// shardWait is how long until the first of the shards the last take left out grants again; 0
// when it left none out.
func (s *shipper) shardWait() time.Duration {
	var wait time.Duration
	for shard := range s.starved {
		if p := s.shardPace.pacers[shard]; p != nil {
			if d := max(p.wait(maxRecordsPerCall), time.Millisecond); wait == 0 || d < wait {
				wait = d
			}
		}
	}
	return wait
}

// observeShards learns from one answered call which shards its entries went to, tells each paced
// shard's pacer what its entries did, and keeps the rest for the stream's pacer. It returns how
// many entries were refused whatever the rate (shardPacers.learn).
func (s *shipper) observeShards(recs []pendingRecord, results []putResult) (anyway int) {
	byShard, unknown, anyway := s.shardPace.learn(recs, results, s.strangers)
	s.shardPace.judgeCrowd(s.pace.now(), s.stats.toShip(), s.stats.delivered.Load())
	s.unsharded = unknown
	for shard, c := range byShard {
		p := s.shardPace.pacers[shard]
		if p == nil {
			s.unsharded.sent += c.sent
			s.unsharded.accepted += c.accepted
			continue
		}
		p.observe(c.sent, c.accepted, c.throttled, false, s.starved[shard])
	}
	for shard := range s.starved {
		if p := s.shardPace.pacers[shard]; p != nil && byShard[shard] == nil {
			p.observe(0, 0, 0, false, true)
		}
	}
	return anyway
}

// callPushback is how a whole call met pushback.
type callPushback int

const (
	noPushback    callPushback = iota
	throughput                 // refused whole for throughput (not KMS throttling: refusedWhateverRate)
	failure                    // no answer, a 5xx, credentials that cannot be had
	refusedWhole               // refused whole whatever the rate (KMS throttling)
	noCredentials              // the role cannot be assumed now: nothing was sent
)

// send makes one PutRecords call and settles its records: stored ones are delivered, refused ones
// dropped, the rest go back to the buffer. It returns how many entries were refused for
// throughput, how many whatever the rate (shardPacers.learn), and how the whole call met
// pushback.
func (s *shipper) send(ctx context.Context, r *round, recs []pendingRecord) (throttled, anyway int, pushback callPushback) {
	s.body = s.encodeBody(s.body[:0], recs)
	s.unsharded = shardCall{}
	callCtx, done := s.guard(ctx, r)
	s.sending.Store(true)
	start := time.Now()
	calls := max(1, r.calls)
	results, err := s.put(callCtx, len(recs), calls)
	took := time.Since(start)
	s.sending.Store(false)
	// Whether the call was given up (cut, or the round's end), read before done cancels callCtx.
	givenUp := ctx.Err() != nil || callCtx.Err() != nil
	done()
	held, settle := recs, s.settleAnswered // held: the records whose events the call carried
	if r.copies {
		held, settle = recs[:1], s.settleCopies
	}
	if ce := (*credentialsError)(nil); errors.As(err, &ce) {
		// Nothing was sent, and the role will not be asked again for a while (credentials.go,
		// which has logged the fix): the events wait, and the round ends.
		s.shrinkBody()
		s.retryLater(held, false)
		return 0, 0, noCredentials
	}
	s.stats.calls.Add(uint64(calls))
	s.stats.entries.Add(uint64(calls * len(recs)))
	s.stats.bytesSent.Add(uint64(calls * len(s.body)))
	if slices.ContainsFunc(held, func(p pendingRecord) bool { return p.events[0].tried }) {
		s.stats.retries.Add(1)
	}
	s.shrinkBody()
	var ne *networkError
	s.unanswered.Store(errors.As(err, &ne))
	if ae := (*apiError)(nil); err == nil || errors.As(err, &ae) {
		// A call refused whole (KMS throttling, a 5xx) was answered too: its time is the
		// stream's answer time. Left out, a stream that refused every call whole had no answer
		// time at all, and answerable let calls start at the deadline, to be cut on the wire
		// (simulated, 1,000 environments whose calls KMS refuses nine times in ten under `end`:
		// 894 events of unknown outcome. BENCHMARKS.md, "Refused answers are answers").
		s.answers.add(took)
	}
	switch {
	case err == nil:
		anyway := s.observeShards(recs, results)
		refused := settle(recs, results)
		s.refused.add(float64(refused) / float64(len(recs)))
		s.entryRefused.add(float64(refused) / float64(len(recs)))
		s.wholeRefused.add(0)
		s.lastWhole = false
		return refused - anyway, anyway, noPushback
	case !isRetryable(err):
		s.drop(held, err)
		return 0, 0, noPushback
	}
	pushback = s.settleFailed(err, held, !givenUp)
	if pushback == throughput || pushback == refusedWhole {
		s.refused.add(1)
		s.lastWhole = true
	}
	if pushback == refusedWhole {
		s.wholeRefused.add(1)
	}
	return 0, 0, pushback
}

// put makes the PutRecords call of s.body, of n entries: as calls identical calls at once when
// calls > 1 (the last counts record where KMS refuses calls whole, each call on its own:
// countsSpread), answered by the best of their answers (putRank). It waits for every call: each
// ends with its answer or with ctx.
func (s *shipper) put(ctx context.Context, n, calls int) ([]putResult, error) {
	if calls <= 1 {
		return s.client.putRecords(ctx, s.body, n)
	}
	type answer struct {
		results []putResult
		err     error
	}
	answers := make(chan answer, calls)
	for range calls {
		go func() {
			results, err := s.client.putRecords(ctx, s.body, n)
			answers <- answer{results, err}
		}()
	}
	best := <-answers
	rank := putRank(best.results, best.err)
	for range calls - 1 {
		a := <-answers
		if r := putRank(a.results, a.err); r < rank {
			best, rank = a, r
		}
	}
	return best.results, best.err
}

// putRank orders the answers of identical calls, best first: one that stored an entry, one
// answered entry by entry, one refused whole (answered), none.
func putRank(results []putResult, err error) int {
	var ae *apiError
	switch {
	case err == nil && slices.ContainsFunc(results, func(r putResult) bool { return r.ErrorCode == "" }):
		return 0
	case err == nil:
		return 1
	case errors.As(err, &ae):
		return 2
	}
	return 3
}

// settleAnswered settles the records of an answered call, entry by entry, and returns how many
// were refused for throughput (or another passing fault): those go back to the buffer.
func (s *shipper) settleAnswered(recs []pendingRecord, results []putResult) (throttled int) {

	var again []pendingRecord
	for i, res := range results {
		switch {
		case res.ErrorCode == "":
			s.delivered(recs[i])
		case isRetryableCode(res.ErrorCode, 0):
			if isThrottleCode(res.ErrorCode) {
				s.stats.throttles.Add(1)
			}
			throttled++
			again = append(again, recs[i])
		default:
			s.drop(recs[i:i+1], &apiError{Code: res.ErrorCode, Message: res.ErrorMessage})
		}
	}
	s.retryLater(again, false)
	return throttled
}

// settleCopies settles copies of one record (round.copies): delivered if any copy was stored, else
// back to the buffer if any was refused for a passing fault, else dropped. It returns how many
// copies were refused for a passing fault.
func (s *shipper) settleCopies(copies []pendingRecord, results []putResult) (throttled int) {
	stored, final := false, -1
	for i, res := range results {
		switch {
		case res.ErrorCode == "":
			stored = true
		case isRetryableCode(res.ErrorCode, 0):
			if isThrottleCode(res.ErrorCode) {
				s.stats.throttles.Add(1)
			}
			throttled++
		default:
			final = i
		}
	}
	switch {
	case stored:
		s.delivered(copies[0])
	case throttled > 0:
		s.retryLater(copies[:1], false)
	default:
		s.drop(copies[:1], &apiError{Code: results[final].ErrorCode, Message: results[final].ErrorMessage})
	}
	return throttled
}

// settleFailed puts back the records of a call that failed whole with a passing fault, as maybe
// stored when the request was written, and says how the call met pushback; say tells it to log
// the failure (not when the call was cut on purpose).
func (s *shipper) settleFailed(err error, recs []pendingRecord, say bool) callPushback {
	unknown := maybeStored(err)
	if unknown {
		// Kinesis may have stored them: sending them again risks a duplicate (same id), not
		// sending them a loss. They go again, and count as unconfirmed.
		s.stats.unconfirmed.Add(telemetryEvents(eventsOf(recs)))
	}
	code := errorCode(err)
	if say {
		s.logs.once("retry:"+code, "kinesis: PutRecords failed, the events wait in the buffer: %v", err)
	}
	if code == "ExpiredTokenException" {
		s.client.invalidateCredentials()
	}
	s.retryLater(recs, unknown)
	if isThrottleCode(code) {
		s.stats.throttles.Add(1)
		if !refusedWhateverRate(code) {
			return throughput
		}
		return refusedWhole
	}
	return failure
}

// guard derives the context of one call. After the invocation's runtime is done a call may run
// until soft + budget; once the round has met pushback, or the last call went unanswered, only
// wireGrace from then (or from its start). A stream that answers, even slowly or with throttled
// entries, is not cut: its calls would be stored and sent again as duplicates.
func (s *shipper) guard(ctx context.Context, r *round) (context.Context, func()) {
	callCtx, cancel := context.WithCancel(ctx)
	if r.soft == nil {
		return callCtx, cancel
	}
	start := time.Now()
	var (
		mu    sync.Mutex
		ended bool        // the call has ended: arm no timer
		cut   *time.Timer // cancels the call at its cut
	)
	arm := func() {
		at, _ := r.afterSoft()
		end := at.Add(r.budget)
		if r.pushed.Load() || s.unanswered.Load() {
			// The stream pushes back in this round, or left the last call unanswered: a call
			// that does not answer soon is not worth the function's time.
			end = earliest(end, later(at, start).Add(wireGrace))
		}
		mu.Lock()
		defer mu.Unlock()
		if !ended {
			cut = time.AfterFunc(time.Until(end), cancel)
		}
	}
	stopWaiting := func() bool { return false }
	if _, after := r.afterSoft(); after {
		arm()
	} else {
		stopWaiting = context.AfterFunc(r.soft, arm)
	}
	return callCtx, func() {
		stopWaiting()
		mu.Lock()
		ended = true
		if cut != nil {
			cut.Stop()
		}
		mu.Unlock()
		cancel()
	}
}

// shrinkBody lets a request body grown by a spike (up to 5 MiB) go, rather than hold it for
// the life of the environment.
func (s *shipper) shrinkBody() {
	const keep = 256 << 10
	if cap(s.body) > keep {
		s.body = nil
	}
	if cap(s.scratch) > keep {
		s.scratch = nil
	}
}

// retryLater puts records back in the buffer for a later call; unknown says the call's outcome
// is unknown, so that they may already be stored.
func (s *shipper) retryLater(recs []pendingRecord, unknown bool) {
	evs := eventsOf(recs)
	for i := range evs {
		evs[i].tried = true
		evs[i].inDoubt = evs[i].inDoubt || unknown
	}
	s.buf.putBack(evs)
}

// backoff is "full jitter": a random wait up to an exponentially growing cap; jitter returns a
// random number in [0, n).
func backoff(attempt int, jitter func(n int64) int64) time.Duration {
	const base, ceiling = 50 * time.Millisecond, 2 * time.Second
	limit := ceiling
	if attempt < 6 {
		limit = min(ceiling, base<<attempt)
	}
	return time.Duration(jitter(int64(limit) + 1))
}

func (s *shipper) delivered(r pendingRecord) {
	s.stats.records.Add(1)
	s.buf.release(r.events, outcome{kind: outcomeDelivered})
}

// drop forgets records Kinesis will never accept, counts them under the error's code (as unknown
// when an earlier call may have stored them) and says why once per code.
func (s *shipper) drop(recs []pendingRecord, err error) {
	code := errorCode(err)
	var n uint64
	for _, r := range recs {
		n += telemetryEvents(r.events)
		s.buf.release(r.events, outcome{kind: outcomeRejected, code: code})
	}
	s.logs.once("drop:"+code, "kinesis: PutRecords rejected %d events, which are dropped and counted: %v%s", n, err, hint(code, s.cfg.Stream, s.meta.region))
}

// countsEvery is how often a counts record is shipped while telemetry flows; any loss makes one
// due at the next flush.
const countsEvery = time.Minute

// emitCountsIfDue buffers a counts record when something was lost since the last one, or when
// the last one is older than countsEvery and telemetry has flowed since.
func (s *shipper) emitCountsIfDue(now time.Time) {
	s.mu.Lock()
	due := s.stats.marks() != s.countsOf || (now.Sub(s.countsAt) >= countsEvery && s.stats.received.Load() > 0)
	s.mu.Unlock()
	if due {
		s.emitCounts(now)
	}
}

// emitCounts buffers a counts record. It goes to the platform queue: never dropped for room.
func (s *shipper) emitCounts(now time.Time) {
	s.mu.Lock()
	s.countsAt, s.countsOf = now, s.stats.marks()
	s.mu.Unlock()
	raw := []byte(`{"time":"` + now.UTC().Format("2006-01-02T15:04:05.000Z") + `","type":"` + countsType + `","record":`)
	raw = append(raw, s.stats.json(s.buf.buffered())...)
	raw = append(raw, '}')
	s.buf.addOwn(event{raw: raw, typ: countsType, level: -1})
	s.metrics.write(now, s.stats)
}

// encodeBody appends the PutRecords JSON request for recs to dst.
func (s *shipper) encodeBody(dst []byte, recs []pendingRecord) []byte {
	return appendPutRecordsBody(dst, s.cfg.Stream, recs, func(r *pendingRecord) []byte {
		if r.data != nil {
			return r.data // kpl and cloudwatch records are built whole by pack
		}
		s.scratch = s.meta.appendRecordData(s.scratch[:0], r, s.meta.format == formatNDJSON)
		return s.scratch
	})
}
