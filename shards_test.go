package main

import (
	"context"
	"crypto/md5"
	"encoding/binary"
	"fmt"
	"math/big"
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

// TestGatesOfUnknownShards: an entry whose shard the map knows waits for that shard's pacer
// only; one whose hash lies between points of two shards waits for the paced ones of both (it
// goes to one of them); and nothing waits while no shard is paced.
func TestGatesOfUnknownShards(t *testing.T) {
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
	// Learn three keys of each shard.
	learnt := append(append([]string{}, lowKeys...), highKeys...)
	for _, key := range learnt {
		s.shards.learn(hashOf(key), route(key))
	}
	var known, unknown string // a key inside low's learnt run, and one between the two shards' runs
	for i := 0; known == "" || unknown == ""; i++ {
		key := fmt.Sprintf("q%d", i)
		if _, ok := s.shards.shardOf(hashOf(key)); ok && route(key) == low && known == "" {
			known = key
		} else if below, above := s.shards.neighbours(hashOf(key)); !ok && below == low && above == high && unknown == "" {
			unknown = key
		}
	}
	if g := s.gates(unknown); g != [2]string{} {
		t.Errorf("no shard paced: gates %q, want none", g)
	}
	pace := func(shard string) {
		p := s.newPace()
		p.observe(10, 0, 10, false, false)
		s.pacers[shard] = p
	}
	pace(low)
	if g := s.gates(known); g != [2]string{low, ""} {
		t.Errorf("known key of the paced shard: gates %q, want [%s]", g, low)
	}
	if g := s.gates(unknown); g != [2]string{low, ""} {
		t.Errorf("key between %s and the unpaced %s: gates %q, want [%s] only", low, high, g, low)
	}
	pace(high)
	if g := s.gates(unknown); g != [2]string{low, high} {
		t.Errorf("key between two paced shards: gates %q, want both", g)
	}
	// grantOne takes from both, and gives back the first when the second has nothing.
	s.pacers[low].tokens, s.pacers[high].tokens = 1, 0
	s.pacers[low].at, s.pacers[high].at = time.Now().Add(time.Hour), time.Now().Add(time.Hour) // no refill
	if s.grantOne(unknown) || s.pacers[low].tokens != 1 {
		t.Errorf("granted with the second gate empty, or kept the first's token (%v left)", s.pacers[low].tokens)
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
			if g := s.shardPace.gates(r.PartitionKey); g == [2]string{} {
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
