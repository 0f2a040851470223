package main

// Unit tests of shipper.go against fakeKinesis: per-entry retries, whole-call errors, urgent
// rounds, unknown outcomes, backoff; and, in process on a synctest clock (scriptedPutter), the
// rounds that give way after runtimeDone.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

func testShipper(t testing.TB, cfg config, endpoint string) (*shipper, *buffer, *stats) {
	t.Helper()
	if cfg.Stream.Name == "" {
		cfg.Stream = streamRef{Name: "s"}
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = time.Second
	}
	if cfg.RecordFormat == "" {
		cfg.RecordFormat = "event"
	}
	st := newStats()
	buf := newBuffer(1<<30, "p", st)
	s := newShipper(cfg, buf, st, newLogger(io.Discard), testMeta(cfg))
	creds := aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", "token"))
	s.newClient = func(context.Context) (recordPutter, error) {
		return newKinesisClient(endpoint, "eu-west-1", creds, cfg.RequestTimeout), nil
	}
	return s, buf, st
}

func addLogs(buf *buffer, n int) {
	evs := make([]event, n)
	for i := range evs {
		evs[i] = logEvent(fmt.Sprintf("line %d", i))
		evs[i].requestID = fmt.Sprintf("r%d", i%3)
	}
	buf.add(evs, &filter{sample: 1})
}

func TestShipRetriesOnlyFailedEntries(t *testing.T) {
	fk := newFakeKinesis(t, func(call int, req putRecordsRequest) (int, string) {
		if call > 0 {
			return allOK(call, req)
		}
		// First call: entries 1 and 3 throttled, entry 4 failed internally.
		var rs []string
		for i := range req.Records {
			switch i {
			case 1, 3:
				rs = append(rs, `{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded"}`)
			case 4:
				rs = append(rs, `{"ErrorCode":"InternalFailure","ErrorMessage":"oops"}`)
			default:
				rs = append(rs, `{"SequenceNumber":"1","ShardId":"shardId-000000000000"}`)
			}
		}
		return 200, `{"FailedRecordCount":3,"Records":[` + strings.Join(rs, ",") + `]}`
	})
	s, buf, st := testShipper(t, config{}, fk.URL)
	addLogs(buf, 6)
	if err := s.ship(context.Background(), everything); err != nil {
		t.Fatal(err)
	}
	// The failed entries go back to the buffer and are sent again, paced (the pacer may split them
	// over several calls): exactly entries 1, 3 and 4 of the first call, in order.
	calls := fk.received()
	var again []string
	for _, c := range calls[1:] {
		for _, r := range c.Records {
			again = append(again, r.Data)
		}
	}
	first := calls[0].Records
	if want := []string{first[1].Data, first[3].Data, first[4].Data}; fmt.Sprint(again) != fmt.Sprint(want) {
		t.Errorf("later calls carry %d entries; want exactly entries 1, 3, 4 of the first, in order", len(again))
	}
	if st.delivered.Load() != 6 || st.throttles.Load() != 2 || st.retries.Load() != uint64(len(calls)-1) || st.entries.Load() != 9 {
		t.Errorf("delivered %d throttles %d retries %d entries %d, want 6 2 %d 9", st.delivered.Load(), st.throttles.Load(), st.retries.Load(), st.entries.Load(), len(calls)-1)
	}
	if buf.inFlight != 0 || buf.buffered() != 0 {
		t.Errorf("inFlight %d, buffered %d after delivery, want 0", buf.inFlight, buf.buffered())
	}
}

// TestKMSThrottlingIsNotPaced: a share of entries refused with KMSThrottlingException on every
// call, whatever the rate, is re-sent at once and slows no pacer (refusedWhateverRate), while the
// same share refused for a shard's throughput, naming no shard, paces the stream: the two kinds
// of refusal are told apart by their code.
func TestKMSThrottlingIsNotPaced(t *testing.T) {
	for _, tt := range []struct {
		code      string
		wantPaced bool
	}{
		{"KMSThrottlingException", false},
		{"ProvisionedThroughputExceededException", true},
	} {
		t.Run(tt.code, func(t *testing.T) {
			fk := newFakeKinesis(t, func(call int, req putRecordsRequest) (int, string) {
				// Every third entry of every call is refused (at least one while two or more go).
				var rs []string
				failed := 0
				for i := range req.Records {
					if i%3 == 1 {
						rs = append(rs, fmt.Sprintf(`{"ErrorCode":%q,"ErrorMessage":"refused"}`, tt.code))
						failed++
						continue
					}
					rs = append(rs, `{"SequenceNumber":"1"}`)
				}
				return 200, fmt.Sprintf(`{"FailedRecordCount":%d,"Records":[%s]}`, failed, strings.Join(rs, ","))
			})
			s, buf, st := testShipper(t, config{}, fk.URL)
			addLogs(buf, 300)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := s.ship(ctx, everything)
			paced, _ := s.pace.pacing()
			if paced != tt.wantPaced {
				t.Errorf("stream pacer paced %v after a third of each call was refused with %s, want %v", paced, tt.code, tt.wantPaced)
			}
			if !tt.wantPaced && (err != nil || st.delivered.Load() != 300 || st.throttles.Load() == 0) {
				t.Errorf("ship: %v; delivered %d of 300, throttles %d: want all delivered, the refusals counted", err, st.delivered.Load(), st.throttles.Load())
			}
		})
	}
}

func TestShipClassifiesWholeCallErrors(t *testing.T) {
	for _, tt := range []struct {
		name          string
		status        int
		body          string
		wantCalls     int
		wantDelivered uint64
		wantRejected  uint64
	}{
		// Retried: at least one more call (the pacer may split the retry).
		{"throttled then fine", 400, `{"__type":"ProvisionedThroughputExceededException","message":"slow down"}`, 2, 4, 0},
		{"5xx then fine", 503, `{"__type":"ServiceUnavailable"}`, 2, 4, 0},
		{"KMS throttling then fine", 400, `{"__type":"KMSThrottlingException"}`, 2, 4, 0},
		{"expired token then fine", 400, `{"__type":"ExpiredTokenException"}`, 2, 4, 0},
		{"access denied is permanent", 400, `{"__type":"AccessDeniedException","message":"no"}`, 1, 0, 4},
		{"not found is permanent", 400, `{"__type":"com.amazonaws.kinesis.v20131202#ResourceNotFoundException","message":"Stream s not found"}`, 1, 0, 4},
		{"KMS disabled is permanent", 400, `{"__type":"KMSDisabledException"}`, 1, 0, 4},
		{"validation is permanent", 400, `{"__type":"ValidationException"}`, 1, 0, 4},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fk := newFakeKinesis(t, func(call int, req putRecordsRequest) (int, string) {
				if call == 0 {
					return tt.status, tt.body
				}
				return allOK(call, req)
			})
			s, buf, st := testShipper(t, config{}, fk.URL)
			addLogs(buf, 4)
			if err := s.ship(context.Background(), everything); err != nil {
				t.Fatal(err)
			}
			rejected := st.rejected.total()
			n := len(fk.received())
			if (tt.wantCalls == 1 && n != 1) || n < tt.wantCalls || st.delivered.Load() != tt.wantDelivered || rejected != tt.wantRejected {
				t.Errorf("calls %d delivered %d rejected %d, want %d%s %d %d", n, st.delivered.Load(), rejected, tt.wantCalls, map[bool]string{true: "+"}[tt.wantCalls > 1], tt.wantDelivered, tt.wantRejected)
			}
			if st.unknown.Load() != 0 || st.unconfirmed.Load() != 0 {
				t.Errorf("an answered error left %d unknown, %d unconfirmed: its outcome is known", st.unknown.Load(), st.unconfirmed.Load())
			}
			if n, _ := buf.state(); n != 0 || buf.inFlight != 0 {
				t.Errorf("buffer holds %d, in flight %d: every event must be delivered or counted", n, buf.inFlight)
			}
		})
	}
}

// TestWholeCallRefusalsKeepCallsFull: calls refused whole for KMS throttling back off and keep
// carrying the backlog, since the size of a refused call costs the shards nothing and a stored
// one takes it all; calls that fail whole with a 5xx back off and shrink to probeEntries after
// outageAfter of them (an outage costs a trickle, not the backlog again and again). On a synctest
// clock: four whole-call failures, then everything stored.
func TestWholeCallRefusalsKeepCallsFull(t *testing.T) {
	for _, tt := range []struct {
		name      string
		err       error
		wantSizes []int
	}{
		{"KMS throttling", &apiError{Status: 400, Code: "KMSThrottlingException", Message: "Rate exceeded (Service: AWSKMS)"}, []int{300, 300, 300, 300, 300}},
		{"5xx", &apiError{Status: 503, Code: "ServiceUnavailable"}, []int{300, 300, probeEntries, probeEntries, probeEntries}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := &scriptedPutter{after: 20 * time.Millisecond, answer: func(call, n int) ([]putResult, error) {
					if call < 4 {
						return nil, tt.err
					}
					return storedAll(call, n)
				}}
				s, buf, st := scriptedShipper(t, p)
				addLogs(buf, 300)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				if err := s.ship(ctx, everything); err != nil {
					t.Fatal(err)
				}
				if got := p.calls(); len(got) < len(tt.wantSizes) || fmt.Sprint(got[:len(tt.wantSizes)]) != fmt.Sprint(tt.wantSizes) {
					t.Errorf("calls carried %v entries, want %v first", got, tt.wantSizes)
				}
				if st.delivered.Load() != 300 {
					t.Errorf("delivered %d of 300", st.delivered.Load())
				}
			})
		})
	}
}

func TestShipPutsBackWhatIsNotConfirmedWhenTimeRunsOut(t *testing.T) {
	fk := newFakeKinesis(t, func(call int, req putRecordsRequest) (int, string) {
		return 500, `{"__type":"InternalFailure"}`
	})
	s, buf, st := testShipper(t, config{}, fk.URL)
	addLogs(buf, 10)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := s.ship(ctx, everything); err == nil {
		t.Fatal("ship reported success against a failing Kinesis")
	}
	if n, _ := buf.state(); n != 10 || buf.inFlight != 0 {
		t.Errorf("buffer holds %d (in flight %d) after the deadline, want all 10 back", n, buf.inFlight)
	}
	if n := len(fk.received()); n < 2 || st.delivered.Load() != 0 {
		t.Errorf("calls %d delivered %d: want retries with backoff and nothing delivered", n, st.delivered.Load())
	}
	all := buf.take(everything, 100, 1<<30, func(*event) int { return 1 })
	for i := 1; i < len(all); i++ {
		if all[i].seq != all[i-1].seq+1 {
			t.Fatal("events put back out of order")
		}
	}
}

// TestNoCallTheDeadlineWouldCut: a round starts no call that the stream's usual answer time would
// not end before the round's deadline; the call would be cut on the wire and its events be of
// unknown outcome. The events wait in the buffer, none in doubt; with time for the call, it goes.
func TestNoCallTheDeadlineWouldCut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := &scriptedPutter{answer: storedAll, after: 100 * time.Millisecond}
		s, buf, st := scriptedShipper(t, p)
		shipWithin := func(d time.Duration) error {
			ctx, cancel := context.WithTimeout(context.Background(), d)
			defer cancel()
			return s.ship(ctx, everything)
		}
		addLogs(buf, 500)
		shipWithin(10 * time.Second) // the first call: the stream answers in 100 ms
		addLogs(buf, 500)
		if err := shipWithin(60 * time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("the round out of time returned %v, want its deadline's error", err)
		}
		if got := len(p.calls()); got != 1 {
			t.Errorf("%d calls with 60 ms left at 100 ms answers, want none after the first", got-1)
		}
		if n, _ := buf.state(); n != 500 || st.unconfirmed.Load() != 0 {
			t.Errorf("buffered %d, unconfirmed %d: want all 500 waiting and none in doubt", n, st.unconfirmed.Load())
		}
		shipWithin(150 * time.Millisecond)
		if got := len(p.calls()); got != 2 || st.delivered.Load() != 1000 {
			t.Errorf("%d calls, %d delivered with 150 ms left: want the second call and all 1,000 stored", got, st.delivered.Load())
		}
	})
}

func TestShipSplitsIntoCallsWithinLimits(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	s, buf, st := testShipper(t, config{}, fk.URL)
	big := strings.Repeat("x", 300<<10)
	var evs []event
	for i := range 1200 {
		msg := "small"
		if i%100 == 0 {
			msg = big
		}
		evs = append(evs, logEvent(msg))
	}
	buf.add(evs, &filter{sample: 1})
	if err := s.ship(context.Background(), everything); err != nil {
		t.Fatal(err)
	}
	total := 0
	calls := fk.received()
	for i, c := range calls {
		bytes := 0
		for _, r := range c.Records {
			d, _ := base64.StdEncoding.DecodeString(r.Data)
			bytes += len(d) + len(r.PartitionKey)
		}
		if len(c.Records) > maxRecordsPerCall || bytes > maxCallBytes {
			t.Errorf("call %d: %d records, %d bytes: over the limits", i, len(c.Records), bytes)
		}
		total += len(c.Records)
	}
	if total != 1200 || st.delivered.Load() != 1200 {
		t.Errorf("sent %d records, delivered %d, want 1200", total, st.delivered.Load())
	}
	if len(calls) != 3 {
		t.Errorf("%d calls for 1200 events, want 3", len(calls))
	}
}

// TestUnknownOutcomeIsCountedApart: a call whose request was written and whose answer never came
// may have stored its records: they are sent again and counted as unconfirmed, and if never
// confirmed they count as unknown, not dropped. A failure before the request was written (no
// connection, no credentials) stored nothing: those events are dropped (counted) at shutdown.
func TestUnknownOutcomeIsCountedApart(t *testing.T) {
	hold := make(chan struct{})
	held := newFakeKinesis(t, func(int, putRecordsRequest) (int, string) { <-hold; return 500, "" })
	t.Cleanup(func() { close(hold) }) // before the server's Close, which waits for its handlers
	reset := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}))
	t.Cleanup(reset.Close)
	refused := httptest.NewServer(http.NotFoundHandler())
	refused.Close() // nothing listens there any more
	for _, tt := range []struct {
		name        string
		endpoint    string
		noCreds     bool
		wantUnknown bool
	}{
		{"answer never came (request timeout)", held.URL, false, true},
		{"connection reset after the request", reset.URL, false, true},
		{"connection refused", refused.URL, false, false},
		{"no credentials", held.URL, true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s, buf, st := testShipper(t, config{RequestTimeout: 100 * time.Millisecond}, tt.endpoint)
			if tt.noCreds {
				s.newClient = func(context.Context) (recordPutter, error) {
					creds := aws.CredentialsProviderFunc(func(context.Context) (aws.Credentials, error) {
						return aws.Credentials{}, fmt.Errorf("no credentials here")
					})
					return newKinesisClient(tt.endpoint, "eu-west-1", creds, 100*time.Millisecond), nil
				}
			}
			addLogs(buf, 5)
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			s.ship(ctx, everything)
			if buf.buffered() != 5 {
				t.Fatalf("buffered %d after the failed round, want all 5 kept", buf.buffered())
			}
			s.dropRemaining()
			wantUnknown, wantDropped := uint64(0), uint64(5)
			if tt.wantUnknown {
				wantUnknown, wantDropped = 5, 0
			}
			if st.unknown.Load() != wantUnknown || st.droppedShutdown.Load() != wantDropped || (st.unconfirmed.Load() > 0) != tt.wantUnknown {
				t.Errorf("unknown %d, dropped %d, unconfirmed %d; want unknown %d, dropped %d", st.unknown.Load(), st.droppedShutdown.Load(), st.unconfirmed.Load(), wantUnknown, wantDropped)
			}
		})
	}
}

// scriptedPutter is a recordPutter in process, for round-policy tests on a synctest virtual
// clock: no HTTP, no signing. Each call waits its answer time on the clock, then answers from the
// script; a call cut before its answer is of unknown outcome, as a written request is. It models
// what a round sees of Kinesis (answers, errors, their timing), not the wire: kinesis_test.go and
// the end-to-end tests cover that.
type scriptedPutter struct {
	answer func(call, n int) ([]putResult, error)
	after  time.Duration // answer time of every call

	mu       sync.Mutex
	sizes    []int // entries of each call, in order
	inFlight int
	atOnce   int // the most calls on the wire at once
}

func (p *scriptedPutter) putRecords(ctx context.Context, _ []byte, n int) ([]putResult, error) {
	p.mu.Lock()
	call := len(p.sizes)
	p.sizes = append(p.sizes, n)
	p.inFlight++
	p.atOnce = max(p.atOnce, p.inFlight)
	p.mu.Unlock()
	defer func() { p.mu.Lock(); p.inFlight--; p.mu.Unlock() }()
	t := time.NewTimer(p.after)
	defer t.Stop()
	select {
	case <-t.C:
		return p.answer(call, n)
	case <-ctx.Done():
		return nil, &networkError{err: fmt.Errorf("scripted call: %w", ctx.Err()), written: true}
	}
}

func (p *scriptedPutter) invalidateCredentials() {}

// calls returns the entries of each call made so far.
func (p *scriptedPutter) calls() []int { return snapshot(&p.mu, &p.sizes) }

// mostAtOnce returns the most calls that were on the wire at once.
func (p *scriptedPutter) mostAtOnce() int { p.mu.Lock(); defer p.mu.Unlock(); return p.atOnce }

// scriptedShipper is testShipper with a scriptedPutter for its client.
func scriptedShipper(t testing.TB, p *scriptedPutter) (*shipper, *buffer, *stats) {
	s, buf, st := testShipper(t, config{}, "")
	s.newClient = func(context.Context) (recordPutter, error) { return p, nil }
	return s, buf, st
}

// storedAll and throttledAll answer every entry of a call of n.
func storedAll(_, n int) ([]putResult, error) {
	rs := make([]putResult, n)
	for i := range rs {
		rs[i] = putResult{ShardID: []byte("shardId-000000000000")}
	}
	return rs, nil
}

func throttledAll(_, n int) ([]putResult, error) {
	rs := make([]putResult, n)
	for i := range rs {
		rs[i] = putResult{ErrorCode: "ProvisionedThroughputExceededException", ErrorMessage: "Rate exceeded for shard"}
	}
	return rs, nil
}

// TestRefusedAnswersAreAnswerTimes: a stream that refuses every call whole (KMS throttling, here
// after 40 ms) still answers in 40 ms, and no call starts that the round's deadline would cut:
// nothing ends of unknown outcome. Before, only calls that stored something gave an answer time,
// and with none the round started calls up to its deadline. On a synctest clock.
func TestRefusedAnswersAreAnswerTimes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		kms := func(_, _ int) ([]putResult, error) {
			return nil, &apiError{Status: 400, Code: "KMSThrottlingException", Message: "Rate exceeded"}
		}
		p := &scriptedPutter{answer: kms, after: 40 * time.Millisecond}
		s, buf, st := scriptedShipper(t, p)
		addLogs(buf, 100)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		s.shipRound(ctx, &round{before: everything})
		if len(p.calls()) < 3 || st.unconfirmed.Load() != 0 || buf.buffered() != 100 {
			t.Errorf("%d calls refused whole in 40 ms within a 1 s round: %d events of unknown outcome, %d of 100 buffered; want several calls, none cut, all buffered",
				len(p.calls()), st.unconfirmed.Load(), buf.buffered())
		}
		if got := s.answers.typical(); got != 40*time.Millisecond {
			t.Errorf("typical answer time %v after calls refused whole in 40 ms", got)
		}
	})
}

// TestRoundGivesWayAfterRuntimeDone: once the invocation's runtime is done, a round that meets
// pushback ends at once, and a call on the wire of a stream that left the last call unanswered is
// cut after wireGrace; the events stay buffered. A healthy stream gets everything sent. While
// calls fail whole, later calls are small probes. On a synctest clock: the times are exact, and a
// loaded machine cannot stretch them.
func TestRoundGivesWayAfterRuntimeDone(t *testing.T) {
	t.Run("throttled", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &scriptedPutter{answer: throttledAll, after: 20 * time.Millisecond}
			s, buf, _ := scriptedShipper(t, p)
			addLogs(buf, 50)
			start := time.Now()
			s.shipRound(context.Background(), &round{before: everything, soft: softNow, budget: time.Second})
			if took := time.Since(start); took != p.after || len(p.calls()) != 1 || buf.buffered() != 50 {
				t.Errorf("round took %v with %d calls, %d buffered; want one call, its answer time, all 50 kept", took, len(p.calls()), buf.buffered())
			}
		})
	})
	t.Run("no answer after one went unanswered", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &scriptedPutter{answer: storedAll, after: 500 * time.Millisecond}
			s, buf, st := scriptedShipper(t, p)
			s.unanswered.Store(true)
			addLogs(buf, 50)
			soft, softEnd := context.WithCancel(context.Background())
			defer softEnd()
			time.AfterFunc(20*time.Millisecond, softEnd)
			start := time.Now()
			s.shipRound(context.Background(), &round{before: everything, soft: soft, budget: time.Second})
			if took := time.Since(start); took != 20*time.Millisecond+wireGrace || buf.buffered() != 50 || st.unconfirmed.Load() != 50 {
				t.Errorf("round took %v, %d buffered, %d unconfirmed; want cut wireGrace after runtimeDone (%v), all kept as maybe stored",
					took, buf.buffered(), st.unconfirmed.Load(), 20*time.Millisecond+wireGrace)
			}
		})
	})
	// One failed call is a blip; outageAfter in a row are an outage: from then on, probes.
	t.Run("outage: probes, not the backlog", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			p := &scriptedPutter{answer: func(int, int) ([]putResult, error) {
				return nil, &apiError{Status: http.StatusServiceUnavailable, Code: "ServiceUnavailable"}
			}}
			s, buf, _ := scriptedShipper(t, p)
			addLogs(buf, 1000)
			ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
			defer cancel()
			s.ship(ctx, everything)
			calls := p.calls()
			if len(calls) <= outageAfter || buf.buffered() != 1000 {
				t.Fatalf("%d calls, %d buffered", len(calls), buf.buffered())
			}
			for i, n := range calls {
				if full := i < outageAfter; full != (n == 500) || !full && n > probeEntries {
					t.Errorf("call %d of an outage carried %d entries; want 500 for the first %d, then at most %d", i, n, outageAfter, probeEntries)
				}
			}
		})
	})
	t.Run("healthy", func(t *testing.T) {
		for _, allowance := range []time.Duration{0, wireGrace} {
			synctest.Test(t, func(t *testing.T) {
				p := &scriptedPutter{answer: storedAll, after: time.Millisecond}
				s, buf, st := scriptedShipper(t, p)
				addLogs(buf, 1200)
				s.shipRound(context.Background(), &round{before: everything, soft: softNow, budget: time.Second, allowance: allowance})
				if st.delivered.Load() != 1200 {
					t.Errorf("allowance %v: delivered %d of 1200 after runtimeDone against a healthy stream", allowance, st.delivered.Load())
				}
			})
		}
	})
	// A slow answer is not pushback: the stream stores what it is sent. The pacer does not pace,
	// the stream does not count as pushing back, and a yielding round (the budget) sends on;
	// a background round (allowance wireGrace) starts no call whose usual answer time would
	// take it past wireGrace after runtimeDone, and leaves the rest for the next round.
	t.Run("slow answers", func(t *testing.T) {
		for _, tt := range []struct {
			allowance time.Duration
			calls     int
		}{{0, 3}, {wireGrace, 1}} {
			synctest.Test(t, func(t *testing.T) {
				p := &scriptedPutter{answer: storedAll, after: 120 * time.Millisecond}
				s, buf, st := scriptedShipper(t, p)
				addLogs(buf, 1200)
				s.shipRound(context.Background(), &round{before: everything, soft: softNow, budget: time.Second, allowance: tt.allowance})
				if len(p.calls()) != tt.calls || st.delivered.Load() != uint64(min(1200, 500*tt.calls)) || st.unconfirmed.Load() != 0 || s.pressured(time.Now()) {
					t.Errorf("allowance %v: %d calls, %d delivered, %d buffered, %d unconfirmed, pressured %v; want %d full calls answered, not pressured",
						tt.allowance, len(p.calls()), st.delivered.Load(), buf.buffered(), st.unconfirmed.Load(), s.pressured(time.Now()), tt.calls)
				}
				if paced, _ := s.pace.pacing(); paced {
					t.Errorf("allowance %v: the pacer paces after slow answers", tt.allowance)
				}
			})
		}
	})
	// After runtimeDone a call starts only if the stream's usual answer time fits in the
	// round's reach: a background round (wireGrace) does not start a 40 ms call; a yielding one
	// (the budget) does.
	t.Run("answer time past the reach", func(t *testing.T) {
		for _, tt := range []struct {
			allowance time.Duration
			wantCalls bool
		}{{wireGrace, false}, {0, true}} {
			synctest.Test(t, func(t *testing.T) {
				p := &scriptedPutter{answer: storedAll, after: 40 * time.Millisecond}
				s, buf, _ := scriptedShipper(t, p)
				for range 5 {
					s.answers.add(40 * time.Millisecond)
				}
				addLogs(buf, 100)
				s.shipRound(context.Background(), &round{before: everything, soft: softNow, budget: time.Second, allowance: tt.allowance})
				if got := len(p.calls()) > 0; got != tt.wantCalls {
					t.Errorf("allowance %v: calls made %v, want %v (%d buffered)", tt.allowance, got, tt.wantCalls, buf.buffered())
				}
			})
		}
	})
}

// TestUrgentRoundSendsTheNewestInvocationFirst: at a shutdown short of time (here the stream
// takes 3 entries per call), the first entries sent are the newest invocation's platform events,
// then its last lines, before anything older.
func TestUrgentRoundSendsTheNewestInvocationFirst(t *testing.T) {
	fk := newFakeKinesis(t, func(_ int, req putRecordsRequest) (int, string) {
		rs := make([]string, len(req.Records))
		for i := range rs {
			rs[i] = `{"SequenceNumber":"1","ShardId":"shardId-000000000000"}`
			if i >= 3 {
				rs[i] = `{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard"}`
			}
		}
		return 200, fmt.Sprintf(`{"FailedRecordCount":%d,"Records":[%s]}`, max(0, len(rs)-3), strings.Join(rs, ","))
	})
	s, buf, _ := testShipper(t, config{}, fk.URL)
	f := &filter{sample: 1}
	for _, req := range []string{"old", "new"} {
		evs := []event{platformEvent("platform.start", req)}
		for i := range 20 {
			e := logEvent(fmt.Sprintf("%s line %d", req, i))
			e.requestID = req
			evs = append(evs, e)
		}
		buf.add(append(evs, platformEvent("platform.runtimeDone", req)), f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	s.shipRound(ctx, &round{before: everything, urgent: true})
	first := fk.received()[0].Records
	var got []string
	for _, r := range first[:4] {
		d, _ := base64.StdEncoding.DecodeString(r.Data)
		var env envelopeOf
		json.Unmarshal(d, &env)
		var ev struct{ Type, Record any }
		json.Unmarshal(env.Event, &ev)
		got = append(got, fmt.Sprint(env.RequestID, " ", ev.Type, " ", ev.Record))
	}
	if !strings.HasPrefix(got[0], "new platform.runtimeDone") || !strings.HasPrefix(got[1], "new platform.start") ||
		!strings.HasPrefix(got[2], "new function new line 19") || !strings.HasPrefix(got[3], "new function new line 18") {
		t.Errorf("first entries of the urgent round:\n%s", strings.Join(got, "\n"))
	}
}

func TestBackoff(t *testing.T) {
	for _, tt := range []struct {
		attempt int
		limit   time.Duration
	}{{0, 50 * time.Millisecond}, {1, 100 * time.Millisecond}, {3, 400 * time.Millisecond}, {5, 1600 * time.Millisecond}, {6, 2 * time.Second}, {60, 2 * time.Second}} {
		var most time.Duration
		for range 2000 {
			d := backoff(tt.attempt, rand.Int64N)
			if d < 0 || d > tt.limit {
				t.Fatalf("backoff(%d) = %v, outside [0, %v]", tt.attempt, d, tt.limit)
			}
			most = max(most, d)
		}
		if most < tt.limit/2 {
			t.Errorf("backoff(%d): the largest of 2000 waits is %v; full jitter should reach near %v", tt.attempt, most, tt.limit)
		}
	}
}

// TestRoundLeavesRefusalsWhateverTheRate: entries refused at random, whatever the rate, go again
// at once; a round that may leave them (an invocation's, round.leaveRefused) gives the whole
// queue triesAnyway calls and leaves the rest queued, where a round that may not (the
// shutdown's) sends until all are stored. No pacer learns from them.
func TestRoundLeavesRefusalsWhateverTheRate(t *testing.T) {
	const shard = "shardId-000000000000"
	// Every other entry of a call is refused (scattered among stored ones): 50 entries take
	// calls of 50, 25, 12, 6, 3 and 1.
	everyOther := func(_, n int) ([]putResult, error) {
		rs := make([]putResult, n)
		for i := range rs {
			rs[i] = answerOf(shard, i%2 == 0)
		}
		return rs, nil
	}
	for _, tt := range []struct {
		name       string
		leave      bool
		wantCalls  []int
		wantQueued int
	}{
		{"may leave", true, []int{50, 25, 12}, 6},
		{"may not", false, []int{50, 25, 12, 6, 3, 1}, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &scriptedPutter{answer: everyOther}
			s, buf, st := scriptedShipper(t, p)
			addLogs(buf, 50)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := s.shipRound(ctx, &round{before: everything, leaveRefused: tt.leave}); err != nil {
				t.Fatal(err)
			}
			if got := p.calls(); !slices.Equal(got, tt.wantCalls) {
				t.Errorf("calls of %v entries, want %v", got, tt.wantCalls)
			}
			if queued, _ := buf.state(); queued != tt.wantQueued || st.delivered.Load() != uint64(50-tt.wantQueued) {
				t.Errorf("%d delivered, %d queued; want %d, %d", st.delivered.Load(), queued, 50-tt.wantQueued, tt.wantQueued)
			}
			if s.shardPace.paced() || s.shardPace.pacers[shard] != nil {
				t.Errorf("the shard got a pacer from refusals scattered among stored entries")
			}
		})
	}
}

// TestPutBestOfCallsAtOnce: identical calls at once (the last counts record where KMS refuses
// calls whole) are answered by the best of their answers, whatever the order they come in: one
// that stored an entry, then one answered entry by entry, then a refusal, then no answer.
func TestPutBestOfCallsAtOnce(t *testing.T) {
	kms := &apiError{Status: 400, Code: "KMSThrottlingException", Message: "Rate exceeded (Service: AWSKMS)"}
	lost := &networkError{err: errors.New("connection reset"), written: true}
	answers := []struct {
		results []putResult
		err     error
	}{
		{nil, lost},
		{nil, kms},
		{[]putResult{{ErrorCode: "ProvisionedThroughputExceededException"}}, nil},
		{[]putResult{{ShardID: []byte("shardId-000000000000")}}, nil},
	}
	for first := range answers {
		synctest.Test(t, func(t *testing.T) {
			p := &scriptedPutter{answer: func(call, _ int) ([]putResult, error) {
				a := answers[(first+call)%len(answers)]
				return a.results, a.err
			}}
			s, _, _ := scriptedShipper(t, p)
			s.client = p
			for calls := 1; calls <= len(answers); calls++ {
				p.mu.Lock()
				p.sizes = nil
				p.mu.Unlock()
				results, err := s.put(t.Context(), 1, calls)
				want := 0 // answers are listed worst first: the best of the calls made
				for c := range calls {
					want = max(want, (first+c)%len(answers))
				}
				w := answers[want]
				if err != w.err || len(results) != len(w.results) || len(results) > 0 && &results[0] != &w.results[0] {
					t.Errorf("%d calls from answer %d: got %v %v, want answer %d (%v %v)", calls, first, results, err, want, w.results, w.err)
				}
				if n := len(p.calls()); n != calls {
					t.Errorf("%d calls made, want %d", n, calls)
				}
			}
		})
	}
}
