package main

import (
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestNoNextWithCallInFlight: when a call is cut (its runtime is done, the stream pushes back and
// the call outlives wireGrace), the extension must not call /event/next, after which Lambda may
// freeze it, while the server still handles that call: over HTTP/2 cancelling a request returns
// at once and the RST_STREAM used to be written later by another goroutine, so a freeze in between
// left the stream open on the server, which could still store its records. Every answer is
// delayed 20–420 ms at random, past wireGrace and past what the extension can foresee from the
// answers before (it starts no call its usual answer time would not end before the flush budget
// does: shipper.answerable), and 30% of entries are throttled, so many invocations end with a
// cut call; 20 runs per wire, each with real freezes.
func TestNoNextWithCallInFlight(t *testing.T) {
	for _, w := range tlsWires {
		t.Run(w.String(), func(t *testing.T) {
			t.Parallel()
			const stream, runs = "telemetry", 20
			peer := startKinesalite(t, streamSpec{Name: stream, Shards: 2})
			proxy := startFaultProxy(t, peer.Endpoint)
			endpoint, front := overWire(t, proxy.URL, w, frontOptions{})
			busy := func() bool { return proxy.inFlight() > 0 || front.inFlight() > 0 }
			failed, cut := 0, 0
			for run := range runs {
				proxy.set(faultPlan{FailEntries: 0.3, Delay: 20 * time.Millisecond, DelayJitter: 400 * time.Millisecond})
				fl := newFakeLambda(t)
				var violations atomic.Int32
				fl.set(func() {
					fl.onNext = func() {
						// Lambda may freeze the environment as soon as it calls /event/next:
						// freeze it first, so that nothing it left to another goroutine (an
						// RST_STREAM, a close) can still happen. The kernel's delivery of a
						// close, and the server's notice of it, take a moment; an awaited call
						// would stay for the whole delay.
						// (Thawed again after the check: the fake posts the report next.)
						fl.freeze.Signal(syscall.SIGSTOP)
						defer fl.freeze.Signal(syscall.SIGCONT)
						for wait := 0; busy(); wait++ {
							if wait == 20 {
								violations.Add(1)
								return
							}
							time.Sleep(time.Millisecond)
						}
					}
				})
				ext := startExtension(t, fl, trusting(extensionEnvFor(peer, stream, endpoint, false,
					"KINESIS_TELEMETRY_FLUSH", "end", "KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS", "1000"), front))
				fl.freeze = ext.cmd.Process
				fl.init()
				for i := range 8 {
					fl.invoke(invocation{requestID: fmt.Sprintf("run%d-r%d", run, i), textLines: 15, jsonLines: 5, pause: 30 * time.Millisecond})
				}
				proxy.set(faultPlan{})
				fl.shutdownAndWait(ext)
				if v := violations.Load(); v > 0 {
					failed++
					t.Logf("run %d: /event/next called %d times with a PutRecords in flight", run, v)
				}
			}
			for _, c := range proxy.calls() {
				if c.Outcome == outcomeClientGoneAfter {
					cut++
				}
			}
			t.Logf("%s: %d of %d runs called /event/next with a call in flight; %d calls cut", w, failed, runs, cut)
			if failed > 0 {
				t.Errorf("%d of %d runs called /event/next while the server still handled a PutRecords", failed, runs)
			}
			if cut == 0 {
				t.Errorf("no call was cut: the test tests nothing")
			}
		})
	}
}
