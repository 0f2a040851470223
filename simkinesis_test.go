package main

// simStream, an in-process model of one Kinesis data stream for the simulation (sim_test.go). It
// is a recordPutter: the shipper's rounds call it as they call the real client, and it answers on
// the virtual clock of a testing/synctest bubble.
//
// What it models, from the Kinesis Data Streams PutRecords reference and its quotas page:
//   - Routing: an entry goes to the shard whose hash key range holds the MD5 of its partition key
//     as a 128-bit integer (or its ExplicitHashKey); the ranges split the key space evenly, as
//     CreateStream does. The routing is shardproxy_test.go's (shardFor), over simStream's shards.
//   - Provisioned shards: 1,000 records/s and 1 MiB/s each (data plus partition key), as token
//     buckets holding about one second of capacity (shardproxy_test.go's throttledShard). An entry
//     over either refuses with ProvisionedThroughputExceededException and the service's message,
//     "Rate exceeded for shard shardId-… in stream … under account ….", the others are stored.
//   - A hot partition key of another producer: it takes part of one shard's rate, and the share
//     of this fleet's entries routed there is refused whatever the fleet's own rate.
//   - On-demand streams: the stream as a whole takes up to twice its previous peak (a bucket of
//     2×peak records/s and about 1 s of burst), refuses above it, and doubles its capacity after
//     it has throttled for scaleAfter without a quiet second (AWS scales in about 15 minutes;
//     the simulation uses seconds).
//   - A capacity step: every shard's limits change by a factor at a given time (a reshard).
//   - KMS throttling: a share of calls refused whole with KMSThrottlingException whatever the
//     rate. PutRecords answers an entry with ProvisionedThroughputExceededException or
//     InternalFailure only (API reference, PutRecordsResultEntry); KMS throttling is an error of
//     the whole call.
//   - A share of entries refused for their shard's throughput at random, whatever the rate, as
//     the fleet test's shard proxy refuses them (shardFaults.Refuse): issue 18's "random
//     refusal", a stress for the pacer rather than a documented Kinesis behaviour. The refused
//     entries take no tokens, so they stand scattered among the stored ones.
//   - Answer times: a base time with spikes (shares of calls answered later), from
//     shardproxy_test.go's shardFaults.delay, and a sub-millisecond jitter. A call whose context
//     ends while it waits fails as a written request whose answer never came, as the real client
//     does: what the model stored stays stored.
//
// What it leaves out: AWS's exact metering (per-second limits, not buckets) and the bytes limit of
// on-demand streams, whole-call errors other than KMS throttling (5xx, a throttled call, a lost
// connection before the request is written), the 5 MiB per-call and 1 MiB per-record checks,
// answer times that grow with the call's size or the stream's load, connection set-up and
// credentials, resharding's parent/child shards, per-account limits, and reads. Sequence numbers
// are a counter.
//
// Calls that arrive at the same virtual instant are decided together, one nanosecond later, in
// the order of (environment, call), so that a run does not depend on how the Go scheduler orders
// goroutines: the simulation is deterministic for a given seed. A call that arrives at the very
// instant of a decision waits for the next one, whether the scheduler runs it before the
// decision or after (before, two runs of a fleet of 1,000 could decide the same call a
// nanosecond apart).

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// simStreamOptions describe one modelled stream.
type simStreamOptions struct {
	Shards int
	Limits shardLimits // per shard
	// HotShard (when HotLoad > 0) is the shard a hot partition key of another producer writes
	// to, at HotLoad records/s of that shard's limit.
	HotShard int
	HotLoad  float64
	// OnDemand, when Peak > 0, makes the stream on-demand: no per-shard limits, the stream takes
	// 2×Peak records/s, and doubles that after ScaleAfter of throttling.
	OnDemand simOnDemand
	// StepAt (when StepFactor > 0) multiplies every shard's limits by StepFactor.
	StepAt     time.Duration
	StepFactor float64
	KMSShare   float64 // share of calls refused whole with KMSThrottlingException
	// RefuseShare is the share of entries refused for their shard's throughput at random,
	// whatever the rate (as the fleet test's shard proxy does: shardFaults.Refuse).
	RefuseShare float64
	Answer      time.Duration
	Spikes      []latencySpike
	Timeout     time.Duration // the client's request timeout (KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS)
	Seed        uint64
}

type simOnDemand struct {
	Peak       float64 // records/s
	ScaleAfter time.Duration
}

// simSecond is what the stream saw in one second of the run.
type simSecond struct {
	Entries, Stored, Refused int
	Capacity                 float64 // records/s at the end of the second
}

// simLedger is what one environment's events became in the stream: which ids are stored (by the
// sequence number of the id, <prefix>-<seq>), duplicates, and its last counts record.
type simLedger struct {
	stored         []uint64 // bit set by seq
	telemetry      int      // distinct telemetry events stored
	dupTelemetry   int      // telemetry entries stored again
	counts         int      // distinct counts records stored
	lastCountsSeq  uint64
	lastCounts     []byte // the data of the counts record with the highest seq
	entries, calls int
	refused, kept  int // entries refused and stored
}

// simStream is the modelled stream. Environments reach it through client(env).
type simStream struct {
	name, account string
	opts          simStreamOptions
	start         time.Time
	router        *shardProxy // only its routing (shardFor) over shards
	shards        []*throttledShard
	rng           *rand.Rand
	faults        shardFaults // answer times

	mu        sync.Mutex
	pending   []*simCall
	scheduled bool
	stepped   bool
	stream    tokenBucket // on-demand
	throttled time.Time   // on-demand: start of the current throttling, zero when quiet
	lastThrot time.Time
	seqNo     uint64
	seconds   []simSecond
	ledgers   map[int]*simLedger
	scaledAt  []time.Duration // on-demand scaling times, from the start
}

// newSimStream makes the stream; call it inside the bubble (its clock starts there).
func newSimStream(name string, o simStreamOptions) *simStream {
	now := time.Now()
	m := &simStream{
		name: name, account: "123456789012", opts: o, start: now,
		rng:     rand.New(rand.NewPCG(o.Seed, 1)),
		ledgers: map[int]*simLedger{},
	}
	m.faults = shardFaults{Latency: o.Answer, Spikes: o.Spikes, randState: rand.New(rand.NewPCG(o.Seed, 2))}
	top := new(big.Int).Lsh(big.NewInt(1), 128)
	for i := range o.Shards {
		start := new(big.Int).Div(new(big.Int).Mul(top, big.NewInt(int64(i))), big.NewInt(int64(o.Shards)))
		end := new(big.Int).Div(new(big.Int).Mul(top, big.NewInt(int64(i+1))), big.NewInt(int64(o.Shards)))
		end.Sub(end, big.NewInt(1))
		lim := o.Limits
		if o.HotLoad > 0 && i == o.HotShard {
			// The other producer's key takes its share of the shard first.
			f := max(0, 1-o.HotLoad/lim.Records)
			lim.Records, lim.Bytes = lim.Records*f, lim.Bytes*f
		}
		m.shards = append(m.shards, &throttledShard{
			id: fmt.Sprintf("shardId-%012d", i), start: start, end: end,
			records: newTokenBucket(lim.Records, lim.Burst, now),
			bytes:   newTokenBucket(lim.Bytes, lim.Burst, now),
		})
	}
	m.router = &shardProxy{shards: m.shards}
	if o.OnDemand.Peak > 0 {
		m.stream = newTokenBucket(2*o.OnDemand.Peak, time.Second, now)
	}
	return m
}

// capacity is what the stream accepts now, in records/s.
func (m *simStream) capacity() float64 {
	if m.opts.OnDemand.Peak > 0 {
		return m.stream.rate
	}
	c := 0.0
	for _, s := range m.shards {
		c += s.records.rate
	}
	return c
}

// simCall is one PutRecords call waiting for its decision.
type simCall struct {
	at      time.Time // arrival
	env     int
	seq     int
	entries []shardEntry
	done    chan simAnswer
}

type simAnswer struct {
	results []putResult
	err     error // the whole call refused
	after   time.Duration
}

// simClient is one environment's client of the stream: the shipper's recordPutter.
type simClient struct {
	m     *simStream
	env   int
	mu    sync.Mutex // calls may run at once (shipper.put)
	calls int
}

func (m *simStream) client(env int) *simClient { return &simClient{m: m, env: env} }

func (c *simClient) invalidateCredentials() {}

// putRecords parses the request as Kinesis does, waits for the model's decision and then for the
// answer time, within the request timeout.
func (c *simClient) putRecords(ctx context.Context, body []byte, n int) ([]putResult, error) {
	if c.m.opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.m.opts.Timeout)
		defer cancel()
	}
	if err := ctx.Err(); err != nil {
		return nil, &networkError{err: err}
	}
	var req struct {
		StreamName string
		Records    []shardEntry
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, &apiError{Status: 400, Code: "SerializationException", Message: err.Error()}
	}
	if req.StreamName != c.m.name {
		return nil, &apiError{Status: 400, Code: "ResourceNotFoundException", Message: "Stream " + req.StreamName + " under account " + c.m.account + " not found."}
	}
	if len(req.Records) != n || n == 0 || n > maxRecordsPerCall {
		return nil, &apiError{Status: 400, Code: "ValidationException", Message: fmt.Sprintf("%d records, told %d", len(req.Records), n)}
	}
	c.mu.Lock()
	call := &simCall{env: c.env, seq: c.calls, entries: req.Records, done: make(chan simAnswer, 1)}
	c.calls++
	c.mu.Unlock()
	call.at = time.Now()
	c.m.enqueue(call)
	a := <-call.done // decided 1 ns after arrival
	t := time.NewTimer(a.after)
	defer t.Stop()
	select {
	case <-t.C:
		return a.results, a.err
	case <-ctx.Done():
		// Written and decided: what was stored stays stored, and the client cannot know.
		return nil, &networkError{err: fmt.Errorf("simulated call: %w", ctx.Err()), written: true}
	}
}

// enqueue adds a call to the ones decided together one nanosecond from now.
func (m *simStream) enqueue(c *simCall) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.pending = append(m.pending, c)
	if !m.scheduled {
		m.scheduled = true
		time.AfterFunc(time.Nanosecond, m.decide)
	}
}

// decide answers the calls that arrived at one instant, in (environment, call) order.
func (m *simStream) decide() {
	m.mu.Lock()
	defer m.mu.Unlock()
	// A call that arrives at this very instant may come before or after this function runs, as
	// the scheduler has it: it waits for the next instant's decision either way.
	now := time.Now()
	var calls, later []*simCall
	for _, c := range m.pending {
		if c.at.Before(now) {
			calls = append(calls, c)
		} else {
			later = append(later, c)
		}
	}
	m.pending, m.scheduled = later, len(later) > 0
	if m.scheduled {
		time.AfterFunc(time.Nanosecond, m.decide)
	}
	slices.SortFunc(calls, func(a, b *simCall) int {
		if a.env != b.env {
			return a.env - b.env
		}
		return a.seq - b.seq
	})
	m.adjust(now)
	sec := m.second(now)
	for _, c := range calls {
		l := m.ledger(c.env)
		l.calls++
		after := m.faults.delay() + time.Duration(m.rng.Int64N(int64(time.Millisecond)))
		if m.opts.KMSShare > 0 && m.rng.Float64() < m.opts.KMSShare {
			l.entries += len(c.entries)
			l.refused += len(c.entries)
			sec.Entries += len(c.entries)
			sec.Refused += len(c.entries)
			c.done <- simAnswer{after: after, err: &apiError{Status: 400, Code: "KMSThrottlingException",
				Message: "The request was denied due to request throttling. (Service: AWSKMS; Status Code: 400; Error Code: ThrottlingException)"}}
			continue
		}
		results := make([]putResult, len(c.entries))
		for i, e := range c.entries {
			results[i] = m.decideEntry(now, e, l)
			l.entries++
			sec.Entries++
			if results[i].ErrorCode != "" {
				l.refused++
				sec.Refused++
			} else {
				l.kept++
				sec.Stored++
			}
		}
		c.done <- simAnswer{results: results, after: after}
	}
	sec.Capacity = m.capacity()
}

// adjust applies the capacity step and on-demand scaling due by now.
func (m *simStream) adjust(now time.Time) {
	if f := m.opts.StepFactor; f > 0 && !m.stepped && now.Sub(m.start) >= m.opts.StepAt {
		m.stepped = true
		for _, s := range m.shards {
			for _, b := range []*tokenBucket{&s.records, &s.bytes} {
				b.refill(now)
				b.rate, b.capacity = b.rate*f, b.capacity*f
				b.tokens = min(b.tokens, b.capacity)
			}
		}
	}
	if od := m.opts.OnDemand; od.Peak > 0 && !m.throttled.IsZero() {
		if now.Sub(m.lastThrot) > time.Second {
			m.throttled = time.Time{} // a quiet second: the throttling is over
		} else if now.Sub(m.throttled) >= od.ScaleAfter {
			m.stream.refill(now)
			m.stream.rate, m.stream.capacity = 2*m.stream.rate, 2*m.stream.capacity
			m.throttled = time.Time{}
			m.scaledAt = append(m.scaledAt, now.Sub(m.start))
		}
	}
}

// decideEntry stores or refuses one entry.
func (m *simStream) decideEntry(now time.Time, e shardEntry, l *simLedger) putResult {
	sh, err := m.router.shardFor(e.PartitionKey, e.ExplicitHashKey)
	if err != nil {
		return putResult{ErrorCode: "InternalFailure", ErrorMessage: err.Error()}
	}
	data, err := base64.StdEncoding.DecodeString(e.Data)
	if err != nil {
		return putResult{ErrorCode: "InternalFailure", ErrorMessage: "Data is not base64"}
	}
	size := len(data) + len(e.PartitionKey)
	switch {
	case m.opts.RefuseShare > 0 && m.rng.Float64() < m.opts.RefuseShare:
		return m.rateExceeded(sh)
	case m.opts.OnDemand.Peak > 0:
		m.stream.refill(now)
		if m.stream.tokens < 1 {
			if m.throttled.IsZero() {
				m.throttled = now
			}
			m.lastThrot = now
			return m.rateExceeded(sh)
		}
		m.stream.tokens--
	case !sh.take(now, size):
		return m.rateExceeded(sh)
	}
	m.seqNo++
	m.record(l, data)
	return putResult{ShardID: []byte(sh.id)}
}

func (m *simStream) rateExceeded(sh *throttledShard) putResult {
	return putResult{
		ErrorCode:    "ProvisionedThroughputExceededException",
		ErrorMessage: fmt.Sprintf("Rate exceeded for shard %s in stream %s under account %s.", sh.id, m.name, m.account),
	}
}

var (
	simIDField    = []byte(`{"id":"`)
	simCountsType = []byte(`"type":"` + countsType + `"`)
)

// record notes a stored record in the environment's ledger, by the sequence number of its id.
func (m *simStream) record(l *simLedger, data []byte) {
	rest, ok := bytes.CutPrefix(data, simIDField)
	end := bytes.IndexByte(rest, '"')
	dash := bytes.LastIndexByte(rest[:max(end, 0)], '-')
	if !ok || end < 0 || dash < 0 {
		return
	}
	seq, err := strconv.ParseUint(string(rest[dash+1:end]), 10, 64)
	if err != nil {
		return
	}
	counts := bytes.Contains(data, simCountsType)
	w := int(seq / 64)
	if w >= len(l.stored) {
		l.stored = append(l.stored, make([]uint64, w+1-len(l.stored))...)
	}
	bit := uint64(1) << (seq % 64)
	dup := l.stored[w]&bit != 0
	l.stored[w] |= bit
	switch {
	case counts:
		if !dup { // a copy of the last counts record (countsSpread) is not another record
			l.counts++
		}
		if seq >= l.lastCountsSeq || l.lastCounts == nil {
			l.lastCountsSeq, l.lastCounts = seq, bytes.Clone(data)
		}
	case dup:
		l.dupTelemetry++
	default:
		l.telemetry++
	}
}

func (m *simStream) ledger(env int) *simLedger {
	l := m.ledgers[env]
	if l == nil {
		l = &simLedger{}
		m.ledgers[env] = l
	}
	return l
}

// second returns the counters of the second of the run that holds now.
func (m *simStream) second(now time.Time) *simSecond {
	i := int(now.Sub(m.start) / time.Second)
	for len(m.seconds) <= i {
		m.seconds = append(m.seconds, simSecond{Capacity: m.capacity()})
	}
	return &m.seconds[i]
}

// lastCounts decodes the environment's last stored counts record.
func (l *simLedger) lastCountsRecord() (countsRecord, bool) {
	if l == nil || l.lastCounts == nil {
		return countsRecord{}, false
	}
	var env struct {
		Event struct {
			Record countsRecord `json:"record"`
		} `json:"event"`
	}
	if err := json.Unmarshal(l.lastCounts, &env); err != nil {
		return countsRecord{}, false
	}
	return env.Event.Record, true
}

// simBody is a PutRecords body of entries with the given partition keys, each record's data an
// envelope with id p-<seq>.
func simBody(stream string, firstSeq int, keys ...string) []byte {
	type entry struct{ Data, PartitionKey string }
	req := struct {
		StreamName string
		Records    []entry
	}{StreamName: stream}
	for i, k := range keys {
		data := fmt.Sprintf(`{"id":"p-%d","event":{"type":"function","record":"x"}}`, firstSeq+i)
		req.Records = append(req.Records, entry{Data: base64.StdEncoding.EncodeToString([]byte(data)), PartitionKey: k})
	}
	b, _ := json.Marshal(req)
	return b
}

// TestSimStreamModel checks the model against what it claims to model: MD5 routing over even
// hash ranges, a shard's 1,000 records/s with a second of burst and the service's message, KMS
// throttling's share, answer times, a cut call that stays stored, and on-demand scaling.
func TestSimStreamModel(t *testing.T) {
	keys := func(n int, prefix string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%s%d", prefix, i)
		}
		return out
	}
	t.Run("routing", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			m := newSimStream("s", simStreamOptions{Shards: 2, Limits: kinesisShardLimits})
			ks := keys(50, "k")
			res, err := m.client(0).putRecords(t.Context(), simBody("s", 0, ks...), len(ks))
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range res {
				sum := md5.Sum([]byte(ks[i]))
				want := "shardId-000000000000"
				if sum[0] >= 0x80 { // the upper half of the 128-bit key space
					want = "shardId-000000000001"
				}
				if string(r.ShardID) != want || r.ErrorCode != "" {
					t.Errorf("key %q: %+v, want stored on %s", ks[i], r, want)
				}
			}
		})
	})
	t.Run("shard limit", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			m := newSimStream("s", simStreamOptions{Shards: 1, Limits: kinesisShardLimits, Answer: 20 * time.Millisecond})
			c := m.client(0)
			stored := 0
			for call := range 3 {
				start := time.Now()
				res, err := c.putRecords(t.Context(), simBody("s", call*500, keys(500, "k")...), 500)
				if err != nil {
					t.Fatal(err)
				}
				if took := time.Since(start); took < 20*time.Millisecond || took > 22*time.Millisecond {
					t.Errorf("answer took %v, want 20 ms and under 1 ms of jitter", took)
				}
				for _, r := range res {
					switch {
					case r.ErrorCode == "":
						stored++
					case r.ErrorMessage != "Rate exceeded for shard shardId-000000000000 in stream s under account 123456789012.":
						t.Errorf("refusal %+v", r)
					}
				}
			}
			// A full bucket of 1,000, plus what 40 ms of answers refilled.
			if stored < 1000 || stored > 1060 {
				t.Errorf("stored %d of 1,500 sent at once, want about 1,000", stored)
			}
			time.Sleep(time.Second)
			res, _ := c.putRecords(t.Context(), simBody("s", 1500, keys(500, "k")...), 500)
			if i := slices.IndexFunc(res, func(r putResult) bool { return r.ErrorCode != "" }); i >= 0 {
				t.Errorf("after a second, entry %d of 500 refused (%s), want none", i, res[i].ErrorCode)
			}
			if l := m.ledgers[0]; l.telemetry != stored+500 || l.entries != 2000 {
				t.Errorf("ledger: %d stored of %d entries, want %d of 2000", l.telemetry, l.entries, stored+500)
			}
		})
	})
	t.Run("kms share", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			m := newSimStream("s", simStreamOptions{Shards: 4, Limits: shardLimits{Records: 1e9, Bytes: 1e12, Burst: time.Second}, KMSShare: 0.3, Seed: 9})
			refused := 0
			for call := range 400 {
				res, err := m.client(0).putRecords(t.Context(), simBody("s", call*5, keys(5, "k")...), 5)
				var ae *apiError
				switch {
				case errors.As(err, &ae) && ae.Code == "KMSThrottlingException" && res == nil:
					refused++
				case err != nil || len(res) != 5 || slices.ContainsFunc(res, func(r putResult) bool { return r.ErrorCode != "" }):
					t.Fatalf("call %d: %v, %d results: want all stored or the whole call refused", call, err, len(res))
				}
			}
			if share := float64(refused) / 400; share < 0.25 || share > 0.35 {
				t.Errorf("KMS refused %.3f of the calls, want 0.3", share)
			}
		})
	})
	t.Run("cut call stays stored", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			m := newSimStream("s", simStreamOptions{Shards: 1, Limits: kinesisShardLimits, Answer: time.Second})
			ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
			defer cancel()
			_, err := m.client(3).putRecords(ctx, simBody("s", 0, "a", "b"), 2)
			if !maybeStored(err) {
				t.Errorf("cut call: %v, want a written request without an answer", err)
			}
			if l := m.ledgers[3]; l == nil || l.telemetry != 2 {
				t.Errorf("the cut call's records are not stored: %+v", l)
			}
		})
	})
	t.Run("on-demand", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			m := newSimStream("s", simStreamOptions{Shards: 1, OnDemand: simOnDemand{Peak: 100, ScaleAfter: 3 * time.Second}})
			if c := m.capacity(); c != 200 {
				t.Fatalf("capacity %v, want twice the peak of 100", c)
			}
			c := m.client(0)
			// 300 records/s offered for 10 s: the second of burst (200) lasts 2 s, then the
			// stream throttles, scales to 400 records/s 3 s later, and throttles no more.
			for i := range 100 {
				c.putRecords(t.Context(), simBody("s", i*30, keys(30, "k")...), 30)
				time.Sleep(100 * time.Millisecond)
			}
			if len(m.scaledAt) != 1 || m.capacity() != 400 {
				t.Errorf("capacity %v after 10 s at 300/s (scaled at %v), want 400 after one scaling", m.capacity(), m.scaledAt)
			} else if at := m.scaledAt[0]; at < 4500*time.Millisecond || at > 5500*time.Millisecond {
				t.Errorf("scaled at %v, want about 3 s after the throttling began at 2 s", at)
			}
		})
	})
}
