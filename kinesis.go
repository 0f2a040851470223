package main

// The Kinesis side: the shipper (ship rounds, what they may do after the invocation's runtime is
// done, the pacer that estimates what the stream accepts, backoff, how each record's end is
// settled), records (pendingRecord, packRecords, the event/ndjson envelope with truncation, the
// partition keys) and PutRecords request bodies within the service's limits, and the client:
// SigV4 signing, the call itself, and the classification of its answer (the only place that knows
// HTTP status codes and Kinesis error shapes). The kpl and cloudwatch formats are records.go's.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
)

// PutRecords limits. Sizes count record data plus partition key, before base64.
const (
	maxRecordsPerCall = 500
	maxCallBytes      = 5 << 20
	maxRecordBytes    = 1 << 20
)

// shipper moves events from the buffer into Kinesis. One ship round runs at a time; every event
// it takes from the buffer ends delivered, dropped, of unknown outcome, or back in the buffer,
// and is counted (counts.go).
//
// Pushback — throttled entries, KMS throttling, 5xx answers, lost or slow answers, an unreachable
// endpoint, credentials that cannot be had — never costs the function time: what was not stored
// goes back to the buffer, the pacer lowers the rate, and the data waits for a later round.
type shipper struct {
	cfg   config
	buf   *buffer
	stats *stats
	logs  *logger
	meta  recordMeta
	pace  *pacer

	mu       sync.Mutex // one round at a time; guards the fields below
	client   recordPutter
	body     []byte       // reused request body
	scratch  []byte       // reused record data
	gz       *gzip.Writer // reused by cloudwatch records
	countsAt time.Time
	countsOf lossMarks
	// failStreak counts calls failed whole in a row (no answer, a 5xx); while it is not zero,
	// calls carry at most probeEntries and wait for retryAt, the backoff, across rounds.
	failStreak int
	retryAt    time.Time
	// latency and perEntry are moving averages of how long the stream takes to answer a call,
	// and that per entry: what a call after runtimeDone is expected to cost the function, and
	// how many entries fit in the time it still runs.
	latency  time.Duration
	perEntry float64 // nanoseconds
	// fastest is the least answer time in the current and the previous half of baseWindow: the
	// stream's answer time without a queue, against which slowness is measured.
	fastest   [2]time.Duration
	fastestAt time.Time // start of the current half

	sending    atomic.Bool  // a PutRecords call is on the wire (read without mu)
	pushbackAt atomic.Int64 // unix nanoseconds of the last pushback (read without mu)
	unanswered atomic.Bool  // the last call got no answer: the next one may hang too

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
	s := &shipper{cfg: cfg, buf: buf, stats: st, logs: logs, meta: meta, pace: newPacer(time.Now)}
	s.newClient = func(ctx context.Context) (recordPutter, error) {
		return loadKinesisClient(ctx, cfg, &s.meta, st, logs)
	}
	return s
}

// Pushback timing.
const (
	// wireGrace is how long a call on the wire may go on after the invocation's runtime is done,
	// once the stream pushes back. Past it the call is cut: its events become of unknown outcome
	// and are sent again later.
	wireGrace = 30 * time.Millisecond
	// pressureMemory is how long one pushback makes the stream count as pushing back.
	pressureMemory = 10 * time.Second
	// probeEntries is the most a call carries while calls fail whole: an outage costs the
	// stream (and the amplification) a trickle, not the backlog again and again.
	probeEntries = 10
	// slowAnswer: an answer that takes this much longer than the stream's fastest within
	// baseWindow is pushback, as throttling is: the stream (or the way to it) queues what it is
	// sent. Measured against the fastest answer, as LEDBAT measures queueing delay, so that a
	// stream that is far away, and always slow to answer, is not taken for an overloaded one.
	slowAnswer = 100 * time.Millisecond
	baseWindow = time.Minute
	// sizedCallMin is the fewest entries a call sized by the answer time carries: below it,
	// the fixed cost of a call dominates and a smaller call does not answer sooner.
	sizedCallMin = 50
)

// round says how one ship round may spend its time. The zero value (with a mark) sends until
// everything before the mark is sent or ctx ends, waiting for the pacer and backoffs as needed.
type round struct {
	before uint64 // send only events buffered before this mark
	// soft is closed when the invocation's runtime is done (nil when no invocation waits: at
	// shutdown, in managed mode, for KINESIS_TELEMETRY_FLUSH=end). From then on the round never
	// waits, starts no call once it has seen pushback (a slow answer included) or when the
	// stream's recent answer time would take it past its reach, and ends at the latest budget
	// later; a call on the wire gets wireGrace once the stream pushes back, then it is cut.
	soft   <-chan struct{}
	budget time.Duration
	// allowance (when not zero, and below budget) is how long after soft a call may be expected
	// to end: after soft a new call starts only if the stream's recent answer time fits in what
	// is left of it. expectSoft, when known, is when soft is expected (the function's usual run
	// time): until soft, calls are sized by the stream's answer time per entry to end by
	// expectSoft + allowance, so that a call on the wire at soft does not hold the function.
	allowance  time.Duration
	expectSoft time.Time
	// urgent takes the most valuable events first (takeNewest); escalate turns it on at the
	// first pushback (a shutdown that finds the stream pushing back).
	urgent, escalate bool

	softAt atomic.Int64 // unix nanoseconds when soft was first seen closed
	pushed atomic.Bool  // this round saw pushback
	slowed bool         // this round saw a slow answer (pushback, but no reason to cut a call)
}

// afterSoft reports whether soft is closed, and since when.
func (r *round) afterSoft() (time.Time, bool) {
	if r.soft == nil {
		return time.Time{}, false
	}
	if at := r.softAt.Load(); at != 0 {
		return time.Unix(0, at), true
	}
	select {
	case <-r.soft:
		r.softAt.CompareAndSwap(0, time.Now().UnixNano())
		return time.Unix(0, r.softAt.Load()), true
	default:
		return time.Time{}, false
	}
}

// pressured reports whether the stream pushed back within pressureMemory.
func (s *shipper) pressured(now time.Time) bool {
	at := s.pushbackAt.Load()
	return at != 0 && now.Sub(time.Unix(0, at)) < pressureMemory
}

// ship sends the events buffered before the mark until none is left or ctx ends, waiting for the
// pacer and backoffs as needed; it returns ctx's error when ctx ended it.
func (s *shipper) ship(ctx context.Context, before uint64) error {
	return s.shipRound(ctx, &round{before: before})
}

// shipRound runs one round (see round) over the events buffered before r.before. It returns ctx's
// error when ctx ended it.
func (s *shipper) shipRound(ctx context.Context, r *round) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, _ := s.buf.state(); n == 0 {
		return nil
	}
	if s.client == nil {
		c, err := s.newClient(ctx)
		if err != nil {
			// Without a region or configuration nothing can ever be sent: keep the events while
			// the buffer has room (the cap drops and counts the oldest), and say so once.
			s.logs.once("client", "kinesis: %v; telemetry is buffered and dropped when the buffer is full", err)
			return nil
		}
		s.client = c
	}
	defer s.stats.noteFlush(time.Now(), s.stats.flushCounters())
	waited := false
	for ctx.Err() == nil {
		if at, ok := r.afterSoft(); ok && (r.pushed.Load() || r.slowed || time.Since(at)+s.latency >= r.reach()) {
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
		if s.failStreak > 0 {
			want = min(want, probeEntries)
		}
		want = min(want, s.sizedCall(r))
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
		recs := s.takeRecords(r, n)
		if len(recs) == 0 {
			s.pace.refund(n)
			return nil
		}
		s.pace.refund(n - len(recs))
		accepted, throttled, pushback := s.send(ctx, r, recs)
		if pushback == noCredentials {
			s.pushbackAt.Store(time.Now().UnixNano())
			r.pushed.Store(true)
			return nil
		}
		// The pacer learns from throughput pushback, as the SDKs' adaptive mode does, and from
		// slow answers, as delay-based congestion control does (TCP Vegas, LEDBAT): a stream whose
		// answers slow down is queueing what it is sent, and sending less lets the queue drain, so
		// that calls end within the function's run again. An outage or 5xx says nothing about the
		// stream's rate, and is met with backoff and small probing calls instead.
		s.pace.observe(len(recs), accepted, throttled, pushback == throughput || pushback == slow, n < want)
		if pushback == slow {
			// A slow answer is pushback for the function's time: no new call after soft, and
			// adaptive keeps old data in the background. A stream that answers is not cut,
			// though: its calls are stored, and a cut one would be sent again as a duplicate.
			s.pushbackAt.Store(time.Now().UnixNano())
			r.slowed = true
			pushback = noPushback
		}
		if pushback == failure {
			s.failStreak++
			s.retryAt = time.Now().Add(backoff(s.failStreak - 1))
		} else {
			s.failStreak = 0
		}
		if throttled == 0 && pushback == noPushback {
			continue
		}
		s.pushbackAt.Store(time.Now().UnixNano())
		r.pushed.Store(true)
		r.urgent = r.urgent || r.escalate
	}
	return ctx.Err()
}

// reach is how long after soft the round may be expected to ship: its allowance, within budget.
func (r *round) reach() time.Duration {
	if r.allowance > 0 {
		return min(r.allowance, r.budget)
	}
	return r.budget
}

// sizedCall is the most entries the round's next call may carry so that, at the stream's recent
// answer time per entry, it ends by soft (as expected or as it came) + the round's reach; at
// least sizedCallMin. Rounds without soft, and a stream not yet measured, are not limited.
func (s *shipper) sizedCall(r *round) int {
	end := r.expectSoft
	if at, ok := r.afterSoft(); ok {
		end = at
	}
	if r.soft == nil || end.IsZero() || s.perEntry <= 0 {
		return maxRecordsPerCall
	}
	left := time.Until(end) + r.reach()
	return max(sizedCallMin, min(maxRecordsPerCall, int(float64(left)/s.perEntry)))
}

// observeAnswer learns the stream's answer time from one answered call of n entries, and reports
// whether it was slow (pushback): slowAnswer or more over the fastest answer within baseWindow.
func (s *shipper) observeAnswer(took time.Duration, n int) bool {
	if now := time.Now(); s.fastestAt.IsZero() || now.Sub(s.fastestAt) >= baseWindow/2 {
		s.fastest[1], s.fastest[0], s.fastestAt = s.fastest[0], took, now
	}
	s.fastest[0] = min(s.fastest[0], took)
	base := s.fastest[0]
	if s.fastest[1] > 0 {
		base = min(base, s.fastest[1])
	}
	const weight = 0.25
	if s.latency == 0 {
		s.latency, s.perEntry = took, float64(took)/float64(max(n, 1))
	} else {
		s.latency += time.Duration(weight * float64(took-s.latency))
		s.perEntry += weight * (float64(took)/float64(max(n, 1)) - s.perEntry)
	}
	return took-base >= slowAnswer
}

// takeRecords takes the next call's records from the buffer: at most n records within the call
// limits, oldest first before the mark, or most valuable first when the round is urgent.
func (s *shipper) takeRecords(r *round, n int) []pendingRecord {
	// n counts records; an aggregated record holds many events.
	events := min(n, s.eventsPerCall())
	if s.cfg.RecordFormat.aggregated() {
		events = s.eventsPerCall()
	}
	var evs []event
	if r.urgent {
		evs = s.buf.takeNewest(events, maxCallBytes, s.recordSize)
	} else {
		evs = s.buf.take(r.before, events, maxCallBytes, s.recordSize)
	}
	if len(evs) == 0 {
		return nil
	}
	recs := s.packRecords(evs)
	if k := min(fitCall(recs), n); k < len(recs) {
		s.buf.putBack(eventsOf(recs[k:]))
		recs = recs[:k]
	}
	return recs
}

// eventsPerCall is the most events one call can carry.
func (s *shipper) eventsPerCall() int {
	if s.cfg.RecordFormat.aggregated() {
		return 50 * maxRecordsPerCall
	}
	return maxRecordsPerCall
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
		d = min(d, time.Until(deadline)/2)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-r.soft: // nil when there is none: never ready
		return false
	}
}

// callPushback is how a whole call met pushback.
type callPushback int

const (
	noPushback    callPushback = iota
	throughput                 // refused whole for throughput: throttling, KMS throttling
	failure                    // no answer, a 5xx, credentials that cannot be had
	noCredentials              // the role cannot be assumed now: nothing was sent
	slow                       // answered, but slowAnswer or more slower than the fastest answers
)

// send makes one PutRecords call and settles its records: stored ones are delivered, refused ones
// dropped, the rest go back to the buffer. It returns how many entries were stored and how many
// were refused for throughput, and how the whole call met pushback.
func (s *shipper) send(ctx context.Context, r *round, recs []pendingRecord) (accepted, throttled int, pushback callPushback) {
	s.body = s.encodeBody(s.body[:0], recs)
	callCtx, done := s.guard(ctx, r)
	s.sending.Store(true)
	start := time.Now()
	results, err := s.client.putRecords(callCtx, s.body, len(recs))
	took := time.Since(start)
	s.sending.Store(false)
	given := callCtx.Err() != nil // before done(), which cancels callCtx in every case
	done()
	if ce := (*credentialsError)(nil); errors.As(err, &ce) {
		// Nothing was sent, and the role will not be asked again for a while (credentials.go,
		// which has logged the fix): the events wait, and the round ends.
		s.shrinkBody()
		s.retryLater(recs, false)
		return 0, 0, noCredentials
	}
	s.stats.calls.Add(1)
	s.stats.entries.Add(uint64(len(recs)))
	s.stats.bytesSent.Add(uint64(len(s.body)))
	if slices.ContainsFunc(recs, func(p pendingRecord) bool { return p.events[0].tried }) {
		s.stats.retries.Add(1)
	}
	s.shrinkBody()
	var ne *networkError
	s.unanswered.Store(errors.As(err, &ne))

	switch {
	case err == nil:
		if s.observeAnswer(took, len(recs)) {
			pushback = slow
		}
		var again []pendingRecord
		for i, res := range results {
			switch {
			case res.ErrorCode == "":
				s.delivered(recs[i])
				accepted++
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
		return accepted, throttled, pushback
	case !isRetryable(err):
		s.drop(recs, err)
		return 0, 0, noPushback
	}
	unknown := maybeStored(err)
	if unknown {
		// Kinesis may have stored them: sending them again risks a duplicate (same id), not
		// sending them a loss. They go again, and count as unconfirmed.
		s.stats.unconfirmed.Add(telemetryEvents(eventsOf(recs)))
	}
	code := errorCode(err)
	if ctx.Err() == nil && !given {
		s.logs.once("retry:"+code, "kinesis: PutRecords failed, the events wait in the buffer: %v", err)
	}
	if code == "ExpiredTokenException" {
		s.client.invalidateCredentials()
	}
	s.retryLater(recs, unknown)
	if isThrottleCode(code) {
		s.stats.throttles.Add(1)
		return 0, 0, throughput
	}
	return 0, 0, failure
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
	finished := make(chan struct{})
	go func() {
		select {
		case <-r.soft:
		case <-finished:
			return
		}
		at, _ := r.afterSoft()
		cut := at.Add(r.budget)
		if r.pushed.Load() || s.unanswered.Load() {
			// The stream pushes back in this round, or left the last call unanswered: a call
			// that does not answer soon is not worth the function's time.
			cut = earliest(cut, later(at, start).Add(wireGrace))
		}
		t := time.NewTimer(time.Until(cut))
		defer t.Stop()
		select {
		case <-t.C:
			cancel()
		case <-finished:
		}
	}()
	return callCtx, func() { close(finished); cancel() }
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
		evs[i].maybeStored = evs[i].maybeStored || unknown
	}
	s.buf.putBack(evs)
}

// backoff is "full jitter": a random wait up to an exponentially growing cap.
func backoff(attempt int) time.Duration {
	const base, ceiling = 50 * time.Millisecond, 2 * time.Second
	limit := ceiling
	if attempt < 6 {
		limit = min(ceiling, base<<attempt)
	}
	return time.Duration(rand.Int64N(int64(limit) + 1))
}

// pacer estimates what the stream accepts from this environment and paces PutRecords entries to
// about that, so that throttled entries are not re-sent faster than the stream can take them
// (N environments retrying at will multiply the traffic that is already too much).
//
// It is AIMD on a token bucket of entries per second, in the manner of DCTCP (TCP with a
// decrease proportional to the share of marked packets) and of the AWS SDKs' adaptive retry
// mode: unpaced until the first pushback; then the rate starts at the rate sent over the last
// second, cut by half the share throttled; at the end of each paceEpoch with pushback it is cut
// by half the epoch's throttled share (all of it throttled: halved); and while the backlog wants
// more than the bucket gives, it rises by paceIncrease of itself per second (at least
// paceMinStep), or doubles per second once paceProbeAfter has passed without pushback, like
// TCP's slow start, so that a passing throttle does not hold the environment back for long.
// A proportional cut matters where a fixed share of entries is refused whatever the rate (one
// hot shard of several): a cut at every throttle would starve the shards that have room.
// A slow answer (slowAnswer or more over the fastest recent one) counts as a call throttled whole: the stream queues what it
// is sent, and its answers come too late for the function's run.
//
// The estimate is per stream: per-shard knowledge would need ListShards, an extra IAM
// permission. Throttling by bytes (1 MiB/s per shard) shows as the same per-entry error and is
// paced the same way. Time is wall-clock time, frozen periods included: the stream's shards
// refill while the environment is frozen, and so does the bucket, up to paceBurst of traffic.
type pacer struct {
	now func() time.Time

	paced  bool
	rate   float64 // entries per second, when paced
	tokens float64
	at     time.Time // when tokens were last refilled
	upAt   time.Time // the last increase
	calmAt time.Time // the last pushback

	epochAt                    time.Time // start of the current epoch
	epochSent, epochThrottled  float64
	recentSent, recentAccepted float64   // entries, decaying with time constant paceWindow
	recentAt                   time.Time // of the decay
}

const (
	paceIncrease   = 0.1 // of the rate, per second
	paceProbe      = 1.0 // of the rate, per second, paceProbeAfter the last pushback
	paceProbeAfter = 2 * time.Second
	paceMinStep    = 20  // entries/s per second
	paceMinRate    = 10  // entries per second
	paceMaxRate    = 1e6 // above this the stream is not the limit: pacing stops
	paceEpoch      = 500 * time.Millisecond
	paceWindow     = time.Second
	paceBurst      = time.Second
	paceBatch      = 50 * time.Millisecond // a call waits for at least this much traffic (or the backlog)
)

func newPacer(now func() time.Time) *pacer { return &pacer{now: now} }

// refill adds the tokens earned since the last call.
func (p *pacer) refill(now time.Time) {
	if p.at.IsZero() {
		p.at = now
	}
	if dt := now.Sub(p.at).Seconds(); dt > 0 {
		p.tokens = min(p.tokens+dt*p.rate, p.rate*paceBurst.Seconds())
	}
	p.at = now
}

// batch is the least a call waits for: paceBatch of traffic, or all that is wanted.
func (p *pacer) batch(want int) int {
	return max(1, min(want, int(p.rate*paceBatch.Seconds())))
}

// grant returns how many of want entries may be sent now (0: wait), and spends them.
func (p *pacer) grant(want int) int {
	if !p.paced || want <= 0 {
		return want
	}
	p.refill(p.now())
	if p.tokens < float64(p.batch(want)) {
		return 0
	}
	n := min(want, int(p.tokens))
	p.tokens -= float64(n)
	return n
}

// refund returns granted entries that were not sent after all.
func (p *pacer) refund(n int) {
	if p.paced {
		p.tokens += float64(n)
	}
}

// wait is how long until grant(want) gives something.
func (p *pacer) wait(want int) time.Duration {
	if !p.paced {
		return 0
	}
	p.refill(p.now())
	need := float64(p.batch(want)) - p.tokens
	if need <= 0 {
		return 0
	}
	return time.Duration(math.Ceil(need / p.rate * float64(time.Second)))
}

func (p *pacer) decay(now time.Time) {
	if !p.recentAt.IsZero() {
		f := math.Exp(-now.Sub(p.recentAt).Seconds() / paceWindow.Seconds())
		p.recentSent *= f
		p.recentAccepted *= f
	}
	p.recentAt = now
}

// observe learns from one call's answer: of its sent entries, accepted were stored and throttled
// refused for throughput; pushback says the whole call met pushback (throttling, 5xx, a lost or
// slow answer: all of it counts as throttled); starved says the backlog wanted more than the
// bucket granted.
func (p *pacer) observe(sent, accepted, throttled int, pushback, starved bool) {
	now := p.now()
	if pushback {
		throttled = max(sent, 1)
	}
	p.decay(now)
	p.recentSent += float64(sent)
	p.recentAccepted += float64(accepted)
	if throttled > 0 {
		p.calmAt = now
		if !p.paced {
			share := float64(throttled) / float64(max(sent, 1))
			p.paced, p.at, p.upAt, p.tokens = true, now, now, 0
			p.rate = max(paceMinRate, p.recentSent/paceWindow.Seconds()*(1-share/2))
			p.epochAt, p.epochSent, p.epochThrottled = now, 0, 0
			return
		}
	}
	if !p.paced {
		return
	}
	p.refill(now)
	p.epochSent += float64(max(sent, throttled))
	p.epochThrottled += float64(throttled)
	if now.Sub(p.epochAt) >= paceEpoch {
		if p.epochThrottled > 0 {
			share := min(1, p.epochThrottled/max(p.epochSent, 1))
			p.rate = max(paceMinRate, p.rate*(1-share/2))
			p.tokens = min(p.tokens, 0)
		}
		p.epochAt, p.epochSent, p.epochThrottled = now, 0, 0
	}
	if starved {
		dt := min(now.Sub(p.upAt), time.Second).Seconds()
		growth := paceIncrease
		if now.Sub(p.calmAt) >= paceProbeAfter {
			growth = paceProbe
		}
		p.rate += dt * max(paceMinStep, p.rate*growth)
		if p.rate > paceMaxRate {
			p.paced = false
		}
	}
	p.upAt = now
}

// pacing reports whether the pacer limits the rate, and to what.
func (p *pacer) pacing() (bool, float64) { return p.paced, p.rate }

func (s *shipper) delivered(r pendingRecord) {
	s.stats.records.Add(1)
	s.buf.release(r.events, outcome{kind: wasDelivered})
}

// drop forgets records Kinesis will never accept, counts them under the error's code (as unknown
// when an earlier call may have stored them) and says why once per code.
func (s *shipper) drop(recs []pendingRecord, err error) {
	code := errorCode(err)
	var n uint64
	for _, r := range recs {
		n += telemetryEvents(r.events)
		s.buf.release(r.events, outcome{kind: droppedRejected, code: code})
	}
	s.logs.once("drop:"+code, "kinesis: PutRecords rejected %d events, which are dropped and counted: %v%s", n, err, hint(code, s.cfg, s.meta.region))
}

// dropRemaining empties the buffer at shutdown, counting what could not be sent in time: as
// dropped, or as unknown where a call of unknown outcome may have stored it.
func (s *shipper) dropRemaining() {
	for {
		evs := s.buf.take(everything, 1<<20, 1<<62, func(*event) int { return 0 })
		if len(evs) == 0 {
			return
		}
		s.buf.release(evs, outcome{kind: droppedShutdown})
	}
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

// hint tells the reader of a log line what to do about a permanent error.
func hint(code string, cfg config, region string) string {
	stream := cfg.Stream
	switch {
	case code == "AccessDeniedException":
		return fmt.Sprintf(" (the function's role needs kinesis:PutRecords on stream %s: attach the managed policy from template.json)", stream)
	case code == "ResourceNotFoundException":
		return fmt.Sprintf(" (check KINESIS_TELEMETRY_STREAM=%s: the stream must exist in region %s)", stream, region)
	case strings.HasPrefix(code, "KMS"):
		return " (the stream's KMS key refused the request: the role needs kms:GenerateDataKey on a customer managed key, and the key must be enabled)"
	case code == "UnrecognizedClientException" || code == "InvalidSignatureException":
		return " (the AWS credentials were rejected)"
	}
	return ""
}

// pendingRecord is one Kinesis record being sent: one event, or several (ndjson).
type pendingRecord struct {
	events []event
	key    string
	size   int    // data bytes, after any truncation
	data   []byte // the data when built at packing (kpl, cloudwatch); else encodeBody builds it
}

// maxNDJSONLines is the most lines an ndjson record holds: Firehose's JSON record
// de-aggregation splits at most 500 records out of one Kinesis record.
const maxNDJSONLines = 500

// packRecords turns events into records: one per event, or with KINESIS_TELEMETRY_RECORD_FORMAT
// ndjson, consecutive events of one partition key up to the aggregate size. The kpl and cloudwatch
// formats are built here, whole (records.go), so that their exact size is known for the call.
func (s *shipper) packRecords(evs []event) []pendingRecord {
	switch s.cfg.RecordFormat {
	case formatKPL:
		return s.meta.packKPL(evs, s.cfg.RecordBytes)
	case formatCloudWatch:
		return s.meta.packCloudWatch(evs, s.cfg.RecordBytes, &s.gz)
	}
	recs := make([]pendingRecord, 0, min(len(evs), maxRecordsPerCall))
	for i := 0; i < len(evs); {
		e := &evs[i]
		key := s.meta.partitionKey(e)
		size := s.meta.dataSize(e, len(key))
		j := i + 1
		if s.cfg.RecordFormat == formatNDJSON {
			size++ // newline
			for j < len(evs) && j-i < maxNDJSONLines && s.meta.sameRecord(e, &evs[j]) {
				next := s.meta.dataSize(&evs[j], len(key)) + 1
				if size+next > s.cfg.RecordBytes {
					break
				}
				size += next
				j++
			}
		}
		recs = append(recs, pendingRecord{events: evs[i:j:j], key: key, size: size})
		i = j
	}
	return recs
}

// recordSize is an event's share of a call, for taking events from the buffer.
func (s *shipper) recordSize(e *event) int {
	key := s.meta.partitionKey(e)
	return s.meta.dataSize(e, len(key)) + len(key) + 1
}

// fitCall returns how many records, from the first, fit in one PutRecords call.
func fitCall(recs []pendingRecord) int {
	total := 0
	for i, r := range recs {
		total += r.size + len(r.key)
		if i == maxRecordsPerCall || (i > 0 && total > maxCallBytes) {
			return i
		}
	}
	return len(recs)
}

func eventsOf(recs []pendingRecord) []event {
	if len(recs) == 0 {
		return nil
	}
	if len(recs) == 1 {
		return recs[0].events
	}
	var out []event
	for _, r := range recs {
		out = append(out, r.events...)
	}
	return out
}

// encodeBody appends the PutRecords JSON request for recs to dst.
func (s *shipper) encodeBody(dst []byte, recs []pendingRecord) []byte {
	if s.cfg.Stream.ARN != "" {
		dst = append(dst, `{"StreamARN":`...)
		dst = appendJSONString(dst, s.cfg.Stream.ARN)
	} else {
		dst = append(dst, `{"StreamName":`...)
		dst = appendJSONString(dst, s.cfg.Stream.Name)
	}
	dst = append(dst, `,"Records":[`...)
	for i, r := range recs {
		if i > 0 {
			dst = append(dst, ',')
		}
		data := r.data // kpl and cloudwatch records are built whole by packRecords
		if data == nil {
			s.scratch = s.scratch[:0]
			for k := range r.events {
				s.scratch = s.meta.appendData(s.scratch, &r.events[k], len(r.key))
				if s.cfg.RecordFormat == formatNDJSON {
					s.scratch = append(s.scratch, '\n')
				}
			}
			data = s.scratch
		}
		dst = append(dst, `{"Data":"`...)
		dst = appendBase64(dst, data)
		dst = append(dst, `","PartitionKey":`...)
		dst = appendJSONString(dst, r.key)
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}

// appendBase64 appends the standard base64 encoding of src, as base64.StdEncoding.AppendEncode
// does, about twice as fast: twelve bytes at a time, two output characters per table lookup.
// Record data is most of what the extension handles, so this is its hottest loop.
func appendBase64(dst, src []byte) []byte {
	n := base64.StdEncoding.EncodedLen(len(src))
	dst = slices.Grow(dst, n)
	out := dst[len(dst) : len(dst)+n]
	i, o := 0, 0
	for ; i+12 <= len(src); i, o = i+12, o+16 {
		in, w := src[i:i+12:i+12], out[o:o+16:o+16]
		hi := uint64(binary.BigEndian.Uint32(in[0:]))<<32 | uint64(binary.BigEndian.Uint32(in[4:])) // bytes 0-7
		lo := hi<<32 | uint64(binary.BigEndian.Uint32(in[8:]))                                      // bytes 4-11
		binary.LittleEndian.PutUint64(w[0:], uint64(base64Pairs[hi>>52&0xfff])|uint64(base64Pairs[hi>>40&0xfff])<<16|
			uint64(base64Pairs[hi>>28&0xfff])<<32|uint64(base64Pairs[hi>>16&0xfff])<<48)
		binary.LittleEndian.PutUint64(w[8:], uint64(base64Pairs[lo>>36&0xfff])|uint64(base64Pairs[lo>>24&0xfff])<<16|
			uint64(base64Pairs[lo>>12&0xfff])<<32|uint64(base64Pairs[lo&0xfff])<<48)
	}
	base64.StdEncoding.Encode(out[o:], src[i:])
	return dst[:len(dst)+n]
}

// base64Pairs maps twelve bits to their two base64 characters, first character in the low byte.
var base64Pairs = func() (t [4096]uint16) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range t {
		t[i] = uint16(alphabet[i>>6]) | uint16(alphabet[i&63])<<8
	}
	return t
}()

// recordMeta is what every record says about where it comes from, and how records are keyed.
type recordMeta struct {
	fields    []byte // `"function":…,"version":…,"account":…,"region":…`, encoded once
	reg       registration
	region    string
	envID     string
	function  string
	partition partitionMode

	format     recordFormat
	textObject bool // KINESIS_TELEMETRY_TEXT_RECORD=object: text lines' record becomes {"message":…}
	logs       cloudWatchNames
}

func newRecordMeta(reg registration, cfg config, region, envID string) recordMeta {
	m := recordMeta{
		reg: reg, envID: envID, function: reg.FunctionName, partition: cfg.PartitionKey,
		format: cfg.RecordFormat, textObject: cfg.TextRecord == textAsObject,
		logs: cloudWatchNames{
			owner: reg.AccountID, group: cfg.LogGroup, stream: cfg.LogStream,
			filter: cfg.SubscriptionFilter, format: cfg.LogFormat,
		},
	}
	if m.logs.owner == "" {
		// Without the accountId feature of register, the stream's account is the best owner.
		m.logs.owner = cfg.Stream.Account
	}
	m.setRegion(region)
	return m
}

// setRegion encodes the fields every record carries.
func (m *recordMeta) setRegion(region string) {
	reg := m.reg
	b := []byte(`"function":`)
	b = appendJSONString(b, reg.FunctionName)
	b = append(b, `,"version":`...)
	b = appendJSONString(b, reg.FunctionVersion)
	b = append(b, `,"account":`...)
	b = appendJSONString(b, reg.AccountID)
	b = append(b, `,"region":`...)
	b = appendJSONString(b, region)
	m.fields, m.region = b, region
}

// partitionKey keeps one invocation's events on one shard, in order ("request"), all of one
// function's ("function"), or spreads them evenly ("random", derived from the event id so that a
// retry goes to the same shard).
func (m *recordMeta) partitionKey(e *event) string {
	if m.format == formatCloudWatch && m.logs.stream != "" {
		// CloudWatch's ByLogStream distribution: one environment's events stay in order.
		return truncate(m.logs.stream, maxKeyBytes)
	}
	switch m.partition {
	case partitionFunction:
		if m.function != "" {
			return truncate(m.function, maxKeyBytes)
		}
	case partitionRandom:
		h := fnv.New64a()
		h.Write([]byte(e.idPrefix))
		h.Write(strconv.AppendUint(nil, e.seq, 10))
		return strconv.FormatUint(h.Sum64(), 16)
	default:
		if e.requestID != "" {
			return truncate(e.requestID, maxKeyBytes)
		}
	}
	return m.envID
}

// maxKeyBytes is Kinesis's limit on a partition key. maxFieldBytes bounds each of the envelope's
// fields taken from events (requestId, traceId, tenantId, and a truncated event's time and type):
// Lambda's own are far shorter, but a function's JSON log line can carry any "requestId", and an
// envelope must fit its record whatever an event holds.
const maxKeyBytes, maxFieldBytes = 256, 256

// truncate cuts s to at most n bytes at a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for i := n; i > 0; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i]
		}
	}
	return s[:n]
}

// sameRecord reports whether b may share an aggregated record with a.
func (m *recordMeta) sameRecord(a, b *event) bool {
	return m.partition == partitionRandom || m.partitionKey(a) == m.partitionKey(b)
}

// dataSize is the length of the record data appendData writes for e.
func (m *recordMeta) dataSize(e *event, keyLen int) int {
	return m.dataSizeWithin(e, maxRecordBytes-keyLen)
}

// dataSizeWithin is the length of the record data appendDataWithin writes for e.
func (m *recordMeta) dataSizeWithin(e *event, limit int) int {
	n := m.envelopeSize(e)
	if n > limit {
		return len(m.appendTruncated(nil, e, limit))
	}
	return n
}

func (m *recordMeta) envelopeSize(e *event) int {
	const fixed = len(`{"id":"-",,"requestId":,"event":}`)
	n := fixed + len(e.idPrefix) + digits(e.seq) + len(m.fields) + jsonStringLen(truncate(e.requestID, maxFieldBytes)) + len(e.raw)
	if e.traceID != "" {
		n += len(`,"traceId":`) + jsonStringLen(truncate(e.traceID, maxFieldBytes))
	}
	if e.tenantID != "" {
		n += len(`,"tenantId":`) + jsonStringLen(truncate(e.tenantID, maxFieldBytes))
	}
	if m.wrapsText(e) {
		n += len(textWrapOpen) + len(textWrapClose)
	}
	return n
}

// wrapsText reports whether e's record, a text line, is written as {"message":"…"}, so that
// event.record has one JSON type in every document (OpenSearch maps a field by the first one).
func (m *recordMeta) wrapsText(e *event) bool { return m.textObject && e.text }

const textWrapOpen, textWrapClose = `{"message":`, `}`

// appendData appends the record data for one event: the envelope with the event as received, or,
// for an event too large for a record, the envelope with the event's record cut to fit and
// "truncatedBytes" saying how many bytes were cut.
func (m *recordMeta) appendData(dst []byte, e *event, keyLen int) []byte {
	return m.appendDataWithin(dst, e, maxRecordBytes-keyLen)
}

// appendDataWithin is appendData for data of at most limit bytes.
func (m *recordMeta) appendDataWithin(dst []byte, e *event, limit int) []byte {
	if m.envelopeSize(e) > limit {
		return m.appendTruncated(dst, e, limit)
	}
	if m.wrapsText(e) {
		if start, end := recordSpan(e.raw); start >= 0 {
			dst = m.appendEnvelopeHead(dst, e, -1)
			dst = append(dst, e.raw[:start]...)
			dst = append(dst, textWrapOpen...)
			dst = append(dst, e.raw[start:end]...)
			dst = append(dst, textWrapClose...)
			dst = append(dst, e.raw[end:]...)
			return append(dst, '}')
		}
	}
	return m.appendEnvelope(dst, e, e.raw, -1)
}

func (m *recordMeta) appendEnvelope(dst []byte, e *event, raw []byte, truncated int) []byte {
	dst = m.appendEnvelopeHead(dst, e, truncated)
	dst = append(dst, raw...)
	return append(dst, '}')
}

// appendEnvelopeHead writes the envelope up to its event: {"id":…,…,"event":
func (m *recordMeta) appendEnvelopeHead(dst []byte, e *event, truncated int) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, e.idPrefix...)
	dst = append(dst, '-')
	dst = strconv.AppendUint(dst, e.seq, 10)
	dst = append(dst, `",`...)
	dst = append(dst, m.fields...)
	dst = append(dst, `,"requestId":`...)
	dst = appendJSONString(dst, truncate(e.requestID, maxFieldBytes))
	if e.traceID != "" {
		dst = append(dst, `,"traceId":`...)
		dst = appendJSONString(dst, truncate(e.traceID, maxFieldBytes))
	}
	if e.tenantID != "" {
		dst = append(dst, `,"tenantId":`...)
		dst = appendJSONString(dst, truncate(e.tenantID, maxFieldBytes))
	}
	if truncated >= 0 {
		dst = append(dst, `,"truncatedBytes":`...)
		dst = strconv.AppendInt(dst, int64(truncated), 10)
	}
	return append(dst, `,"event":`...)
}

// appendTruncated writes the event with its record replaced by a string holding the record's
// text (the log line, or the JSON of an object record) cut at a character boundary to fit limit.
func (m *recordMeta) appendTruncated(dst []byte, e *event, limit int) []byte {
	var ev struct {
		Time   json.RawMessage `json:"time"`
		Type   json.RawMessage `json:"type"`
		Record json.RawMessage `json:"record"`
	}
	_ = json.Unmarshal(e.raw, &ev)
	text := []byte(ev.Record)
	if e.text {
		var s string
		if json.Unmarshal(ev.Record, &s) == nil {
			text = []byte(s)
		}
	}
	build := func(keep int) []byte {
		var inner []byte
		inner = append(inner, `{"time":`...)
		inner = appendBoundedValue(inner, ev.Time)
		inner = append(inner, `,"type":`...)
		inner = appendBoundedValue(inner, ev.Type)
		inner = append(inner, `,"record":`...)
		if m.textObject {
			inner = append(inner, textWrapOpen...)
		}
		inner = appendJSONBytes(inner, text[:keep])
		if m.textObject {
			inner = append(inner, textWrapClose...)
		}
		inner = append(inner, '}')
		return inner
	}
	// Escaping can make the text longer than its bytes: with the room the envelope leaves (its
	// length with no text and the largest possible count of cut bytes), keep whole characters,
	// in one pass, while their escaped form fits.
	keep := fitEscaped(text, limit-len(m.appendEnvelope(nil, e, build(0), len(text))))
	return m.appendEnvelope(dst, e, build(keep), len(text)-keep)
}

// appendBoundedValue writes a truncated event's time or type: as it was when it is at most
// maxFieldBytes long (always, from Lambda), else as a string of its start, so that no field can
// keep the envelope over its limit.
func appendBoundedValue(dst, v []byte) []byte {
	switch {
	case len(v) == 0:
		return append(dst, "null"...)
	case len(v) <= maxFieldBytes:
		return append(dst, v...)
	}
	return appendJSONBytes(dst, v[:fitEscaped(v, maxFieldBytes-2)])
}

func digits(n uint64) int {
	d := 1
	for n >= 10 {
		n /= 10
		d++
	}
	return d
}

// kinesisClient sends signed PutRecords requests to one stream's endpoint.
type kinesisClient struct {
	url       string
	region    string // signing region
	creds     aws.CredentialsProvider
	signer    *v4.Signer
	http      *http.Client
	transport *http.Transport
	timeout   time.Duration
	lastDone  time.Time
	refused   *atomic.Uint64 // calls not sent for a refused TLS certificate (stats.certRefused); nil: not counted
}

// staleAfter is how long a pooled connection may sit unused before it is no longer trusted. After
// a freeze the server or a NAT may have forgotten it; a request on it would wait for a timeout.
const staleAfter = 15 * time.Second

// loadKinesisClient reads the region and credentials from the AWS SDK's default chain (Lambda's
// environment variables, or the container credentials endpoint of SnapStart and managed
// instances) and builds the client. With KINESIS_TELEMETRY_ROLE_ARN the calls are signed with
// that role's credentials instead (credentials.go); the role is first assumed at the first
// PutRecords, not here. The envelope's region is set here too.
func loadKinesisClient(ctx context.Context, cfg config, meta *recordMeta, st *stats, logs *logger) (*kinesisClient, error) {
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("no AWS region: set AWS_REGION (Lambda sets it for every function)")
	}
	if meta.region == "" {
		meta.setRegion(awsCfg.Region)
	}
	creds := awsCfg.Credentials
	if cfg.Role.ARN != "" {
		creds = newRoleCredentials(awsCfg, cfg.Role, meta.function, &st.assumeRole, logs)
	}
	endpoint, region := cfg.kinesisEndpoint(awsCfg.Region)
	k := newKinesisClient(endpoint, region, creds, cfg.RequestTimeout)
	k.refused = &st.certRefused
	return k, nil
}

func newKinesisClient(endpoint, region string, creds aws.CredentialsProvider, timeout time.Duration) *kinesisClient {
	t := &http.Transport{
		Proxy:       http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		// HTTP/1.1 even where the endpoint offers HTTP/2: one call at a time has no use for
		// streams, and HTTP/2 cost more CPU per invocation (BENCHMARKS.md, "The wire").
		ForceAttemptHTTP2:     false,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       staleAfter,
		TLSHandshakeTimeout:   2 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &kinesisClient{
		url: endpoint + "/", region: region, creds: creds, signer: v4.NewSigner(),
		http: &http.Client{Transport: t}, transport: t, timeout: timeout,
	}
}

// putResult is one entry of a PutRecords answer.
type putResult struct {
	SequenceNumber string
	ShardID        string `json:"ShardId"`
	ErrorCode      string // null in kinesis-mock's answers, which decodes as ""
	ErrorMessage   string
}

// apiError is a whole-call error answer from Kinesis.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string {
	if e.Status == 0 {
		return e.Code + ": " + e.Message
	}
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

// putRecords signs and sends one PutRecords request holding n records and returns the per-record
// results. This is the only place that knows HTTP status codes and Kinesis error shapes. A failure
// without an answer is a *networkError that says whether the request had been written: only then
// may Kinesis have stored the records.
func (k *kinesisClient) putRecords(ctx context.Context, body []byte, n int) ([]putResult, error) {
	if !k.lastDone.IsZero() && time.Since(k.lastDone) > staleAfter {
		k.transport.CloseIdleConnections()
	}
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	creds, err := k.creds.Retrieve(ctx)
	if ce := (*credentialsError)(nil); errors.As(err, &ce) {
		return nil, ce // nothing was sent; STS is asked again only after a wait (credentials.go)
	}
	if err != nil {
		// Nothing was sent: pushback (the events wait), not a loss.
		return nil, &networkError{err: fmt.Errorf("get AWS credentials: %w", err)}
	}
	var written atomic.Bool
	var conn atomic.Pointer[net.Conn]
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { conn.Store(&info.Conn) },
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				written.Store(true)
			}
		},
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodPost, k.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "Kinesis_20131202.PutRecords")
	sum := sha256.Sum256(body)
	if err := k.signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "kinesis", k.region, time.Now()); err != nil {
		return nil, fmt.Errorf("sign request: %w", err)
	}
	resp, err := k.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			abandon(conn.Load())
		}
		if cv := (*tls.CertificateVerificationError)(nil); errors.As(err, &cv) {
			if k.refused != nil {
				k.refused.Add(1)
			}
			// Nothing was sent: the handshake failed. The events wait (a certificate may be
			// fixed, or a CA bundle rolled out), and the log says what to check.
			err = fmt.Errorf("%s refused: its TLS certificate is not valid for this host or not trusted (%w); check KINESIS_TELEMETRY_ENDPOINT, and for a private CA set SSL_CERT_FILE to its PEM file", k.url, cv)
		}
		return nil, &networkError{err: err, written: written.Load()}
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	k.lastDone = time.Now()
	if err != nil {
		return nil, &networkError{err: fmt.Errorf("read answer: %w", err), written: true}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, decodeAPIError(resp, answer)
	}
	var out struct {
		FailedRecordCount int
		Records           []putResult
	}
	if err := json.Unmarshal(answer, &out); err != nil {
		return nil, &networkError{err: fmt.Errorf("decode answer: %w", err), written: true}
	}
	if len(out.Records) != n {
		return nil, &networkError{err: fmt.Errorf("answer has %d results for %d records", len(out.Records), n), written: true}
	}
	return out.Records, nil
}

// abandon closes the connection of a call given up (cut or timed out) before putRecords returns.
// Cancelling an HTTP/2 request returns at once and leaves its RST_STREAM to another goroutine; if
// Lambda froze the environment in between, the stream would stay open on the server, which may
// still store the records while the extension is frozen and later sends them again. Closing the
// socket itself (not the TLS layer, whose close_notify may wait behind a blocked write) ends every
// stream on it now; the next call pays one handshake. Calls are given up only under faults.
func abandon(c *net.Conn) {
	if c == nil || *c == nil {
		return
	}
	conn := *c
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	conn.Close()
}

func (k *kinesisClient) invalidateCredentials() {
	if c, ok := k.creds.(*aws.CredentialsCache); ok {
		c.Invalidate()
	}
}

func decodeAPIError(resp *http.Response, body []byte) *apiError {
	var e struct {
		Type     string `json:"__type"`
		Message  string `json:"message"`
		Message2 string `json:"Message"`
	}
	_ = json.Unmarshal(body, &e)
	code := e.Type
	if code == "" {
		code, _, _ = strings.Cut(resp.Header.Get("X-Amzn-ErrorType"), ":")
	}
	if i := strings.LastIndexByte(code, '#'); i >= 0 {
		code = code[i+1:]
	}
	if code == "" {
		code = "HTTP" + strconv.Itoa(resp.StatusCode)
	}
	msg := e.Message + e.Message2
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return &apiError{Status: resp.StatusCode, Code: code, Message: msg}
}

// networkError marks failures where Kinesis gave no answer: always worth retrying. written says
// the request had been sent whole, so that Kinesis may have stored its records.
type networkError struct {
	err     error
	written bool
}

func (e *networkError) Error() string { return e.err.Error() }
func (e *networkError) Unwrap() error { return e.err }

// maybeStored reports whether a failed call may nevertheless have stored its records: the request
// was written and no answer said otherwise. Dial, TLS and credential failures happen before.
func maybeStored(err error) bool {
	var ne *networkError
	return errors.As(err, &ne) && ne.written
}

// isThrottleCode tells throughput pushback from other transient faults (for the throttles count).
func isThrottleCode(code string) bool {
	switch code {
	case "ProvisionedThroughputExceededException", "KMSThrottlingException", "ThrottlingException",
		"Throttling", "LimitExceededException", "SlowDown":
		return true
	}
	return false
}

func isRetryable(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return isRetryableCode(ae.Code, ae.Status)
	}
	return true
}

// isRetryableCode tells throttling and transient faults, worth another attempt, from errors that
// can never succeed (validation, access denied, not found, disabled keys).
func isRetryableCode(code string, status int) bool {
	switch code {
	case "ProvisionedThroughputExceededException", "InternalFailure", "InternalFailureException",
		"ServiceUnavailable", "ServiceUnavailableException", "ThrottlingException", "Throttling",
		"LimitExceededException", "KMSThrottlingException", "RequestTimeout", "RequestTimeoutException",
		"ResourceInUseException", "ExpiredTokenException", "RequestExpired", "SlowDown":
		return true
	}
	return status >= 500 || status == http.StatusTooManyRequests
}

func errorCode(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Code
	}
	var ne *networkError
	if errors.As(err, &ne) {
		return "NetworkError"
	}
	var ce *credentialsError
	if errors.As(err, &ce) {
		return "AssumeRole." + ce.Code
	}
	return "Error"
}
