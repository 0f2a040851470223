package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestHostileInput posts every kind of bad body to the running extension between normal batches:
// each gets its defined answer, the extension keeps serving, ships the good events exactly once,
// counts the bad ones, and exits 0.
func TestHostileInput(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_FLUSH", "end", "KINESIS_TELEMETRY_BUFFER_BYTES", "262144"))
	fl.init()
	url := fmt.Sprintf("http://127.0.0.1:%d", fl.listenerPort)
	deep := strings.Repeat("[", 5000) + strings.Repeat("]", 5000) // deeper still is kept too (see TestScanBatchDeepNesting), but encoding/json, which reads the stream here, stops at 10,000
	for _, tt := range []struct {
		name, method, path, body string
		want                     int
	}{
		{"huge", "POST", "/", "[" + strings.Repeat(`{"type":"function","record":"xxxxxxxxxx"},`, 60000) + "1]", 413},
		{"truncated", "POST", "/", `[{"time":"t","type":"function","record":"abc`, 400},
		{"not JSON", "POST", "/", "GET / HTTP/1.1\r\n", 400},
		{"empty", "POST", "/", "", 400},
		{"wrong shape", "POST", "/", `{"events":[]}`, 400},
		{"binary", "POST", "/", "\x00\x01\x02\xff", 400},
		{"wrong method", "PUT", "/", `[]`, 405},
		{"wrong path", "POST", "/admin", `[]`, 404},
		{"wrong path traversal", "POST", "/../etc/passwd", `[]`, 404},
	} {
		req, _ := http.NewRequest(tt.method, url+tt.path, strings.NewReader(tt.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: HTTP %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
	// Accepted and shipped as they are: unknown types, deep nesting, invalid UTF-8 (replaced).
	fl.invoke(invocation{requestID: "r1", textLines: 2})
	fl.post("r1",
		fl.ev("platform.someFutureEvent", `{"requestId":"r1","newField":[1,2,{"x":null}]}`),
		fl.ev("function", `{"level":"INFO","deep":`+deep+`}`),
	)
	fl.postRaw("[{\"time\":\"t\",\"type\":\"function\",\"record\":\"bad \xff byte\"}, 42, \"not an event\"]")
	fl.invoke(invocation{requestID: "r2", textLines: 2})
	fl.shutdownAndWait(ext)
	events, counts := fk.decoded(t)
	var invalid *shipped
	var rest []shipped
	for i := range events {
		if strings.Contains(string(events[i].Event), "bad \uFFFD byte") {
			invalid = &events[i]
		} else {
			rest = append(rest, events[i])
		}
	}
	checkExactlyOnce(t, fl.postedEvents(), rest)
	if invalid == nil {
		t.Error("the event with invalid UTF-8 was not shipped with U+FFFD")
	}
	if malformed := lastCounts(t, counts).Malformed; malformed.Batches != 6 || malformed.Events != 2 {
		t.Errorf("counted malformed %v, want 6 batches (the refused methods and paths are not batches) and 2 events", malformed)
	}
}

// TestWritesNothingToDisk runs a whole lifecycle with the working directory, HOME and TMPDIR in
// empty folders: the extension must leave them empty.
func TestWritesNothingToDisk(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	dirs := map[string]string{"cwd": t.TempDir(), "HOME": t.TempDir(), "TMPDIR": t.TempDir()}
	env := testEnv(fk.URL, "HOME", dirs["HOME"], "TMPDIR", dirs["TMPDIR"])
	ext := startExtensionIn(t, fl, env, dirs["cwd"])
	fl.init()
	for i := range 3 {
		fl.invoke(invocation{requestID: fmt.Sprintf("r%d", i), textLines: 3})
	}
	fl.shutdownAndWait(ext)
	for name, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 0 {
			t.Errorf("%s (%s) holds %v after the run (%v)", name, dir, entries, err)
		}
	}
}

// TestListenerBindsLoopbackOnly reads the kernel's socket table: the telemetry listener must
// listen on 127.0.0.1 here (where sandbox.localdomain does not resolve), never on all interfaces.
func TestListenerBindsLoopbackOnly(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	env := testEnv(fk.URL)
	ext := startExtension(t, fl, env)
	fl.init()
	table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", ext.cmd.Process.Pid))
	if err != nil {
		t.Skipf("no /proc socket table here: %v", err)
	}
	port := fmt.Sprintf("%04X", fl.listenerPort)
	var found []string
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], ":"+port) { // 0A: LISTEN
			found = append(found, f[1])
		}
	}
	if len(found) != 1 || found[0] != "0100007F:"+port {
		t.Errorf("listening sockets on port %d: %v, want only 127.0.0.1 (0100007F)", fl.listenerPort, found)
	}
	if tcp6, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp6", ext.cmd.Process.Pid)); err == nil && strings.Contains(string(tcp6), ":"+port+" 00000000000000000000000000000000:0000 0A") {
		t.Errorf("listening on an IPv6 address on port %d", fl.listenerPort)
	}
	fl.shutdownAndWait(ext)
}

// faultStep changes the proxy's plan at a moment of a fault-matrix run.
type faultStep struct {
	at   time.Duration
	plan faultPlan
}

// faultCase is one row of the fault matrix.
type faultCase struct {
	name      string
	steps     []faultStep
	run       time.Duration // how long invocations go on
	dupsOK    bool          // Kinesis may have stored a record whose answer was lost
	permanent string        // an error code that must be counted, said once and not retried
	// shutdownPlan, when set, applies from the last part of the run through SHUTDOWN, so that
	// SHUTDOWN finds data waiting in a backoff; shutdownRecover replaces it shutdownAfter later.
	shutdownPlan, shutdownRecover *faultPlan
	shutdownAfter                 time.Duration
}

// TestFaultMatrix runs the extension against kinesalite through the fault-injecting proxy, one
// fault per row, and checks the invariant: every event produced is either in the stream, counted
// as dropped, or counted as unknown (a call whose outcome never came) — nothing vanishes
// uncounted. Duplicates are allowed only where Kinesis
// stored a call whose answer never arrived, and then carry the same id. It prints the table.
func TestFaultMatrix(t *testing.T) {
	throttled := faultPlan{FailEntries: 1, FailCodes: []string{"ProvisionedThroughputExceededException"}}
	clear := faultPlan{}
	cases := []faultCase{
		{name: "no fault", run: time.Second},
		{name: "all entries throttled 2 s", steps: []faultStep{{0, throttled}, {2 * time.Second, clear}}, run: 3 * time.Second},
		{name: "30% entries fail", steps: []faultStep{{0, faultPlan{FailEntries: 0.3, FailCodes: []string{"ProvisionedThroughputExceededException", "InternalFailure"}}}}, run: 2 * time.Second},
		{name: "HTTP 500 and 503 bursts", steps: []faultStep{{0, faultPlan{FailCallStatus: 500, FailCallCode: "InternalFailure", FailCalls: 4}}, {time.Second, faultPlan{FailCallStatus: 503, FailCallCode: "ServiceUnavailable", FailCalls: 4}}}, run: 2 * time.Second},
		{name: "connections reset mid-request", steps: []faultStep{{0, faultPlan{ResetBeforeForward: true}}, {1500 * time.Millisecond, clear}}, run: 2 * time.Second},
		{name: "reset after Kinesis stored", steps: []faultStep{{0, faultPlan{ResetAfterForward: true}}, {time.Second, clear}}, run: 2 * time.Second, dupsOK: true},
		{name: "answers delayed past the timeout", steps: []faultStep{{0, faultPlan{Delay: 700 * time.Millisecond}}, {1500 * time.Millisecond, clear}}, run: 2500 * time.Millisecond, dupsOK: true},
		{name: "Kinesis unreachable 10 s", steps: []faultStep{{0, faultPlan{Unreachable: true}}, {10 * time.Second, clear}}, run: 11 * time.Second},
		{name: "AccessDeniedException", steps: []faultStep{{0, faultPlan{FailCallStatus: 400, FailCallCode: "AccessDeniedException"}}}, run: time.Second, permanent: "AccessDeniedException"},
		{name: "ResourceNotFoundException", steps: []faultStep{{0, faultPlan{FailCallStatus: 400, FailCallCode: "ResourceNotFoundException"}}}, run: time.Second, permanent: "ResourceNotFoundException"},
		{name: "KMSDisabledException", steps: []faultStep{{0, faultPlan{FailCallStatus: 400, FailCallCode: "KMSDisabledException"}}}, run: time.Second, permanent: "KMSDisabledException"},
		{name: "SHUTDOWN in a backoff, then recovery", run: 2 * time.Second, shutdownPlan: &throttled, shutdownRecover: &clear, shutdownAfter: 600 * time.Millisecond},
		{name: "SHUTDOWN in a backoff, no recovery", run: 2 * time.Second, shutdownPlan: &faultPlan{FailCallStatus: 500, FailCallCode: "InternalFailure"}},
	}
	runFaultMatrix(t, cases, tlsWires)
}

// runFaultMatrix runs every case over every wire (tlsfront_test.go), in parallel, and prints the
// table when t ends.
func runFaultMatrix(t *testing.T, cases []faultCase, wires []wire) {
	results := make([]string, len(cases)*len(wires))
	t.Cleanup(func() {
		t.Logf("fault matrix (events):\n%-48s %8s %9s %10s %7s %17s %7s\n%s", "case", "produced", "delivered", "duplicated", "dropped", "counted-as-dropped", "unknown", strings.Join(results, "\n"))
	})
	for i, fc := range cases {
		for j, w := range wires {
			t.Run(fc.name+" over "+w.String(), func(t *testing.T) {
				t.Parallel()
				results[i*len(wires)+j] = runFaultCase(t, fc, w)
			})
		}
	}
}

// runFaultCase runs one case over w. Over TLS the fault proxy sits behind a tlsFront; the
// front's Unreachable is the proxy's, so that an unreachable endpoint refuses the TLS
// connection itself rather than answering.
func runFaultCase(t *testing.T, fc faultCase, w wire) string {
	const stream = "telemetry"
	peer := startKinesalite(t, streamSpec{Name: stream, Shards: 2})
	proxy := startFaultProxy(t, peer.Endpoint)
	endpoint, front := overWire(t, proxy.URL, w, frontOptions{refuse: func() bool {
		proxy.mu.Lock()
		defer proxy.mu.Unlock()
		return proxy.plan.Unreachable
	}})
	busy := func() bool { return proxy.inFlight() > 0 || (front != nil && front.inFlight() > 0) }
	fl := newFakeLambda(t)
	var violations atomic.Int32
	fl.set(func() {
		fl.onNext = func() {
			// A call the extension abandoned (its timeout) stays in the proxy's count until the
			// proxy notices the closed connection, a moment later; a call still awaited would stay
			// for the whole fault (hundreds of ms).
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
		"KINESIS_TELEMETRY_FLUSH", "end", "KINESIS_TELEMETRY_FLUSH_BUDGET_MS", "1000", "KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS", "400"), front))
	fl.freeze = ext.cmd.Process // real freezes between invocations, as Lambda does
	fl.init()
	start := time.Now()
	var timers []*time.Timer
	for _, s := range fc.steps {
		timers = append(timers, time.AfterFunc(s.at, func() { proxy.set(s.plan) }))
	}
	if fc.shutdownPlan != nil {
		timers = append(timers, time.AfterFunc(fc.run/2, func() { proxy.set(*fc.shutdownPlan) }))
	}
	for i := 0; time.Since(start) < fc.run; i++ {
		fl.invoke(invocation{requestID: fmt.Sprintf("r%03d", i), textLines: 6, jsonLines: 4, pause: 50 * time.Millisecond})
	}
	for _, tm := range timers {
		tm.Stop()
	}
	if len(fc.steps) > 0 && fc.permanent == "" {
		proxy.set(faultPlan{}) // recovered before shutdown, unless the case says otherwise
	}
	if fc.shutdownPlan != nil {
		if fc.shutdownRecover != nil {
			defer time.AfterFunc(fc.shutdownAfter, func() { proxy.set(*fc.shutdownRecover) }).Stop()
		}
	}
	fl.shutdownAndWait(ext)
	proxy.set(faultPlan{})
	if v := violations.Load(); v > 0 {
		t.Errorf("/event/next called %d times with a PutRecords in flight", v)
	}

	// What landed, once each or more.
	posted := fl.postedEvents()
	events, _ := peer.decoded(t, stream)
	copies := map[string][]string{} // event -> ids of its copies
	for _, e := range events {
		copies[string(e.Event)] = append(copies[string(e.Event)], e.ID)
	}
	delivered, duplicated := 0, 0
	for _, p := range posted {
		ids := copies[p.raw]
		if len(ids) > 0 {
			delivered++
		}
		duplicated += max(0, len(ids)-1)
		for _, id := range ids[min(1, len(ids)):] {
			if id != ids[0] {
				t.Errorf("copies of one event carry different ids: %v", ids)
			}
		}
	}

	// What the extension counted, from its shutdown line (the counts record cannot reach a
	// stream that refuses everything).
	out := ext.stderr.String()
	var received, got, dropped, full, rejected, atShutdown, lambda, malformed, calls, retries, resent, unknown, buffered int
	line := out[strings.LastIndex(out, "shutdown (spindown): "):]
	if _, err := fmt.Sscanf(line, "shutdown (spindown): received %d, delivered %d, dropped %d (buffer full %d, rejected %d, shutdown %d), Lambda dropped %d, malformed %d, %d PutRecords calls, %d retries, %d events sent again after a call of unknown outcome, unknown %d, buffered %d,",
		&received, &got, &dropped, &full, &rejected, &atShutdown, &lambda, &malformed, &calls, &retries, &resent, &unknown, &buffered); err != nil {
		t.Fatalf("no shutdown summary in the log (%v):\n%s", err, out)
	}
	if received != len(posted) {
		t.Errorf("extension received %d events, %d were produced", received, len(posted))
	}
	// Duplicates come only from calls of unknown outcome, which the extension counts: the faults
	// that lose answers, and any call that outlived its 400 ms timeout on a loaded machine.
	if duplicated > resent {
		t.Errorf("%d duplicates, more than the %d events sent again after a call of unknown outcome", duplicated, resent)
	}
	if duplicated > 0 && !fc.dupsOK {
		t.Logf("%d duplicates although the fault loses no answer: %d events were sent again after a call of unknown outcome (a call past its timeout)", duplicated, resent)
	}
	if received != got+dropped+unknown+buffered {
		t.Errorf("received %d != delivered %d + dropped %d + unknown %d + buffered %d", received, got, dropped, unknown, buffered)
	}
	// Dropped events are certainly missing; events of unknown outcome may be missing or stored.
	if missing := len(posted) - delivered; missing < dropped || missing > dropped+unknown {
		t.Errorf("produced %d = delivered %d + counted-as-dropped %d (+ up to %d unknown) does not hold (missing %d)", len(posted), delivered, dropped, unknown, missing)
	}
	if got != delivered {
		t.Errorf("extension counted %d delivered, the stream holds %d", got, delivered)
	}
	if fc.permanent != "" {
		if n := strings.Count(out, fc.permanent); n != 1 {
			t.Errorf("%s said %d times, want once:\n%s", fc.permanent, n, out)
		}
		if retries != 0 || rejected != len(posted) {
			t.Errorf("permanent error: %d retries, %d rejected of %d; want no retries and all counted", retries, rejected, len(posted))
		}
	}
	if fc.shutdownPlan != nil && fc.shutdownRecover == nil && atShutdown+unknown < 20 {
		t.Errorf("%d events counted as dropped at shutdown (and %d unknown) against a failing Kinesis: the case tests too little", atShutdown, unknown)
	}
	if len(fc.steps) > 0 && fc.permanent == "" && fc.shutdownPlan == nil && dropped != 0 {
		t.Errorf("%d events dropped although Kinesis recovered before shutdown", dropped)
	}
	return fmt.Sprintf("%-48s %8d %9d %10d %7d %17d %7d", fc.name+" over "+w.String(), len(posted), delivered, duplicated, len(posted)-delivered, dropped, unknown)
}

// TestManagedShutdownDuringBackoff: on managed instances the timer's send runs while the
// extension waits in /event/next, so SHUTDOWN can arrive in the middle of its backoff. The round
// must give way in time, and what Kinesis accepts after recovering within the deadline must land.
func TestManagedShutdownDuringBackoff(t *testing.T) {
	const stream = "telemetry"
	peer := startKinesalite(t, streamSpec{Name: stream, Shards: 1})
	proxy := startFaultProxy(t, peer.Endpoint)
	proxy.set(faultPlan{FailEntries: 1, FailCodes: []string{"ProvisionedThroughputExceededException"}})
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, extensionEnvFor(peer, stream, proxy.URL, false,
		"AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances", "KINESIS_TELEMETRY_FLUSH", "periodic,100"))
	fl.init()
	for i := range 5 {
		req := fmt.Sprintf("m%d", i)
		fl.post(req, fl.ev("platform.start", fmt.Sprintf(`{"requestId":%q}`, req)), fl.ev("function", `"line"`),
			fl.ev("platform.report", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":1}}`, req)))
	}
	time.Sleep(700 * time.Millisecond) // several throttled rounds: the timer's send is backing off
	if len(proxy.calls()) < 2 {
		t.Fatalf("%d calls before SHUTDOWN: the background send is not retrying", len(proxy.calls()))
	}
	start := time.Now()
	defer time.AfterFunc(300*time.Millisecond, func() { proxy.set(faultPlan{}) }).Stop()
	fl.deliver(fmt.Sprintf(`{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":%d}`, start.Add(2*time.Second).UnixMilli()))
	if code := ext.wait(3 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("shutdown took %v, past the 2 s deadline", took)
	}
	events, _ := peer.decoded(t, stream)
	checkDelivery(t, fl.postedEvents(), events, false, 0)
}

// TestFlood posts telemetry for 60 s far faster than Kinesis accepts it (the proxy holds every
// call 500 ms): the extension's memory stays under its cap plus a constant, the listener keeps
// answering promptly, platform events all survive, the log lines dropped for room are counted,
// and the newest lines are the ones kept.
//
// The test keeps its own memory bounded too: it posts about ten million log lines, so it does
// not keep them. Each line is a function of its batch and index (floodLine), so a line read back
// from the stream is checked byte for byte by building it again, and a set of the (few) lines
// that landed is all it stores. Platform events, a few per second, are kept and each one checked.
func TestFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("60 s flood; skipped with -short")
	}
	const (
		stream   = "telemetry"
		capBytes = 4 << 20
		floodFor = 60 * time.Second
		// overhead is what the process needs besides the buffer: the Go runtime and the AWS SDK
		// (about 10 MiB idle), a PutRecords body being sent (base64 of up to the cap) and the
		// garbage collector's headroom.
		overhead     = 28 << 20
		linesPerPost = 400
		newest       = 2000 // the newest log lines, which must all land
	)
	peer := startKinesalite(t, streamSpec{Name: stream, Shards: 4})
	proxy := startFaultProxy(t, peer.Endpoint)
	proxy.set(faultPlan{Hold: 500 * time.Millisecond})
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, extensionEnvFor(peer, stream, proxy.URL, false,
		"AWS_LAMBDA_INITIALIZATION_TYPE", "lambda-managed-instances", "KINESIS_TELEMETRY_FLUSH", "periodic,100",
		"KINESIS_TELEMETRY_MAX_BUFFER_BYTES", fmt.Sprint(capBytes)))
	fl.init()

	var maxRSS int
	var latencies []time.Duration
	var platform []string
	batches := 0
	start := time.Now()
	next, report := start, start.Add(10*time.Second)
	t.Logf("flooding for %v (progress every 10 s)", floodFor)
	for ; time.Since(start) < floodFor; batches++ {
		req := fmt.Sprintf("flood-%05d", batches)
		p := fl.ev("platform.start", fmt.Sprintf(`{"requestId":%q}`, req))
		platform = append(platform, p.raw)
		var body strings.Builder
		body.WriteString("[" + p.raw)
		for i := range linesPerPost {
			body.WriteString("," + floodLine(batches, i))
		}
		body.WriteString("]")
		t0 := time.Now()
		fl.postRaw(body.String())
		latencies = append(latencies, time.Since(t0))
		if now := time.Now(); now.After(next) {
			next = next.Add(500 * time.Millisecond)
			maxRSS = max(maxRSS, rss(t, ext.cmd.Process.Pid))
			if now.After(report) {
				report = report.Add(10 * time.Second)
				t.Logf("flood: %v of %v, %d batches posted, extension RSS max %.1f MiB", now.Sub(start).Round(time.Second), floodFor, batches+1, float64(maxRSS)/(1<<20))
			}
		}
	}
	maxRSS = max(maxRSS, rss(t, ext.cmd.Process.Pid))
	logs := batches * linesPerPost
	posted := len(platform) + logs
	t.Logf("posted %d events (%d platform) in %d batches, %.0f events/s", posted, len(platform), batches, float64(posted)/floodFor.Seconds())

	// Let the backlog drain at full speed, then shut down.
	proxy.set(faultPlan{})
	t.Log("draining the backlog for 3 s, then SHUTDOWN")
	time.Sleep(3 * time.Second)
	fl.deliver(fmt.Sprintf(`{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":%d}`, time.Now().Add(2*time.Second).UnixMilli()))
	if code := ext.wait(3 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}

	sortDurations(latencies)
	p99, worst := latencies[len(latencies)*99/100], latencies[len(latencies)-1]
	t.Logf("listener answer times: median %v, p99 %v, max %v; max RSS %.1f MiB (cap %d MiB + %d MiB)",
		latencies[len(latencies)/2], p99, worst, float64(maxRSS)/(1<<20), capBytes>>20, overhead>>20)
	if maxRSS > capBytes+overhead {
		t.Errorf("RSS reached %.1f MiB, over the cap plus %d MiB", float64(maxRSS)/(1<<20), overhead>>20)
	}
	if p99 > 100*time.Millisecond || worst > time.Second {
		t.Errorf("the listener stalled: p99 %v, max %v", p99, worst)
	}

	events, counts := peer.decoded(t, stream)
	landed := map[string]bool{}      // every event but the flood's log lines
	landedLines := map[[2]int]bool{} // the flood's log lines: batch, index
	for _, e := range events {
		var b, i int
		if _, err := fmt.Sscanf(floodRecord(e.Event), "batch %d line %d", &b, &i); err == nil {
			if b >= batches || i >= linesPerPost || string(e.Event) != floodLine(b, i) {
				t.Fatalf("a log line in the stream that was never posted: %.200s", e.Event)
			}
			landedLines[[2]int{b, i}] = true
			continue
		}
		landed[string(e.Event)] = true
	}
	all := platform
	for _, p := range fl.postedEvents() { // the init events before the flood
		all = append(all, p.raw)
	}
	missing := logs - len(landedLines)
	for _, raw := range all {
		switch {
		case landed[raw]:
		case strings.Contains(raw, `"type":"platform.`):
			t.Fatalf("a platform event was lost in the flood: %s", raw)
		default:
			missing++
		}
	}
	for n := logs - newest; n < logs; n++ {
		if !landedLines[[2]int{n / linesPerPost, n % linesPerPost}] {
			t.Fatalf("one of the newest log lines was dropped: the oldest must go first")
		}
	}
	last := lastCounts(t, counts)
	full, total := int(last.Dropped.BufferFull), int(last.Dropped.Total)
	t.Logf("log lines dropped for room: %d of %d; counts record: bufferFull %d, total %d", missing, logs, full, total)
	if missing == 0 {
		t.Error("nothing was dropped: the flood did not outrun Kinesis, the test proves nothing")
	}
	if total != missing || full != missing {
		t.Errorf("counts record says %d dropped (%d for room), %d are missing", total, full, missing)
	}
}

// floodLine is log line i of flood batch b, as Lambda would post it.
func floodLine(b, i int) string {
	ts := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC).Add(time.Duration(b) * time.Millisecond).Format("2006-01-02T15:04:05.000Z")
	return fmt.Sprintf(`{"time":%q,"type":"function","record":"batch %d line %d %s"}`, ts, b, i, strings.Repeat("x", 300))
}

// floodRecord returns the text of a function log line, or "" for any other event.
func floodRecord(raw json.RawMessage) string {
	var ev struct {
		Type   string
		Record any
	}
	json.Unmarshal(raw, &ev)
	s, _ := ev.Record.(string)
	if ev.Type != "function" {
		return ""
	}
	return s
}

// rss returns a process's resident set size in bytes.
func rss(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read RSS: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb << 10
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func sortDurations(d []time.Duration) {
	slices.Sort(d)
}
