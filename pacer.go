package main

// The pacer: how fast this environment may send PutRecords entries, learnt from the stream's
// answers (AIMD on a token bucket). It knows nothing of rounds or invocations; the shipper asks
// it for a grant before each call and tells it each call's outcome. Beside it, answerTimes: how
// long the stream takes to answer, the other thing the shipper measures of it (a slow answer is
// not pushback: it sizes what fits before a deadline, never the rate).

import (
	"math"
	"slices"
	"time"
)

// pacer estimates what the stream accepts from this environment and paces PutRecords entries to
// about that, so that throttled entries are not re-sent faster than the stream can take them
// (N environments retrying at will multiply the traffic that is already too much).
//
// It is AIMD on a token bucket of entries per second, in the manner of DCTCP (TCP with a
// decrease proportional to the share of marked packets) and of the AWS SDKs' adaptive retry
// mode: unpaced until the first pushback; then the rate starts at the rate sent over the last
// second, cut by half the share throttled; at the end of each paceEpoch with pushback it is cut
// by half the epoch's throttled share (all of it throttled: halved; a shard's pacer: by
// shardEpochCut, whatever the share); and while the backlog wants more than the bucket gives, it
// rises by paceIncrease of itself per second (at least its minStep; a shard's pacer in a crowd,
// shards.go, cuts by crowdCut and grows by half), or doubles per second once paceProbeAfter has
// passed without pushback and the stream has stored paceProbeEntries since (or what the rate
// sends in paceProbeAfter, if less; a shard's pacer waits for paceProbeEntries whatever its
// rate), like TCP's slow start, so that a passing throttle does not hold the environment back for long.
// (Calm by time alone let a pacer at a fraction of an entry per second, which sees a refusal
// seldom because it sends seldom, double every second in a fleet that overloads its shards.)
// Slow answers are not pushback: a stream that answers late still stores what it is sent.
//
// There is one pacer per shard that has refused entries, and one for the stream (shards.go): a
// shard's refusals name it, so a hot shard among healthy ones paces only its own entries. The
// stream's pacer answers whole calls refused for throughput and entries whose shard is unknown.
// Throttling by bytes (1 MiB/s per shard) shows as the same per-entry error and is paced the
// same way. Time is wall-clock time, frozen periods included: the stream's shards refill while
// the environment is frozen, and so does the bucket, up to paceBurst of traffic.
//
// Refusals the rate does not cause are not pushback either: KMS throttling (refusedWhateverRate,
// kinesis.go), and a shard's refusals scattered among its stored entries (randomShare, shards.go),
// go again at once and no pacer learns from them. What is left of the weak case is a share
// refused at random seen only in calls of an entry or two per shard, which cannot scatter: from one
// environment it looks like its part of a fleet's overload, which every environment must answer
// by cutting for the fleet to converge, so it is cut for, and the data waits. A test of the rate
// against the share refused does not tell them apart: in a fleet one environment's rate hardly
// moves the share. Tried with a baseline share not to cut for (the median, then the least, share
// of the last eight epochs), it took overload for fixed refusal, and in TestPacerFleetSimulation's
// 8 environments at 2× overload, awake a fifth of the time, amplification rose to 10.3 and 3.4
// where the test allows 1.5 (BENCHMARKS.md, "Backpressure").
type pacer struct {
	now              func() time.Time
	minRate, minStep float64 // the floor, and the least additive step (entries/s per second)
	shard            bool    // a shard's pacer: cuts by shardEpochCut, probes after paceProbeEntries
	crowded          bool    // its environment judges its shards crowded (shardPacers.judgeCrowd)
	cuts             int     // epochs with refusals: inCrowd waits for crowdCuts

	paced        bool
	hurried      bool    // shutdown: probe by what is stored (hurry)
	hurryCeiling float64 // the shutdown's probe doubles up to this rate
	calmAccepted float64 // entries accepted since the last pushback
	rate         float64 // entries per second, when paced
	tokens       float64
	at           time.Time // when tokens were last refilled
	upAt         time.Time // the last increase
	calmAt       time.Time // the last pushback

	epochAt                    time.Time // start of the current epoch
	epochSent, epochThrottled  float64
	recentSent, recentAccepted float64   // entries, decaying with time constant paceWindow
	recentAt                   time.Time // of the decay
}

const (
	paceIncrease     = 0.1 // of the rate, per second
	paceProbe        = 1.0 // of the rate, per second, paceProbeAfter the last pushback
	paceProbeAfter   = 2 * time.Second
	paceProbeEntries = 10  // stored since the last pushback, before the probe
	hurryMinRate     = 2   // entries per second: a shutdown's probe starts from at least this
	hurryStoredShare = 0.1 // of the entries sent lately: stored, a full stream (storedLately)
	paceMinStep      = 5   // entries/s per second: small, since a fleet of N adds N of it
	paceMinRate      = 10  // entries per second
	// A shard's pacer has a floor and a least step a fiftieth of the stream pacer's. A shard
	// takes 1,000 records/s from the whole fleet: with a thousand environments on four shards an
	// environment's share is about 1 entry/s per shard, and a floor of 10 held that fleet at
	// several times what the shards take (BENCHMARKS.md, "The shard pacer's floor"). The stream's
	// pacer, which answers refusals that name no shard (KMS throttling, calls refused whole),
	// keeps the higher floor: there a share refused whatever the rate drove a floor of 0.2 so low
	// that `end` delivered 0.31 of the events instead of 0.86.
	shardMinStep = paceMinStep / 50.0
	shardMinRate = paceMinRate / 50.0
	paceForget   = 10 * time.Second // a pushback this old is forgotten at shutdown (hurry)
	paceMaxRate  = 1e6              // above this the stream is not the limit: pacing stops
	paceEpoch    = 500 * time.Millisecond
	paceWindow   = time.Second
	paceBurst    = time.Second
	paceBatch    = 50 * time.Millisecond // a call waits for at least this much traffic (or the backlog)
)

// A shard's pacer cuts its rate by shardEpochCut at the end of an epoch with refusals, whatever
// their share, where the stream's cuts by half the share refused. The share's cut takes about an
// entry a second off the rate for each entry refused, whatever the rate, and the rate rises by a
// tenth of itself a second: above an entry or two a second (more than one entry an epoch) that is
// multiplicative increase and decrease, which leaves the ratio of two environments' rates where
// chance puts it, and only the probe pulls them together. A cut for each epoch with a refusal
// takes more, a second, from an environment that sends more (more of its epochs meet one): the
// rates converge, as TCP's windows do under a cut per round trip with a loss. And the probe waits
// for paceProbeEntries stored whatever the rate: at an entry a second a shard, a fleet of
// hundreds' share, two stored in two seconds came often from a shard that refused a third of its
// entries, and the probe doubled the rate into refusals. (Simulated, a thousand environments at
// 10× overload: of the environments that lived the whole run, the ones traced had stored 15 to 58
// entries a shard from the same load; over three seeds amplification 1.60–1.61 → 1.55, Jain's
// index 0.907–0.921 → 0.909–0.918. The cost is at 10,000 environments on 16 shards, whose share
// of a shard is under the floor: a cut of 30% brings a pacer above the floor down more slowly
// than a halving did, and amplification at 10× rose 4.00 → 4.49. BENCHMARKS.md, "A shard's cut
// per epoch with refusals".)
const shardEpochCut = 0.3

// In a crowd (shards.go, "A crowd") a shard's pacer grows by crowdIncrease of its rate a second,
// with half its least step, and cuts by crowdCut: the shard refuses 0.375 of what it would.
const (
	crowdIncrease = paceIncrease / 2
	crowdCut      = 0.4
	crowdCuts     = 2 // epochs with refusals before a crowd's rules hold
)

// inCrowd reports whether the crowd's rules hold: where the environment judges its shards crowded,
// on a shard that keeps refusing this pacer (crowdCuts epochs with refusals, the last under
// paceForget ago), and not at shutdown, whose probe (hurry) learns from what is stored. One cut
// is not enough: ten thousand cold starts in a fleet's first seconds overflow a stream with room,
// and on one whose answers spike an environment that offers an event a second stores in some
// windows nothing of it, which reads as a full stream. Simulated, such a fleet's pacers grew half
// as fast from that one cut for the rest of their lives, and 5 events were dropped at spindown
// (BENCHMARKS.md, "Crowds").
func (p *pacer) inCrowd(now time.Time) bool {
	return p.crowded && !p.hurried && p.cuts >= crowdCuts && now.Sub(p.calmAt) < paceForget
}

func newPacer(now func() time.Time) *pacer {
	return &pacer{now: now, minRate: paceMinRate, minStep: paceMinStep}
}

// newShardPacer is a shard's pacer (shards.go), with the shard's floor, step, cut and probe.
func newShardPacer(now func() time.Time) *pacer {
	return &pacer{now: now, minRate: shardMinRate, minStep: shardMinStep, shard: true}
}

// refill adds the tokens earned since the last call.
func (p *pacer) refill(now time.Time) {
	if p.at.IsZero() {
		p.at = now
	}
	if dt := now.Sub(p.at).Seconds(); dt > 0 {
		// At least one entry: a rate under 1/s must still grant one now and then.
		p.tokens = min(p.tokens+dt*p.rate, max(1, p.rate*paceBurst.Seconds()))
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
// refused for throughput; pushback says the whole call was refused for throughput (all of it
// counts as throttled); starved says the backlog wanted more than the
// bucket granted.
func (p *pacer) observe(sent, accepted, throttled int, pushback, starved bool) {
	now := p.now()
	if pushback {
		throttled = max(sent, 1)
	}
	p.decay(now)
	p.recentSent += float64(sent)
	p.recentAccepted += float64(accepted)
	p.calmAccepted += float64(accepted)
	if throttled > 0 {
		p.calmAt = now
		p.calmAccepted = 0
		if !p.paced {
			share := float64(throttled) / float64(max(sent, 1))
			p.paced, p.at, p.upAt, p.tokens = true, now, now, 0
			p.rate = max(p.minRate, p.recentSent/paceWindow.Seconds()*(1-share/2))
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
			p.cuts++
			p.cut(p.epochCut(now))
		}
		p.epochAt, p.epochSent, p.epochThrottled = now, 0, 0
	}
	if p.hurried && sent > 0 {
		// The shutdown's probe (hurry).
		switch {
		case throttled == 0 && p.rate < p.hurryCeiling:
			p.rate = min(2*p.rate, p.hurryCeiling)
			p.tokens += float64(sent)
		case throttled >= sent:
			p.rate, p.tokens = p.minRate, min(p.tokens, 0)
		case throttled > 0:
			p.cut(float64(throttled) / float64(sent) / 2) // half the share refused
			p.hurryCeiling = p.rate
		}
	}
	if starved {
		dt := min(now.Sub(p.upAt), time.Second).Seconds()
		growth, minStep := paceIncrease, p.minStep
		if p.inCrowd(now) {
			growth, minStep = crowdIncrease, p.minStep/2
		}
		probeStored := float64(paceProbeEntries) // stored since the last pushback, before the probe
		if !p.shard {
			probeStored = min(probeStored, p.rate*paceProbeAfter.Seconds())
		}
		if now.Sub(p.calmAt) >= paceProbeAfter && p.calmAccepted >= probeStored {
			growth = paceProbe
		}
		p.rate += dt * max(minStep, p.rate*growth)
		if p.rate > paceMaxRate {
			p.paced = false
		}
	}
	p.upAt = now
}

// epochCut is the share of the rate an epoch with refusals takes off: half the share of its
// entries refused, or for a shard's pacer shardEpochCut (crowdCut in a crowd), whatever the share.
func (p *pacer) epochCut(now time.Time) float64 {
	switch {
	case p.inCrowd(now):
		return crowdCut
	case p.shard:
		return shardEpochCut
	}
	return min(1, p.epochThrottled/max(p.epochSent, 1)) / 2
}

// cut lowers the rate by fraction of itself, the decrease of AIMD, and takes back the tokens not
// yet spent.
func (p *pacer) cut(fraction float64) {
	p.rate = max(p.minRate, p.rate*(1-fraction))
	p.tokens = min(p.tokens, 0)
}

// hurry makes the pacer probe by what the stream stores, for the shutdown: from hurryMinRate at
// least (or from its own rate where that is lower and the stream stored part of what it was sent
// lately: storedLately), each call whose entries were all stored doubles the rate and grants as
// many entries again at once, as TCP's slow start grows its window each round trip. A call refused
// in part says the stream is full at about this rate: the rate is cut by half the share refused,
// as an epoch's pushback cuts it, and the probe doubles no more past the cut rate (hurryCeiling;
// from there it grows as it does outside a shutdown), as TCP's congestion avoidance follows a
// loss. A call refused whole sends the rate back to the floor, and the probe doubles from there up
// to the ceiling. A stream that refused everything a moment ago may take everything now, and there
// are not two seconds to wait for calm (TestFaultMatrix's "all entries throttled 2 s",
// TestManagedShutdownDuringBackoff); but an environment shutting down in a fleet that still
// overloads the stream must not take more than its share. Probing by time (doubling per second
// from 10 entries/s) did: simulated, 1,000 environments at 10× overload sent a fifth of their
// entries at their shutdowns, 73% of them refused (BENCHMARKS.md, "Unknown shards"). And sending
// the rate back to the floor after every refusal, in part or whole, had it double past the
// stream's room again and again: a fleet of 8 at 2× overload had 1,000–1,120 of the 2,600–2,750
// entries of its shutdowns refused, to store 1,620–1,680; with the ceiling 63–306 of 1,690–1,940,
// to store 1,620–1,640 (BENCHMARKS.md, "The shutdown's probe stops doubling where the stream is
// full").
// A pacer whose last pushback is paceForget old or more stops pacing instead: the shutdown sends
// full calls, and a refusal paces it again. Its rate was learnt then, often in a cold start's
// burst, and an environment invoked every few seconds has not sent enough since to grow it
// (simulated, 10,000 environments on a healthy stream with spiky answers: one of them, paced by
// refusals of its first call, shut down 18 s later at its floor, and the three calls the floor
// allowed did not fit in its 2 s with a spike of 1 s and one of 600 ms: 2 events dropped and 3
// unknown. BENCHMARKS.md, "Simulation at scale").
func (p *pacer) hurry() {
	if !p.hurried {
		p.hurryCeiling = math.Inf(1) // none until a call is refused in part
	}
	p.hurried = true
	// A pacer below the shutdown's floor on a stream that stored part of what it sent lately
	// keeps its own rate, as its floor, and its tokens (storedLately).
	keepOwn := p.rate < hurryMinRate && p.storedLately()
	floor := float64(hurryMinRate)
	if keepOwn {
		floor = p.rate
	}
	p.minRate = max(p.minRate, floor)
	if p.paced && p.now().Sub(p.calmAt) >= paceForget {
		p.paced = false
	}
	if p.paced {
		// The probe learns from what the stream stores from here on: the refusals of the epoch
		// before the shutdown, already paid for in the rate, do not cut it again. Unless the
		// pacer keeps its own rate and tokens (keepOwn, above), it starts now, with one entry, from
		// hurryMinRate at least: at the floor's one entry every half second, a stream that had
		// refused everything and recovered just before the shutdown took 22 of 25 events in the
		// 880 ms kept for data over 2 shards, on a loaded machine (TestFaultMatrix's "all
		// entries throttled 2 s", the rest of the matrix and two busy loops beside it: 2–3
		// dropped in 7 of 12 runs; 0 of 12 with the probe at once).
		now := p.now()
		p.rate = max(p.rate, p.minRate)
		p.refill(now)
		if !keepOwn {
			p.tokens = max(p.tokens, 1)
		}
		p.epochAt, p.epochSent, p.epochThrottled = now, 0, 0
	}
}

// storedLately reports whether the stream stored at least hurryStoredShare of the entries this
// pacer sent lately (over about paceWindow before its last answer). Such a stream is full at
// about this rate, most likely shared with a fleet that overloads it, and not one that refused
// everything for a moment. A pacer there below hurryMinRate, an environment's share of a shard
// that a fleet of hundreds shares, starts the shutdown's probe from its own rate and tokens, with
// no entry at once, and a call refused whole sends it back to that rate: hurryMinRate a shard from
// each of a thousand environments shutting down is more than the shards take. (Simulated, a
// thousand environments at 10× overload on four shards, each an entry a second per shard: their
// shutdowns sent 32,494 entries and had 17,104 refused, a fifth of the run's refusals; from their
// own rate, 25,620 and 11,808, amplification 1.65 → 1.61. BENCHMARKS.md, "The shutdown's probe
// from the pacer's own rate".) At hurryMinRate and above, which in fleets of tens is every pacer,
// the probe starts as before.
func (p *pacer) storedLately() bool {
	return p.paced && p.recentAccepted > 0 && p.recentAccepted >= hurryStoredShare*p.recentSent
}

// pacing reports whether the pacer limits the rate, and to what.
func (p *pacer) pacing() (bool, float64) { return p.paced, p.rate }

// recent holds what the last answerWindow calls showed, newest over oldest.
type recent[T any] struct {
	last [answerWindow]T
	n    int // calls seen
}

const answerWindow = 15

func (r *recent[T]) add(v T) {
	r.last[r.n%answerWindow] = v
	r.n++
}

// seen returns the values held (none before the first call), in no particular order.
func (r *recent[T]) seen() []T { return r.last[:min(r.n, answerWindow)] }

// answerTimes are the answer times of the last answerWindow calls.
type answerTimes struct{ recent[time.Duration] }

// typical is the median of the recent answer times (0 before the first answer).
func (a *answerTimes) typical() time.Duration {
	var buf [answerWindow]time.Duration // sorted in a copy, on the stack: it is asked before every call
	sorted := buf[:copy(buf[:], a.seen())]
	if len(sorted) == 0 {
		return 0
	}
	slices.Sort(sorted)
	return sorted[len(sorted)/2]
}

// slowest is the longest of the recent answer times.
func (a *answerTimes) slowest() time.Duration {
	return slices.Max(a.last[:])
}

// refusedShares are the shares of their entries the last answerWindow answered calls had
// refused (a call refused whole for throughput, or by KMS, counts as all refused).
type refusedShares struct{ recent[float64] }

// mean is the recent calls' refused share (0 before the first answer): the chance that the
// stream refuses a one-entry call now.
func (r *refusedShares) mean() float64 {
	seen := r.seen()
	if len(seen) == 0 {
		return 0
	}
	var sum float64
	for _, q := range seen {
		sum += q
	}
	return sum / float64(len(seen))
}
