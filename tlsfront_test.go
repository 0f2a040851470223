package main

// The real wire in tests: a certificate authority made at test time, and tlsFront, a
// TLS-terminating front that answers HTTP/2 and HTTP/1.1 (ALPN) in front of any plain-HTTP peer
// (kinesalite, kinesis-mock, the fault proxy, the shard proxy, the fake STS, fakeKinesis).
//
// The extension trusts the test CA the standard way only: SSL_CERT_FILE in its environment,
// which Go's crypto/x509 reads on Linux. There is no test-only path in the extension and never
// InsecureSkipVerify.
//
// What the front models: a Kinesis or STS endpoint as a client sees it through TLS: ALPN choice,
// handshakes, HTTP/2 streams, idle closes (IdleTimeout), a handshake that stalls, a certificate
// that is expired, for another host or from an unknown CA, and frame-level faults (GOAWAY,
// RST_STREAM REFUSED_STREAM; wirefaults_test.go). What it does not model: TLS session
// resumption, certificate revocation, HTTP/2 flow-control pressure, a real load balancer's
// connection draining.

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// wire is how the extension reaches an endpoint in a test.
type wire int

const (
	wirePlain wire = iota // plain HTTP on loopback: only where a test is about something else
	wireH2                // TLS, ALPN offers h2 and http/1.1 (as AWS endpoints do); the client chooses
	wireH1                // TLS, ALPN offers http/1.1 only
)

func (w wire) String() string {
	return [...]string{"plain", "tls+h2", "tls+h1"}[w]
}

// tlsWires are the wires the protocol-level tests run over.
var tlsWires = []wire{wireH2, wireH1}

// testPKI is the certificate authority of one test binary run and the certificates it issued.
type testPKI struct {
	caPEM     []byte
	good      tls.Certificate // 127.0.0.1 and localhost, valid now
	expired   tls.Certificate // 127.0.0.1 and localhost, expired yesterday
	otherHost tls.Certificate // valid, for kinesis.example.com only
	untrusted tls.Certificate // 127.0.0.1 and localhost, from a CA nobody trusts
}

var (
	pkiOnce sync.Once
	pki     *testPKI
	pkiErr  error
)

// testCertificates returns the run's PKI, made on first use (ECDSA P-256, as fast as it gets).
func testCertificates(t testing.TB) *testPKI {
	t.Helper()
	pkiOnce.Do(func() { pki, pkiErr = newTestPKI() })
	if pkiErr != nil {
		t.Fatalf("test PKI: %v", pkiErr)
	}
	return pki
}

// caFile writes the CA certificate to a file of t's and returns its path, for SSL_CERT_FILE. Every
// file of a run holds the same CA: a client in the test process itself reads the system pool
// once, so whichever file SSL_CERT_FILE named first serves every later test.
func (p *testPKI) caFile(t testing.TB) string {
	path := filepath.Join(t.TempDir(), "test-ca.pem")
	if err := os.WriteFile(path, p.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func newTestPKI() (*testPKI, error) {
	now := time.Now()
	ca, caKey, caPEM, err := newCA("kinesis-telemetry-extension test CA", now)
	if err != nil {
		return nil, err
	}
	rogue, rogueKey, _, err := newCA("untrusted test CA", now)
	if err != nil {
		return nil, err
	}
	loopback := []net.IP{net.IPv4(127, 0, 0, 1)}
	p := &testPKI{caPEM: caPEM}
	for _, c := range []struct {
		dst              *tls.Certificate
		issuer           *x509.Certificate
		key              *ecdsa.PrivateKey
		dns              []string
		ips              []net.IP
		notBefore, after time.Time
	}{
		{&p.good, ca, caKey, []string{"localhost"}, loopback, now.Add(-time.Hour), now.Add(24 * time.Hour)},
		{&p.expired, ca, caKey, []string{"localhost"}, loopback, now.Add(-48 * time.Hour), now.Add(-24 * time.Hour)},
		{&p.otherHost, ca, caKey, []string{"kinesis.example.com"}, nil, now.Add(-time.Hour), now.Add(24 * time.Hour)},
		{&p.untrusted, rogue, rogueKey, []string{"localhost"}, loopback, now.Add(-time.Hour), now.Add(24 * time.Hour)},
	} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: serial(), Subject: pkix.Name{CommonName: "test endpoint"},
			NotBefore: c.notBefore, NotAfter: c.after, DNSNames: c.dns, IPAddresses: c.ips,
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, c.issuer, &key.PublicKey, c.key)
		if err != nil {
			return nil, err
		}
		*c.dst = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	}
	return p, nil
}

func newCA(name string, now time.Time) (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	return cert, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

// frontOptions configure a tlsFront; the zero value is TLS with h2 and http/1.1 and a good cert.
type frontOptions struct {
	wire        wire             // wireH2 (default when zero) or wireH1
	cert        *tls.Certificate // default: the good certificate
	idleTimeout time.Duration    // the server closes connections idle this long (0: never)
	refuse      func() bool      // when it returns true, new connections are reset on accept
}

// tlsFront terminates TLS on 127.0.0.1 and forwards every request to a plain-HTTP target.
type tlsFront struct {
	URL    string // https://127.0.0.1:<port>
	CAFile string // the CA to trust, for SSL_CERT_FILE

	target     *url.URL
	tlsConfig  *tls.Config // the server's, for hijacked connections
	srv        *http.Server
	ln         *frontListener
	served     chan struct{}
	inflight   atomic.Int32 // requests being handled
	requests   atomic.Int32 // requests seen
	handshakes atomic.Int32 // ClientHellos seen
	protos     sync.Map     // negotiated protocol -> *atomic.Int32 (requests)
	entries    atomic.Int32 // PutRecords entries received
}

// startTLSFront starts a front for target (an http:// URL) and stops it when t ends.
func startTLSFront(t testing.TB, target string, o frontOptions) *tlsFront {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" {
		t.Fatalf("startTLSFront: target %q is not an http:// URL (err %v)", target, err)
	}
	if o.wire == wirePlain {
		o.wire = wireH2
	}
	p := testCertificates(t)
	cert := &p.good
	if o.cert != nil {
		cert = o.cert
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &tlsFront{URL: "https://" + tcp.Addr().String(), CAFile: p.caFile(t), target: u, served: make(chan struct{})}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{*cert},
		NextProtos:   []string{"h2", "http/1.1"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			f.handshakes.Add(1)
			return nil, nil
		},
	}
	if o.wire == wireH1 {
		cfg.NextProtos = []string{"http/1.1"}
	}
	f.tlsConfig = cfg
	forward := &http.Transport{} // plain HTTP/1.1 to the peer behind
	proxy := &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(u)
			r.Out.Host = r.In.Host // keep the host the client signed for
		},
		Transport: forward,
		// No answer from behind is no answer to the client either: its connection (HTTP/1.1)
		// or its stream (HTTP/2, RST_STREAM) is cut, never turned into a 502 answer.
		ErrorHandler: func(http.ResponseWriter, *http.Request, error) { panic(http.ErrAbortHandler) },
	}
	f.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f.inflight.Add(1)
			defer f.inflight.Add(-1)
			f.requests.Add(1)
			n, _ := f.protos.LoadOrStore(r.Proto, new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
			body, err := io.ReadAll(r.Body)
			if err != nil {
				panic(http.ErrAbortHandler) // the request was not written whole: no answer
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			f.entries.Add(int32(bytes.Count(body, []byte(`"PartitionKey":`))))
			proxy.ServeHTTP(w, r)
		}),
		IdleTimeout:       o.idleTimeout,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0), // refused handshakes are what some tests want
	}
	if o.idleTimeout == 0 {
		f.srv.IdleTimeout = time.Hour
	}
	if o.wire == wireH1 {
		f.srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){} // no h2
	}
	f.ln = &frontListener{Listener: tcp, refuse: o.refuse, done: make(chan struct{})}
	go func() {
		defer close(f.served)
		if err := f.srv.Serve(tls.NewListener(f.ln, cfg)); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("tls front: %v", err)
		}
	}()
	t.Cleanup(func() {
		close(f.ln.done)
		f.srv.Close()
		<-f.served
		f.ln.wait()
		forward.CloseIdleConnections()
	})
	return f
}

// inFlight is the number of requests the front is handling now.
func (f *tlsFront) inFlight() int { return int(f.inflight.Load()) }

// protoRequests is how many requests arrived over proto ("HTTP/2.0", "HTTP/1.1").
func (f *tlsFront) protoRequests(proto string) int {
	if n, ok := f.protos.Load(proto); ok {
		return int(n.(*atomic.Int32).Load())
	}
	return 0
}

// stallHandshakes makes the next n connections hang without a byte of TLS until the front
// stops or hold has passed.
func (f *tlsFront) stallHandshakes(n int, hold time.Duration) {
	f.ln.mu.Lock()
	defer f.ln.mu.Unlock()
	f.ln.stall, f.ln.hold = n, hold
}

// hijackNext hands the next n accepted TCP connections to fn (on its own goroutine) instead of
// the server: the frame-level faults of wirefaults_test.go.
func (f *tlsFront) hijackNext(n int, fn func(net.Conn)) {
	f.ln.mu.Lock()
	defer f.ln.mu.Unlock()
	f.ln.hijack, f.ln.hijackFn = n, fn
}

// frontListener applies the connection-level faults before TLS.
type frontListener struct {
	net.Listener
	refuse func() bool
	done   chan struct{}

	mu       sync.Mutex
	stall    int
	hold     time.Duration
	hijack   int
	hijackFn func(net.Conn)
	aside    sync.WaitGroup // stalled and hijacked connections
}

func (l *frontListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.refuse != nil && l.refuse() {
			abortConn(conn)
			continue
		}
		l.mu.Lock()
		stall, hold, hijack, fn := l.stall > 0, l.hold, l.hijack > 0, l.hijackFn
		if stall {
			l.stall--
		} else if hijack {
			l.hijack--
		}
		l.mu.Unlock()
		switch {
		case stall:
			l.aside.Go(func() {
				defer conn.Close()
				select {
				case <-l.done:
				case <-time.After(hold):
				}
			})
		case hijack:
			l.aside.Go(func() {
				defer conn.Close()
				stop := context.AfterFunc(doneContext(l.done), func() { conn.Close() })
				defer stop()
				fn(conn)
			})
		default:
			return conn, nil
		}
	}
}

func (l *frontListener) wait() { l.aside.Wait() }

// doneContext is a context cancelled when done is closed.
func doneContext(done <-chan struct{}) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-done; cancel() }()
	return ctx
}

// tlsEnv adds what the extension needs to reach front: its URL as the endpoint and the CA.
func tlsEnv(env map[string]string, front *tlsFront) map[string]string {
	env["KINESIS_TELEMETRY_ENDPOINT"] = front.URL
	env["SSL_CERT_FILE"] = front.CAFile
	return env
}

// overWire returns the endpoint the extension should use to reach target over w, and the front
// when there is one (nil for wirePlain).
func overWire(t testing.TB, target string, w wire, o frontOptions) (string, *tlsFront) {
	if w == wirePlain {
		return target, nil
	}
	o.wire = w
	f := startTLSFront(t, target, o)
	return f.URL, f
}

// trusting adds the front's CA to env (SSL_CERT_FILE) when there is a front.
func trusting(env map[string]string, front *tlsFront) map[string]string {
	if front != nil {
		env["SSL_CERT_FILE"] = front.CAFile
	}
	return env
}

// checkWire fails t unless every request the front saw came over w's protocol, and some did.
func (f *tlsFront) checkWire(t testing.TB, w wire) {
	t.Helper()
	if f == nil {
		return
	}
	want, other := "HTTP/2.0", "HTTP/1.1"
	if w == wireH1 || !clientSpeaksH2() {
		want, other = other, want
	}
	if f.protoRequests(want) == 0 || f.protoRequests(other) != 0 {
		t.Errorf("%s front: %d requests over %s, %d over %s; want all over %s", w, f.protoRequests(want), want, f.protoRequests(other), other, want)
	}
}

// clientSpeaksH2 says whether the extension's Kinesis client takes HTTP/2 where it is offered.
func clientSpeaksH2() bool {
	return newKinesisClient("https://kinesis.eu-west-1.amazonaws.com", "eu-west-1", nil, 0).transport.ForceAttemptHTTP2
}

// rieOverTLS puts a tlsFront (offering h2 and http/1.1) in front of the plain endpoint in env and
// points env at it, with the CA in a file the emulator's processes can read (rieSharedDir; managed
// mode runs them as another user). It returns the front.
func rieOverTLS(t testing.TB, env map[string]string) *tlsFront {
	t.Helper()
	front := startTLSFront(t, env["KINESIS_TELEMETRY_ENDPOINT"], frontOptions{wire: wireH2})
	ca := filepath.Join(rieSharedDir(t), "test-ca.pem")
	if err := os.WriteFile(ca, testCertificates(t).caPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	env["KINESIS_TELEMETRY_ENDPOINT"] = front.URL
	env["SSL_CERT_FILE"] = ca
	return front
}
