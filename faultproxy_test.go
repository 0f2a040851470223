package main

// A fault-injecting HTTP proxy in front of a Kinesis peer. It understands PutRecords (JSON 1.1)
// and can fail entries, fail whole calls, reset connections, delay or hold calls and play an
// unreachable endpoint, while recording every PutRecords call it sees. Everything else (the
// harness reading back, CreateStream, …) passes through untouched.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strconv"
	"sync"
	"testing"
	"time"
)

// faultPlan says what the proxy does to PutRecords calls. The zero value forwards everything.
// Faults apply in this order: Unreachable, Hold, ResetBeforeForward, FailCallStatus, entry
// failures and forwarding, ResetAfterForward, Delay.
type faultPlan struct {
	FailEntries float64  // probability that each entry fails (0..1); failed entries are not forwarded
	FailIndices []int    // entries at these request indices always fail (on top of FailEntries)
	FailCodes   []string // ErrorCode for a failed entry, chosen at random; default ProvisionedThroughputExceededException

	FailCallStatus int    // when non-zero, answer the whole call with this HTTP status, forwarding nothing
	FailCallCode   string // the answer's __type; default InternalFailure
	FailCalls      int    // apply FailCallStatus to the next N calls only (0 = every call while set)

	ResetBeforeForward bool // reset the client connection without forwarding: nothing applied
	ResetAfterForward  bool // forward (records applied), then reset the connection instead of answering

	Delay       time.Duration // forward at once, then hold the answer this long (a client timeout leaves records applied)
	DelayJitter time.Duration // and a further uniform [0, DelayJitter): answers the client cannot foresee
	Hold        time.Duration // hold the request this long before forwarding (a client that gives up meanwhile gets nothing applied)

	Unreachable bool // reset every new connection as it is accepted, and any request on an open one
}

// Outcomes recorded in proxyCall.Outcome.
const (
	outcomeForwarded        = "forwarded"                  // forwarded; the peer's answer (merged with injected entry failures) was sent
	outcomeAllEntriesFailed = "all-entries-failed"         // every entry failed by injection; nothing forwarded, a synthetic answer sent
	outcomeCallError        = "call-error"                 // FailCallStatus answered; nothing forwarded
	outcomeResetBefore      = "reset-before-forward"       // connection reset; nothing forwarded
	outcomeResetAfter       = "reset-after-forward"        // forwarded, then connection reset
	outcomeClientGoneBefore = "client-gone-before-forward" // the client gave up during Hold; nothing forwarded
	outcomeClientGoneAfter  = "client-gone-after-forward"  // forwarded, but the client gave up during Delay
	outcomePeerError        = "peer-error"                 // the peer answered with a non-200 status, passed on as is
	outcomeProxyError       = "proxy-error"                // the proxy could not forward or understand the peer; answered 502 and the test fails
	outcomeUnreachable      = "unreachable"                // a request on an already open connection while Unreachable; connection reset
)

// proxyCall is one PutRecords call seen by the proxy.
type proxyCall struct {
	Start, End time.Time
	Records    int         // entries in the request (0 if the body is not a PutRecords request)
	Bytes      int         // request body length
	Header     http.Header // request headers as received
	Forwarded  int         // entries forwarded to the peer (-1: a body the proxy did not understand, forwarded as is)
	Injected   []int       // request indices of entries failed by injection
	Failed     int         // FailedRecordCount answered (injected and the peer's own)
	Status     int         // HTTP status answered; 0 when the connection was reset or the client left
	Outcome    string      // one of the outcome constants
}

// faultProxy is a running proxy owned by one test.
type faultProxy struct {
	URL string // "http://127.0.0.1:<port>"

	proxyPlumbing
	target *url.URL
	ln     *faultListener
	pass   *httputil.ReverseProxy
	done   chan struct{} // closed when the proxy stops: ends holds and delays

	mu        sync.Mutex
	closed    bool
	plan      faultPlan
	callsLeft int // FailCalls still to fail; -1 = unlimited
	log       []proxyCall
	inflight  int
	refused   int
	startHook func()
	rng       *rand.Rand
}

// startFaultProxy starts a proxy on 127.0.0.1 in front of target (a peer's Endpoint) and stops it
// when t ends, failing t if the proxy itself misbehaved.
func startFaultProxy(t testing.TB, target string) *faultProxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		t.Fatalf("startFaultProxy: target %q is not an http:// URL (err %v)", target, err)
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("startFaultProxy: listen: %v", err)
	}
	seed := uint64(time.Now().UnixNano())
	p := &faultProxy{
		URL:    "http://" + tcp.Addr().String(),
		target: u,
		done:   make(chan struct{}),
		rng:    rand.New(rand.NewPCG(seed, 0)),
	}
	p.forward = newForwardClient()
	p.ln = &faultListener{Listener: tcp, p: p}
	p.pass = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // keep the host the client signed for
		},
		Transport: p.forward.Transport,
	}
	p.serve(p.ln, p.serveHTTP)
	t.Logf("fault proxy %s -> %s (entry-failure seed %d)", p.URL, target, seed)
	t.Cleanup(func() { p.stop(t) })
	return p
}

// set replaces the plan for PutRecords calls from now on; it also restarts the FailCalls count.
func (p *faultProxy) set(f faultPlan) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f.FailIndices = append([]int(nil), f.FailIndices...)
	f.FailCodes = append([]string(nil), f.FailCodes...)
	p.plan = f
	p.callsLeft = -1
	if f.FailCalls > 0 {
		p.callsLeft = f.FailCalls
	}
}

// inFlight returns the number of PutRecords calls being handled now.
func (p *faultProxy) inFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.inflight
}

// calls returns a copy of every PutRecords call seen so far, in arrival order. A call still in
// flight has a zero End; a call is complete before its client sees the answer (or the reset).
func (p *faultProxy) calls() []proxyCall {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]proxyCall, len(p.log))
	for i, c := range p.log {
		c.Header = c.Header.Clone()
		c.Injected = append([]int(nil), c.Injected...)
		out[i] = c
	}
	return out
}

// refusedConns returns how many connections were reset on accept because the plan was Unreachable.
func (p *faultProxy) refusedConns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.refused
}

// onCallStart registers fn to run as each PutRecords call starts, after it is counted in
// inFlight and calls and before any fault is applied. fn runs on the proxy's goroutine.
func (p *faultProxy) onCallStart(fn func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.startHook = fn
}

func (p *faultProxy) stop(t testing.TB) {
	p.mu.Lock()
	p.closed = true
	p.mu.Unlock()
	close(p.done)
	p.close(t, "fault proxy")
}

// proxyPlumbing is what the two test proxies (faultProxy, shardProxy) share: an HTTP server on
// 127.0.0.1, the client that forwards to the emulator, the handlers in progress, and the
// malfunctions found while serving. Those are reported when the proxy stops, because handlers
// may outlive the test function and must not call t.Errorf.
type proxyPlumbing struct {
	srv      *http.Server
	forward  *http.Client
	served   chan struct{} // closed when srv.Serve has returned
	handlers sync.WaitGroup

	errMu sync.Mutex
	errs  []string
}

// serve starts serving h on ln.
func (p *proxyPlumbing) serve(ln net.Listener, h http.HandlerFunc) {
	p.served = make(chan struct{})
	p.srv = &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(p.served)
		if err := p.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			p.fail("serve: %v", err)
		}
	}()
}

// close stops the server (Close, not Shutdown: hijacked and held connections must not keep the
// test waiting), waits for its handlers, and reports the malfunctions as errors of t.
func (p *proxyPlumbing) close(t testing.TB, name string) {
	p.srv.Close()
	<-p.served
	p.handlers.Wait()
	p.forward.CloseIdleConnections()
	p.errMu.Lock()
	defer p.errMu.Unlock()
	for _, e := range p.errs {
		t.Errorf("%s: %s", name, e)
	}
}

// newForwardClient is the client a proxy forwards to the emulator with. It drops idle
// connections after 2 s: Node's HTTP server (kinesalite) closes them after 5 s, and a request
// sent on a connection just as the server closes it fails with a reset, which the proxy would
// report as its own malfunction (seen once in TestFleet/hot-shard).
func newForwardClient() *http.Client {
	return &http.Client{Transport: &http.Transport{IdleConnTimeout: 2 * time.Second}}
}

// fail records a proxy malfunction (the first 20), reported when the proxy stops.
func (p *proxyPlumbing) fail(format string, args ...any) {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	if len(p.errs) < 20 {
		p.errs = append(p.errs, fmt.Sprintf(format, args...))
	}
}

func (p *faultProxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		proxyResetConn(w)
		return
	}
	p.handlers.Add(1)
	unreachable := p.plan.Unreachable
	p.mu.Unlock()
	defer p.handlers.Done()

	isPut := r.Method == http.MethodPost && r.Header.Get("X-Amz-Target") == "Kinesis_20131202.PutRecords"
	if !isPut {
		if unreachable {
			proxyResetConn(w)
			return
		}
		p.pass.ServeHTTP(w, r)
		return
	}
	p.handlePutRecords(w, r)
}

// proxyPutRequest is the part of a PutRecords body the proxy needs; other members are kept as they are.
type proxyPutRequest struct {
	members map[string]json.RawMessage
	records []json.RawMessage
}

func (p *faultProxy) handlePutRecords(w http.ResponseWriter, r *http.Request) {
	body, readErr := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	var req proxyPutRequest
	parseErr := json.Unmarshal(body, &req.members)
	if parseErr == nil {
		parseErr = json.Unmarshal(req.members["Records"], &req.records)
	}

	// Count the call and take this call's plan in one step, so that concurrent calls each see a
	// consistent plan and FailCalls is consumed exactly once per call.
	p.mu.Lock()
	idx := len(p.log)
	p.log = append(p.log, proxyCall{Start: time.Now(), Records: len(req.records), Bytes: len(body), Header: r.Header.Clone()})
	p.inflight++
	plan := p.plan
	if plan.DelayJitter > 0 {
		plan.Delay += time.Duration(p.rng.Int64N(int64(plan.DelayJitter)))
	}
	failCall := false
	if plan.FailCallStatus != 0 && p.callsLeft != 0 {
		failCall = true
		if p.callsLeft > 0 {
			p.callsLeft--
		}
	}
	var injected []int
	if !failCall && parseErr == nil {
		forced := map[int]bool{}
		for _, i := range plan.FailIndices {
			forced[i] = true
		}
		for i := range req.records {
			if forced[i] || (plan.FailEntries > 0 && p.rng.Float64() < plan.FailEntries) {
				injected = append(injected, i)
			}
		}
	}
	codes := make([]string, len(injected))
	for i := range codes {
		codes[i] = "ProvisionedThroughputExceededException"
		if len(plan.FailCodes) > 0 {
			codes[i] = plan.FailCodes[p.rng.IntN(len(plan.FailCodes))]
		}
	}
	hook := p.startHook
	p.mu.Unlock()

	var c proxyCall
	var err error
	// finish completes the call's record. It runs before the client can see the answer or the
	// reset, so a client that has its answer also finds the call complete in calls() and no
	// longer in inFlight (its next call must not count this one).
	var once sync.Once
	finish := func() {
		once.Do(func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			done := p.log[idx]
			done.End = time.Now()
			done.Forwarded, done.Injected, done.Failed, done.Status, done.Outcome = c.Forwarded, c.Injected, c.Failed, c.Status, c.Outcome
			p.log[idx] = done
			p.inflight--
		})
	}
	defer finish()
	if hook != nil {
		hook()
	}

	if plan.Unreachable {
		c.Outcome = outcomeUnreachable
		finish()
		proxyResetConn(w)
		return
	}
	if readErr != nil {
		// The client went away while sending; nothing to forward.
		c.Outcome = outcomeClientGoneBefore
		return
	}
	if plan.Hold > 0 && !p.wait(r.Context(), plan.Hold) {
		c.Outcome = outcomeClientGoneBefore
		return
	}
	if plan.ResetBeforeForward {
		c.Outcome = outcomeResetBefore
		finish()
		proxyResetConn(w)
		return
	}
	if failCall {
		code := plan.FailCallCode
		if code == "" {
			code = "InternalFailure"
		}
		c.Status, c.Outcome = plan.FailCallStatus, outcomeCallError
		finish()
		proxyWriteError(w, plan.FailCallStatus, code, "injected by the fault proxy")
		return
	}

	var status int
	var header http.Header
	var answer []byte
	switch {
	case parseErr != nil:
		// Not a body the proxy understands: let the peer judge it.
		c.Forwarded = -1
		status, header, answer, err = p.send(r, body)
	case len(injected) > 0 && len(injected) == len(req.records):
		status, answer = http.StatusOK, proxySyntheticAnswer(len(req.records), injected, codes, &c)
		c.Injected, c.Outcome = injected, outcomeAllEntriesFailed
	default:
		fwd := body
		if len(injected) > 0 {
			fwd = req.without(injected)
		}
		c.Forwarded, c.Injected = len(req.records)-len(injected), injected
		status, header, answer, err = p.send(r, fwd)
		if err == nil && status == http.StatusOK {
			answer, err = proxyMergePeerAnswer(answer, len(req.records), injected, codes, &c)
		}
	}
	if err != nil {
		p.fail("PutRecords call %d: %v", idx, err)
		c.Status, c.Outcome = http.StatusBadGateway, outcomeProxyError
		finish()
		proxyWriteError(w, http.StatusBadGateway, "InternalFailure", "fault proxy: "+err.Error())
		return
	}
	if c.Outcome == "" {
		c.Outcome = outcomeForwarded
		if status != http.StatusOK {
			c.Outcome = outcomePeerError
		}
	}

	if plan.ResetAfterForward {
		c.Outcome = outcomeResetAfter
		finish()
		proxyResetConn(w)
		return
	}
	if plan.Delay > 0 && !p.wait(r.Context(), plan.Delay) {
		c.Outcome = outcomeClientGoneAfter
		return
	}
	proxyAnswerHeaders(w, header, len(answer))
	c.Status = status
	finish()
	w.WriteHeader(status)
	w.Write(answer)
}

// send forwards body to the peer with r's headers and returns the peer's answer. Once started, a
// forward completes even if the client leaves, so that "forwarded" always means "applied".
func (p *faultProxy) send(r *http.Request, body []byte) (int, http.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 60*time.Second)
	defer cancel()
	out, err := http.NewRequestWithContext(ctx, http.MethodPost, p.target.JoinPath(r.URL.Path).String(), bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, fmt.Errorf("build forward request: %w", err)
	}
	out.Header = r.Header.Clone()
	for _, h := range []string{"Connection", "Keep-Alive", "Transfer-Encoding", "Te", "Upgrade", "Proxy-Connection", "Content-Length",
		// The proxy must read the answer, so it must not be compressed.
		"Accept-Encoding"} {
		out.Header.Del(h)
	}
	out.Host = r.Host
	resp, err := p.forward.Do(out)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("forward to %s: %w", p.target, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("read the peer's answer: %w", err)
	}
	return resp.StatusCode, resp.Header, answer, nil
}

// wait sleeps for d and reports whether the client is still there; it returns early when the
// client leaves or the proxy stops.
func (p *faultProxy) wait(ctx context.Context, d time.Duration) bool {
	select {
	case <-time.After(d): // since Go 1.23 an unfired timer needs no Stop to be collected
		return true
	case <-ctx.Done():
		return false
	case <-p.done:
		return false
	}
}

func (req proxyPutRequest) without(drop []int) []byte {
	skip := make(map[int]bool, len(drop))
	for _, i := range drop {
		skip[i] = true
	}
	kept := make([]json.RawMessage, 0, len(req.records)-len(drop))
	for i, rec := range req.records {
		if !skip[i] {
			kept = append(kept, rec)
		}
	}
	members := make(map[string]json.RawMessage, len(req.members))
	for k, v := range req.members {
		members[k] = v
	}
	members["Records"], _ = json.Marshal(kept)
	b, _ := json.Marshal(members)
	return b
}

// proxyMergePeerAnswer puts synthetic failures for the injected indices between the peer's entries
// (which answer the forwarded entries, in order) and recomputes FailedRecordCount. Other members
// of the peer's answer (EncryptionType, …) are kept.
func proxyMergePeerAnswer(answer []byte, total int, injected []int, codes []string, c *proxyCall) ([]byte, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(answer, &members); err != nil {
		return nil, fmt.Errorf("peer answer is not a JSON object: %w", err)
	}
	var peer []json.RawMessage
	if err := json.Unmarshal(members["Records"], &peer); err != nil {
		return nil, fmt.Errorf("peer answer's Records: %w", err)
	}
	if len(peer) != total-len(injected) {
		return nil, fmt.Errorf("peer answered %d entries for %d forwarded: %s", len(peer), total-len(injected), answer)
	}
	return proxyMergeEntries(members, peer, total, injected, codes, c)
}

// proxySyntheticAnswer builds an answer from injected failures alone.
func proxySyntheticAnswer(total int, injected []int, codes []string, c *proxyCall) []byte {
	b, _ := proxyMergeEntries(map[string]json.RawMessage{}, nil, total, injected, codes, c)
	return b
}

func proxyMergeEntries(members map[string]json.RawMessage, peer []json.RawMessage, total int, injected []int, codes []string, c *proxyCall) ([]byte, error) {
	code := make(map[int]string, len(injected))
	for k, i := range injected {
		code[i] = codes[k]
	}
	entries := make([]json.RawMessage, 0, total)
	failed := 0
	for i := 0; i < total; i++ {
		if cd, ok := code[i]; ok {
			e, _ := json.Marshal(map[string]string{"ErrorCode": cd, "ErrorMessage": proxyEntryErrorMessage(cd)})
			entries = append(entries, e)
			failed++
			continue
		}
		e := peer[0]
		peer = peer[1:]
		var probe struct{ ErrorCode *string }
		if err := json.Unmarshal(e, &probe); err != nil {
			return nil, fmt.Errorf("peer answer entry: %w", err)
		}
		// kinesis-mock writes "ErrorCode":null on success.
		if probe.ErrorCode != nil && *probe.ErrorCode != "" {
			failed++
		}
		entries = append(entries, e)
	}
	members["Records"], _ = json.Marshal(entries)
	members["FailedRecordCount"], _ = json.Marshal(failed)
	c.Failed = failed
	return json.Marshal(members)
}

func proxyEntryErrorMessage(code string) string {
	switch code {
	case "ProvisionedThroughputExceededException":
		return "Rate exceeded for shard shardId-000000000000 in stream injected under account 000000000000."
	case "InternalFailure":
		return "Internal service failure."
	}
	return "injected by the fault proxy"
}

// proxyWriteError answers like Kinesis does for a whole-call error (JSON 1.1 protocol).
func proxyWriteError(w http.ResponseWriter, status int, code, message string) {
	body, _ := json.Marshal(map[string]string{"__type": code, "message": message})
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.Header().Set("X-Amzn-ErrorType", code)
	w.Header().Set("X-Amzn-RequestId", "fault-proxy")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

// proxyResetConn closes the client's connection with a TCP RST instead of answering.
func proxyResetConn(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("fault proxy: ResponseWriter cannot be hijacked")
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	abortConn(conn)
}

func abortConn(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0) // close sends RST rather than FIN
	}
	conn.Close()
}

// faultListener resets connections on accept while the plan is Unreachable.
type faultListener struct {
	net.Listener
	p *faultProxy
}

func (l *faultListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.p.mu.Lock()
		refuse := l.p.plan.Unreachable
		if refuse {
			l.p.refused++
		}
		l.p.mu.Unlock()
		if !refuse {
			return conn, nil
		}
		abortConn(conn)
	}
}

// proxyAnswerHeaders copies the emulator's answer headers to w, less the hop-by-hop ones, for a
// body of n bytes.
func proxyAnswerHeaders(w http.ResponseWriter, header http.Header, n int) {
	for k, vs := range header {
		switch http.CanonicalHeaderKey(k) {
		case "Content-Length", "Connection", "Keep-Alive", "Transfer-Encoding":
			continue
		}
		w.Header()[k] = vs
	}
	if w.Header().Get("Content-Type") == "" {
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	}
	w.Header().Set("Content-Length", strconv.Itoa(n))
}
