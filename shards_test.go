package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"
)

// evenShards returns n shard ranges splitting the hash key space evenly, as CreateStream does,
// and the shard a partition key goes to.
func evenShards(n int) func(key string) string {
	space := new(big.Int).Lsh(big.NewInt(1), 128)
	width := new(big.Int).Div(space, big.NewInt(int64(n)))
	return func(key string) string {
		sum := md5.Sum([]byte(key))
		i := new(big.Int).Div(new(big.Int).SetBytes(sum[:]), width).Int64()
		return fmt.Sprintf("shardId-%012d", min(i, int64(n-1)))
	}
}

func TestShardMapLearnsRangesFromAnswers(t *testing.T) {
	route := evenShards(4)
	var m shardMap
	for i := range 400 {
		key := fmt.Sprintf("learn-%d", i)
		m.learn(hashOf(key), route(key))
	}
	right, unknown := 0, 0
	for i := range 2000 {
		key := fmt.Sprintf("ask-%d", i)
		got, ok := m.shardOf(hashOf(key))
		switch {
		case !ok:
			unknown++
		case got != route(key):
			t.Fatalf("key %q: shardOf says %s, the stream routes it to %s", key, got, route(key))
		default:
			right++
		}
	}
	// Only keys between two points of different shards stay unknown: with 400 points over 4
	// ranges, a handful near the 3 boundaries.
	if unknown > 2000/20 {
		t.Errorf("%d of 2000 keys unknown after 400 answers over 4 shards", unknown)
	}
	if len(m.points) > 8 {
		t.Errorf("%d points kept for 4 contiguous ranges; points inside a range add nothing", len(m.points))
	}
}

func TestShardMapStaysBoundedAndCorrect(t *testing.T) {
	route := evenShards(2000) // more shards than points fit
	var m shardMap
	for i := range 20 * maxHashPoints {
		key := fmt.Sprintf("k%d", i)
		m.learn(hashOf(key), route(key))
		if len(m.points) > maxHashPoints {
			t.Fatalf("%d points after %d answers, bound %d", len(m.points), i+1, maxHashPoints)
		}
	}
	for i := range 5000 {
		key := fmt.Sprintf("q%d", i)
		if got, ok := m.shardOf(hashOf(key)); ok && got != route(key) {
			t.Fatalf("key %q: shardOf says %s, the stream routes it to %s", key, got, route(key))
		}
	}
}

func TestShardMapFollowsAReshard(t *testing.T) {
	var m shardMap
	var lo, mid, hi hashKey
	binary.BigEndian.PutUint64(lo[:], 1<<60)
	binary.BigEndian.PutUint64(mid[:], 2<<60)
	binary.BigEndian.PutUint64(hi[:], 3<<60)
	m.learn(lo, "shardId-000000000000")
	m.learn(hi, "shardId-000000000000")
	if got, _ := m.shardOf(mid); got != "shardId-000000000000" {
		t.Fatalf("between two points of one shard: %q", got)
	}
	m.learn(mid, "shardId-000000000002") // the shard split
	if got, _ := m.shardOf(mid); got != "shardId-000000000002" {
		t.Errorf("after an answer from the child shard: %q", got)
	}
}

func TestRefusedShard(t *testing.T) {
	for _, tt := range []struct {
		msg, want string
		ok        bool
	}{
		{"Rate exceeded for shard shardId-000000000001 in stream s under account 123456789012.", "shardId-000000000001", true},
		{"Rate exceeded for shard shardId-000000000007", "shardId-000000000007", true},
		{"Rate exceeded for shard", "", false},
		{"The request was denied due to request throttling.", "", false},
	} {
		got, ok := refusedShard(tt.msg)
		if got != tt.want || ok != tt.ok {
			t.Errorf("refusedShard(%q) = %q, %v; want %q, %v", tt.msg, got, ok, tt.want, tt.ok)
		}
	}
}

// TestHotShardHoldsBackOnlyItsOwnEntries: one shard of four takes 10 entries a call, the others
// everything. The hot shard's entries wait, paced by its own pacer; the calls stay full of the
// other shards' entries, and the stream's pacer does not slow them.
func TestHotShardHoldsBackOnlyItsOwnEntries(t *testing.T) {
	route := evenShards(4)
	const hot = "shardId-000000000000"
	fk := newFakeKinesis(t, func(_ int, req putRecordsRequest) (int, string) {
		rs := make([]string, len(req.Records))
		failed, hotTaken := 0, 0
		for i, r := range req.Records {
			shard := route(r.PartitionKey)
			if shard == hot {
				if hotTaken >= 10 {
					rs[i] = fmt.Sprintf(`{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard %s in stream s under account 123456789012."}`, shard)
					failed++
					continue
				}
				hotTaken++
			}
			rs[i] = fmt.Sprintf(`{"SequenceNumber":"1","ShardId":%q}`, shard)
		}
		return 200, fmt.Sprintf(`{"FailedRecordCount":%d,"Records":[%s]}`, failed, strings.Join(rs, ","))
	})
	s, buf, st := testShipper(t, config{}, fk.URL)
	addInvocations(buf, 40, 50) // one key per invocation (the default "request" partition keys)
	hotEvents := 0
	for inv := range 40 {
		if route(fmt.Sprintf("req-%d", inv)) == hot {
			hotEvents += 50
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	s.ship(ctx, everything)
	calls := fk.received()
	if st.delivered.Load() < uint64(2000-hotEvents) {
		t.Errorf("delivered %d of the %d events for the healthy shards", st.delivered.Load(), 2000-hotEvents)
	}
	// After the first answers have shown the hot shard, no call carries mostly its entries.
	for i, c := range calls[2:] {
		n := 0
		for _, r := range c.Records {
			if route(r.PartitionKey) == hot {
				n++
			}
		}
		if n > len(c.Records)/2 && len(c.Records) > 20 {
			t.Errorf("call %d carries %d of its %d entries for the hot shard", i+2, n, len(c.Records))
		}
	}
	if paced, rate := s.pace.pacing(); paced && rate < 1000 {
		t.Errorf("the stream's pacer paces at %.0f entries/s for one hot shard", rate)
	}
	if p := s.shardPace.pacers[hot]; p == nil || !p.paced {
		t.Errorf("the hot shard has no pacer that paces")
	}
}

// addInvocations buffers n invocations of lines log lines each, invocation i with request id
// "req-i": with the default partition keys, a key per invocation.
func addInvocations(buf *buffer, n, lines int) {
	for inv := range n {
		evs := make([]event, lines)
		for i := range evs {
			evs[i] = logEvent(fmt.Sprintf("inv %d line %d", inv, i))
			evs[i].requestID = fmt.Sprintf("req-%d", inv)
		}
		buf.add(evs, &filter{sample: 1})
	}
}

// refusingShardKinesis is a fake Kinesis that stores every entry but those route sends to the
// shard hot, which it refuses for throughput, naming the shard as Kinesis does.
func refusingShardKinesis(t testing.TB, hot string, route func(key, explicitHashKey string) string) *fakeKinesis {
	return newFakeKinesis(t, func(_ int, req putRecordsRequest) (int, string) {
		rs := make([]string, len(req.Records))
		failed := 0
		for i, r := range req.Records {
			if shard := route(r.PartitionKey, r.ExplicitHashKey); shard != hot {
				rs[i] = fmt.Sprintf(`{"SequenceNumber":"1","ShardId":%q}`, shard)
				continue
			}
			rs[i] = fmt.Sprintf(`{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard %s in stream s under account 123456789012."}`, hot)
			failed++
		}
		return 200, fmt.Sprintf(`{"FailedRecordCount":%d,"Records":[%s]}`, failed, strings.Join(rs, ","))
	})
}

// TestGateOfUnknownShards: an entry whose shard the map knows waits for that shard's pacer; one
// whose hash lies between points of two shards waits for the pacer of the nearer point's shard,
// its likelier owner; and nothing waits while no shard is paced, or while the gate's shard is not.
func TestGateOfUnknownShards(t *testing.T) {
	route := evenShards(2)
	const low, high = "shardId-000000000000", "shardId-000000000001"
	s := newShardPacers(func() *pacer { return newShardPacer(time.Now) })
	var lowKeys, highKeys []string
	for i := 0; len(lowKeys) < 3 || len(highKeys) < 3; i++ {
		key := fmt.Sprintf("k%d", i)
		if route(key) == low {
			lowKeys = append(lowKeys, key)
		} else {
			highKeys = append(highKeys, key)
		}
	}
	for _, key := range append(append([]string{}, lowKeys...), highKeys...) {
		s.shards.learn(hashOf(key), route(key))
	}
	// A key inside low's learnt run, and keys between the two runs nearer to each.
	var known, nearLow, nearHigh string
	top, bottom := lastPoint(s.shards, low), firstPoint(s.shards, high)
	for i := 0; known == "" || nearLow == "" || nearHigh == ""; i++ {
		key := fmt.Sprintf("q%d", i)
		h := hashOf(key)
		_, ok := s.shards.shardOf(h)
		switch {
		case ok && route(key) == low:
			known = cmp.Or(known, key)
		case !ok && bytes.Compare(h[:], top[:]) > 0 && bytes.Compare(h[:], bottom[:]) < 0:
			if less(span(top, h), span(h, bottom)) {
				nearLow = cmp.Or(nearLow, key)
			} else {
				nearHigh = cmp.Or(nearHigh, key)
			}
		}
	}
	if g, _ := s.gate(nearLow); g != "" {
		t.Errorf("no shard paced: gate %q, want none", g)
	}
	pace := func(shard string) {
		p := s.newPace()
		p.observe(10, 0, 10, false, false)
		s.pacers[shard] = p
	}
	pace(low)
	if g, ok := s.gate(known); g != low || !ok {
		t.Errorf("known key of the paced shard: gate %q (known %v), want %s", g, ok, low)
	}
	if g, ok := s.gate(nearLow); g != low || ok {
		t.Errorf("unknown key nearer to %s's points: gate %q (known %v), want %s", low, g, ok, low)
	}
	if g, _ := s.gate(nearHigh); g != "" {
		t.Errorf("unknown key nearer to the unpaced %s: gate %q, want none", high, g)
	}
	pace(high)
	if g, _ := s.gate(nearHigh); g != high {
		t.Errorf("unknown key nearer to %s's points: gate %q, want %s", high, g, high)
	}
}

// firstPoint and lastPoint are the least and the greatest learnt hash of shard.
func firstPoint(m shardMap, shard string) hashKey {
	for _, p := range m.points {
		if p.shard == shard {
			return p.hash
		}
	}
	panic("no point of " + shard)
}

func lastPoint(m shardMap, shard string) hashKey {
	for _, p := range slices.Backward(m.points) {
		if p.shard == shard {
			return p.hash
		}
	}
	panic("no point of " + shard)
}

// TestSpanAndNearest: span is the 128-bit difference, borrow included, and nearest picks the
// nearer of two learnt points, the lower one on a tie, and the end point outside them.
func TestSpanAndNearest(t *testing.T) {
	hk := func(hex string) (h hashKey) {
		b, _ := new(big.Int).SetString(hex, 16)
		b.FillBytes(h[:])
		return h
	}
	for _, c := range []struct{ a, b, want string }{
		{"0", "1", "1"},
		{"ffffffffffffffff", "10000000000000000", "1"}, // the low half borrows
		{"1", "ffffffffffffffffffffffffffffffff", "fffffffffffffffffffffffffffffffe"},
		{"123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210", ""},
	} {
		want := c.want
		if want == "" {
			a, _ := new(big.Int).SetString(c.a, 16)
			b, _ := new(big.Int).SetString(c.b, 16)
			want = new(big.Int).Sub(b, a).Text(16)
		}
		d := span(hk(c.a), hk(c.b))
		got := new(big.Int).Or(new(big.Int).Lsh(new(big.Int).SetUint64(d[0]), 64), new(big.Int).SetUint64(d[1])).Text(16)
		if got != want {
			t.Errorf("span(%s, %s) = %s, want %s", c.a, c.b, got, want)
		}
	}
	m := shardMap{points: []hashPoint{{hk("100"), "a"}, {hk("200"), "b"}}}
	for _, c := range []struct{ h, want string }{
		{"1", "a"}, {"17f", "a"}, {"180", "a"}, {"181", "b"}, {"fff", "b"},
	} {
		if got := m.nearest(hk(c.h)); got != c.want {
			t.Errorf("nearest(%s) = %q, want %q", c.h, got, c.want)
		}
	}
	if got := (&shardMap{}).nearest(hk("5")); got != "" {
		t.Errorf("nearest in an empty map = %q, want none", got)
	}
}

// TestLendLetsUnknownShardsAhead: under overload the buffer goes oldest first, and the entries of
// a shard the environment has never sent to wait behind older ones of the paced shard whose
// pacer gates them. Once a second one of them goes on credit, even when its gate has granted
// nothing, so that the map learns its shard; the credit takes the pacer's tokens below zero, and
// a pacer in debt lends nothing more.
func TestLendLetsUnknownShardsAhead(t *testing.T) {
	route := evenShards(4)
	const paced = "shardId-000000000001"
	clock := time.Unix(1e9, 0)
	now := func() time.Time { return clock }
	s, buf, _ := testShipper(t, config{}, "http://127.0.0.1:1") // nothing is sent
	s.pace.now = now
	s.shardPace.newPace = func() *pacer { return newShardPacer(now) }
	// The map knows shard 1 only, and shard 1 is paced with nothing to grant: every key is
	// gated by it, and only shard 1's are known.
	var known, unknown []string
	for i := 0; len(known) < 40 || len(unknown) < 40; i++ {
		key := fmt.Sprintf("req-%d", i)
		switch route(key) {
		case paced:
			s.shardPace.shards.learn(hashOf(key), paced)
			known = append(known, key)
		case "shardId-000000000002", "shardId-000000000003":
			unknown = append(unknown, key)
		}
	}
	p := newShardPacer(now)
	p.observe(10, 0, 10, false, false)
	p.rate, p.tokens, p.at = 0.5, 0.4, clock
	s.shardPace.pacers[paced] = p
	// Older entries of the paced shard first, then entries of shards the map does not know.
	add := func(keys []string) {
		evs := make([]event, len(keys))
		for i, key := range keys {
			evs[i] = logEvent("line of " + key)
			evs[i].requestID = key
		}
		buf.add(evs, &filter{sample: 1})
	}
	add(known)
	add(unknown)
	r := &round{before: everything}
	take := func() (keys []string) {
		recs := s.takeRecords(r, maxRecordsPerCall)
		for _, rec := range recs {
			keys = append(keys, rec.key)
		}
		s.buf.putBack(eventsOf(recs))
		return keys
	}
	if got := take(); len(got) != 1 || !slices.Contains(unknown, got[0]) {
		t.Fatalf("first take: %q, want one entry of unknown shard, on credit", got)
	}
	if p.tokens >= 0 {
		t.Errorf("the credit left the pacer %v tokens, want below zero", p.tokens)
	}
	p.tokens = 0 // as if repaid
	if got := take(); len(got) != 0 {
		t.Errorf("again within lendEvery: took %q, want nothing", got)
	}
	clock = clock.Add(lendEvery)
	p.tokens, p.at = -0.5, clock // in debt
	if got := take(); len(got) != 0 {
		t.Errorf("the pacer in debt: took %q, want nothing", got)
	}
	clock = clock.Add(4 * time.Second) // the debt repaid at 0.5/s, and a token
	if got := take(); len(got) != 2 || got[0] != known[0] || !slices.Contains(unknown, got[1]) {
		t.Errorf("with a grant: took %q, want the oldest entry of the paced shard (%s), then one of unknown shard on credit", got, known[0])
	}
}

// TestStrangersGrowLikeSlowStart: while a hot shard is paced, the entries of shards that have not
// refused go strangerProbe in the first call, then twice as many after each call that stored them
// all (strangerWindow); a refused stranger sends the window back to strangerProbe.
func TestStrangersGrowLikeSlowStart(t *testing.T) {
	route := evenShards(4)
	const hot = "shardId-000000000000"
	fk := refusingShardKinesis(t, hot, func(key, _ string) string { return route(key) })
	s, buf, _ := testShipper(t, config{}, fk.URL)
	addInvocations(buf, 400, 10) // a key per invocation: most are strangers to an environment that has seen few
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.ship(ctx, everything)
	calls := fk.received()
	// The first call goes unpaced and meets the hot shard; from the second on, the entries no
	// paced shard gates (all but the hot shard's: the paced shard gates its own, and keys next
	// to it) are at most the window, which doubles while they are stored.
	window := strangerProbe
	grew := 0
	for i, c := range calls[1:] {
		n := 0
		for _, r := range c.Records {
			if g, _ := s.shardPace.gate(r.PartitionKey); g == "" {
				n++
			}
		}
		if n > window {
			t.Fatalf("call %d carries %d entries no paced shard gates, window %d", i+2, n, window)
		}
		if n == window {
			grew++
		}
		window = min(2*window, maxRecordsPerCall)
	}
	if grew < 3 {
		t.Errorf("the window was filled in %d calls of %d: the strangers did not go as it grew", grew, len(calls)-1)
	}
	s.shardPace.answerStrangers(0, 1)
	if w := s.shardPace.strangerWindow(); w != strangerProbe {
		t.Errorf("after a refused stranger the window is %d, want %d", w, strangerProbe)
	}
}

// answerOf is one entry of a scripted answer for learn: stored by shard, or refused by it for
// throughput (its message names it, as Kinesis's does).
func answerOf(shard string, stored bool) putResult {
	if stored {
		return putResult{ShardID: []byte(shard)}
	}
	return putResult{ErrorCode: "ProvisionedThroughputExceededException",
		ErrorMessage: "Rate exceeded for shard " + shard + " in stream s under account 123456789012."}
}

// callOf is a call of entries of the given sizes and their answers, in order ("+" stored, "-"
// refused, one letter per entry), all of shard.
func callOf(shard, pattern string, sizes ...int) ([]pendingRecord, []putResult) {
	recs := make([]pendingRecord, len(pattern))
	results := make([]putResult, len(pattern))
	for i, c := range pattern {
		recs[i] = pendingRecord{key: fmt.Sprintf("k%d", i), size: 100}
		if i < len(sizes) {
			recs[i].size = sizes[i]
		}
		results[i] = answerOf(shard, c == '+')
	}
	return recs, results
}

// TestRefusalsWhateverTheRateAreToldFromTheShardsLimit: a shard out of throughput refuses a
// call's entries from the first over its limit to the last; refusals scattered among stored
// entries are refused whatever the rate, and no pacer learns from them, nor from a tail of
// refusals as short as that share makes likely. A tail on a shard that never scattered its
// refusals, and a large entry refused before a smaller one is stored (bytes), are the rate. A
// pacer made before the first scattered refusal is forgotten when it comes.
func TestRefusalsWhateverTheRateAreToldFromTheShardsLimit(t *testing.T) {
	const a, b = "shardId-000000000000", "shardId-000000000001"
	type call struct {
		shard, pattern string
		sizes          []int
		wantAnyway     int
		wantPacer      bool // the call leaves the shard with a pacer
	}
	for _, tt := range []struct {
		name  string
		calls []call
	}{
		{"scattered among stored", []call{{shard: a, pattern: "+-+-+", wantAnyway: 2}}},
		{"a tail, nothing scattered before", []call{{shard: a, pattern: "++--", wantPacer: true}}},
		{"all refused", []call{{shard: a, pattern: "---", wantPacer: true}}},
		{"a larger entry refused, a smaller stored after: bytes", []call{{shard: a, pattern: "+-+", sizes: []int{100, 5000, 100}, wantPacer: true}}},
		{"a smaller entry refused, a larger stored after", []call{{shard: a, pattern: "+-+", sizes: []int{100, 100, 5000}, wantAnyway: 1}}},
		{"a short tail after scattered refusals is more of the same", []call{
			{shard: a, pattern: "+-++-+-++-", wantAnyway: 4},
		}},
		{"a long tail after scattered refusals is the rate", []call{
			{shard: a, pattern: "+-++-+-++" + strings.Repeat("-", 30), wantAnyway: 3, wantPacer: true},
		}},
		{"a pacer a tail made before refusals scattered is forgotten when they do", []call{
			{shard: a, pattern: "++-", wantPacer: true},
			{shard: a, pattern: "+-+", wantAnyway: 1},
		}},
		{"another shard's share speaks for a shard seen in calls too small to scatter", []call{
			{shard: a, pattern: "+-++-+-++-++-+", wantAnyway: 5},
			{shard: b, pattern: "-", wantAnyway: 1},
			{shard: b, pattern: "+-", wantAnyway: 1},
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newShardPacers(func() *pacer { return newShardPacer(time.Now) })
			for i, c := range tt.calls {
				recs, results := callOf(c.shard, c.pattern, c.sizes...)
				byShard, _, anyway := s.learn(recs, results, nil)
				if anyway != c.wantAnyway {
					t.Errorf("call %d (%s): %d refused whatever the rate, want %d", i, c.pattern, anyway, c.wantAnyway)
				}
				refused := strings.Count(c.pattern, "-")
				if got := byShard[c.shard]; got.throttled != refused-c.wantAnyway || got.sent != len(c.pattern)-c.wantAnyway {
					t.Errorf("call %d (%s): the shard's pacer learns %d sent, %d throttled; want %d, %d",
						i, c.pattern, got.sent, got.throttled, len(c.pattern)-c.wantAnyway, refused-c.wantAnyway)
				}
				if got := s.pacers[c.shard] != nil; got != c.wantPacer {
					t.Errorf("call %d (%s): the shard has a pacer: %v, want %v", i, c.pattern, got, c.wantPacer)
				}
			}
		})
	}
}

// TestRandomSharesCountEveryShardOfACall: the first call whose refusals scatter makes the stream's
// share refused whatever the rate, and every shard of that call counts in it, whichever the map
// of shards gives first. (When the share was made partway through the call's shards, those
// measured before it were left out, and a simulated fleet of 1,000 ran differently from one run
// to the next.) Map order is random: 64 tries would all miss a dependence on it 2^-64 times.
func TestRandomSharesCountEveryShardOfACall(t *testing.T) {
	const a, b = "shardId-000000000000", "shardId-000000000001"
	recs, results := callOf(a, "+-+-+")
	more, answers := callOf(b, "+++")
	for i := range more {
		more[i].key = fmt.Sprintf("b%d", i)
	}
	recs, results = append(recs, more...), append(results, answers...)
	for try := range 64 {
		s := newShardPacers(func() *pacer { return newShardPacer(time.Now) })
		s.learn(recs, results, nil)
		share := s.random[streamShare]
		if share == nil || share.entries != 8 || share.refused != 2 {
			t.Fatalf("try %d: the stream's share is %+v after a call of 8 entries, 2 refused at random", try, share)
		}
	}
}

// TestStrangerWindowCountsOnlyTheRate: the stranger window goes back to strangerProbe when a
// stranger is refused for throughput, named shard or not, but not for a refusal whatever the rate
// (scattered among stored entries) or an internal failure.
func TestStrangerWindowCountsOnlyTheRate(t *testing.T) {
	const a = "shardId-000000000000"
	for _, tt := range []struct {
		name    string
		answers []putResult
		reset   bool
	}{
		{"a tail refused by a named shard", []putResult{answerOf(a, true), answerOf(a, false)}, true},
		{"refused for throughput, no shard named", []putResult{answerOf(a, true), {ErrorCode: "ProvisionedThroughputExceededException", ErrorMessage: "Rate exceeded"}}, true},
		{"scattered among stored", []putResult{answerOf(a, false), answerOf(a, true)}, false},
		{"an internal failure", []putResult{answerOf(a, true), {ErrorCode: "InternalFailure", ErrorMessage: "Internal service failure."}}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newShardPacers(func() *pacer { return newShardPacer(time.Now) })
			s.strangers = 64
			recs := []pendingRecord{{key: "k0", size: 100}, {key: "k1", size: 100}}
			s.learn(recs, tt.answers, map[string]bool{"k0": true, "k1": true})
			if got := s.strangerWindow() == strangerProbe; got != tt.reset {
				t.Errorf("window %d after the call; back to strangerProbe: %v, want %v", s.strangerWindow(), got, tt.reset)
			}
		})
	}
}

// TestCrowdFromWhatTheEnvironmentOffers: an environment's shard pacers are in a crowd while the
// function offers fewer than crowdDemand events a second per shard learnt and the stream stores
// less than crowdStored of them, judged from its first
// answer on (a cold environment's whole life may be a few windows; the first estimate is over a
// second at least), then over offeredWindow; and never while refusals whatever the rate show,
// whose tails a crowd's deeper cut would cut for.
func TestCrowdFromWhatTheEnvironmentOffers(t *testing.T) {
	route := evenShards(4)
	for _, tt := range []struct {
		name    string
		shards  int     // learnt before the pacer is made
		offered float64 // events/s, steady
		stored  float64 // the share of what is offered that the stream stores
		want    bool
		scatter bool // a call whose refusals scatter comes first: refusals whatever the rate
	}{
		{"a thousand environments' share of four shards at 10× overload", 4, 40, 0.1, true, false},
		{"the same where refusals whatever the rate have shown", 4, 40, 0.1, false, true},
		{"the same where the stream stores most of what is offered", 4, 40, crowdStored + 0.05, false, false},
		{"just under crowdStored", 4, 40, crowdStored - 0.05, true, false},
		{"a hundred environments' share of two shards at 10× overload", 2, 200, 0.1, false, false},
		{"the same events over one shard learnt", 1, 40, 0.1, false, false},
		{"just under crowdDemand per shard", 4, 4*crowdDemand - 4, 0.1, true, false},
		{"just over it", 4, 4*crowdDemand + 4, 0.1, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := &fakeClock{t: time.Unix(1000, 0)}
			s := newShardPacers(func() *pacer { return newShardPacer(c.now) })
			// One entry stored by each of the shards learnt, one refused by the first: it gets
			// a pacer.
			var recs []pendingRecord
			var results []putResult
			seen := map[string]bool{}
			for i := 0; len(seen) < tt.shards; i++ {
				key := fmt.Sprintf("k%d", i)
				if shard := route(key); !seen[shard] && len(seen) < tt.shards {
					seen[shard] = true
					recs = append(recs, pendingRecord{key: key, size: 100})
					results = append(results, answerOf(shard, true))
				}
			}
			first := string(results[0].ShardID)
			again := recs[0].key
			for i := 0; again == recs[0].key || route(again) != first; i++ {
				again = fmt.Sprintf("again-%d", i)
			}
			recs = append(recs, pendingRecord{key: again, size: 100})
			results = append(results, answerOf(first, false))
			if tt.scatter {
				var keys []pendingRecord
				var answers []putResult
				// Refusals scattered, then a tail too long for them: the share, and the pacer.
				pattern := "+-++-+-++" + strings.Repeat("-", 30)
				for i := 0; len(keys) < len(pattern); i++ {
					if key := fmt.Sprintf("scatter-%d", i); route(key) == first {
						keys = append(keys, pendingRecord{key: key, size: 100})
						answers = append(answers, answerOf(first, pattern[len(keys)-1] == '+'))
					}
				}
				s.learn(keys, answers, nil)
			}
			var received, delivered float64
			for step := range 40 { // 4 s in calls a tenth of a second apart
				c.advance(100 * time.Millisecond)
				received += tt.offered / 10
				delivered += tt.stored * tt.offered / 10
				if step == 0 {
					s.learn(recs, results, nil)
				}
				s.judgeCrowd(c.now(), uint64(received), uint64(delivered))
				p := s.pacers[first]
				if p == nil {
					t.Fatal("no pacer for the shard that refused")
				}
				if step == 9 || step == 39 { // the first estimate is over a second at least
					if p.crowded != tt.want {
						t.Errorf("after %v: crowded %v, want %v (%.0f events/s over %d shards, %d runs in the map)", time.Duration(step+1)*100*time.Millisecond, p.crowded, tt.want, tt.offered, tt.shards, s.shards.runs())
					}
				}
			}
		})
	}
}
