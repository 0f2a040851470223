package main

// The simulation at scale (issue 18, item 3): fleets of 10 to 10,000 execution environments on
// one modelled stream (simkinesis_test.go), run in process on the virtual clock of a
// testing/synctest bubble, so that a minute of a 10,000-environment fleet takes seconds.
//
// Each environment is a real extension value wired as main.go and agent.start wire it — its
// buffer, stats, shipper and listener (newBatchListener, as start makes it), with the shipper's newClient returning the model — and
// driven as Lambda drives it, without processes or HTTP: telemetry reaches the buffer through the
// listener's accept (the batch decoding, the filter, buffer.add), in batches that Lambda's
// Telemetry API would post (at most simBatch after their first event); the extension's loop calls
// onInvoke for each INVOKE and onShutdown for SHUTDOWN; between invocations it waits in its next
// (frozen), and what telemetry was not delivered before the freeze arrives at the thaw, with the
// previous invocation's platform.report. Environments start cold (platform.initStart), live a
// random while, are shut down (spindown) and replaced along the run.
//
// The production code runs unchanged: shipRound, the pacer, flushBeforeNext, shipWhileInvoked,
// onShutdown, the buffer. Its waits are channels, timers and context deadlines, which synctest
// sees; a goroutine blocked on a sync.Mutex is not durably blocked, but only the extension's own
// goroutine takes the shipper's mutex, which a round holds across its waits. One loop did not
// end on a virtual clock: shipper.pause waited ever shorter halves of the time to its deadline,
// and with time standing still while it ran it never got there; pause now gives up when the
// half is zero (commit 74a326a). Backoff's jitter, drawn after calls that fail whole (here,
// calls the round cuts), comes from a source seeded by the environment (shipper.jitter).
//
// What the simulation leaves out, besides what the stream model leaves out: the Telemetry API's
// item and byte limits per batch, Lambda's own telemetry drops, init phases that time out,
// invocations that time out or fail, SnapStart, the extension's CPU time (encoding and decoding
// take no virtual time), and Lambda's routing of invocations to environments (each environment
// has its own schedule; one that is still busy takes its next invocation late).
//
// TestSim asserts the accounting on small fleets; BenchmarkSim reports the measures for
// every scenario and fleet size.

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"hash/fnv"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// simScenario is one stream and load, run for every fleet size.
type simScenario struct {
	name  string
	load  float64 // offered / the stream's capacity at the start
	flush string  // KINESIS_TELEMETRY_FLUSH ("" is adaptive)
	// A step: at stepAt (a share of the run) the load becomes stepLoad (when > 0) and the
	// shards' limits change by stream.StepFactor (when > 0).
	stepAt   float64
	stepLoad float64
	wideHot  bool             // twice the fleet's shards, for a hot one among healthy ones
	stream   simStreamOptions // Shards, Limits and OnDemand.Peak are set by the fleet's size
}

// simSpikes are the spikes of issue 18: 10% of answers by 600 ms, 5% by 300 ms, 1% by 1 s.
var simSpikes = []latencySpike{{Share: 0.10, Extra: 600 * time.Millisecond}, {Share: 0.05, Extra: 300 * time.Millisecond}, {Share: 0.01, Extra: time.Second}}

// simScenarios are the cases of TestSim and BenchmarkSim.
var simScenarios = []simScenario{
	{name: "healthy", load: 0.3, stream: simStreamOptions{Answer: 20 * time.Millisecond}},
	{name: "healthy-spiky", load: 0.3, stream: simStreamOptions{Answer: 20 * time.Millisecond, Spikes: simSpikes}},
	{name: "overload-2x", load: 2, stream: simStreamOptions{Answer: 20 * time.Millisecond}},
	{name: "overload-6x", load: 6, stream: simStreamOptions{Answer: 20 * time.Millisecond}},
	{name: "overload-10x", load: 10, stream: simStreamOptions{Answer: 20 * time.Millisecond}},
	{name: "step-load-0.5-3x", load: 0.5, stepAt: 0.3, stepLoad: 3, stream: simStreamOptions{Answer: 20 * time.Millisecond}},
	{name: "step-capacity-1-0.25x", load: 1, stepAt: 0.3, stream: simStreamOptions{Answer: 20 * time.Millisecond, StepFactor: 0.25}},
	{name: "on-demand-0.5-2x", load: 0.5, stepAt: 0.3, stepLoad: 2, stream: simStreamOptions{Answer: 20 * time.Millisecond, OnDemand: simOnDemand{ScaleAfter: 5 * time.Second}}},
	{name: "hot-shard", load: 0.4, wideHot: true, stream: simStreamOptions{Answer: 20 * time.Millisecond, HotShard: 0}},
	{name: "kms-30-end", load: 0.3, flush: "end", stream: simStreamOptions{Answer: 20 * time.Millisecond, KMSShare: 0.3}},
	{name: "refused-30-end", load: 0.3, flush: "end", stream: simStreamOptions{Answer: 20 * time.Millisecond, RefuseShare: 0.3}},
	{name: "refused-90-end", load: 0.3, flush: "end", stream: simStreamOptions{Answer: 20 * time.Millisecond, RefuseShare: 0.9}},
	{name: "kms-90-end", load: 0.3, flush: "end", stream: simStreamOptions{Answer: 20 * time.Millisecond, KMSShare: 0.9}},
}

// simShards sizes the stream for a fleet: the ratio of offered load to capacity is what matters,
// and a stream this size keeps the events per run (and the run's real time) within bounds while
// giving every environment a few events per second at overload.
func simShards(fleet int) int {
	switch {
	case fleet <= 100:
		return 2
	case fleet <= 1000:
		return 4
	}
	return 16
}

// Timing of a run.
const (
	simRun       = 30 * time.Second // virtual
	simWarmUp    = 5 * time.Second  // left out of goodput: cold starts, the first bursts
	simBatch     = 25 * time.Millisecond
	simTimeout   = 3 * time.Second // the function's timeout: the INVOKE deadline
	simInitTime  = 150 * time.Millisecond
	simCallSlots = 0.25 // seconds of an environment's load per invocation
)

// simFleet is one run: the stream, the environments' drivers, and what they measured.
type simFleet struct {
	sc     simScenario
	fleet  int
	run    time.Duration
	stepAt time.Duration
	cfg    config
	stream *simStream
	start  time.Time
	rate   [2]float64 // events/s per environment slot, before and after the step
	lines  int        // function log lines per invocation

	mu      sync.Mutex
	offered []int // events produced per second
	added   []time.Duration
	envs    []simEnvResult
	problem []string
	nextEnv int
}

// simEnv is one execution environment: the extension and Lambda's side of it.
type simEnv struct {
	f      *simFleet
	idx    int
	ext    *agent
	lis    *listener
	rng    *rand.Rand
	next   chan lifecycleEvent // the extension's /event/next
	called chan struct{}       // the extension called /event/next again
	exited chan struct{}
	carry  []string // telemetry produced and not yet delivered (the environment froze first)
	offer  int
	added  []time.Duration
	seq    int
	atEnd  bool // shut down by the run's end, with every environment then alive
}

// simEnvResult is one environment's end state.
type simEnvResult struct {
	idx                                    int
	offered                                int
	received, delivered, filtered, unknown uint64
	full, shutdown, rejected, unconfirmed  uint64
	buffered                               int
	rejectedBy                             map[string]uint64
	countsLogged                           uint64 // dropped.total in the final stats
	countsInStream                         uint64 // dropped.total in the last counts record stored
	countsFound                            bool
	atEnd                                  bool // simEnv.atEnd
}

// runSim runs one scenario for one fleet size. Call it inside a synctest bubble.
func runSim(sc simScenario, fleet int, run time.Duration) simResult {
	shards := simShards(fleet)
	o := sc.stream
	o.Shards, o.Limits = shards, kinesisShardLimits
	if sc.wideHot {
		o.Shards = 2 * shards
		o.HotLoad = 0.95 * o.Limits.Records
	}
	if o.OnDemand.ScaleAfter > 0 {
		// The stream's previous peak was half its initial capacity's worth of shards.
		o.OnDemand.Peak = float64(shards) * o.Limits.Records / 2
	}
	cfg, err := parseConfig(envOf(map[string]string{
		"KINESIS_TELEMETRY_STREAM": "sim", "KINESIS_TELEMETRY_FLUSH": cmp.Or(sc.flush, "adaptive"),
		"AWS_REGION": "eu-west-1", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
	}))
	if err != nil {
		panic(err)
	}
	o.Timeout = cfg.RequestTimeout
	f := &simFleet{sc: sc, fleet: fleet, run: run, cfg: cfg, start: time.Now()}
	if sc.stepAt > 0 {
		f.stepAt = time.Duration(sc.stepAt * float64(run))
		o.StepAt = f.stepAt
	}
	f.stream = newSimStream("sim", o)
	nominal := f.stream.capacity()
	if o.HotLoad > 0 {
		nominal = float64(o.Shards) * o.Limits.Records // the load is of the stream's size
	}
	f.rate = [2]float64{sc.load * nominal / float64(fleet), cmp.Or(sc.stepLoad, sc.load) * nominal / float64(fleet)}
	f.lines = max(2, min(400, int(max(f.rate[0], f.rate[1])*simCallSlots)-3))
	var wg sync.WaitGroup
	for slot := range fleet {
		wg.Go(func() { f.slot(slot) })
	}
	wg.Wait()
	return f.result(nominal)
}

// slot runs the environments of one slot of the fleet, one after another: each starts cold,
// takes invocations for a random lifetime, and is shut down; the next one replaces it.
func (f *simFleet) slot(slot int) {
	rng := rand.New(rand.NewPCG(f.sc.stream.Seed+uint64(slot), 3))
	end := f.start.Add(f.run)
	time.Sleep(time.Duration(rng.Int64N(int64(2 * time.Second))))
	for gen := 0; time.Now().Before(end.Add(-time.Second)); gen++ {
		life := time.Duration((0.4 + 1.2*rng.Float64()) * float64(f.run))
		v := f.newEnv(slot, gen, rng)
		v.live(earliest(time.Now().Add(life), end), !time.Now().Add(life).Before(end))
		time.Sleep(100*time.Millisecond + time.Duration(rng.Int64N(int64(400*time.Millisecond))))
	}
}

func (f *simFleet) newEnv(slot, gen int, rng *rand.Rand) *simEnv {
	f.mu.Lock()
	idx := f.nextEnv
	f.nextEnv++
	f.mu.Unlock()
	cfg := f.cfg
	st := newStats()
	logs := newLogger(io.Discard)
	buf := newBuffer(cfg.MaxBufferBytes, fmt.Sprintf("e%d", idx), st)
	meta := newRecordMeta(testReg.function(), cfg.recordSettings(), cfg.Region, fmt.Sprintf("env%d-%d", slot, gen))
	ship := newShipper(cfg, buf, st, logs, meta)
	client := f.stream.client(idx)
	ship.newClient = func(context.Context) (recordPutter, error) { return client, nil }
	ship.jitter = rand.New(rand.NewPCG(uint64(idx), 9)).Int64N
	v := &simEnv{
		f: f, idx: idx, rng: rand.New(rand.NewPCG(rng.Uint64(), 4)),
		ext: &agent{cfg: cfg, logs: logs, reg: testReg, stats: st, buf: buf, ship: ship,
			sub: subscription{Active: true}},
		lis:    newBatchListener(buf, st, cfg.BufferBytes, cfg.filter()),
		next:   make(chan lifecycleEvent),
		called: make(chan struct{}, 1),
		exited: make(chan struct{}),
	}
	go v.loop()
	return v
}

// loop is the extension's event loop (agent.eventLoop without the Extensions API client).
func (v *simEnv) loop() {
	defer close(v.exited)
	for ev := range v.next {
		if ev.EventType == eventShutdown {
			v.ext.onShutdown(ev)
			return
		}
		v.ext.onInvoke(ev)
		v.called <- struct{}{}
	}
}

// live runs the environment from its cold start until end, then shuts it down.
func (v *simEnv) live(end time.Time, atEnd bool) {
	f := v.f
	v.atEnd = atEnd
	// Init: the runtime starts while the extension waits in its first next.
	v.deliverAfter(simBatch, v.produce("platform.initStart", `{"initializationType":"on-demand","phase":"init","runtimeVersion":"python:3.13.v1","functionName":"fn","functionVersion":"$LATEST"}`))
	time.Sleep(simInitTime - simBatch)
	next := time.Now()
	for n := 0; ; n++ {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		if !time.Now().Before(end) {
			break
		}
		rate := f.rate[0]
		if f.stepAt > 0 && time.Since(f.start) >= f.stepAt {
			rate = f.rate[1]
		}
		gap := time.Duration(float64(f.lines+3) / rate * (0.8 + 0.4*v.rng.Float64()) * float64(time.Second))
		next = time.Now().Add(gap)
		v.invoke(fmt.Sprintf("r%d-%d", v.idx, n), 30*time.Millisecond+time.Duration(v.rng.Int64N(int64(30*time.Millisecond))))
	}
	v.shutdown()
}

// invoke runs one invocation: INVOKE, the function's telemetry over run, platform.runtimeDone at
// its end; the invocation ends when the runtime is done and the extension has called next, and
// the environment freezes then, with what telemetry is still on its way.
func (v *simEnv) invoke(requestID string, run time.Duration) {
	t0 := time.Now()
	v.next <- lifecycleEvent{EventType: eventInvoke, RequestID: requestID, DeadlineMs: t0.Add(simTimeout).UnixMilli()}
	type produced struct {
		at  time.Duration
		raw string
	}
	evs := []produced{{0, v.produce("platform.start", fmt.Sprintf(`{"requestId":%q,"version":"$LATEST"}`, requestID))}}
	lines := v.f.lines
	for i := range lines {
		evs = append(evs, produced{run * time.Duration(i+1) / time.Duration(lines+1),
			v.produce("function", fmt.Sprintf(`"%s line %d: handled the request in %d steps"`, requestID, i, i*7%13))})
	}
	evs = append(evs, produced{run, v.produce("platform.runtimeDone", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":%d}}`, requestID, run.Milliseconds()))})
	// The Telemetry API posts a batch simBatch after its first event; what the previous
	// invocation left (its report, telemetry cut by the freeze) goes with the first.
	type batch struct {
		at  time.Time
		evs []string
	}
	var batches []batch
	pending := v.carry
	v.carry = nil
	for i := 0; i < len(evs); {
		first := evs[i].at
		b := batch{at: t0.Add(first + simBatch), evs: pending}
		pending = nil
		for ; i < len(evs) && evs[i].at <= first+simBatch; i++ {
			b.evs = append(b.evs, evs[i].raw)
		}
		batches = append(batches, b)
	}
	runEnd := t0.Add(run)
	var nextAt time.Time
	for i := 0; ; {
		if !nextAt.IsZero() && (i == len(batches) || batches[i].at.After(runEnd)) {
			// The runtime and the extension are done: the environment freezes.
			if d := time.Until(runEnd); d > 0 {
				time.Sleep(d)
			}
			for _, b := range batches[i:] {
				v.carry = append(v.carry, b.evs...)
			}
			break
		}
		var wake <-chan time.Time
		var t *time.Timer
		if i < len(batches) {
			t = time.NewTimer(time.Until(batches[i].at))
			wake = t.C
		}
		select {
		case <-wake:
			v.deliver(batches[i].evs)
			i++
		case <-v.called:
			nextAt = time.Now()
		}
		if t != nil {
			t.Stop()
		}
	}
	v.added = append(v.added, max(0, nextAt.Sub(runEnd)))
	v.carry = append(v.carry, v.produce("platform.report", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":%d,"billedDurationMs":%d}}`, requestID, run.Milliseconds(), later(nextAt, runEnd).Sub(t0).Milliseconds())))
}

// shutdown sends SHUTDOWN, delivers what the environment still owes the extension (the last
// report) shortly after, as Lambda does, and waits for the extension to exit.
func (v *simEnv) shutdown() {
	v.next <- lifecycleEvent{EventType: eventShutdown, ShutdownReason: "spindown", DeadlineMs: time.Now().Add(2 * time.Second).UnixMilli()}
	if len(v.carry) > 0 {
		v.deliverAfter(10*time.Millisecond, v.carry...)
		v.carry = nil
	}
	<-v.exited
	v.f.settle(v)
}

// produce makes one telemetry event, as Lambda would, and counts it as offered.
func (v *simEnv) produce(typ, record string) string {
	v.seq++
	v.offer++
	f := v.f
	f.mu.Lock()
	sec := int(time.Since(f.start) / time.Second)
	for len(f.offered) <= sec {
		f.offered = append(f.offered, 0)
	}
	f.offered[sec]++
	f.mu.Unlock()
	ts := time.Now().UTC().Add(time.Duration(v.seq) * time.Microsecond).Format("2006-01-02T15:04:05.000000Z")
	return `{"time":"` + ts + `","type":"` + typ + `","record":` + record + `}`
}

func (v *simEnv) deliverAfter(d time.Duration, evs ...string) {
	time.Sleep(d)
	v.deliver(evs)
}

// deliver posts one batch to the listener, as its HTTP handler would.
func (v *simEnv) deliver(evs []string) {
	if len(evs) == 0 {
		return
	}
	if err := v.lis.accept([]byte("[" + strings.Join(evs, ",") + "]")); err != nil {
		v.f.fail("environment %d: the listener refused a batch: %v", v.idx, err)
	}
}

func (f *simFleet) fail(format string, args ...any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.problem = append(f.problem, fmt.Sprintf(format, args...))
}

// settle records an environment's end state once it has exited.
func (f *simFleet) settle(v *simEnv) {
	st := v.ext.stats
	m := st.marks()
	r := simEnvResult{
		idx: v.idx, offered: v.offer, atEnd: v.atEnd,
		received: st.received.Load(), delivered: st.delivered.Load(), unknown: st.unknown.Load(),
		full: m.full, shutdown: m.shutdown, rejected: m.rejected, unconfirmed: st.unconfirmed.Load(),
		filtered: st.filteredExcluded.Load() + st.filteredLevel.Load() + st.filteredSampled.Load() + st.filteredOwn.Load(),
		buffered: v.ext.buf.buffered(), countsLogged: m.full + m.shutdown + m.rejected,
	}
	st.mu.Lock()
	r.rejectedBy = st.rejected.snapshot()
	st.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.envs = append(f.envs, r)
	f.added = append(f.added, v.added...)
}

// simResult is what one run measured.
type simResult struct {
	scenario              string
	fleet, envs           int
	offered               int     // events
	offeredRate, capacity float64 // events/s over the run, records/s at the start
	goodput               float64 // stored / capacity after the warm-up
	deliveredShare        float64 // delivered / offered
	amplification         float64 // entries sent / distinct records stored
	amplificationWindow   float64 // entries sent / stored in goodput's window (steady: no fleet-wide start or end)
	jain                  float64 // of each environment's delivered / offered
	converge              float64 // seconds after the step until the stream is used well for good; NaN: never, or no step
	full, shutdown        uint64
	rejected              map[string]uint64
	unknown, unconfirmed  uint64
	addedP50, addedP95    time.Duration
	calls, entries        int
	countsShort           int // environments whose last counts record in the stream shows fewer drops than they logged
	countsShortAtEnd      int // of them, shut down by the run's end (all at once)
	scaledAt              []time.Duration
	problems              []string
	fingerprint           uint64 // of every environment's outcome: equal runs, equal fingerprints
}

// result computes the run's measures and checks every environment's accounting:
//
//	offered = received = delivered + dropped + filtered + buffered + unknown
//
// and, in the stream, delivered <= distinct events stored <= delivered + unknown, and duplicates
// (an id stored twice) no more than the events re-sent after a call of unknown outcome.
func (f *simFleet) result(nominal float64) simResult {
	m := f.stream
	m.mu.Lock()
	defer m.mu.Unlock()
	r := simResult{scenario: f.sc.name, fleet: f.fleet, envs: len(f.envs), capacity: nominal,
		rejected: map[string]uint64{}, problems: slices.Clone(f.problem), scaledAt: m.scaledAt, converge: math.NaN()}
	slices.SortFunc(f.envs, func(a, b simEnvResult) int { return a.idx - b.idx })
	h := fnv.New64a()
	var sumX, sumX2 float64
	var jainN, distinct int
	for _, e := range f.envs {
		l := m.ledgers[e.idx]
		if l == nil {
			l = &simLedger{}
		}
		fmt.Fprintf(h, "%d:%d/%d/%d/%d/%d/%d;", e.idx, e.offered, e.delivered, e.full, e.shutdown, e.unknown, l.entries)
		r.offered += e.offered
		r.full += e.full
		r.shutdown += e.shutdown
		r.unknown += e.unknown
		r.unconfirmed += e.unconfirmed
		for code, n := range e.rejectedBy {
			r.rejected[code] += n
		}
		r.calls += l.calls
		r.entries += l.entries
		distinct += l.telemetry + l.counts
		if e.offered > 0 {
			x := float64(e.delivered) / float64(e.offered)
			sumX, sumX2, jainN = sumX+x, sumX2+x*x, jainN+1
		}
		if c, ok := l.lastCountsRecord(); !ok || c.Dropped.Total < e.countsLogged {
			r.countsShort++ // missing, or short of what the extension counted
			if e.atEnd {
				r.countsShortAtEnd++
			}
		}
		dropped := e.full + e.shutdown + e.rejected
		switch {
		case e.received != uint64(e.offered):
			r.problems = append(r.problems, fmt.Sprintf("environment %d: received %d, offered %d", e.idx, e.received, e.offered))
		case e.received != e.delivered+dropped+e.filtered+uint64(e.buffered)+e.unknown:
			r.problems = append(r.problems, fmt.Sprintf("environment %d: received %d != delivered %d + dropped %d + filtered %d + buffered %d + unknown %d",
				e.idx, e.received, e.delivered, dropped, e.filtered, e.buffered, e.unknown))
		case uint64(l.telemetry) < e.delivered || uint64(l.telemetry) > e.delivered+e.unknown:
			r.problems = append(r.problems, fmt.Sprintf("environment %d: %d distinct events in the stream, delivered %d, unknown %d", e.idx, l.telemetry, e.delivered, e.unknown))
		case uint64(l.dupTelemetry) > e.unconfirmed:
			r.problems = append(r.problems, fmt.Sprintf("environment %d: %d duplicates in the stream, only %d events re-sent after a call of unknown outcome", e.idx, l.dupTelemetry, e.unconfirmed))
		}
		r.deliveredShare += float64(e.delivered)
	}
	r.fingerprint = h.Sum64()
	if r.offered > 0 {
		r.deliveredShare /= float64(r.offered)
	}
	r.offeredRate = float64(r.offered) / f.run.Seconds()
	if distinct > 0 {
		r.amplification = float64(r.entries) / float64(distinct)
	}
	if jainN > 0 && sumX2 > 0 {
		r.jain = sumX * sumX / (float64(jainN) * sumX2)
	}
	var stored, capacity, entries float64
	last := int(f.run / time.Second) // the run's last second holds the shutdowns
	for s := int(simWarmUp / time.Second); s < last && s < len(m.seconds); s++ {
		stored += float64(m.seconds[s].Stored)
		capacity += m.seconds[s].Capacity
		entries += float64(m.seconds[s].Entries)
	}
	if capacity > 0 {
		r.goodput = stored / capacity
	}
	if stored > 0 {
		r.amplificationWindow = entries / stored
	}
	if f.stepAt > 0 {
		r.converge = f.converged(last)
	}
	slices.Sort(f.added)
	if n := len(f.added); n > 0 {
		r.addedP50, r.addedP95 = f.added[n/2], f.added[n*95/100]
	}
	return r
}

// converged is how long after the step the stream is used well until the end of the run: in
// every window of simConvergeWindow from then on it stores at least 90% of what is offered or of
// what it takes, whichever is less, and refuses at most a quarter of the entries it is sent
// (amplification 1.33). NaN: never.
func (f *simFleet) converged(last int) float64 {
	m := f.stream
	first := int(math.Ceil(f.stepAt.Seconds()))
	good := func(s int) bool { // the window [s, s+simConvergeWindow)
		var stored, refused, entries, offered, capacity float64
		for i := s; i < s+simConvergeWindow; i++ {
			if i >= len(m.seconds) {
				return false
			}
			c := m.seconds[i]
			stored, refused, entries, capacity = stored+float64(c.Stored), refused+float64(c.Refused), entries+float64(c.Entries), capacity+c.Capacity
			if i < len(f.offered) {
				offered += float64(f.offered[i])
			}
		}
		return stored >= 0.9*min(offered, capacity) && refused <= 0.25*entries
	}
	at := -1
	for s := last - simConvergeWindow; s >= first && good(s); s-- {
		at = s
	}
	if at < 0 {
		return math.NaN()
	}
	return float64(at) - f.stepAt.Seconds()
}

// simConvergeWindow is the window, in seconds, over which convergence is judged: AIMD's
// saw-tooth refuses in bursts, a second at a time.
const simConvergeWindow = 3

// simHeader and row are BenchmarkSim's table.
const simHeader = "| scenario | fleet | environments | offered ev/s | capacity rec/s | goodput / capacity | delivered / offered | amplification | Jain | converge s | dropped full / shutdown / rejected | unknown | added p50 / p95 ms | counts short (at the end) |"

const simRule = "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

func (r simResult) row() string {
	var rejected uint64
	for _, n := range r.rejected {
		rejected += n
	}
	conv := "—"
	if !math.IsNaN(r.converge) {
		conv = fmt.Sprintf("%.0f", r.converge)
	}
	return fmt.Sprintf("| %s | %d | %d | %.0f | %.0f | %.2f | %.3f | %.2f | %.3f | %s | %d / %d / %d | %d | %.0f / %.0f | %d (%d) |",
		r.scenario, r.fleet, r.envs, r.offeredRate, r.capacity, r.goodput, r.deliveredShare, r.amplification, r.jain, conv,
		r.full, r.shutdown, rejected, r.unknown, ms(r.addedP50), ms(r.addedP95), r.countsShort, r.countsShortAtEnd)
}

// simTestRun is TestSim's run at 100 environments: short, so that their accounting is checked in
// seconds.
const simTestRun = 12 * time.Second

// TestSim runs every scenario for a fleet of 10 (and 100 for two of them) on the virtual clock and
// asserts the accounting of every environment (simFleet.result). The fleets of 10 run as
// BenchmarkSim runs them, and their rows must be the ones BENCHMARKS.md publishes (all but the
// real time it took): a change of behaviour fails it until the table is run again, by the commands
// above it (about 20 s for the fleets of 10; the larger ones, about 40 minutes, are not checked
// here, and the table says which code they ran on). The targets are read off the table,
// not asserted here.
func TestSim(t *testing.T) {
	published := publishedSimRows(t, 10)
	for _, sc := range simScenarios {
		for _, fleet := range []int{10, 100} {
			if fleet == 100 && !strings.HasPrefix(sc.name, "overload-6x") && !strings.HasPrefix(sc.name, "healthy-spiky") {
				continue
			}
			t.Run(fmt.Sprintf("%s/%d", sc.name, fleet), func(t *testing.T) {
				run := simTestRun
				if fleet == 10 {
					run = simRun
				}
				synctest.Test(t, func(t *testing.T) {
					r := runSim(sc, fleet, run)
					t.Logf("\n%s\n%s\n%s", simHeader, simRule, r.row())
					if r.offered == 0 || r.calls == 0 {
						t.Fatalf("offered %d events in %d calls: the fleet did not run", r.offered, r.calls)
					}
					for _, p := range r.problems {
						t.Error(p)
					}
					if want := published[sc.name]; fleet == 10 && !strings.HasPrefix(want, r.row()+" ") {
						t.Errorf("BENCHMARKS.md publishes\n%s\nand the code gives\n%s\nrun the table again (BENCHMARKS.md, \"Simulation at scale\")", want, r.row())
					}
				})
			})
		}
	}
}

// TestSimDeterministic runs scenarios twice: the same seed gives the same outcome in every
// environment. overload-2x: calls cut by the round draw backoff's jitter from the environment's
// own source; refused-30-end: what a call's answers teach the shards (shardPacers.learn) does
// not depend on the order of a map (when it did, one pair of runs in three differed at 100
// environments; at 1,000, where the stream's share refused whatever the rate was made partway
// through a call's shards, one run in six: TestRandomSharesCountEveryShardOfACall).
func TestSimDeterministic(t *testing.T) {
	for _, tt := range []struct {
		name  string
		fleet int
	}{{"overload-2x", 10}, {"refused-30-end", 100}, {"refused-30-end", 1000}} {
		t.Run(fmt.Sprintf("%s/%d", tt.name, tt.fleet), func(t *testing.T) {
			sc := simScenarios[slices.IndexFunc(simScenarios, func(s simScenario) bool { return s.name == tt.name })]
			var prints [2]uint64
			for i := range prints {
				synctest.Test(t, func(t *testing.T) { prints[i] = runSim(sc, tt.fleet, simTestRun).fingerprint })
			}
			if prints[0] != prints[1] {
				t.Errorf("fingerprints %x and %x: two runs of one scenario differ", prints[0], prints[1])
			}
		})
	}
}

// publishedSimRows returns the rows of BENCHMARKS.md's simulation table (the one under
// simHeader) for one fleet size, by scenario.
func publishedSimRows(t *testing.T, fleet int) map[string]string {
	t.Helper()
	doc, err := os.ReadFile("BENCHMARKS.md")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(doc), "\n")
	at := slices.IndexFunc(lines, func(l string) bool { return strings.HasPrefix(l, simHeader) })
	if at < 0 {
		t.Fatal("BENCHMARKS.md has no simulation table: no line begins with simHeader")
	}
	rows := map[string]string{}
	for _, l := range lines[at+2:] {
		cells := strings.Split(l, "|")
		if !strings.HasPrefix(l, "|") || len(cells) < 3 {
			break
		}
		if strings.TrimSpace(cells[2]) == strconv.Itoa(fleet) {
			rows[strings.TrimSpace(cells[1])] = l
		}
	}
	return rows
}

// simRunFlag sets BenchmarkSim's virtual run, and with it how long environments live (0.4-1.6x
// the run): the table's 30 s churns a fleet far faster than production, where Lambda keeps an
// environment that is invoked continuously for hours (BENCHMARKS.md, "How long environments
// live"). go test -run '^$' -bench 'BenchmarkSim/^(overload-10x)$/^(1000)$' -benchtime 1x . -simrun 120s
var simRunFlag = flag.Duration("simrun", simRun, "BenchmarkSim's virtual run: environments live 0.4-1.6x of it")

// simFleets are BenchmarkSim's fleet sizes.
var simFleets = []int{10, 100, 1000, 10000}

// BenchmarkSim runs every scenario for every fleet size and prints the table BENCHMARKS.md
// shows; each sub-benchmark reports its measures as metrics.
func BenchmarkSim(b *testing.B) {
	var rows []string
	for _, fleet := range simFleets { // the small fleets first: their rows come in seconds
		for _, sc := range simScenarios {
			b.Run(fmt.Sprintf("%s/%d", sc.name, fleet), func(b *testing.B) {
				var r simResult
				var wall time.Duration
				for b.Loop() {
					start := time.Now()
					r = inBubble(b, func() simResult { return runSim(sc, fleet, *simRunFlag) })
					wall = time.Since(start)
				}
				for _, p := range r.problems {
					b.Error(p)
				}
				b.ReportMetric(r.goodput, "goodput/capacity")
				b.ReportMetric(r.amplification, "amplification")
				b.ReportMetric(r.amplificationWindow, "amplification-window")
				b.ReportMetric(r.jain, "jain")
				if !math.IsNaN(r.converge) {
					b.ReportMetric(r.converge, "converge-s")
				}
				b.ReportMetric(float64(r.full+r.shutdown), "dropped")
				b.ReportMetric(ms(r.addedP50), "added-p50-ms")
				b.ReportMetric(ms(r.addedP95), "added-p95-ms")
				row := r.row() + fmt.Sprintf(" %.1f |", wall.Seconds())
				fmt.Println("sim row:", row)
				rows = append(rows, row)
			})
		}
	}
	fmt.Printf("\nBenchmarkSim, %s virtual per run (%s warm-up left out of goodput):\n%s real s |\n%s---|\n%s\n", *simRunFlag, simWarmUp, simHeader, simRule, strings.Join(rows, "\n"))
}

// inBubble runs f in a synctest bubble from a benchmark: synctest.Test needs a *testing.T, so it
// runs as a one-off test (testing.RunTests) whose failure fails b.
func inBubble(b *testing.B, f func() simResult) simResult {
	var r simResult
	ok := testing.RunTests(func(string, string) (bool, error) { return true, nil }, []testing.InternalTest{{
		Name: b.Name(),
		F:    func(t *testing.T) { synctest.Test(t, func(*testing.T) { r = f() }) },
	}})
	if !ok {
		b.Fatal("the simulation failed in its bubble")
	}
	return r
}
