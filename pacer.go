package main

// The pacer: how fast this environment may send PutRecords entries, learnt from the stream's
// answers (AIMD on a token bucket). It knows nothing of rounds or invocations; the shipper asks
// it for a grant before each call and tells it each call's outcome.

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
// by half the epoch's throttled share (all of it throttled: halved); and while the backlog wants
// more than the bucket gives, it rises by paceIncrease of itself per second (at least
// paceMinStep), or doubles per second once paceProbeAfter has passed without pushback, like
// TCP's slow start, so that a passing throttle does not hold the environment back for long.
// A proportional cut matters where a fixed share of entries is refused whatever the rate (one
// hot shard of several): a cut at every throttle would starve the shards that have room.
//
// Not every refusal is a rate limit. A hot shard among healthy ones, or a share of entries
// refused at random, is refused whatever this environment's rate: cutting for it would starve
// the part of the stream that accepts, down to the floor. A rate limit, by contrast, refuses
// little or nothing at the low points of AIMD's saw-tooth. So the share refused whatever the rate
// is taken as the least share refused over the last fixedWindows windows of shareWindow (each of
// fixedSample entries or more), and cuts (and the pushback that ends calm) count only the share
// refused above it: a rate limit's least share is about nothing, and the pacer is plain AIMD;
// a fixed refusal's is itself, and calls stay full. Slow answers are not pushback: a stream that
// answers late still stores what it is sent.
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

	// The share refused whatever the rate (see the type's comment): the shares of the last
	// windows, and the current window's counts.
	windowShares, windowRates [fixedWindows]float64
	windowSizes               [fixedWindows]float64
	windows                   int // windows ended
	windowAt                  time.Time
	windowSent, windowRefused float64
	fixedShare                float64
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

	// The share refused whatever the rate is the least of the last fixedWindows windows of
	// shareWindow with fixedSample entries or more each.
	shareWindow  = 2 * time.Second
	fixedWindows = 5
	fixedSample  = 20
	fixedSpread  = 0.7
	fixedFade    = 0.1
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
	p.learnFixed(now, max(sent, throttled), throttled)
	if share := float64(throttled) / float64(max(sent, 1)); p.excess(share) > 0 {
		p.calmAt = now
		if !p.paced {
			p.paced, p.at, p.upAt, p.tokens = true, now, now, 0
			p.rate = max(paceMinRate, p.recentSent/paceWindow.Seconds()*(1-p.excess(share)/2))
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
		if excess := p.excess(min(1, p.epochThrottled/max(p.epochSent, 1))); excess > 0 {
			p.rate = max(paceMinRate, p.rate*(1-excess/2))
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

// room is how many entries the pacer would grant over the next d: all of them when unpaced.
func (p *pacer) room(d time.Duration) int {
	if !p.paced {
		return math.MaxInt
	}
	p.refill(p.now())
	return int(max(0, p.tokens) + p.rate*d.Seconds())
}

// learnFixed counts one call's entries and refusals into the current window and, at the
// window's end, updates the share refused whatever the rate.
func (p *pacer) learnFixed(now time.Time, sent, refused int) {
	if p.windowAt.IsZero() {
		p.windowAt = now
	}
	p.windowSent += float64(sent)
	p.windowRefused += float64(refused)
	if now.Sub(p.windowAt) < shareWindow {
		return
	}
	if p.windowSent >= fixedSample {
		i := p.windows % fixedWindows
		p.windowShares[i], p.windowRates[i] = p.windowRefused/p.windowSent, p.windowSent/now.Sub(p.windowAt).Seconds()
		p.windowSizes[i] = p.windowSent
		p.windows++
		p.fixedShare *= 1 - fixedFade
		rates := p.windowRates[:min(p.windows, fixedWindows)]
		lo, hi := slices.Index(rates, slices.Min(rates)), slices.Index(rates, slices.Max(rates))
		if rates[lo] <= fixedSpread*rates[hi] {
			// The rate varied: did the share refused fall with it? Not beyond the noise of the
			// low window's sample: the refusal is fixed. Otherwise it is a rate limit's.
			low, high := p.windowShares[lo], p.windowShares[hi]
			noise := 2*math.Sqrt(low*(1-low)/p.windowSizes[lo]) + 0.02
			p.fixedShare = 0
			if low >= high-noise {
				p.fixedShare = low
			}
		}
	}
	p.windowAt, p.windowSent, p.windowRefused = now, 0, 0
}

// excess is the share refused above the share refused whatever the rate, as a share of the
// rest: what a cut answers.
func (p *pacer) excess(share float64) float64 {
	if share <= p.fixedShare {
		return 0
	}
	return (share - p.fixedShare) / (1 - p.fixedShare)
}

// pacing reports whether the pacer limits the rate, and to what.
func (p *pacer) pacing() (bool, float64) { return p.paced, p.rate }
