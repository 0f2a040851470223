package main

// The flush policy: when an invocation ships (the strategies of KINESIS_TELEMETRY_FLUSH and
// chooseFlush), and how one ship round may spend its time (round): what it may do after the
// invocation's runtime is done, and for how long. lifecycle.go applies it per invocation; the
// shipper (shipper.go) obeys it call by call.

import (
	"context"
	"sync/atomic"
	"time"
)

// flushMode is a flush strategy, the word of KINESIS_TELEMETRY_FLUSH.
type flushMode string

const (
	flushAdaptive   flushMode = "adaptive"
	flushEnd        flushMode = "end"
	flushBackground flushMode = "background"
	flushPeriodic   flushMode = "periodic"
)

// flushStrategy says when buffered telemetry is sent; KINESIS_TELEMETRY_FLUSH parsed (config.go): the mode, and for periodic its period.
type flushStrategy struct {
	Mode   flushMode // flushAdaptive, flushEnd, flushBackground or flushPeriodic
	Period time.Duration
}

// flushChoice is how one invocation ships, as its strategy decides (chooseFlush).
type flushChoice int

const (
	shipInBackground flushChoice = iota // what was buffered when the invocation began, while it runs
	shipBeforeNext                      // wait for the invocation's runtimeDone, ship, then /event/next
	// shipBeforeNextYielding ships before /event/next like shipBeforeNext, but as a background
	// round does after runtimeDone: it never waits for the stream, stops at the first pushback,
	// and leaves what is left in the buffer.
	shipBeforeNextYielding
	shipNothing
)

func (c flushChoice) String() string {
	return [...]string{"background", "before next", "before next, yielding", "nothing"}[c]
}

// flushFacts are what the choice for one invocation depends on.
type flushFacts struct {
	now       time.Time
	gap       time.Duration // moving average of the time between invocations; 0 before the second
	buffered  int           // events waiting
	oldest    time.Time     // arrival of the oldest of them
	lastShip  time.Time     // the last ship round's start
	telemetry bool          // platform events (runtimeDone) will arrive
	pressured bool          // the stream pushed back recently
}

// chooseFlush picks how one invocation ships under the strategy s: end always ships before
// /event/next, background always in the background, periodic in the background when a period
// has passed.
//
// adaptive: the first invocation, and any invocation when invocations are sparse (the average
// gap between them exceeds maxDelay) or when the buffer holds data older than maxDelay, ships at
// the end, yielding to pushback; otherwise the next invocation will come soon enough to carry the
// data, so it ships in the background. Data that is old because the stream pushes back stays in
// the background: shipping at the end would not make the stream take it sooner, only make the
// invocation longer. Without a telemetry subscription there is no runtimeDone to wait for.
func chooseFlush(s flushStrategy, maxDelay time.Duration, f flushFacts) flushChoice {
	switch s.Mode {
	case flushEnd:
		return shipBeforeNext
	case flushBackground:
		return shipInBackground
	case flushPeriodic:
		if f.buffered > 0 && f.now.Sub(f.lastShip) >= s.Period {
			return shipInBackground
		}
		return shipNothing
	}
	switch {
	case !f.telemetry:
		return shipInBackground
	case f.gap == 0, f.gap > maxDelay:
		return shipBeforeNextYielding
	case f.buffered > 0 && f.now.Sub(f.oldest) > maxDelay && !f.pressured:
		return shipBeforeNextYielding
	}
	return shipInBackground
}

// softNow is a soft end that has already come.
var softNow = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

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
	// outageAfter is how many calls in a row must fail whole (no answer, a 5xx) before the
	// stream counts as out: one failed call among answered ones is a blip, met with a short
	// backoff, not with probing calls.
	outageAfter = 2
)

// round says how one ship round may spend its time. The zero value (with a mark) sends until
// everything before the mark is sent or ctx ends, waiting for the pacer and backoffs as needed.
//
// A round's soft end is the moment the function stops waiting for the round: the invocation's
// runtimeDone, after which every millisecond the round goes on is added to the invocation. Until
// its soft end a round may wait (for the pacer, for a backoff); after it, it never waits, starts
// no call once it has seen pushback or when the stream's usual answer time would take it past its
// reach, and ends at the latest budget later; a call on the wire gets wireGrace once the stream
// pushes back, then it is cut. A slow answer is not pushback: the call is stored, and cutting it
// would only send it again.
type round struct {
	before uint64 // send only events buffered before this mark
	// soft is done at the soft end; nil when no invocation waits (at shutdown, in managed
	// mode, for KINESIS_TELEMETRY_FLUSH=end). A context rather than a channel, so that a call's
	// guard can wait for it without a goroutine (context.AfterFunc).
	soft   context.Context
	budget time.Duration
	// allowance (when not zero, and below budget) is how long after soft a call may be expected
	// to end: after soft a new call starts only if the stream's usual answer time fits in what
	// is left of it.
	allowance time.Duration
	// urgent takes the most valuable events first (takeNewest); escalate turns it on at the
	// first pushback (a shutdown that finds the stream pushing back). countsFirst puts the
	// newest counts record at the head of every call of the round while it waits.
	urgent, escalate, countsFirst bool
	countsSent                    bool // the round's first call has carried the counts record
	// leaveRefused lets the round end with entries refused whatever the rate still queued, once
	// it has given the whole queue triesAnyway calls in a row (shipper.shipRound); triedAnyway
	// counts them.
	leaveRefused bool
	triedAnyway  int
	// outOfTime: the round ended because no call started now or after its pause would be
	// answered before ctx's deadline (shipper.answerable).
	outOfTime bool
	// copies: the call's entries are copies of one record (the last counts record,
	// shipper.countsSpread), stored if any one of them is.
	copies bool
	// calls: the call goes as this many identical calls at once (shipper.put), where KMS refuses
	// calls whole (shipper.countsSpread); 0 or 1: one.
	calls int

	softAt atomic.Int64 // unix nanoseconds when soft was first seen done
	pushed atomic.Bool  // this round saw pushback
}

// afterSoft reports whether the soft end has come, and since when.
func (r *round) afterSoft() (time.Time, bool) {
	if r.soft == nil {
		return time.Time{}, false
	}
	if at := r.softAt.Load(); at != 0 {
		return time.Unix(0, at), true
	}
	if r.soft.Err() == nil {
		return time.Time{}, false
	}
	r.softAt.CompareAndSwap(0, time.Now().UnixNano())
	return time.Unix(0, r.softAt.Load()), true
}

// softDone is closed at the soft end; nil (never ready) when the round has none.
func (r *round) softDone() <-chan struct{} {
	if r.soft == nil {
		return nil
	}
	return r.soft.Done()
}

// reach is how long after soft the round may be expected to ship: its allowance, within budget.
func (r *round) reach() time.Duration {
	if r.allowance > 0 {
		return min(r.allowance, r.budget)
	}
	return r.budget
}

// earliest returns the earlier of two times, later the later.
func earliest(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
