package main

// Unit tests of shutdown.go; the shutdown scenarios end to end are in main_test.go's catalogue.

import (
	"context"
	"fmt"
	"math/big"
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
// stored. After a refusal for throughput each pause is twice the one before, from countsRetry up
// to countsRetryMax: a fleet that spins down together must not fill the stream with tries, and
// one that is refused half the time needs several. A try refused whatever the
// rate — KMS throttling of the entry or of the whole call, or a shard's refusal that the share it
// refuses at random explains — goes again after countsRetry: the stream is not short of room, and
// a doubling pause leaves few tries in the time kept for it. On a synctest clock, calls answered
// at once: six refusals, then stored.
func TestLastCountsRecordPauses(t *testing.T) {
	const shard = "shardId-000000000000"
	doubling := func(try int) time.Duration { return min(countsRetry<<(try-1), countsRetryMax) }
	constant := func(int) time.Duration { return countsRetry }
	for _, tt := range []struct {
		name   string
		refuse func(call, n int) ([]putResult, error)
		prime  func(s *shipper) // what the answers have taught before the shutdown
		pause  func(try int) time.Duration
	}{
		{"refused for throughput", throttledAll, nil, doubling},
		{"KMS throttling of the entry", func(_, n int) ([]putResult, error) {
			return []putResult{{ErrorCode: "KMSThrottlingException", ErrorMessage: "Rate exceeded (Service: AWSKMS)"}}, nil
		}, nil, constant},
		{"KMS throttling of the whole call", func(_, n int) ([]putResult, error) {
			return nil, &apiError{Status: 400, Code: "KMSThrottlingException", Message: "Rate exceeded (Service: AWSKMS)"}
		}, nil, constant},
		{"a shard that refuses 90% at random", func(_, n int) ([]putResult, error) {
			return []putResult{{ErrorCode: "ProvisionedThroughputExceededException", ErrorMessage: "Rate exceeded for shard " + shard + " in stream telemetry under account 123456789012."}}, nil
		}, func(s *shipper) {
			// As learn measures calls whose refusals stand scattered among stored entries.
			s.shardPace.measure(shard, 100, 90, true)
		}, constant},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var at []time.Duration
				start := time.Now()
				p := &scriptedPutter{answer: func(call, n int) ([]putResult, error) {
					at = append(at, time.Since(start))
					if call < 6 {
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
	tries := fk.received()[calls:]
	if len(tries) != 2 {
		t.Fatalf("%d tries, want 2: refused by its own shard, stored by the other", len(tries))
	}
	first, second := tries[0].Records[0], tries[1].Records[0]
	if first.ExplicitHashKey != "" || routeEntry(first.PartitionKey, "") != hot {
		t.Errorf("first try: key %q, explicit hash key %q; want its own key's shard, the hot one", first.PartitionKey, first.ExplicitHashKey)
	}
	if second.PartitionKey != s.meta.envID || routeEntry(second.PartitionKey, second.ExplicitHashKey) == hot {
		t.Errorf("second try: key %q, explicit hash key %q; want the environment's key, routed to the other shard", second.PartitionKey, second.ExplicitHashKey)
	}
	if _, ok := s.shardPace.shards.shardOf(hashOf(s.meta.envID)); ok {
		if got, _ := s.shardPace.shards.shardOf(hashOf(s.meta.envID)); got != hot {
			t.Errorf("the shard map learnt the detour's shard %s for the key's hash", got)
		}
	}
}
