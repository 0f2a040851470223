package main

import (
	"crypto/tls"
	"net"
	"os/exec"
	"time"

	"fmt"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"strings"
	"testing"
)

// Faults of the wire itself, against fakeKinesis behind a tlsFront (tlsfront_test.go). The fault
// matrix (reliability_test.go) runs the HTTP-level faults over both protocols; these are the
// ones below HTTP.

// shutdownSummary reads the extension's shutdown line: received, delivered, dropped, unknown,
// buffered and the PutRecords calls.
type shutdownSummary struct{ received, delivered, dropped, calls, resent, unknown, buffered int }

func readShutdownSummary(t *testing.T, out string) shutdownSummary {
	t.Helper()
	var s shutdownSummary
	var full, rejected, atShutdown, lambda, malformed, retries int
	i := strings.LastIndex(out, "shutdown (spindown): ")
	if i < 0 {
		t.Fatalf("no shutdown summary in the log:\n%s", out)
	}
	if _, err := fmt.Sscanf(out[i:], "shutdown (spindown): received %d, delivered %d, dropped %d (buffer full %d, rejected %d, shutdown %d), Lambda dropped %d, malformed %d, %d PutRecords calls, %d retries, %d events sent again after a call of unknown outcome, unknown %d, buffered %d,",
		&s.received, &s.delivered, &s.dropped, &full, &rejected, &atShutdown, &lambda, &malformed, &s.calls, &retries, &s.resent, &s.unknown, &s.buffered); err != nil {
		t.Fatalf("shutdown summary unreadable (%v):\n%s", err, out)
	}
	return s
}

// TestBadCertificate: an endpoint whose certificate is expired, for another host or from a CA
// nobody trusts gets no request at all (nothing in the clear, nothing over the refused TLS), one
// log line that names the endpoint and the fix, and the events wait in the buffer; the function
// never breaks and the extension exits cleanly.
func TestBadCertificate(t *testing.T) {
	p := testCertificates(t)
	for _, c := range []struct {
		name string
		cert *tls.Certificate
	}{{"expired", &p.expired}, {"other host", &p.otherHost}, {"untrusted CA", &p.untrusted}} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			fk := newFakeKinesis(t, allOK)
			front := startTLSFront(t, fk.URL, frontOptions{cert: c.cert})
			fl := newFakeLambda(t)
			ext := startExtension(t, fl, tlsEnv(testEnv(fk.URL), front))
			fl.init()
			for i := range 4 {
				fl.invoke(invocation{requestID: fmt.Sprintf("r%d", i), textLines: 5})
			}
			fl.shutdownAndWait(ext)
			out := ext.stderr.String()
			if n := len(fk.received()); n != 0 || front.requests.Load() != 0 {
				t.Errorf("%d PutRecords reached Kinesis, %d requests the front: want none", n, front.requests.Load())
			}
			if front.handshakes.Load() == 0 {
				t.Error("no handshake was tried")
			}
			lines := 0
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, front.URL) && strings.Contains(l, "SSL_CERT_FILE") && strings.Contains(l, "KINESIS_TELEMETRY_ENDPOINT") {
					lines++
				}
			}
			if lines != 1 {
				t.Errorf("%d log lines name the endpoint and the fix, want 1:\n%s", lines, out)
			}
			s := readShutdownSummary(t, out)
			if s.received != len(fl.postedEvents()) || s.delivered != 0 || s.unknown != 0 || s.received != s.dropped+s.buffered {
				t.Errorf("summary %+v: want every event received, none delivered or unknown, all dropped or buffered", s)
			}
			var refused int
			if i := strings.LastIndex(out, "calls not sent: TLS certificate refused"); i < 0 {
				t.Errorf("the shutdown summary does not count the refused certificate:\n%s", out)
			} else if fmt.Sscanf(out[strings.LastIndex(out[:i], ", ")+2:], "%d", &refused); refused < 1 || refused > s.calls {
				t.Errorf("%d calls counted as refused for the certificate, of %d calls", refused, s.calls)
			}
		})
	}
}

// TestBadCertificateErrorSaysTheFix: the client's error for a refused certificate names the
// endpoint and the fix, and is not of unknown outcome (nothing was sent).
func TestBadCertificateErrorSaysTheFix(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	front := startTLSFront(t, fk.URL, frontOptions{cert: &testCertificates(t).expired})
	t.Setenv("SSL_CERT_FILE", front.CAFile)
	k := newKinesisClient(front.URL, "eu-west-1", credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""), time.Second)
	_, err := k.putRecords(t.Context(), []byte(`{"Records":[]}`), 0)
	if err == nil || maybeStored(err) || !strings.Contains(err.Error(), front.URL) || !strings.Contains(err.Error(), "SSL_CERT_FILE") {
		t.Errorf("error %v (maybe stored %v): want the endpoint, the fix, and not of unknown outcome", err, maybeStored(err))
	}
}

// TestIdleCloseWhileFrozen: the server closes connections idle 100 ms, so during every freeze
// (as NAT gateways and load balancers do after minutes). The first call after a thaw must not
// hang into its timeout nor leave events of unknown outcome, and a thaw costs at most one
// handshake.
func TestIdleCloseWhileFrozen(t *testing.T) {
	for _, w := range tlsWires {
		t.Run(w.String(), func(t *testing.T) {
			t.Parallel()
			const invocations = 12
			fk := newFakeKinesis(t, allOK)
			front := startTLSFront(t, fk.URL, frontOptions{wire: w, idleTimeout: 100 * time.Millisecond})
			fl := newFakeLambda(t)
			ext := startExtension(t, fl, tlsEnv(testEnv(fk.URL, "KINESIS_TELEMETRY_FLUSH", "end", "KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS", "2000"), front))
			fl.freeze = ext.cmd.Process
			fl.init()
			for i := range invocations {
				fl.invoke(invocation{requestID: fmt.Sprintf("r%02d", i), textLines: 20, pause: 250 * time.Millisecond})
			}
			fl.shutdownAndWait(ext)
			events, _ := fk.decoded(t)
			checkExactlyOnce(t, fl.postedEvents(), events)
			s := readShutdownSummary(t, ext.stderr.String())
			if s.unknown != 0 || s.resent != 0 {
				t.Errorf("summary %+v: a call after a thaw left events of unknown outcome", s)
			}
			// One handshake per thaw at most, plus the first and the shutdown's.
			if h := int(front.handshakes.Load()); h > invocations+2 {
				t.Errorf("%d handshakes for %d thaws", h, invocations)
			}
			front.checkWire(t, w)
			t.Logf("%s: %d handshakes, %d PutRecords calls for %d invocations", w, front.handshakes.Load(), s.calls, invocations)
		})
	}
}

// TestStalledHandshake: a TLS handshake that never gets an answer costs one TLSHandshakeTimeout
// (2 s) and no event: the events wait and go over the next connection. Its call sent nothing, so
// none of its events is of unknown outcome. (The next call, on a fresh connection after a call
// left unanswered, may be cut after its write when it outlasts wireGrace after the runtime is
// done, shipper.guard, as on a loaded machine: its events go again, through the front a second
// time. So what is sent again must not exceed what the front received beyond one copy of each
// event; events of the stalled call taken as of unknown outcome would be sent again with no first
// copy through the front.)
func TestStalledHandshake(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	front := startTLSFront(t, fk.URL, frontOptions{})
	front.stallHandshakes(1, time.Minute)
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, tlsEnv(testEnv(fk.URL, "KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS", "5000"), front))
	fl.init()
	for i := range 4 {
		fl.invoke(invocation{requestID: fmt.Sprintf("r%d", i), textLines: 5, pause: 300 * time.Millisecond})
	}
	fl.shutdownAndWait(ext)
	events, _ := fk.decoded(t)
	s := readShutdownSummary(t, ext.stderr.String())
	checkDelivery(t, fl.postedEvents(), events, false, s.resent) // after pushback the newest invocation goes first
	again := int(front.entries.Load()) - s.received
	if s.unknown != 0 || s.resent > again {
		t.Errorf("summary %+v, %d entries through the front beyond one per event: a stalled handshake sent nothing, so nothing of its call is of unknown outcome", s, again)
	}
	t.Logf("summary %+v, %d entries through the front beyond one per event", s, again)
}

// TestH2FrameFaults: the first connection's first stream meets a frame-level fault
// (h2faults_test.go). A stream the server says it did not process (REFUSED_STREAM, or above a
// GOAWAY's last-stream-id) goes again without counting as unknown; a GOAWAY that includes a
// stream whose request was read leaves its outcome unknown, counted. Every event lands once.
func TestH2FrameFaults(t *testing.T) {
	if !clientSpeaksH2() {
		t.Skip("the extension speaks HTTP/1.1 (ForceAttemptHTTP2 false, BENCHMARKS.md \"The wire\"); TestH2FrameFaultsClient checks its client with HTTP/2 forced")
	}
	for _, fault := range []h2Fault{h2Refused, h2GoAwayGraceful, h2GoAwayAbrupt} {
		t.Run(fault.String(), func(t *testing.T) {
			t.Parallel()
			fk := newFakeKinesis(t, allOK)
			front := startTLSFront(t, fk.URL, frontOptions{wire: wireH2})
			front.hijackNext(1, func(c net.Conn) { playH2Fault(c, front.tlsConfig, fault) })
			fl := newFakeLambda(t)
			ext := startExtension(t, fl, tlsEnv(testEnv(fk.URL, "KINESIS_TELEMETRY_REQUEST_TIMEOUT_MS", "3000"), front))
			fl.init()
			for i := range 4 {
				fl.invoke(invocation{requestID: fmt.Sprintf("r%d", i), textLines: 5, pause: 100 * time.Millisecond})
			}
			fl.shutdownAndWait(ext)
			events, _ := fk.decoded(t)
			checkDelivery(t, fl.postedEvents(), events, false, 0)
			s := readShutdownSummary(t, ext.stderr.String())
			if fault == h2GoAwayAbrupt {
				if s.unknown == 0 && s.resent == 0 {
					t.Errorf("summary %+v: the call cut by an abrupt GOAWAY after its request was read is not counted as of unknown outcome", s)
				}
			} else if s.unknown != 0 || s.resent != 0 {
				t.Errorf("summary %+v: a stream the server did not process counted as of unknown outcome", s)
			}
			if s.delivered != len(fl.postedEvents()) {
				t.Errorf("summary %+v: %d events posted", s, len(fl.postedEvents()))
			}
			t.Logf("%s: %+v, %d handshakes", fault, s, front.handshakes.Load())
		})
	}
}

// TestShippedBinaryHasNoXNet: golang.org/x/net/http2 is for the tests' frame-level faults only;
// the extension speaks HTTP/2 through net/http's own copy.
func TestShippedBinaryHasNoXNet(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, p := range strings.Fields(string(out)) {
		if strings.HasPrefix(p, "golang.org/x/net") {
			t.Errorf("the extension imports %s", p)
		}
	}
}

// TestH2FrameFaultsClient: the same faults against the extension's client with HTTP/2 forced, as
// it would run if ForceAttemptHTTP2 were turned back on: a refused or GOAWAY'd stream is sent
// again by Go's transport and the call succeeds; an abrupt GOAWAY that includes the stream is an
// error of unknown outcome.
func TestH2FrameFaultsClient(t *testing.T) {
	for _, fault := range []h2Fault{h2Refused, h2GoAwayGraceful, h2GoAwayAbrupt} {
		t.Run(fault.String(), func(t *testing.T) {
			fk := newFakeKinesis(t, allOK)
			front := startTLSFront(t, fk.URL, frontOptions{wire: wireH2})
			front.hijackNext(1, func(c net.Conn) { playH2Fault(c, front.tlsConfig, fault) })
			t.Setenv("SSL_CERT_FILE", front.CAFile)
			k := newKinesisClient(front.URL, "eu-west-1", credentials.NewStaticCredentialsProvider("AKID", "SECRET", ""), 3*time.Second)
			k.transport.ForceAttemptHTTP2 = true
			body := []byte(`{"StreamName":"telemetry","Records":[{"Data":"eA==","PartitionKey":"k"}]}`)
			_, err := k.putRecords(t.Context(), body, 1)
			if fault == h2GoAwayAbrupt {
				if err == nil || !maybeStored(err) {
					t.Errorf("abrupt GOAWAY: error %v, maybe stored %v; want an error of unknown outcome", err, maybeStored(err))
				}
			} else if err != nil {
				t.Errorf("%s: %v; want the call sent again on a new connection", fault, err)
			}
			if front.protoRequests("HTTP/2.0") == 0 && err == nil {
				t.Errorf("the call did not go over HTTP/2")
			}
		})
	}
}
