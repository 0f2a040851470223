package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// slowKinesis answers every call after d.
func slowKinesis(d time.Duration) func(int, putRecordsRequest) (int, string) {
	return func(call int, req putRecordsRequest) (int, string) {
		time.Sleep(d)
		return allOK(call, req)
	}
}

// flakyKinesis fails its first calls whole, then throttles a share of the entries of every call.
func flakyKinesis(failCalls int, share float64) func(int, putRecordsRequest) (int, string) {
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(1, 2))
	return func(call int, req putRecordsRequest) (int, string) {
		if call < failCalls {
			return 500, `{"__type":"InternalFailure","message":"try again"}`
		}
		mu.Lock()
		defer mu.Unlock()
		var rs []string
		failed := 0
		for range req.Records {
			if rng.Float64() < share {
				failed++
				rs = append(rs, `{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard"}`)
			} else {
				rs = append(rs, `{"SequenceNumber":"1","ShardId":"shardId-000000000000","ErrorCode":null}`)
			}
		}
		return 200, fmt.Sprintf(`{"FailedRecordCount":%d,"Records":[%s]}`, failed, strings.Join(rs, ","))
	}
}

// TestFreezeProofShipping freezes the extension for real (SIGSTOP) between invocations, as Lambda
// does, with dense and sparse invocations and a fast, slow or failing Kinesis. Whatever the
// strategy: nothing is lost, nothing is duplicated, /event/next is never called while a
// PutRecords is in flight, and data waits at most MAX_DELAY plus one invocation gap.
func TestFreezeProofShipping(t *testing.T) {
	kinesis := map[string]func(int, putRecordsRequest) (int, string){
		"fast":    allOK,
		"slow":    slowKinesis(150 * time.Millisecond),
		"failing": flakyKinesis(3, 0.3),
	}
	type pattern struct {
		name        string
		gap         time.Duration
		invocations int
	}
	patterns := []pattern{{"dense", 10 * time.Millisecond, 12}, {"sparse", 400 * time.Millisecond, 5}}
	const maxDelay = 200 * time.Millisecond
	for _, flush := range []string{"adaptive", "end", "background", "periodic,300"} {
		for _, p := range patterns {
			for _, kname := range []string{"fast", "slow", "failing"} {
				t.Run(flush+"/"+p.name+"/"+kname, func(t *testing.T) {
					t.Parallel()
					fk := newFakeKinesis(t, kinesis[kname])
					fl := newFakeLambda(t)
					var violations atomic.Int32
					fl.set(func() {
						fl.onNext = func() {
							if fk.inFlight.Load() > 0 {
								violations.Add(1)
							}
						}
					})
					ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_FLUSH", flush,
						"KINESIS_TELEMETRY_MAX_DELAY_MS", fmt.Sprint(maxDelay.Milliseconds())))
					fl.freeze = ext.cmd.Process
					fl.init()
					for i := range p.invocations {
						fl.invoke(invocation{requestID: fmt.Sprintf("r%d", i), textLines: 4, jsonLines: 2, runFor: 20 * time.Millisecond, pause: p.gap})
					}
					fl.shutdown("spindown", 2*time.Second)
					if code := ext.wait(4 * time.Second); code != 0 {
						t.Fatalf("exit code %d", code)
					}
					if v := violations.Load(); v > 0 {
						t.Errorf("/event/next called %d times with a PutRecords in flight", v)
					}
					events, counts := fk.decoded(t)
					// A freeze never causes a duplicate; a send cut short by the flush budget
					// may, and the extension counts those records as unconfirmed.
					last := lastCounts(t, counts)
					checkAccounting(t, last, len(fl.postedEvents()))
					unconfirmed := int(last.Kinesis.Unconfirmed)
					posted := fl.postedEvents()
					if kname == "failing" {
						// This fake refuses 30% of the entries of every call whatever the rate, the
						// pacer's weak case (README, Backpressure): what the stream has not taken
						// by the shutdown deadline is counted, as dropped or, if a call of unknown
						// outcome may have stored it, as unknown.
						posted = deliveredOnly(posted, events)
						missing := len(fl.postedEvents()) - len(posted)
						if uint64(missing) < last.Dropped.Total || uint64(missing) > last.Dropped.Total+last.Unknown {
							t.Errorf("%d events missing, counted %d dropped and %d unknown", missing, last.Dropped.Total, last.Unknown)
						}
					}
					checkDelivery(t, posted, events, kname != "failing", unconfirmed)
					checkIDsOrdered(t, posted, events)

					// Delay: from posting to storing, for all but the last invocation's events,
					// which are shipped at shutdown.
					storedAt := map[string]time.Time{}
					fk.mu.Lock()
					for _, s := range fk.stored {
						var env envelopeOf
						json.Unmarshal(s.data, &env)
						storedAt[string(env.Event)] = s.at
					}
					fk.mu.Unlock()
					bound := maxDelay + p.gap + 1500*time.Millisecond // + a slow, failing call's retries and the flush budget
					if flush == "periodic,300" {
						bound += 300 * time.Millisecond
					}
					if kname == "failing" {
						bound += 2 * time.Second // failed rounds wait for a later invocation
					}
					worst := time.Duration(0)
					for _, e := range fl.postedEvents() {
						if at, ok := storedAt[e.raw]; ok && at.Sub(e.at) > worst {
							worst = at.Sub(e.at)
						}
					}
					if worst > bound {
						t.Errorf("an event waited %v to be stored, bound %v", worst, bound)
					}
				})
			}
		}
	}
}

// TestManagedInstances runs the extension as Lambda Managed Instances see it: SHUTDOWN-only
// registration, schema 2025-01-29, no INVOKE events and no platform.runtimeDone, telemetry
// arriving while the extension waits in /event/next. It must ship on its own timer.
func TestManagedInstances(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, testEnv(fk.URL, "AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances",
		"KINESIS_TELEMETRY_FLUSH", "periodic,200"))
	fl.init()
	if got := fl.registerBody["events"]; strings.Join(got, ",") != "SHUTDOWN" {
		t.Errorf("registered for %v, want SHUTDOWN only", got)
	}
	if got := fl.subscription["schemaVersion"]; got != "2025-01-29" {
		t.Errorf("subscribed with schema %v, want 2025-01-29", got)
	}
	for i := range 5 {
		req := fmt.Sprintf("m%d", i)
		fl.post(req, fl.ev("platform.start", fmt.Sprintf(`{"requestId":%q,"version":"$LATEST"}`, req)), fl.ev("function", `"a text line"`))
		fl.post(req, fl.ev("platform.report", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":1}}`, req)))
	}
	// Shipped in the background, before any SHUTDOWN.
	deadline := time.Now().Add(3 * time.Second)
	for {
		data, _ := fk.callsData()
		if len(data) >= len(fl.postedEvents()) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d events shipped without a SHUTDOWN: no background timer?", len(data), len(fl.postedEvents()))
		}
		time.Sleep(20 * time.Millisecond)
	}
	fl.deliver(fmt.Sprintf(`{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":%d}`, time.Now().Add(2*time.Second).UnixMilli()))
	if code := ext.wait(3 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	events, _ := fk.decoded(t)
	checkExactlyOnce(t, fl.postedEvents(), events)
}

// BenchmarkFlushCost reports what each strategy adds to an invocation: the time from the
// function finishing to the extension's /event/next, with Lambda's 25 ms telemetry buffering and
// a Kinesis that answers in 20 ms. Run: ./build.sh bench -bench FlushCost -benchtime 40x
func BenchmarkFlushCost(b *testing.B) {
	for _, flush := range []string{"end", "background", "adaptive", "periodic,1000"} {
		for _, p := range []struct {
			name string
			gap  time.Duration
		}{{"dense", 20 * time.Millisecond}, {"sparse", 250 * time.Millisecond}} {
			b.Run(flush+"/"+p.name, func(b *testing.B) {
				fk := newFakeKinesis(b, slowKinesis(20*time.Millisecond))
				fl := newFakeLambda(b)
				fl.telemetryDelay = 25 * time.Millisecond
				ext := startExtension(b, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_FLUSH", flush, "KINESIS_TELEMETRY_MAX_DELAY_MS", "200"))
				fl.init()
				// One invocation of warm-up: adaptive ships the first invocation at its end.
				fl.invoke(invocation{requestID: "warm-up", textLines: 5, jsonLines: 5, runFor: 30 * time.Millisecond})
				fl.awaitNext()
				warm := len(fl.addedTimes())
				for i := 0; i < b.N; i++ {
					fl.invoke(invocation{requestID: fmt.Sprintf("r%d", i), textLines: 5, jsonLines: 5, runFor: 30 * time.Millisecond, pause: p.gap})
				}
				fl.awaitNext()
				added := fl.addedTimes()[warm:]
				fl.shutdown("spindown", 2*time.Second)
				ext.wait(3 * time.Second)
				sort.Slice(added, func(i, j int) bool { return added[i] < added[j] })
				var sum time.Duration
				for _, d := range added {
					sum += d
				}
				b.ReportMetric(float64(sum.Microseconds())/1000/float64(len(added)), "added-ms/op")
				b.ReportMetric(float64(added[len(added)/2].Microseconds())/1000, "median-added-ms")
				b.ReportMetric(float64(added[len(added)*9/10].Microseconds())/1000, "p90-added-ms")
			})
		}
	}
}

// checkIDsOrdered asserts that the sequence in each event's id follows the order in which the
// events were posted, so that a consumer can always restore the order.
func checkIDsOrdered(t *testing.T, posted []postedEvent, got []shipped) {
	t.Helper()
	pos := map[string]int{}
	for i, p := range posted {
		pos[p.raw] = i
	}
	sort.Slice(got, func(i, j int) bool { return idSeq(got[i].ID) < idSeq(got[j].ID) })
	for i := 1; i < len(got); i++ {
		if pos[string(got[i].Event)] < pos[string(got[i-1].Event)] {
			t.Fatalf("id %s orders before %s, but its event was posted later", got[i-1].ID, got[i].ID)
		}
	}
}

func idSeq(id string) int {
	var n int
	fmt.Sscanf(id[strings.LastIndexByte(id, '-')+1:], "%d", &n)
	return n
}

// TestNoPlatformTelemetryNoWaiting: subscribed to function logs only, no platform.runtimeDone
// will come, so the end strategy must not wait for one (it would hold every invocation until
// its deadline).
func TestNoPlatformTelemetryNoWaiting(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_TYPES", "function", "KINESIS_TELEMETRY_FLUSH", "end"))
	fl.awaitNext()
	start := time.Now()
	fl.deliver(fmt.Sprintf(`{"eventType":"INVOKE","deadlineMs":%d,"requestId":"r1"}`, time.Now().Add(5*time.Second).UnixMilli()))
	fl.nextReady = false
	fl.awaitNext()
	if took := time.Since(start); took > time.Second {
		t.Errorf("the invocation took %v: the extension waited for a runtimeDone that cannot come", took)
	}
	fl.deliver(fmt.Sprintf(`{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":%d}`, time.Now().Add(2*time.Second).UnixMilli()))
	if code := ext.wait(3 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestCountsRecordMeasuresTheExtension: the counts record carries what the extension costs and
// does: the time it added to invocations, and what its last flush sent.
func TestCountsRecordMeasuresTheExtension(t *testing.T) {
	fk := newFakeKinesis(t, slowKinesis(30*time.Millisecond))
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_FLUSH", "end"))
	fl.init()
	for i := range 4 {
		fl.invoke(invocation{requestID: fmt.Sprintf("r%d", i), textLines: 5})
	}
	fl.shutdownAndWait(ext)
	_, counts := fk.decoded(t)
	var withFlush *countsRecord
	for i := range counts {
		if counts[i].LastFlush.Calls > 0 {
			withFlush = &counts[i]
		}
	}
	if withFlush == nil {
		t.Fatalf("no counts record describes a flush: %+v", counts)
	}
	if lf := withFlush.LastFlush; lf.Records == 0 || lf.Bytes == 0 || lf.Ms < 30 {
		t.Errorf("lastFlush %+v: want records, bytes and at least one 30 ms call", lf)
	}
	// end: each invocation waits for a 30 ms PutRecords after its runtimeDone.
	if pr := lastCounts(t, counts).PostRuntimeMs; pr.Count != 4 || pr.Mean < 30 || pr.Max < pr.Mean {
		t.Errorf("postRuntimeMs %+v: want 4 invocations of at least 30 ms", pr)
	}
}

// checkAccounting checks the counts record's identity, received = delivered + dropped.total +
// filtered + buffered + unknown, and that it received every event produced.
func checkAccounting(t *testing.T, c countsRecord, produced int) {
	t.Helper()
	filtered := c.Filtered.Excluded + c.Filtered.BelowLevel + c.Filtered.SampledOut + c.Filtered.OwnLogs
	if sum := c.Delivered + c.Dropped.Total + filtered + uint64(c.Buffered) + c.Unknown; sum != c.Received {
		t.Errorf("received %d != delivered %d + dropped %d + filtered %d + buffered %d + unknown %d", c.Received, c.Delivered, c.Dropped.Total, filtered, c.Buffered, c.Unknown)
	}
	if c.Received != uint64(produced) {
		t.Errorf("counts record: received %d, %d were produced", c.Received, produced)
	}
}

// deliveredOnly returns the posted events that are in the stream.
func deliveredOnly(posted []postedEvent, got []shipped) []postedEvent {
	in := map[string]bool{}
	for _, s := range got {
		in[string(s.Event)] = true
	}
	var out []postedEvent
	for _, p := range posted {
		if in[p.raw] {
			out = append(out, p)
		}
	}
	return out
}

func TestLastWordReserve(t *testing.T) {
	left := shutdownTime - shutdownMargin
	for _, tt := range []struct {
		name       string
		pressured  bool
		left, need time.Duration
		want       time.Duration
	}{
		{"a stream that takes everything: 150 ms", false, left, time.Second, countsReserve},
		{"pushback, tries that need 90 ms: 150 ms", true, left, 90 * time.Millisecond, countsReserve},
		{"pushback, tries that need 400 ms: 400 ms", true, left, 400 * time.Millisecond, 400 * time.Millisecond},
		{"pushback, tries that need more than the shutdown: half of it", true, left, lastWordForever, left / 2},
		{"pushback after a long wait for the report: at most 600 ms", true, time.Second, lastWordForever, pressedCountsReserve},
		{"pushback, less left than 600 ms: all of it goes to the last word", true, 400 * time.Millisecond, time.Second, pressedCountsReserve},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := lastWordReserve(tt.pressured, tt.left, tt.need); got != tt.want {
				t.Errorf("lastWordReserve(%v, %v, %v) = %v, want %v", tt.pressured, tt.left, tt.need, got, tt.want)
			}
		})
	}
}

func TestShutdownDeadline(t *testing.T) {
	now := time.Now()
	for _, tt := range []struct {
		name       string
		deadlineMs int64
		want       time.Time
	}{
		{"Lambda's deadline less the margin", now.Add(2 * time.Second).UnixMilli(), time.UnixMilli(now.Add(2 * time.Second).UnixMilli()).Add(-shutdownMargin)},
		{"no deadline: 2 s", 0, now.Add(2*time.Second - shutdownMargin)},
		{"absurd deadline: 2 s", now.Add(time.Hour).UnixMilli(), now.Add(2*time.Second - shutdownMargin)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := shutdownDeadline(lifecycleEvent{EventType: eventShutdown, DeadlineMs: tt.deadlineMs}, now)
			if !got.Equal(tt.want) {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestShutdownCountsRecordLeftAlone: a shutdown whose data round stores every telemetry event
// but not the counts record (its key's shard refuses it, the others take everything) sends it
// again by itself with shipCounts' tries, round its shard, and it reaches the stream. Before, with
// no telemetry left to drop, the counts record left in the buffer was dropped unseen.
func TestShutdownCountsRecordLeftAlone(t *testing.T) {
	const hot, healthy = "shardId-000000000000", "shardId-000000000001"
	var envID string
	// The environment's own key, routed by its hash, goes to the hot shard; every other key, and
	// any explicit hash key, to the healthy one.
	route := func(key, explicit string) string {
		if key == envID && explicit == "" {
			return hot
		}
		return healthy
	}
	fk := refusingShardKinesis(t, hot, route)
	s, buf, st := testShipper(t, config{}, fk.URL)
	envID = s.meta.envID
	e := &agent{cfg: s.cfg, logs: s.logs, reg: testReg, stats: st, buf: buf, ship: s}
	addInvocations(buf, 4, 5)
	e.onShutdown(lifecycleEvent{EventType: eventShutdown, ShutdownReason: "spindown", DeadlineMs: time.Now().Add(2 * time.Second).UnixMilli()})
	if n := st.delivered.Load(); n != 20 {
		t.Fatalf("%d of 20 telemetry events delivered", n)
	}
	events, counts := fk.decoded(t)
	if len(events) != 20 {
		t.Errorf("%d telemetry events in the stream, want 20", len(events))
	}
	if len(counts) == 0 {
		t.Fatalf("no counts record in the stream; the calls: %d", len(fk.received()))
	}
	if c := counts[len(counts)-1]; c.Delivered != 20 || c.Dropped.Total != 0 {
		t.Errorf("the last counts record says delivered %d, dropped %d; want 20 and 0", c.Delivered, c.Dropped.Total)
	}
}

// TestShutdownReserveAfterAnOldRefusal: an environment whose last call, 20 s before its shutdown,
// was refused whole (no pushback within pressureMemory, and no answer since to say the stream
// takes anything) keeps for its last counts record the time its tries need, as one that met
// pushback just now does; with pushback alone it kept countsReserve, about five tries. KMS
// refuses every call whole here, so every try of the last counts record is a call of one entry
// until the deadline.
func TestShutdownReserveAfterAnOldRefusal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &scriptedPutter{after: 20 * time.Millisecond, answer: func(_, _ int) ([]putResult, error) {
			return nil, &apiError{Status: 400, Code: "KMSThrottlingException", Message: "Rate exceeded (Service: AWSKMS)"}
		}}
		s, buf, st := scriptedShipper(t, p)
		addLogs(buf, 5)
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		s.ship(ctx, everything) // refused: the environment's last call before it idles
		cancel()
		time.Sleep(20 * time.Second)
		if s.pressured(time.Now()) {
			t.Fatal("still pressured 20 s after the pushback; the test needs an old one")
		}
		addInvocations(buf, 4, 50)
		e := &agent{cfg: s.cfg, logs: s.logs, reg: testReg, stats: st, buf: buf, ship: s}
		before := len(p.calls())
		e.onShutdown(lifecycleEvent{EventType: eventShutdown, ShutdownReason: "spindown", DeadlineMs: time.Now().Add(2 * time.Second).UnixMilli()})
		tries := 0
		for _, n := range p.calls()[before:] {
			if n == 1 {
				tries++
			}
		}
		// 30 ms a try (answer and pause): 150 ms hold about five, the reserve for a stream that
		// refuses every call (half of the 1.85 s left) about thirty.
		if tries < 15 {
			t.Errorf("%d tries of the last counts record; want the time of at least 15 kept for them", tries)
		}
	})
}
