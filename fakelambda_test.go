package main

// An in-process fake of the Lambda side, written from the documented Extensions API and Telemetry
// API: it registers the extension, hands out INVOKE and SHUTDOWN events through /event/next, takes
// the telemetry subscription, and posts realistic event batches to the extension's listener in
// the order and at the moments Lambda does (platform.report only after the extension's next).

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type fakeLambda struct {
	t   testing.TB
	srv *httptest.Server

	// Set before the extension starts.
	subscribeStatus int    // answer to the subscription; 0 means 200
	subscribeBody   string // its body
	onNext          func() // called at every /event/next, before it blocks
	nextBroken      bool   // /event/next answers 500, as a broken Runtime API would
	functionName    string // the registration's functionName; "" means "fn"

	mu           sync.Mutex
	registerHdr  http.Header
	registerBody map[string][]string
	subscription map[string]any
	listenerPort int
	errorsSeen   []string // "<path> <error type>"
	nextAt       []time.Time

	nextCalls chan struct{} // one per /event/next call
	events    chan string   // the event the pending /event/next answers with
	nextReady bool          // a next call has been seen and not yet answered (test goroutine only)

	posted     []postedEvent // every event posted to the listener: the ground truth
	runtimeEnd []time.Time   // per invocation, when the function finished
	// telemetryDelay is how long Lambda takes to deliver platform.runtimeDone after the function
	// finishes (its buffering timeout); 0 posts it at once.
	telemetryDelay time.Duration
	freeze         *os.Process // when set, the extension is stopped (SIGSTOP) while Lambda would freeze it
	seq            int
	lastReq        string
	late           sync.WaitGroup // the report shutdown posts from its own goroutine
}

// postedEvent is one telemetry event the fake delivered, with the request id its record should carry.
type postedEvent struct {
	raw       string
	requestID string
	at        time.Time
}

func newFakeLambda(t testing.TB) *fakeLambda {
	f := &fakeLambda{t: t, nextCalls: make(chan struct{}, 1000), events: make(chan string)}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

// set changes the fake's settings (subscribeStatus, subscribeBody, onNext) under its lock: the
// server's goroutines read them.
func (f *fakeLambda) set(change func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	change()
}

// runtimeAPI is the value for AWS_LAMBDA_RUNTIME_API.
func (f *fakeLambda) runtimeAPI() string { return strings.TrimPrefix(f.srv.URL, "http://") }

func (f *fakeLambda) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	switch r.URL.Path {
	case "/2020-01-01/extension/register":
		f.mu.Lock()
		f.registerHdr = r.Header.Clone()
		json.Unmarshal(body, &f.registerBody)
		name := cmp.Or(f.functionName, "fn")
		f.mu.Unlock()
		w.Header().Set("Lambda-Extension-Identifier", "ext-id-1")
		out := map[string]string{"functionName": name, "functionVersion": "$LATEST", "handler": "index.handler"}
		if r.Header.Get("Lambda-Extension-Accept-Feature") == "accountId" {
			out["accountId"] = "123456789012"
		}
		json.NewEncoder(w).Encode(out)
	case "/2020-01-01/extension/event/next":
		if r.Header.Get("Lambda-Extension-Identifier") != "ext-id-1" {
			http.Error(w, `{"errorType":"Extension.InvalidExtensionIdentifier"}`, http.StatusForbidden)
			return
		}
		f.mu.Lock()
		f.nextAt = append(f.nextAt, time.Now())
		hook, broken := f.onNext, f.nextBroken
		f.mu.Unlock()
		if broken {
			http.Error(w, `{"errorType":"Runtime.Unknown"}`, http.StatusInternalServerError)
			return
		}
		if hook != nil {
			hook()
		}
		f.nextCalls <- struct{}{}
		select {
		case ev := <-f.events:
			io.WriteString(w, ev)
		case <-r.Context().Done():
		}
	case "/2020-01-01/extension/init/error", "/2020-01-01/extension/exit/error":
		f.mu.Lock()
		f.errorsSeen = append(f.errorsSeen, r.URL.Path+" "+r.Header.Get("Lambda-Extension-Function-Error-Type"))
		f.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	case "/2022-07-01/telemetry":
		var sub map[string]any
		if err := json.Unmarshal(body, &sub); err != nil || r.Method != http.MethodPut {
			http.Error(w, `{"errorType":"ValidationError"}`, http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.subscription = sub
		dest, _ := sub["destination"].(map[string]any)
		uri, _ := dest["URI"].(string)
		fmt.Sscanf(uri[strings.LastIndex(uri, ":")+1:], "%d", &f.listenerPort)
		status, answer := f.subscribeStatus, f.subscribeBody
		f.mu.Unlock()
		if status != 0 {
			w.WriteHeader(status)
			io.WriteString(w, answer)
			return
		}
		io.WriteString(w, `"OK"`)
	default:
		http.NotFound(w, r)
	}
}

// extProcess is the built extension running as a child process.
type extProcess struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

// startExtension runs the built binary against the fake. The extension is stopped by the test's
// cleanup if it is still running.
func startExtension(t testing.TB, f *fakeLambda, env map[string]string) *extProcess {
	t.Helper()
	return startExtensionIn(t, f, env, "")
}

// startExtensionIn is startExtension with the working directory dir.
func startExtensionIn(t testing.TB, f *fakeLambda, env map[string]string, dir string) *extProcess {
	t.Helper()
	cmd := exec.Command(extensionBinary)
	cmd.Dir = dir
	cmd.Env = []string{"AWS_LAMBDA_RUNTIME_API=" + f.runtimeAPI(), "PATH=" + os.Getenv("PATH"),
		"AWS_CONFIG_FILE=/nonexistent", "AWS_SHARED_CREDENTIALS_FILE=/nonexistent", "AWS_EC2_METADATA_DISABLED=true"}
	if env["HOME"] == "" {
		cmd.Env = append(cmd.Env, "HOME="+t.TempDir())
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	p := &extProcess{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = p.stderr
	cmd.Stdout = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start extension: %v", err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			cmd.Process.Signal(syscall.SIGCONT)
			cmd.Process.Kill()
			<-p.done
		}
		if t.Failed() {
			t.Logf("extension output:\n%s", p.stderr.String())
		}
	})
	return p
}

// wait waits for the extension to exit and returns its exit code, or -1 after the timeout.
func (p *extProcess) wait(timeout time.Duration) int {
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode()
	case <-time.After(timeout):
		return -1
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// awaitNext waits until the extension is blocked in /event/next.
func (f *fakeLambda) awaitNext() {
	f.t.Helper()
	if f.nextReady {
		return
	}
	select {
	case <-f.nextCalls:
		f.nextReady = true
	case <-time.After(10 * time.Second):
		f.t.Fatal("the extension did not call /event/next within 10 s")
	}
}

// deliver answers the pending /event/next with ev, thawing the extension first when frozen.
func (f *fakeLambda) deliver(ev string) {
	f.t.Helper()
	f.awaitNext()
	if f.freeze != nil {
		f.freeze.Signal(syscall.SIGCONT)
	}
	f.nextReady = false
	f.events <- ev
}

// init posts the init-phase telemetry Lambda sends once the subscription is active.
func (f *fakeLambda) init() {
	f.t.Helper()
	f.awaitNext()
	f.post("",
		f.ev("platform.initStart", `{"initializationType":"on-demand","phase":"init","runtimeVersion":"python:3.13.v1","runtimeVersionArn":"arn:aws:lambda:eu-west-1::runtime:abc","functionName":"fn","functionVersion":"$LATEST","instanceId":"i-1","instanceMaxMemory":134217728}`),
		f.ev("platform.telemetrySubscription", `{"name":"kinesis-telemetry-extension","state":"Subscribed","types":["platform","function"]}`),
		f.ev("function", `"init: loading configuration"`),
		f.ev("platform.initRuntimeDone", `{"initializationType":"on-demand","phase":"init","status":"success"}`),
		f.ev("platform.extension", `{"name":"kinesis-telemetry-extension","state":"Ready","events":["INVOKE","SHUTDOWN"]}`),
		f.ev("platform.initReport", `{"initializationType":"on-demand","phase":"init","status":"success","metrics":{"durationMs":123.4}}`),
	)
}

// invocation describes what one fake invocation logs.
type invocation struct {
	requestID   string
	textLines   int
	jsonLines   int
	logsDropped int           // when > 0, Lambda reports this many dropped records
	runFor      time.Duration // how long the "function" runs
	pause       time.Duration // idle time before the invocation (frozen, when freezing)
	deadline    time.Duration // from the start of the invocation; 0 means 5 s
}

// invoke runs one invocation the way Lambda does: INVOKE to the extension, the function's
// telemetry posted while it runs, platform.runtimeDone, and, only after the extension has called
// /event/next, platform.report (so it is shipped with the next invocation or at shutdown).
func (f *fakeLambda) invoke(inv invocation) {
	f.t.Helper()
	if inv.deadline == 0 {
		inv.deadline = 5 * time.Second
	}
	// The previous invocation's report is produced after the extension's last next.
	if f.lastReq != "" {
		f.awaitNext()
		f.post("", f.ev("platform.report", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":12.5,"billedDurationMs":13,"memorySizeMB":128,"maxMemoryUsedMB":70}}`, f.lastReq)))
		if f.freeze != nil {
			// Lambda freezes the environment until the next event.
			f.freeze.Signal(syscall.SIGSTOP)
		}
	}
	time.Sleep(inv.pause)
	start := time.Now()
	f.deliver(fmt.Sprintf(`{"eventType":"INVOKE","deadlineMs":%d,"requestId":%q,"invokedFunctionArn":"arn:aws:lambda:eu-west-1:123456789012:function:fn","tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"}}`,
		start.Add(inv.deadline).UnixMilli(), inv.requestID))
	batch := []postedEvent{f.ev("platform.start", fmt.Sprintf(`{"requestId":%q,"version":"$LATEST","tracing":{"spanId":"a","type":"X-Amzn-Trace-Id","value":"Root=1"}}`, inv.requestID))}
	for i := range max(inv.textLines, inv.jsonLines) {
		if i < inv.textLines {
			batch = append(batch, f.ev("function", fmt.Sprintf(`"%s text line %d: \"quoted\" tab\tend\n"`, inv.requestID, i)))
		}
		if i < inv.jsonLines {
			f.seq++
			batch = append(batch, f.ev("function", fmt.Sprintf(`{"timestamp":"2024-05-01T10:00:00.%03dZ","level":"INFO","requestId":%q,"message":"json line %d","n":%d}`, f.seq%1000, inv.requestID, i, f.seq)))
		}
	}
	if inv.logsDropped > 0 {
		batch = append(batch, f.ev("platform.logsDropped", fmt.Sprintf(`{"reason":"Consumer seems to have fallen behind as it has not acknowledged receipt of logs.","droppedRecords":%d,"droppedBytes":%d}`, inv.logsDropped, 100*inv.logsDropped)))
	}
	f.post(inv.requestID, batch...)
	time.Sleep(inv.runFor)
	f.mu.Lock()
	f.runtimeEnd = append(f.runtimeEnd, time.Now())
	f.mu.Unlock()
	time.Sleep(f.telemetryDelay)
	f.post(inv.requestID, f.ev("platform.runtimeDone", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":%d,"producedBytes":12},"spans":[{"name":"responseLatency","start":"2024-05-01T10:00:00.000Z","durationMs":1.1}]}`, inv.requestID, inv.runFor.Milliseconds())))
	f.lastReq = inv.requestID
}

// shutdown posts the last invocation's report once the extension is in next, then SHUTDOWN.
func (f *fakeLambda) shutdown(reason string, within time.Duration) {
	f.t.Helper()
	f.awaitNext()
	if f.freeze != nil {
		f.freeze.Signal(syscall.SIGCONT)
	}
	if f.lastReq != "" {
		// The report is produced after the last next; it reaches the extension during shutdown,
		// or not at all when the extension has already exited. So it is posted off the test
		// goroutine, where t.Fatal is not allowed, and counted as posted only if the listener
		// took it; postedEvents waits for it.
		report := f.ev("platform.report", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":12.5,"billedDurationMs":13,"memorySizeMB":128,"maxMemoryUsedMB":70}}`, f.lastReq))
		f.late.Add(1)
		go func() {
			defer f.late.Done()
			time.Sleep(30 * time.Millisecond)
			f.tryPost("", report)
		}()
	}
	f.deliver(fmt.Sprintf(`{"eventType":"SHUTDOWN","shutdownReason":%q,"deadlineMs":%d}`, reason, time.Now().Add(within).UnixMilli()))
}

// shutdownAndWait is the usual end of a run: shutdown("spindown", 2 s), then the extension must
// exit 0 within 3 s.
func (f *fakeLambda) shutdownAndWait(ext *extProcess) {
	f.t.Helper()
	f.shutdown("spindown", 2*time.Second)
	if code := ext.wait(3 * time.Second); code != 0 {
		f.t.Fatalf("exit code %d after SHUTDOWN, want 0", code)
	}
}

// ev builds one event with a unique time, as Lambda would.
func (f *fakeLambda) ev(typ, record string) postedEvent {
	f.seq++
	ts := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC).Add(time.Duration(f.seq) * time.Millisecond).Format("2006-01-02T15:04:05.000Z")
	return postedEvent{raw: fmt.Sprintf(`{"time":%q,"type":%q,"record":%s}`, ts, typ, record)}
}

// post delivers a batch to the listener; requestID is the invocation its log lines belong to.
func (f *fakeLambda) post(requestID string, evs ...postedEvent) {
	f.t.Helper()
	if err := f.tryPost(requestID, evs...); err != nil {
		f.t.Fatal(err)
	}
}

// tryPost is post for any goroutine: it returns the error instead of failing the test, and
// records the events as posted only when the listener accepted them.
func (f *fakeLambda) tryPost(requestID string, evs ...postedEvent) error {
	var raws []string
	for i := range evs {
		raws = append(raws, evs[i].raw)
		evs[i].requestID = expectedRequestID(evs[i].raw, requestID)
	}
	now := time.Now()
	for i := range evs {
		evs[i].at = now
	}
	if err := f.send("[" + strings.Join(raws, ",") + "]"); err != nil {
		return err
	}
	f.mu.Lock()
	f.posted = append(f.posted, evs...)
	f.mu.Unlock()
	return nil
}

// expectedRequestID is the event's own request id, or the invocation's for a line without one.
func expectedRequestID(raw, invocation string) string {
	var ev struct {
		Type   string
		Record json.RawMessage
	}
	json.Unmarshal([]byte(raw), &ev)
	var rec struct{ RequestID string }
	if json.Unmarshal(ev.Record, &rec) == nil && rec.RequestID != "" {
		return rec.RequestID
	}
	if ev.Type == "function" || ev.Type == "extension" {
		return invocation
	}
	return ""
}

// postRaw posts body to the listener as it is and fails the test unless it is accepted.
func (f *fakeLambda) postRaw(body string) {
	f.t.Helper()
	if err := f.send(body); err != nil {
		f.t.Fatal(err)
	}
}

// telemetryClient posts to the listener; the timeout bounds a post to a stopped extension.
var telemetryClient = &http.Client{Timeout: 10 * time.Second}

// send posts body to the listener; it is safe to call from any goroutine.
func (f *fakeLambda) send(body string) error {
	f.mu.Lock()
	port := f.listenerPort
	f.mu.Unlock()
	if port == 0 {
		return errors.New("post telemetry: the extension has not subscribed")
	}
	resp, err := telemetryClient.Post(fmt.Sprintf("http://127.0.0.1:%d/", port), "application/json", strings.NewReader(body))
	if err != nil {
		return fmt.Errorf("post telemetry: %w", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("post telemetry: HTTP %d", resp.StatusCode)
	}
	return nil
}

// postedEvents returns every event the listener accepted, once a report posted during shutdown
// has been answered.
func (f *fakeLambda) postedEvents() []postedEvent {
	f.late.Wait()
	return snapshot(&f.mu, &f.posted)
}

// addedTimes returns, per completed invocation, how long the extension took to call /event/next
// after the function finished: what it added to the invocation's billed duration.
func (f *fakeLambda) addedTimes() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Duration
	for i, end := range f.runtimeEnd {
		// nextAt[0] is the next call that ended init; invocation i ends with nextAt[i+1].
		if i+1 < len(f.nextAt) {
			out = append(out, max(0, f.nextAt[i+1].Sub(end)))
		}
	}
	return out
}
