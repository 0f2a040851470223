package main

// Unit tests of pacer.go on a fake clock, and an in-process model of a fleet sharing one shard.

import (
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// fleetSim runs envs pacers (made by newP) on a simulated clock against one shard of capacity
// entries/s (a token bucket with 1 s of burst, as Kinesis shards behave), each environment
// producing offered entries/s and awake (not frozen) awake of every cycle. It returns goodput
// (stored/s over the capacity), amplification (entries sent / stored) and Jain's fairness index
// of what each environment had stored. The environments call in a new random order each step,
// so that none is first at the shard every time.
func fleetSim(newP func(now func() time.Time) *pacer, envs int, capacity, offered, randomFail float64, awake, cycle time.Duration, d time.Duration, seed uint64) (goodput, amplification, jain float64) {
	const step = 5 * time.Millisecond // one PutRecords round trip
	rng := rand.New(rand.NewPCG(seed, 1))
	var clock time.Time = time.Unix(0, 0)
	now := func() time.Time { return clock }
	type env struct {
		p       *pacer
		backlog float64
		offset  time.Duration
		stored  float64
	}
	fleet := make([]*env, envs)
	for i := range fleet {
		fleet[i] = &env{p: newP(now), offset: time.Duration(rng.Int64N(int64(cycle)))}
	}
	shard := capacity
	var sent, stored float64
	for t := time.Duration(0); t < d; t += step {
		clock = time.Unix(0, 0).Add(t)
		shard = min(capacity, shard+capacity*step.Seconds())
		rng.Shuffle(len(fleet), func(i, j int) { fleet[i], fleet[j] = fleet[j], fleet[i] })
		for _, e := range fleet {
			e.backlog = min(e.backlog+offered*step.Seconds(), 4*offered) // a bounded buffer
			if (t+e.offset)%cycle >= awake || e.backlog < 1 {
				continue
			}
			want := min(500, int(e.backlog))
			n := e.p.grant(want)
			if n == 0 {
				continue
			}
			ok := min(n, int(shard))
			shard -= float64(ok)
			e.backlog -= float64(ok)
			if t > d/5 { // after the start-up
				sent += float64(n)
				stored += float64(ok)
				e.stored += float64(ok)
			}
			if randomFail > 0 { // a share refused whatever the rate
				refused := 0
				for range ok {
					if rng.Float64() < randomFail {
						refused++
					}
				}
				shard += float64(refused)
				e.backlog += float64(refused)
				if t > d/5 {
					stored -= float64(refused)
					e.stored -= float64(refused)
				}
				ok -= refused
			}
			e.p.observe(n, ok, n-ok, false, n < want)
		}
	}
	var sum, sum2 float64
	for _, e := range fleet {
		sum, sum2 = sum+e.stored, sum2+e.stored*e.stored
	}
	secs := (d - d/5).Seconds()
	return stored / secs / min(capacity, offered*float64(envs)), sent / stored, sum * sum / (float64(envs) * sum2)
}

// TestPacerFleetSimulation runs the pacer of N environments against one simulated shard: under
// capacity nothing is re-sent; overloaded, the shard stays busy and re-sends stay few. It models
// the shard's token bucket and the environments' freezes, not the network or Lambda's timing
// (the fleet test measures those with real processes).
func TestPacerFleetSimulation(t *testing.T) {
	for _, tt := range []struct {
		name            string
		envs            int
		capacity        float64
		offered         float64 // per environment
		randomFail      float64 // share of entries refused whatever the rate (a hot shard of several)
		awake           time.Duration
		maxAmp, minGood float64
	}{
		{"under capacity", 8, 4000, 250, 0, 60 * time.Millisecond, 1.05, 0.95},
		{"2x overload", 8, 1000, 250, 0, 60 * time.Millisecond, 1.2, 0.85},
		{"6x overload", 8, 300, 225, 0, 60 * time.Millisecond, 1.3, 0.85},
		{"2x overload, awake 20%", 8, 1000, 250, 0, 20 * time.Millisecond, 1.5, 0.85},
		{"one environment, 10x", 1, 100, 1000, 0, 60 * time.Millisecond, 1.5, 0.85},
		// A share refused at random whatever the rate, seen by the pacer alone, is its weak case
		// (docs/flushing.md, Backpressure): it is cut for, the rate settles low and the data
		// waits, counted. (In the extension a hot shard, the usual cause, is paced by its own
		// pacer, and refusals scattered among a shard's stored entries reach no pacer
		// (shards.go); this model has no shards.) With the additive step of 5 entries/s per
		// second that keeps a fleet's amplification low, it delivers 0.16 of what it could here
		// (0.65 with a step of 20, at 6× overload amplification 1.48 instead of 1.15). 1/0.9 =
		// 1.11 is the least amplification possible.
		{"10% refused, capacity ample", 8, 10000, 250, 0.1, 60 * time.Millisecond, 1.15, 0.1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			good, amp, _ := fleetSim(newPacer, tt.envs, tt.capacity, tt.offered, tt.randomFail, tt.awake, 100*time.Millisecond, 60*time.Second, 7)
			t.Logf("%-26s goodput %.2f of capacity, amplification %.3f", tt.name, good, amp)
			if amp > tt.maxAmp || good < tt.minGood {
				t.Errorf("goodput %.2f (want >= %.2f), amplification %.3f (want <= %.2f)", good, tt.minGood, amp, tt.maxAmp)
			}
		})
	}
}

// TestShardPacerLargeFleet: a thousand environments sharing one shard each get about 1 entry/s
// of it, a tenth of the stream pacer's floor. A shard's pacer, with its lower floor and step,
// keeps the fleet near what the shard takes; the stream's pacer, with the same fleet, holds it at
// its floor, several times the shard's capacity. Same model as TestPacerFleetSimulation. It also
// logs issue 18's fleet, 10× overload, whose amplification and fairness this pacer misses
// (BENCHMARKS.md, "An additive increase, tried"): the shard stays full, which is asserted.
func TestShardPacerLargeFleet(t *testing.T) {
	const envs, capacity = 1000, 1000.0
	run := func(newP func(now func() time.Time) *pacer, offered float64) (good, amp, jain float64) {
		return fleetSim(newP, envs, capacity, offered, 0, 60*time.Millisecond, 300*time.Millisecond, 30*time.Second, 7)
	}
	good, amp, _ := run(newShardPacer, 2)
	streamGood, streamAmp, _ := run(newPacer, 2)
	t.Logf("2×: shard pacers: goodput %.2f, amplification %.2f; stream pacers: goodput %.2f, amplification %.2f", good, amp, streamGood, streamAmp)
	if good < 0.85 || amp > 1.5 {
		t.Errorf("shard pacers: goodput %.2f (want >= 0.85), amplification %.2f (want <= 1.5)", good, amp)
	}
	if streamAmp < 2*amp {
		t.Errorf("stream pacers: amplification %.2f, not well above the shard pacers' %.2f: the floor no longer binds, and this test no longer shows why shards have their own", streamAmp, amp)
	}
	good, amp, jain := run(newShardPacer, 10)
	t.Logf("10×: shard pacers: goodput %.2f, amplification %.2f, Jain's index %.3f", good, amp, jain)
	if good < 0.9 {
		t.Errorf("10×: goodput %.2f, want >= 0.9", good)
	}
	// In a crowd (shards.go) the shard refuses N·g / (c·C) of what it takes once full, 0.375 of
	// what it refuses outside one. The run includes the fleet's first seconds, when every pacer
	// is new: asserted at two thirds (measured 0.64: amplification 1.36 → 1.23).
	crowdGood, crowdAmp, crowdJain := run(func(now func() time.Time) *pacer {
		p := newShardPacer(now)
		p.crowded = true
		return p
	}, 10)
	t.Logf("10×, in a crowd: goodput %.2f, amplification %.2f, Jain's index %.3f", crowdGood, crowdAmp, crowdJain)
	if crowdGood < 0.9 || crowdAmp-1 > (amp-1)*2/3 {
		t.Errorf("10×, in a crowd: goodput %.2f (want >= 0.9), amplification %.2f (want at most 1 + two thirds of %.2f − 1)", crowdGood, crowdAmp, amp)
	}
}

// fakeClock is a settable clock for the pacer.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestPacer(t *testing.T) {
	start := time.Unix(1000, 0)
	// sendFor feeds the pacer calls of up to 500 entries every 10 ms for d, the stream taking
	// accept(n) of each, and returns the entries sent.
	sendFor := func(p *pacer, c *fakeClock, d time.Duration, accept func(n int) int) (sent int) {
		for end := c.t.Add(d); c.t.Before(end); c.advance(10 * time.Millisecond) {
			n := p.grant(500)
			if n == 0 {
				continue
			}
			ok := accept(n)
			p.observe(n, ok, n-ok, false, n < 500)
			sent += n
		}
		return sent
	}
	all := func(n int) int { return n }
	none := func(int) int { return 0 }
	for _, tt := range []struct {
		name string
		run  func(t *testing.T, p *pacer, c *fakeClock)
	}{
		{"unpaced until pushback", func(t *testing.T, p *pacer, c *fakeClock) {
			if sent := sendFor(p, c, time.Second, all); sent != 100*500 {
				t.Errorf("sent %d in 1 s without pushback, want all 50000", sent)
			}
			if paced, _ := p.pacing(); paced {
				t.Error("paced without pushback")
			}
		}},
		{"first pushback starts at the sent rate less half the throttled share", func(t *testing.T, p *pacer, c *fakeClock) {
			p.observe(100, 100, 0, false, false)
			c.advance(100 * time.Millisecond)
			p.observe(100, 50, 50, false, false)
			_, rate := p.pacing()
			// About 200 entries sent in the last second (decaying), 50% throttled: × 0.75.
			if rate < 120 || rate > 160 {
				t.Errorf("rate %.0f, want about 150", rate)
			}
			if n := p.grant(500); n != 0 {
				t.Errorf("granted %d right after pushback, want 0 (the bucket empties)", n)
			}
			w := p.wait(500)
			c.advance(w)
			if n := p.grant(500); n == 0 || w <= 0 || w > 100*time.Millisecond {
				t.Errorf("after waiting %v, granted %d", w, n)
			}
		}},
		{"a fully throttled epoch halves the rate", func(t *testing.T, p *pacer, c *fakeClock) {
			p.observe(500, 0, 500, false, false)
			_, r0 := p.pacing()
			sendFor(p, c, 600*time.Millisecond, none)
			if _, r1 := p.pacing(); r1 > r0*0.55 || r1 < paceMinRate {
				t.Errorf("rate %.0f after a throttled epoch, from %.0f: want about half", r1, r0)
			}
		}},
		{"a stream that refuses everything: the rate stays near the floor", func(t *testing.T, p *pacer, c *fakeClock) {
			p.observe(1, 0, 1, true, false)
			sent := sendFor(p, c, 10*time.Second, none)
			if _, r := p.pacing(); r < paceMinRate || r > 2*paceMinRate+paceMinStep || sent > 10*(2*paceMinRate+paceMinStep) {
				t.Errorf("rate %.1f, %d sent in 10 s; want near the floor %v", r, sent, paceMinRate)
			}
		}},
		{"a shard that refuses everything: its pacer stays near the shard floor, one entry at a time", func(t *testing.T, _ *pacer, c *fakeClock) {
			p := newShardPacer(c.now)
			p.observe(1, 0, 1, false, false)
			sent := sendFor(p, c, 20*time.Second, none)
			// Tokens accrue at the rate, up to at least one: a grant every 1/rate seconds.
			if _, r := p.pacing(); r < shardMinRate || r > 2*shardMinRate+shardMinStep || sent < 1 || float64(sent) > 20*(2*shardMinRate+shardMinStep)+1 {
				t.Errorf("rate %.2f, %d sent in 20 s; want near the floor %v, and some sent", r, sent, shardMinRate)
			}
		}},
		{"a shard's pacer cuts by shardEpochCut for an epoch with refusals, whatever their share; the stream's by half the share", func(t *testing.T, stream *pacer, c *fakeClock) {
			shard := newShardPacer(c.now)
			// Both paced, above their floors: the shard's at 4 entries/s (set before each epoch
			// below), the stream's at 40.
			for _, p := range []*pacer{shard, stream} {
				p.observe(10, 9, 1, false, false)
			}
			stream.rate = 40
			epoch := func(p *pacer, sent, refused int) float64 {
				c.advance(100 * time.Millisecond)
				p.observe(sent, sent-refused, refused, false, false)
				c.advance(paceEpoch)
				p.observe(0, 0, 0, false, false) // closes the epoch
				_, r := p.pacing()
				return r
			}
			for _, refused := range []int{1, 9} {
				shard.rate = 4
				if r, want := epoch(shard, 10, refused), 4*(1-shardEpochCut); math.Abs(r-want) > 1e-9 {
					t.Errorf("shard: %d of 10 refused: rate %.3f, want %.3f (cut by %v whatever the share)", refused, r, want, shardEpochCut)
				}
			}
			shard.crowded = true
			shard.rate = 4
			if r, want := epoch(shard, 10, 1), 4*(1-crowdCut); math.Abs(r-want) > 1e-9 {
				t.Errorf("shard in a crowd: 1 of 10 refused: rate %.3f, want %.3f (cut by crowdCut %v)", r, want, crowdCut)
			}
			if r := epoch(stream, 10, 1); math.Abs(r-40*0.95) > 1e-9 {
				t.Errorf("stream: 1 of 10 refused: rate %.3f, want %.3f (by half the share)", r, 40*0.95)
			}
		}},
		{"a shard's pacer probes only after paceProbeEntries stored, whatever its rate", func(t *testing.T, _ *pacer, c *fakeClock) {
			p := newShardPacer(c.now)
			p.observe(4, 3, 1, false, false)
			p.rate, p.tokens = 1, 0 // an environment's share of a shard a fleet of hundreds shares
			// calm is a quarter second in which what the pacer grants is sent and stored.
			stored := 0
			calm := func() {
				c.advance(250 * time.Millisecond)
				n := p.grant(500)
				p.observe(n, n, 0, false, true)
				stored += n
			}
			// 5 s of calm at its rate: fewer than paceProbeEntries stored.
			for range 20 {
				calm()
			}
			if _, r := p.pacing(); stored >= paceProbeEntries || r > 2 {
				t.Fatalf("after 5 s calm and %d stored: rate %.2f, want about 1.6, a tenth a second (no doubling before %d stored)", stored, r, paceProbeEntries)
			}
			for stored < paceProbeEntries {
				calm()
			}
			_, r0 := p.pacing()
			probeAt := stored
			for range 4 {
				calm()
			}
			if _, r := p.pacing(); r < 1.8*r0 {
				t.Errorf("a second after %d stored: rate %.2f from %.2f, want the probe's doubling", probeAt, r, r0)
			}
		}},
		{"a shard's pacer in a crowd grows by crowdIncrease a second, and by half the least step, and cuts by crowdCut, but not at shutdown", func(t *testing.T, _ *pacer, c *fakeClock) {
			for _, tt := range []struct {
				rate, want float64
			}{
				{4, 4 * (1 + crowdIncrease)}, // the increase
				{0.2, 0.2 + shardMinStep/2},  // the least step
			} {
				p := newShardPacer(c.now)
				p.observe(4, 3, 1, false, false)
				p.crowded, p.rate, p.cuts = true, tt.rate, crowdCuts
				c.advance(time.Second)
				p.observe(0, 0, 0, false, true)
				if _, r := p.pacing(); math.Abs(r-tt.want) > 1e-9 {
					t.Errorf("from %.2f, a second starved: rate %.4f, want %.4f", tt.rate, r, tt.want)
				}
				if p.epochCut(c.now()) != crowdCut {
					t.Errorf("cut %v in a crowd, want crowdCut %v", p.epochCut(c.now()), crowdCut)
				}
				p.hurry() // the shutdown's probe learns from what is stored: no crowd's rules
				if p.epochCut(c.now()) != shardEpochCut {
					t.Errorf("cut %v at shutdown, want shardEpochCut %v", p.epochCut(c.now()), shardEpochCut)
				}
			}
		}},
		{"a crowd's rules wait for crowdCuts epochs with refusals, and end paceForget after the last", func(t *testing.T, _ *pacer, c *fakeClock) {
			p := newShardPacer(c.now)
			p.crowded = true
			p.observe(4, 3, 1, false, false) // the first pushback starts pacing: no cut
			for cuts := range crowdCuts + 1 {
				if got, want := p.inCrowd(c.now()), cuts >= crowdCuts; got != want {
					t.Errorf("after %d epochs with refusals: in a crowd %v, want %v", cuts, got, want)
				}
				c.advance(100 * time.Millisecond)
				p.observe(4, 3, 1, false, false)
				c.advance(paceEpoch)
				p.observe(0, 0, 0, false, false) // closes the epoch, with its cut
			}
			c.advance(paceForget - paceEpoch - 200*time.Millisecond)
			if !p.inCrowd(c.now()) {
				t.Errorf("%v after the last refusal: not in a crowd, want in one", c.now().Sub(p.calmAt))
			}
			c.advance(200 * time.Millisecond)
			if p.inCrowd(c.now()) {
				t.Errorf("%v after the last refusal: in a crowd, want the crowd's rules over", c.now().Sub(p.calmAt))
			}
			p.crowded, p.calmAt = false, c.now() // a recent refusal, where the environment judges no crowd
			if p.inCrowd(c.now()) {
				t.Error("not judged crowded: in a crowd")
			}
		}},
		{"calm: the rate grows, fast after paceProbeAfter", func(t *testing.T, p *pacer, c *fakeClock) {
			p.observe(100, 50, 50, false, false)
			_, r0 := p.pacing()
			sendFor(p, c, time.Second, all)
			_, r1 := p.pacing()
			sendFor(p, c, 3*time.Second, all)
			_, r2 := p.pacing()
			if r1 <= r0 || r1 > r0*1.5+paceMinStep || r2 < 4*r1 {
				t.Errorf("rates %.0f → %.0f (1 s) → %.0f (3 s more): want slow growth, then doubling per second", r0, r1, r2)
			}
		}},
		{"shutdown: a call wholly stored doubles the rate, one refused in part sets a ceiling, one refused whole sends it back to the floor", func(t *testing.T, _ *pacer, c *fakeClock) {
			p := newShardPacer(c.now)
			p.observe(10, 0, 10, false, false)
			p.rate = shardMinRate // as after a while of refusals
			p.hurry()
			if _, r := p.pacing(); r != hurryMinRate {
				t.Fatalf("rate %.2f after hurry, want %v", r, float64(hurryMinRate))
			}
			c.advance(time.Second)
			for i := range 3 {
				n := p.grant(500)
				p.observe(n, n, 0, false, false)
				want := hurryMinRate * float64(int(2)<<i)
				if _, r := p.pacing(); n == 0 || r != want || p.tokens < float64(n) {
					t.Fatalf("stored call %d of %d entries: rate %.0f, want %.0f, and %d granted again (%.1f)", i+1, n, r, want, n, p.tokens)
				}
			}
			// Half of a call refused: the stream is full at about this rate. The rate is cut by
			// a quarter, and the probe doubles no more past it.
			_, r0 := p.pacing()
			n := p.grant(500)
			p.observe(n, n/2, n-n/2, false, false)
			share := float64(n-n/2) / float64(n)
			ceiling := r0 * (1 - share/2)
			if _, r := p.pacing(); n < 2 || r != ceiling || p.grant(500) != 0 {
				t.Fatalf("after %d of %d refused at %.0f/s: rate %.1f, want %.1f, and nothing granted", n-n/2, n, r0, r, ceiling)
			}
			c.advance(time.Second)
			n = p.grant(500)
			p.observe(n, n, 0, false, false)
			if _, r := p.pacing(); n == 0 || r > ceiling*1.1+shardMinStep {
				t.Fatalf("a call of %d stored after the ceiling %.1f: rate %.1f, want no doubling past it", n, ceiling, r)
			}
			c.advance(time.Second)
			n = p.grant(500)
			p.observe(n, 0, n, false, false)
			if _, r := p.pacing(); n == 0 || r != hurryMinRate || p.grant(500) != 0 {
				t.Errorf("after a call of %d refused whole: rate %.1f, want %v, and nothing granted", n, r, float64(hurryMinRate))
			}
		}},
		{"shutdown: the probe starts at once, and the refusals just before it do not cut it", func(t *testing.T, _ *pacer, c *fakeClock) {
			// A stream that refused everything until a moment before the SHUTDOWN: the pacer was
			// cut to its floor and owes tokens; the epoch of those refusals is still open.
			p := newShardPacer(c.now)
			p.observe(10, 0, 10, false, false)
			c.advance(300 * time.Millisecond)
			p.observe(5, 0, 5, false, false)
			p.rate, p.tokens = shardMinRate, 0 // as after a while of refusals
			p.hurry()
			_, r0 := p.pacing()
			n := p.grant(500)
			if n < 1 {
				t.Fatalf("%d granted at the shutdown's start: want a probe of one entry now, not after 1/%.1f s", n, r0)
			}
			p.observe(n, n, 0, false, false)
			c.advance(250 * time.Millisecond) // past the end of the epoch that held the refusals
			n = p.grant(500)
			p.observe(n, n, 0, false, false)
			if _, r := p.pacing(); n == 0 || r != 4*r0 {
				t.Errorf("two calls wholly stored (the second of %d): rate %.2f, want %.2f (%.2f doubled twice, not cut for the refusals before the shutdown)", n, r, 4*r0, r0)
			}
		}},
		{"shutdown: where the stream stored part of what it was sent lately, the probe starts from the pacer's own rate, with no entry at once", func(t *testing.T, _ *pacer, c *fakeClock) {
			// A shard full at about this rate (a fleet's share of it), as after a while of
			// overload: 7 of 10 stored, then 1 of 2.
			p := newShardPacer(c.now)
			p.observe(10, 7, 3, false, false)
			c.advance(300 * time.Millisecond)
			p.observe(2, 1, 1, false, false)
			p.rate, p.tokens = 0.5, 0
			p.hurry()
			if _, r := p.pacing(); r != 0.5 || p.grant(500) != 0 {
				t.Fatalf("rate %.2f after hurry, want the pacer's own 0.5 (not %v), and nothing granted at once", r, float64(hurryMinRate))
			}
			c.advance(2 * time.Second)
			n := p.grant(500)
			if n != 1 {
				t.Fatalf("%d granted 2 s into the shutdown at 0.5/s: want 1", n)
			}
			// Stored: the probe doubles. Then refused whole: back to the rate it started from,
			// its floor for the shutdown (not hurryMinRate above it, nor the shard's floor below).
			p.observe(n, n, 0, false, false)
			if _, r := p.pacing(); r != 1 {
				t.Fatalf("rate %.2f after a call wholly stored, want 1", r)
			}
			c.advance(time.Second)
			n = p.grant(500)
			p.observe(n, 0, n, false, false)
			if _, r := p.pacing(); n == 0 || r != 0.5 {
				t.Errorf("rate %.2f after a call of %d refused whole, want 0.5", r, n)
			}
		}},
		{"shutdown: a pushback paceForget old is forgotten: the calls are full again, and a refusal paces anew", func(t *testing.T, _ *pacer, c *fakeClock) {
			p := newShardPacer(c.now)
			p.observe(10, 0, 10, false, false)
			c.advance(paceForget - time.Millisecond)
			p.observe(1, 1, 0, false, false) // stored: not pushback
			c.advance(time.Millisecond)
			p.hurry()
			if paced, _ := p.pacing(); paced || p.grant(500) != 500 {
				t.Fatalf("paced %v, %d of 500 granted, after %v without pushback: want unpaced", paced, p.grant(500), paceForget)
			}
			p.observe(500, 100, 400, false, false)
			if paced, r := p.pacing(); !paced || r >= 500 || p.grant(500) != 0 {
				t.Errorf("after 400 of 500 refused: paced %v at %.0f/s; want paced below 500/s, nothing granted at once", paced, r)
			}
		}},
		{"shutdown: a pushback under paceForget old still paces", func(t *testing.T, _ *pacer, c *fakeClock) {
			p := newShardPacer(c.now)
			p.observe(10, 0, 10, false, false)
			c.advance(paceForget - time.Millisecond)
			p.hurry()
			if paced, _ := p.pacing(); !paced || p.grant(500) >= 500 {
				t.Errorf("paced %v; want paced: a second's worth granted, not the whole call", paced)
			}
		}},
		{"it settles near what the stream takes", func(t *testing.T, p *pacer, c *fakeClock) {
			// The stream takes 300 entries/s: a token bucket on the stream side.
			stream, at := 300.0, c.t
			take := func(n int) int {
				stream = min(300, stream+300*c.t.Sub(at).Seconds())
				at = c.t
				ok := min(n, int(stream))
				stream -= float64(ok)
				return ok
			}
			p.observe(500, 0, 500, false, false)
			sendFor(p, c, 20*time.Second, take)
			sent := sendFor(p, c, 20*time.Second, take)
			if rate := float64(sent) / 20; rate < 250 || rate > 450 {
				t.Errorf("sent %.0f entries/s to a stream taking 300/s", rate)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &fakeClock{t: start}
			tt.run(t, newPacer(c.now), c)
		})
	}
}

// TestAnswerTimes: the usual answer time is the median of the last calls, which a spike does not
// move; the slowest is their maximum.
func TestAnswerTimes(t *testing.T) {
	var a answerTimes
	if a.typical() != 0 || a.slowest() != 0 {
		t.Fatalf("no answers: typical %v, slowest %v", a.typical(), a.slowest())
	}
	for i := range 20 {
		d := 20 * time.Millisecond
		if i%10 == 3 {
			d = 600 * time.Millisecond // 10% spikes
		}
		a.add(d)
	}
	if a.typical() != 20*time.Millisecond || a.slowest() != 600*time.Millisecond {
		t.Errorf("10%% spikes by 600 ms: typical %v, slowest %v; want 20ms, 600ms", a.typical(), a.slowest())
	}
	for i := range answerWindow {
		a.add(time.Duration(i+1) * time.Millisecond)
	}
	if a.slowest() != answerWindow*time.Millisecond {
		t.Errorf("slowest %v after the spikes left the window", a.slowest())
	}
}
