package main

import (
	"crypto/tls"
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
