package main

// BenchmarkExtensionProfile runs the extension in this process (run, as main calls it) against the
// fake Lambda and the fake Kinesis, so that a CPU profile shows where its time goes. Its
// goroutines carry the pprof label side=extension (goroutines inherit labels: the listener's
// server and connection goroutines, the shipper, the HTTP client's dial, read and write loops), so
// the profile can be cut to the extension alone:
//
//	go test -run '^$' -bench ExtensionProfile/lines=200 -benchtime 2000x -cpuprofile /tmp/cpu.out .
//	go tool pprof -tagfocus side=extension -top /tmp/cpu.out
//
// Each iteration is one invocation as BenchmarkCPUShare delivers it (INVOKE, platform.start, the
// lines in batches of profileBatch, platform.runtimeDone, and after the extension's next the
// report), without freezes: a process cannot stop itself. Garbage collection is the test
// process's as a whole, with Go's defaults (the extension's own settings would make it collect
// without pause: the fakes' heap is over the extension's limit), so GC is measured in
// BenchmarkCPUShare's processes instead. ns/op is wall time, the fakes included.

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"
)

// profileBatch is how many lines Lambda posts at once to a 128 MB function's extension that logs
// 200 lines in a 50 ms-of-CPU invocation (about 7 every 25 ms; rounded up).
const profileBatch = 10

func BenchmarkExtensionProfile(b *testing.B) {
	for _, lines := range []int{20, 200} {
		b.Run(fmt.Sprintf("lines=%d", lines), func(b *testing.B) {
			f := newFakeLambda(b)
			fk := newFakeKinesis(b, allOK)
			// The AWS SDK reads the process's environment itself (credentials, config files).
			for k, v := range lambdaEnv(f, fk.URL) {
				b.Setenv(k, v)
			}
			// run's memory settings would apply to the whole test process, whose heap (the fakes)
			// is over the extension's limit: the collector would run without pause. Set, they are
			// left alone.
			b.Setenv("GOGC", "100")
			b.Setenv("GOMEMLIMIT", "off")
			b.Setenv("AWS_CA_BUNDLE", "") // this machine's, which Lambda does not set
			// run would put the whole test process on one P (limitProcs), the fakes with it.
			b.Setenv("GOMAXPROCS", strconv.Itoa(runtime.GOMAXPROCS(0)))
			exited := make(chan int, 1)
			go pprof.Do(context.Background(), pprof.Labels("side", "extension"), func(context.Context) {
				exited <- run(os.Getenv, os.Stderr)
			})
			f.init()
			tally := &trafficTally{f: f, fk: fk}
			text := make([]string, lines)
			for i := range text {
				s, _ := json.Marshal(fmt.Sprintf("2024-05-01T10:00:00.000Z\t8c4f3a2e-1b6d-4e8f-9a0c-000000000000\tINFO\tprocessed order %d: 3 items, total 59.97 EUR, customer c-%06d\n", i, i*7919%1000000))
				text[i] = string(s)
			}
			b.ResetTimer()
			for i := range b.N {
				id := fmt.Sprintf("8c4f3a2e-1b6d-4e8f-9a0c-%012d", i)
				if f.lastReq != "" {
					f.awaitNext()
					f.post("", f.ev("platform.report", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":50.0,"billedDurationMs":50,"memorySizeMB":128,"maxMemoryUsedMB":40}}`, f.lastReq)))
				}
				f.deliver(fmt.Sprintf(`{"eventType":"INVOKE","deadlineMs":%d,"requestId":%q,"invokedFunctionArn":"arn:aws:lambda:eu-west-1:123456789012:function:fn"}`,
					time.Now().Add(60*time.Second).UnixMilli(), id))
				f.post(id, f.ev("platform.start", fmt.Sprintf(`{"requestId":%q,"version":"$LATEST"}`, id)))
				for at := 0; at < lines; at += profileBatch {
					var batch []postedEvent
					for _, t := range text[at:min(at+profileBatch, lines)] {
						batch = append(batch, f.ev("function", t))
					}
					f.post(id, batch...)
				}
				f.mu.Lock()
				f.runtimeEnd = append(f.runtimeEnd, time.Now())
				f.mu.Unlock()
				f.post(id, f.ev("platform.runtimeDone", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":50.0,"producedBytes":12}}`, id)))
				f.lastReq = id
				if i%100 == 99 {
					tally.forget()
				}
			}
			b.StopTimer()
			f.shutdown("spindown", 2*time.Second)
			select {
			case code := <-exited:
				if code != 0 {
					b.Fatalf("run returned %d", code)
				}
			case <-time.After(10 * time.Second):
				b.Fatal("the extension did not return after SHUTDOWN")
			}
			tally.forget()
			if tally.stored != tally.posted {
				b.Errorf("fake Kinesis stored %d events, want the %d posted", tally.stored, tally.posted)
			}
		})
	}
}
