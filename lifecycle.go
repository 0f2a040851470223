package main

// The Extensions API side, in the order of the Lambda lifecycle: the client (register, next,
// init/exit errors), then the extension itself: start (listener up, then subscribe), the event
// loop { next → INVOKE | SHUTDOWN }, the idle loop of an extension that cannot ship, the ship
// rounds of an invocation (as the flush policy, flush.go, chooses), of managed instances and of
// SHUTDOWN, and the ids of environments and events.
//
// Whatever the flush strategy, nothing is sent while the extension waits in /event/next: the
// environment may freeze at any moment after that call, and a request cut by a freeze fails or,
// worse, is applied and then retried as a duplicate.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// extensionsClient speaks the Extensions API (and, for the subscription, the Telemetry API).
type extensionsClient struct {
	base         string // http://<runtime api>/2020-01-01/extension
	telemetryURL string
	http         *http.Client
	id           string // Lambda-Extension-Identifier, set by register
}

func newExtensionsClient(runtimeAPI string) *extensionsClient {
	return &extensionsClient{
		base:         "http://" + runtimeAPI + "/2020-01-01/extension",
		telemetryURL: "http://" + runtimeAPI + "/2022-07-01/telemetry",
		// No timeout: /event/next blocks until the next event, for as long as it takes. No proxy:
		// the Runtime API is local even when the function sets HTTP_PROXY.
		http: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2}},
	}
}

// registration is Lambda's answer to register.
type registration struct {
	FunctionName    string `json:"functionName"`
	FunctionVersion string `json:"functionVersion"`
	AccountID       string `json:"accountId"`
}

// function is the function the registration names, as records carry it.
func (r registration) function() functionID {
	return functionID{Name: r.FunctionName, Version: r.FunctionVersion, Account: r.AccountID}
}

// lifecycleType is the type of a lifecycle event from /event/next, and what register subscribes to.
type lifecycleType string

const (
	eventInvoke   lifecycleType = "INVOKE"
	eventShutdown lifecycleType = "SHUTDOWN"
)

// lifecycleEvent is an INVOKE or SHUTDOWN event from /event/next.
type lifecycleEvent struct {
	EventType      lifecycleType `json:"eventType"`
	DeadlineMs     int64         `json:"deadlineMs"` // epoch milliseconds, not a duration
	RequestID      string        `json:"requestId"`
	ShutdownReason string        `json:"shutdownReason"`
}

func (c *extensionsClient) register(ctx context.Context, name string, events []lifecycleType) (registration, error) {
	body, _ := json.Marshal(map[string][]lifecycleType{"events": events})
	hdr := http.Header{"Lambda-Extension-Name": {name}, "Lambda-Extension-Accept-Feature": {"accountId"}}
	status, answer, id, err := c.call(ctx, http.MethodPost, c.base+"/register", body, hdr)
	if err != nil {
		return registration{}, err
	}
	if status != http.StatusOK || id == "" {
		return registration{}, fmt.Errorf("register: HTTP %d: %s", status, bytes.TrimSpace(answer))
	}
	c.id = id
	var reg registration
	if err := json.Unmarshal(answer, &reg); err != nil {
		return registration{}, fmt.Errorf("register: decode answer: %w", err)
	}
	return reg, nil
}

func (c *extensionsClient) next(ctx context.Context) (lifecycleEvent, error) {
	status, answer, err := c.do(ctx, http.MethodGet, c.base+"/event/next", nil, nil)
	if err != nil {
		return lifecycleEvent{}, err
	}
	if status != http.StatusOK {
		return lifecycleEvent{}, fmt.Errorf("next event: HTTP %d: %s", status, bytes.TrimSpace(answer))
	}
	var ev lifecycleEvent
	if err := json.Unmarshal(answer, &ev); err != nil {
		return lifecycleEvent{}, fmt.Errorf("next event: decode: %w", err)
	}
	return ev, nil
}

// initError and exitError tell Lambda why the extension stops; no call succeeds afterwards.
func (c *extensionsClient) initError(ctx context.Context, errorType string, cause error) error {
	return c.reportError(ctx, "/init/error", errorType, cause)
}

func (c *extensionsClient) exitError(ctx context.Context, errorType string, cause error) error {
	return c.reportError(ctx, "/exit/error", errorType, cause)
}

func (c *extensionsClient) reportError(ctx context.Context, path, errorType string, cause error) error {
	body, _ := json.Marshal(map[string]any{"errorMessage": cause.Error(), "errorType": errorType, "stackTrace": []string{}})
	status, answer, err := c.do(ctx, http.MethodPost, c.base+path, body, http.Header{"Lambda-Extension-Function-Error-Type": {errorType}})
	if err != nil {
		return err
	}
	if status != http.StatusAccepted {
		return fmt.Errorf("%s: HTTP %d: %s", path, status, bytes.TrimSpace(answer))
	}
	return nil
}

// do sends one request with the extension's identifier and returns the status and body.
func (c *extensionsClient) do(ctx context.Context, method, url string, body []byte, hdr http.Header) (int, []byte, error) {
	status, answer, _, err := c.call(ctx, method, url, body, hdr)
	return status, answer, err
}

func (c *extensionsClient) call(ctx context.Context, method, url string, body []byte, hdr http.Header) (int, []byte, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, "", err
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	if c.id != "" {
		req.Header.Set("Lambda-Extension-Identifier", c.id)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, nil, "", fmt.Errorf("%s %s: read answer: %w", method, url, err)
	}
	return resp.StatusCode, answer, resp.Header.Get("Lambda-Extension-Identifier"), nil
}

// agent is the running extension: it owns the listener, the buffer and the shipper, and
// drives them from the event loop.
type agent struct {
	cfg  config
	api  *extensionsClient
	logs *logger
	reg  registration

	stats        *stats
	buf          *buffer
	ship         *shipper
	sub          subscription
	stopListener func()

	lastInvoke  time.Time
	gap         time.Duration // moving average of the time between invocations
	lastShip    time.Time
	lastRequest string
}

// start opens the listener and subscribes. The listener must be up first: Lambda starts posting
// as soon as the subscription is accepted.
func (e *agent) start(ctx context.Context, host string) error {
	e.stats = newStats()
	e.buf = newBuffer(e.cfg.MaxBufferBytes, newIDPrefix(), e.stats)
	addr := net.JoinHostPort(host, strconv.Itoa(e.cfg.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for telemetry on %s (KINESIS_TELEMETRY_PORT=%d: choose a port no other extension uses): %w", addr, e.cfg.Port, err)
	}
	e.stopListener = serveListener(ln, newBatchListener(e.buf, e.stats, e.cfg.BufferBytes, e.cfg.filter()), e.logs.out)
	meta := newRecordMeta(e.reg.function(), e.cfg.recordSettings(), e.cfg.Region, environmentID(e.cfg.LogStream))
	e.ship = newShipper(e.cfg, e.buf, e.stats, e.logs, meta)
	if e.cfg.RecordFormat == formatCloudWatch && len(e.cfg.DefaultLogNames) > 0 {
		e.logs.printf("cloudwatch records: Lambda did not set %s; using Lambda's default naming", strings.Join(e.cfg.DefaultLogNames, ", "))
	}

	e.sub, err = e.subscribe(ctx)
	if err != nil {
		e.stopListener()
		return err
	}
	if !e.sub.Active {
		e.logs.printf("telemetry subscription refused (%s): nothing will be shipped from this environment; the extension keeps running and does not affect the function", e.sub.Detail)
	}
	return nil
}

// subscribe subscribes to the configured telemetry; the listener's subscription code takes only
// a way to PUT and what to ask for.
func (e *agent) subscribe(ctx context.Context) (subscription, error) {
	put := func(ctx context.Context, body []byte) (int, []byte, error) {
		return e.api.do(ctx, http.MethodPut, e.api.telemetryURL, body, nil)
	}
	return subscribe(ctx, put, telemetryRequest{
		Managed: e.cfg.Managed, Port: e.cfg.Port, Types: e.cfg.Types,
		BufferItems: e.cfg.BufferItems, BufferBytes: e.cfg.BufferBytes, BufferTimeoutMS: e.cfg.BufferTimeoutMS,
	})
}

// eventLoop asks /event/next for the next event and handles it, until SHUTDOWN, a signal or a
// failed Extensions API ends it. It returns the process exit code.
func (e *agent) eventLoop(ctx context.Context) int {
	defer e.stopListener()
	var stopPeriodic func(deadline time.Time)
	if e.cfg.Managed {
		// No INVOKE events and no freezing: ship on a timer in the background.
		stopPeriodic = e.shipPeriodically(e.cfg.Flush.Period)
	}
	for {
		ev, err := e.api.next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				// SIGTERM without a SHUTDOWN event: flush what we can in the time Lambda allows.
				ev = lifecycleEvent{EventType: eventShutdown, ShutdownReason: "signal", DeadlineMs: time.Now().Add(signalShutdown).UnixMilli()}
			} else {
				e.logs.printf("%v: the Extensions API failed, exiting", err)
				_ = e.api.exitError(context.Background(), "Extension.NextFailed", err)
				return 1
			}
		}
		switch ev.EventType {
		case eventInvoke:
			e.onInvoke(ev)
		case eventShutdown:
			if stopPeriodic != nil {
				stopPeriodic(shutdownDeadline(ev, time.Now()).Add(-countsReserve))
			}
			e.onShutdown(ev)
			return 0
		}
	}
}

// cannotShip handles a configuration or start-up error (of the given stage): with
// KINESIS_TELEMETRY_FAIL_ON_ERROR it is reported to Lambda as an init error, which fails the
// function's init; otherwise it is logged once and the extension stays registered, idle. It
// returns the process exit code.
func (e *agent) cannotShip(ctx context.Context, stage, errorType string, err error, until string) int {
	if e.cfg.FailOnError {
		e.logs.printf("%s: %v", stage, err)
		if rerr := e.api.initError(ctx, errorType, err); rerr != nil {
			e.logs.printf("report the init error to Lambda: %v", rerr)
		}
		return 1
	}
	e.logs.printf("%s: %v; telemetry is NOT shipped: the extension stays registered and does nothing%s", stage, err, until)
	return e.runIdle(ctx)
}

// runIdle keeps the extension registered and harmless when it cannot work: Lambda fails the
// function's init if a registered extension exits, so it answers every event and exits 0 on
// SHUTDOWN.
func (e *agent) runIdle(ctx context.Context) int {
	for {
		ev, err := e.api.next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return 0
			}
			e.logs.printf("%v: the Extensions API failed, exiting", err)
			return 1
		}
		if ev.EventType == eventShutdown {
			return 0
		}
	}
}

// onInvoke ships according to the flush strategy and returns when /event/next may be called.
func (e *agent) onInvoke(ev lifecycleEvent) {
	now := time.Now()
	e.stats.invocations.Add(1)
	if !e.lastInvoke.IsZero() {
		gap := now.Sub(e.lastInvoke)
		if e.gap == 0 {
			e.gap = gap
		} else {
			e.gap = (e.gap + gap) / 2
		}
	}
	e.lastInvoke = now
	deadline := time.UnixMilli(ev.DeadlineMs).Add(-deadlineSafety)

	switch e.flushFor(now) {
	case shipBeforeNext:
		e.flushBeforeNext(ev.RequestID, deadline, false)
	case shipBeforeNextYielding:
		e.flushBeforeNext(ev.RequestID, deadline, true)
	case shipInBackground:
		e.shipWhileInvoked(ev.RequestID, deadline)
	}
	e.lastRequest = ev.RequestID
	if e.platformTelemetry() {
		// What the extension adds to the invocation: from the runtime being done (as far as the
		// extension can see) to its own /event/next.
		if at, ok := e.buf.runtimeDoneAt(ev.RequestID); ok {
			e.stats.addPostRuntime(time.Since(at))
		} else {
			e.stats.addPostRuntime(0)
		}
	}
}

// deadlineSafety keeps the extension's own work clear of the invocation's deadline, past which
// Lambda counts the invocation as timed out.
const deadlineSafety = 50 * time.Millisecond

// flushBeforeNext waits until the invocation's platform.runtimeDone has arrived (so that its log
// lines are in the buffer), then ships everything within the flush budget. yielding gives way to
// pushback at once (shipBeforeNextYielding); otherwise throttled data is paced and retried until the
// budget ends, the bound of KINESIS_TELEMETRY_FLUSH=end.
func (e *agent) flushBeforeNext(requestID string, deadline time.Time, yielding bool) {
	if e.platformTelemetry() {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		e.buf.waitRuntimeDone(ctx, requestID)
		cancel()
	}
	ctx, cancel := context.WithDeadline(context.Background(), earliest(time.Now().Add(e.cfg.FlushBudget), deadline))
	defer cancel()
	// Entries refused whatever the rate may go with the next round: each try is a lottery, and
	// the last ones would hold the invocation a call each (triesAnyway).
	r := &round{before: everything, leaveRefused: true}
	if yielding {
		r.soft, r.budget = softNow, e.cfg.FlushBudget
	}
	e.shipNow(ctx, r)
}

// shipWhileInvoked ships what was buffered when the invocation began, while the function runs;
// the invocation's own telemetry waits for the next one. Once the invocation's runtimeDone
// arrives the round gives way (see round): no waiting, no new call after pushback or unless the
// stream's usual answer time ends it within wireGrace, a call on the wire cut after wireGrace when
// the stream pushes back, and nothing past the flush budget. Calls are full: a call on the wire
// at runtimeDone that the stream answers, however late, is not cut.
func (e *agent) shipWhileInvoked(requestID string, deadline time.Time) {
	r := &round{before: e.buf.mark(), budget: e.cfg.FlushBudget, soft: softNow, allowance: wireGrace}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if e.platformTelemetry() {
		soft, softEnd := context.WithCancel(context.Background())
		defer softEnd()
		r.soft = soft
		go func() {
			// Ends with ctx, when this function returns at the latest.
			if _, ok := e.buf.waitRuntimeDone(ctx, requestID); ok {
				softEnd()
			}
		}()
	}
	e.shipNow(ctx, r)
}

// shipPeriodically ships every period in the background (managed instances). The returned stop
// ends the goroutine: a call in flight may finish until deadline, a backoff ends at once.
func (e *agent) shipPeriodically(period time.Duration) (stop func(deadline time.Time)) {
	quit := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(period)
		defer t.Stop()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
				e.shipNow(ctx, &round{before: everything})
			}
		}
	}()
	return func(deadline time.Time) {
		close(quit)
		// A call on the wire may finish (cutting it could store its records twice); a round
		// waiting in a backoff, which can last seconds, is stopped at once so that the shutdown
		// flush starts afresh with short backoffs.
		for e.ship.sending.Load() && time.Now().Before(deadline) {
			time.Sleep(sendingPoll)
		}
		cancel()
		<-done
	}
}

// shipNow runs one ship round. Its only error is ctx's: what was not sent waits in the buffer,
// and the shipper has said once why.
func (e *agent) shipNow(ctx context.Context, r *round) {
	e.lastShip = time.Now()
	e.ship.emitCountsIfDue(e.lastShip)
	_ = e.ship.shipRound(ctx, r)
}

// platformTelemetry reports whether platform events (runtimeDone, report) will arrive: without
// them there is nothing to wait for.
func (e *agent) platformTelemetry() bool {
	return e.sub.Active && slices.Contains(e.cfg.Types, "platform")
}

// Shutdown timing: Lambda allows 2,000 ms in all (shutdownTime, when SHUTDOWN carries no usable
// deadline); a SIGTERM without a SHUTDOWN event gets less (signalShutdown), as the process may be
// killed sooner. The extension keeps a margin before the deadline, and keeps countsReserve of its
// time (more when the stream pushes back: lastWordReserve) for a second counts record, should the
// data round leave events it then has to drop.
// Telemetry still on its way is waited for at least quietPause, and sendingPoll is how often the
// end of a call on the wire is checked for while the periodic shipper stops.
const (
	shutdownTime   = 2 * time.Second
	signalShutdown = 1500 * time.Millisecond
	shutdownMargin = 150 * time.Millisecond
	countsReserve  = 150 * time.Millisecond
	// pressedCountsReserve is the most kept for it when the stream pushes back, or half the
	// time left if that is more (lastWordReserve): the data round then stores less than it
	// planned for, and the counts record that says so competes with the rest of a fleet that
	// spins down with it. Simulated,
	// 1,000 environments at 10× overload that end together: with 150 ms, 120 of them left a last
	// counts record short of their loss; with 600 ms, 2 (BENCHMARKS.md, "The last counts record").
	pressedCountsReserve = 600 * time.Millisecond
	quietPause           = 50 * time.Millisecond
	sendingPoll          = 2 * time.Millisecond
)

// shutdownDeadline is when a shutdown that begins at now must be done: Lambda's deadline, or
// shutdownTime from now when the event carries none that makes sense, less shutdownMargin.
func shutdownDeadline(ev lifecycleEvent, now time.Time) time.Time {
	d := time.UnixMilli(ev.DeadlineMs)
	if ev.DeadlineMs == 0 || d.Sub(now) > time.Minute {
		d = now.Add(shutdownTime)
	}
	return d.Add(-shutdownMargin)
}

// onShutdown ships what is left, including the last invocation's platform.report, which Lambda
// produces only after the extension's last /event/next.
//
// The counts record goes first: what the time left cannot carry is dropped (and counted) before
// anything is sent, so that the first record of the shutdown's first call already says what the
// shutdown loses. Only if the round then falls short (the stream answered slower than it did
// until now, or did not store the counts record) is a second counts record sent, in the time
// kept for it.
func (e *agent) onShutdown(ev lifecycleEvent) {
	final := shutdownDeadline(ev, time.Now())
	if e.platformTelemetry() || (e.sub.Active && e.cfg.Managed) {
		half := time.Now().Add(time.Until(final) / 2)
		ctx, cancel := context.WithDeadline(context.Background(), half)
		if e.lastRequest != "" {
			e.buf.waitReport(ctx, e.lastRequest)
		}
		// Telemetry still on its way (the Telemetry API buffers up to its timeout) arrives in
		// this pause; the pause ends early once the stream goes quiet.
		e.buf.waitQuiet(ctx, max(quietPause, 2*time.Duration(e.cfg.BufferTimeoutMS)*time.Millisecond))
		cancel()
	}
	// One reading for the reserve and the order below: the stream pushed back lately, or refused
	// the last call whole. An environment invoked every 10 s or more may have met no pushback
	// within pressureMemory and still find a stream that refuses most calls: simulated, 10,000
	// environments whose calls KMS refuses nine times in ten under `end`, 1,600 last counts
	// records missing or short with pushback alone, each given 150 ms, six tries; 1,011 with
	// this (BENCHMARKS.md, "The last word's reserve after an old refusal"). A call refused whole
	// stored nothing, and no answer since says the stream takes anything; one refused in part,
	// 20 s before in a cold start's burst, took the time of a shutdown's data on a healthy
	// stream with spiky answers (10,000 environments: 3 events dropped, 2 unknown).
	pressed := e.ship.pressured(time.Now()) || e.ship.lastRefusedWhole()
	dataEnd := final.Add(-lastWordReserve(pressed, time.Until(final), e.ship.lastWordTime()))
	short := e.ship.keepWhatFits(time.Until(dataEnd)) > 0
	e.ship.emitCounts(time.Now())
	// The counts record first. When time is short — the environment is reset after a timeout or
	// failure, the stream pushes back, or not everything fits — the most valuable telemetry
	// follows: the newest invocation's platform events (its runtimeDone with status timeout
	// after a timeout, its report) and last lines; otherwise everything in order.
	urgent := short || ev.ShutdownReason == "timeout" || ev.ShutdownReason == "failure" || pressed
	ctx, cancel := context.WithDeadline(context.Background(), dataEnd)
	e.lastShip = time.Now()
	_ = e.ship.shipRound(ctx, &round{before: everything, urgent: urgent, escalate: true, countsFirst: true})
	cancel()
	// What the round left is lost, or its counts record was not stored (its shard refused it
	// every time the round's pacers let it go): either way a counts record goes by itself, with
	// its own tries (shipCounts). Left in the buffer, a counts record that had nothing to say of
	// loss was dropped unseen (simulated, a hot shard among healthy ones: an environment shut
	// down with its whole telemetry stored and no counts record in the stream).
	if lost, counts := e.ship.dropRemaining(); lost > 0 || counts {
		e.ship.emitCounts(time.Now())
		ctx, cancel = context.WithDeadline(context.Background(), final)
		e.ship.shipCounts(ctx)
		cancel()
	}
	e.logs.printf("shutdown (%s): %s", ev.ShutdownReason, e.stats.summary(e.buf.buffered()))
}

// lastWordReserve is how much of the time left a shutdown keeps for its second counts record:
// countsReserve on a stream that takes what it is sent; under pushback the time its tries are
// expected to need (need: shipper.lastWordTime), from countsReserve up to pressedCountsReserve or
// half the time left, whichever is more. A fleet that spins down together under pushback (a
// deployment, a burst's end) sends its last words in the same moments, and a stream of S shards
// takes about S × 1,000 records a second from all of them, data rounds included: simulated, 10,000
// environments on 16 shards at 2× overload that end together, 1,473 of them left their last
// counts record short in the stream with 600 ms kept, and 417 with half of the 1.85 s left
// (BENCHMARKS.md, "The last word's share of the shutdown"); a stream that refuses more than half of
// what it is sent needs that much. One that refuses a fifth needs four tries, and half the
// shutdown kept for them was half its data given up: 8 environments at 2× overload stored about
// 750 fewer events at their shutdowns, amplification 1.20 → 1.24 (BENCHMARKS.md, "The last
// word's reserve by the refused share").
func lastWordReserve(pressured bool, left, need time.Duration) time.Duration {
	if !pressured {
		return countsReserve
	}
	return min(max(countsReserve, need), max(pressedCountsReserve, left/2))
}

// environmentID identifies this execution environment: the unique part of its log stream name
// ("2024/05/01/[$LATEST]8f6c…"), so that records can be matched with CloudWatch Logs, or a random
// id where there is none.
func environmentID(logStream string) string {
	if i := strings.LastIndexByte(logStream, ']'); i >= 0 && i+1 < len(logStream) {
		logStream = logStream[i+1:]
	}
	if logStream == "" || len(logStream) > 128 {
		return newIDPrefix()
	}
	return logStream
}

// flushFor chooses how this invocation ships; see chooseFlush.
func (e *agent) flushFor(now time.Time) flushChoice {
	n, oldest := e.buf.state()
	return chooseFlush(e.cfg.Flush, e.cfg.MaxDelay, flushFacts{
		now: now, gap: e.gap, buffered: n, oldest: oldest, lastShip: e.lastShip,
		telemetry: e.platformTelemetry(), pressured: e.ship.pressured(now),
	})
}
