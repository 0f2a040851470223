package main

// Unit tests of shutdown.go; the shutdown scenarios end to end are in main_test.go's catalogue.

import (
	"context"
	"fmt"
	"math/big"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// TestLastWordTime: the time kept for the last counts record's tries follows the share of
// entries the stream refused in the last calls, as the answers show it.
func TestLastWordTime(t *testing.T) {
	everyOtherRefused := func(call, n int) ([]putResult, error) {
		if call%2 == 0 {
			return throttledAll(call, n)
		}
		return storedAll(call, n)
	}
	kmsRefused := func(_, _ int) ([]putResult, error) {
		return nil, &apiError{Status: 400, Code: "KMSThrottlingException", Message: "Rate exceeded"}
	}
	// tries of 20 ms answers and shipCounts' pauses (10, 20, 40, then 80 ms)
	tries := func(n int) time.Duration {
		d := time.Duration(0)
		for i, pause := 0, countsRetry; i < n; i++ {
			d += 20*time.Millisecond + pause
			pause = min(2*pause, countsRetryMax)
		}
		return d
	}
	for _, tt := range []struct {
		name   string
		answer func(call, n int) ([]putResult, error)
		want   time.Duration
	}{
		{"everything stored: one try", storedAll, tries(1)},
		// half the calls refused: 0.5^10 < 0.001 <= 0.5^9
		{"every other call refused: ten tries", everyOtherRefused, tries(10)},
		{"every call refused whole by KMS: no time is enough", kmsRefused, lastWordForever},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := &scriptedPutter{answer: tt.answer, after: 20 * time.Millisecond}
				s, buf, _ := scriptedShipper(t, p)
				addLogs(buf, 40)
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				s.ship(ctx, everything)
				if got := s.lastWordTime(); got != tt.want {
					t.Errorf("after %d calls: %v, want %v", len(p.calls()), got, tt.want)
				}
			})
		})
	}
}

// TestCallsWithin: the calls expected within a time fit one slowest answer and the rest at the
// usual one.
func TestCallsWithin(t *testing.T) {
	for _, tt := range []struct {
		name    string
		answers []time.Duration
		left    time.Duration
		want    int
	}{
		{"unmeasured", nil, time.Second, 1 + int((time.Second-unmeasuredAnswer)/unmeasuredAnswer)},
		{"unmeasured, too little time", nil, unmeasuredAnswer - time.Millisecond, 0},
		{"20 ms with a 600 ms spike", []time.Duration{20 * time.Millisecond, 600 * time.Millisecond, 20 * time.Millisecond}, time.Second, 1 + 400/20},
		{"time for one slow answer only", []time.Duration{20 * time.Millisecond, 600 * time.Millisecond, 20 * time.Millisecond}, 500 * time.Millisecond, 1},
		{"very fast answers count minCallTime", []time.Duration{time.Microsecond}, 100 * time.Millisecond, 1 + int((100*time.Millisecond-time.Microsecond)/minCallTime)},
	} {
		s := &shipper{}
		for _, d := range tt.answers {
			s.answers.add(d)
		}
		if got := s.callsWithin(tt.left); got != tt.want {
			t.Errorf("%s: callsWithin(%v) = %d, want %d", tt.name, tt.left, got, tt.want)
		}
	}
}

// TestLastCountsRecordPauses: the shutdown's last counts record goes by itself until it is
// stored. A try refused entry by entry — for its shard's throughput, KMS throttling of the entry,
// or a refusal that the share its shard refuses at random explains — goes again after
// countsRetry: a refused entry costs the shard nothing, and the more tries in the time kept, the
// likelier one is stored. So does a call KMS refuses whole. A call that is not answered (a 5xx) or
// is refused whole for throughput has each pause twice the one before, from countsRetry up to
// countsRetryMax: there the next try would not fare better at once. Tries refused whole by KMS go as
// several calls at once (countsSpread), which count as one try here. On a synctest clock, calls
// answered at once: six refusals, then stored.
func TestLastCountsRecordPauses(t *testing.T) {
	const shard = "shardId-000000000000"
	doubling := func(try int) time.Duration { return min(countsRetry<<(try-1), countsRetryMax) }
	constant := func(int) time.Duration { return countsRetry }
	for _, tt := range []struct {
		name   string
		refuse func(call, n int) ([]putResult, error)
		prime  func(s *shipper) // what the answers have taught before the shutdown
		pause  func(try int) time.Duration
		atOnce bool // tries go as calls at once (countsSpread)
	}{
		{"refused for throughput", throttledAll, nil, constant, false},
		{"the whole call refused for throughput", func(_, n int) ([]putResult, error) {
			return nil, &apiError{Status: 400, Code: "ProvisionedThroughputExceededException", Message: "Rate exceeded for stream telemetry under account 123456789012."}
		}, nil, doubling, false},
		{"answered 500", func(_, n int) ([]putResult, error) {
			return nil, &apiError{Status: 500, Code: "InternalFailure", Message: "internal failure"}
		}, nil, doubling, false},
		{"KMS throttling of the entry", func(_, n int) ([]putResult, error) {
			return slices.Repeat([]putResult{{ErrorCode: "KMSThrottlingException", ErrorMessage: "Rate exceeded (Service: AWSKMS)"}}, n), nil
		}, nil, constant, false},
		{"KMS throttling of the whole call", func(_, n int) ([]putResult, error) {
			return nil, &apiError{Status: 400, Code: "KMSThrottlingException", Message: "Rate exceeded (Service: AWSKMS)"}
		}, nil, constant, true},
		{"a shard that refuses 90% at random", func(_, n int) ([]putResult, error) {
			return slices.Repeat([]putResult{{ErrorCode: "ProvisionedThroughputExceededException", ErrorMessage: "Rate exceeded for shard " + shard + " in stream telemetry under account 123456789012."}}, n), nil
		}, func(s *shipper) {
			// As learn measures calls whose refusals stand scattered among stored entries.
			s.shardPace.measure(shard, 100, 90, true)
		}, constant, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var (
					mu     sync.Mutex      // calls at once answer together
					at     []time.Duration // each try's time; calls at once are one try
					atOnce bool            // a try of more than one call
				)
				start := time.Now()
				p := &scriptedPutter{answer: func(call, n int) ([]putResult, error) {
					mu.Lock()
					defer mu.Unlock()
					if now := time.Since(start); len(at) == 0 || at[len(at)-1] != now {
						at = append(at, now)
					} else {
						atOnce = true
					}
					if len(at) <= 6 {
						return tt.refuse(call, n)
					}
					return storedAll(call, n)
				}}
				s, buf, _ := scriptedShipper(t, p)
				if tt.prime != nil {
					tt.prime(s)
				}
				s.emitCounts(time.Now())
				ctx, cancel := context.WithTimeout(context.Background(), pressedCountsReserve)
				defer cancel()
				s.shipCounts(ctx)
				if _, left := buf.takeCounts(); left || len(at) != 7 {
					t.Fatalf("%d tries, counts record still waiting: %v; want 7 tries, the last one stored", len(at), left)
				}
				if atOnce != tt.atOnce {
					t.Errorf("calls at once: %v, want %v", atOnce, tt.atOnce)
				}
				for i := 1; i < len(at); i++ {
					if gap, want := at[i]-at[i-1], tt.pause(i); gap != want {
						t.Errorf("try %d came %v after the one before, want %v", i+1, gap, want)
					}
				}
			})
		})
	}
}

// TestLastCountsRecordDetoursAHotShard: the shutdown's last counts record, refused by its own
// shard (a hot one, refusing whatever the pause), goes on its next try to a shard the answers
// have shown, by ExplicitHashKey, with its partition key unchanged, and is stored there. The
// stream is two even shards; the fake routes by the explicit hash key when there is one, as
// Kinesis does.
func TestLastCountsRecordDetoursAHotShard(t *testing.T) {
	route := evenShards(2)
	const hot = "shardId-000000000000"
	routeEntry := func(key, explicit string) string {
		if explicit == "" {
			return route(key)
		}
		h, ok := new(big.Int).SetString(explicit, 10)
		if !ok {
			t.Errorf("ExplicitHashKey %q is not a decimal integer", explicit)
			return hot
		}
		if h.Cmp(new(big.Int).Lsh(big.NewInt(1), 127)) < 0 {
			return "shardId-000000000000"
		}
		return "shardId-000000000001"
	}
	fk := refusingShardKinesis(t, hot, routeEntry)
	s, buf, _ := testShipper(t, config{}, fk.URL)
	for i := 0; route(s.meta.envID) != hot; i++ { // the counts record's key goes to the hot shard
		s.meta.envID = fmt.Sprintf("env-%d", i)
	}
	addInvocations(buf, 20, 5) // the answers show both shards
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	s.ship(ctx, everything) // the hot shard's events wait; the map is learnt
	calls := len(fk.received())

	s.emitCounts(time.Now())
	ctx, cancel = context.WithTimeout(context.Background(), pressedCountsReserve)
	defer cancel()
	s.shipCounts(ctx)
	if _, left := buf.takeCounts(); left {
		t.Fatalf("the last counts record is still waiting after %d tries", len(fk.received())-calls)
	}
	// The ship round's calls were refused in good part (the hot shard's events, again and
	// again), so the first try may already carry copies (countsSpread): the first to its own
	// shard, the others round it.
	tries := fk.received()[calls:]
	if len(tries) > 2 {
		t.Fatalf("%d tries, want at most 2: refused by its own shard, stored by the other", len(tries))
	}
	first, last := tries[0].Records[0], tries[len(tries)-1].Records
	if first.ExplicitHashKey != "" || routeEntry(first.PartitionKey, "") != hot {
		t.Errorf("first try: key %q, explicit hash key %q; want its own key's shard, the hot one", first.PartitionKey, first.ExplicitHashKey)
	}
	if !slices.ContainsFunc(last, func(e struct{ Data, PartitionKey, ExplicitHashKey string }) bool {
		return e.PartitionKey == s.meta.envID && routeEntry(e.PartitionKey, e.ExplicitHashKey) != hot
	}) {
		t.Errorf("last try: %+v; want one entry with the environment's key, routed to the other shard", last)
	}
	if _, ok := s.shardPace.shards.shardOf(hashOf(s.meta.envID)); ok {
		if got, _ := s.shardPace.shards.shardOf(hashOf(s.meta.envID)); got != hot {
			t.Errorf("the shard map learnt the detour's shard %s for the key's hash", got)
		}
	}
}

// TestLastCountsRecordCopies: where the stream refuses most of the entries it is sent, the
// shutdown's last counts record goes in copies, so that the tries that fit before the deadline
// store it all the same, and it is counted stored once; where it refuses nothing it goes alone;
// where KMS refuses calls whole (which takes every copy with its call), it goes in calls at once. The fake
// refuses each entry at random, whatever the rate: what it models is issue 18's 90% refused (a
// share refused at random, or shards full at different moments); what it leaves out, a shard
// whose limit refuses every copy sent to it at once, and the routes (TestCopyRoutes).
func TestLastCountsRecordCopies(t *testing.T) {
	const environments, left = 200, 300 * time.Millisecond
	throttled := putResult{ErrorCode: "ProvisionedThroughputExceededException", ErrorMessage: "Rate exceeded for shard shardId-000000000000 in stream s under account 123456789012."}
	for _, tt := range []struct {
		name       string
		refused    float64 // of the entries, at random
		whole      bool    // KMS refuses the calls whole instead
		maxMissing int     // environments whose last counts record is not stored
		copies     bool    // calls of more than one entry
		atOnce     bool    // calls on the wire at once
	}{
		// One entry a try, 0.9^5 of them would be missing (5 tries fit at the pauses after
		// throughput refusals): about 120 of 200. In copies, well under one.
		{"nine entries in ten refused", 0.9, false, 3, true, false},
		{"none refused", 0, false, 0, false, false},
		// One call a try, 0.9^10 of them would be missing (10 tries fit at the pauses after
		// whole refusals): about 70 of 200. In 7 calls at once (66 tries needed, 10 fit), 0.9^70:
		// well under one. Copies in one call would not help: KMS refuses the call whole.
		{"nine calls in ten refused whole", 0.9, true, 3, false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(1, 2))
				var rngMu sync.Mutex // calls at once draw from it together
				missing, copied, atOnce := 0, 0, 0
				for range environments {
					p := &scriptedPutter{after: 20 * time.Millisecond, answer: func(_, n int) ([]putResult, error) {
						rngMu.Lock()
						defer rngMu.Unlock()
						if tt.whole && rng.Float64() < tt.refused {
							return nil, &apiError{Status: 400, Code: "KMSThrottlingException", Message: "Rate exceeded (Service: AWSKMS)"}
						}
						rs := make([]putResult, n)
						for i := range rs {
							rs[i] = putResult{ShardID: []byte("shardId-000000000000")}
							if !tt.whole && rng.Float64() < tt.refused {
								rs[i] = throttled
							}
						}
						return rs, nil
					}}
					s, buf, st := scriptedShipper(t, p)
					for range answerWindow { // what the calls before the shutdown showed, as send records it
						s.refused.add(tt.refused)
						if !tt.whole {
							s.entryRefused.add(tt.refused)
						}
						if tt.whole {
							s.wholeRefused.add(1)
						} else {
							s.wholeRefused.add(0)
						}
						s.answers.add(20 * time.Millisecond)
					}
					s.emitCounts(time.Now())
					ctx, cancel := context.WithTimeout(context.Background(), left)
					s.shipCounts(ctx)
					cancel()
					_, waiting := buf.takeCounts()
					if waiting {
						missing++
					} else if n := st.records.Load(); n != 1 {
						t.Fatalf("the last counts record stored, counted as %d records stored; want 1", n)
					}
					if p.mostAtOnce() > 1 {
						atOnce++
					}
					if n := p.mostAtOnce(); n > countsCallsMax {
						t.Fatalf("%d calls at once; want at most %d", n, countsCallsMax)
					}
					for _, n := range p.calls() {
						if n > 1 {
							copied++
						}
						if n > countsCopiesMax {
							t.Fatalf("a try of %d copies; want at most %d", n, countsCopiesMax)
						}
					}
				}
				if missing > tt.maxMissing {
					t.Errorf("%d of %d environments' last counts records not stored in %v; want at most %d", missing, environments, left, tt.maxMissing)
				}
				if (copied > 0) != tt.copies {
					t.Errorf("%d tries in copies; want copies: %v", copied, tt.copies)
				}
				if (atOnce > 0) != tt.atOnce {
					t.Errorf("%d environments sent calls at once; want calls at once: %v", atOnce, tt.atOnce)
				}
			})
		})
	}
}

// TestCopyRoutes: the copies of the last counts record go to different shards, those not paced
// first, the first where the try would go alone (its own shard on the first try, round it after).
func TestCopyRoutes(t *testing.T) {
	route := evenShards(4)
	s := newShardPacers(func() *pacer { return newShardPacer(time.Now) })
	var own string
	keyOf := map[string]string{} // a key of each shard
	for i := 0; len(keyOf) < 4; i++ {
		k := fmt.Sprintf("k%d", i)
		shard := route(k)
		if keyOf[shard] == "" {
			keyOf[shard] = k
			s.shards.learn(hashOf(k), shard)
		}
		if own == "" {
			own = k
		}
	}
	paced := route(keyOf["shardId-000000000003"])
	s.pacers[paced] = newShardPacer(time.Now)
	s.pacers[paced].paced = true
	shardOf := func(explicit string) string {
		if explicit == "" {
			return route(own)
		}
		h, _ := new(big.Int).SetString(explicit, 10)
		var k hashKey
		h.FillBytes(k[:])
		got, _ := s.shards.shardOf(k)
		return got
	}
	for try := range 3 {
		routes := s.copyRoutes(own, try, 4)
		if len(routes) != 4 {
			t.Fatalf("try %d: %d routes, want 4", try, len(routes))
		}
		if try == 0 && routes[0] != "" {
			t.Errorf("try 0: the first copy routed by %q, want its own key", routes[0])
		}
		seen := map[string]bool{}
		for _, r := range routes[1:] {
			seen[shardOf(r)] = true
		}
		if len(seen) != 3 || seen[route(own)] {
			t.Errorf("try %d: the other copies go to %v; want the three other shards", try, seen)
		}
		if try == 0 && shardOf(routes[1]) == paced {
			t.Errorf("try 0: the second copy goes to the paced shard, want one not paced first")
		}
	}
}
