package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
)

// BenchmarkWire compares the extension's Kinesis client over plain HTTP, TLS+HTTP/1.1 and
// TLS+HTTP/2, in process, against fakeKinesis (behind a tlsFront for TLS) on loopback:
//
//	cold:  a new client per call, as after a cold start or a thaw whose connection the server
//	       closed: dial, handshake and one PutRecords of 20 lines;
//	warm:  one client, one connection, PutRecords of 20 lines after PutRecords.
//
// It reports ms per call, CPU is what ns/op and B/op show for the client and the servers together
// (all in this process), and handshakes per 100 calls.
//
//	go test -run '^$' -bench BenchmarkWire -benchtime 200x .
func BenchmarkWire(b *testing.B) {
	var recs []string
	for i := range 20 {
		line := fmt.Sprintf(`{"time":"2024-05-01T10:00:00.000Z","type":"function","record":"r text line %d"}`, i)
		recs = append(recs, fmt.Sprintf(`{"Data":%q,"PartitionKey":"r"}`, base64.StdEncoding.EncodeToString([]byte(line))))
	}
	body := []byte(`{"StreamName":"telemetry","Records":[` + strings.Join(recs, ",") + `]}`)
	creds := credentials.NewStaticCredentialsProvider("AKIDTESTTESTTESTTEST", "secret", "")
	for _, w := range []wire{wirePlain, wireH1, wireH2} {
		fk := newFakeKinesis(b, allOK)
		endpoint, front := overWire(b, fk.URL, w, frontOptions{})
		if front != nil {
			// The system pool is read once per process; every front's CA is the same.
			os.Setenv("SSL_CERT_FILE", front.CAFile)
		}
		for _, mode := range []string{"cold", "warm"} {
			b.Run(w.String()+"/"+mode, func(b *testing.B) {
				k := newKinesisClient(endpoint, "eu-west-1", creds, 0)
				var before int32
				if front != nil {
					before = front.handshakes.Load()
				}
				b.ReportAllocs()
				for b.Loop() {
					if mode == "cold" {
						k = newKinesisClient(endpoint, "eu-west-1", creds, 5e9)
					} else if k.timeout == 0 {
						k.timeout = 5e9
					}
					if _, err := k.putRecords(b.Context(), body, 20); err != nil {
						b.Fatal(err)
					}
					if mode == "cold" {
						k.transport.CloseIdleConnections()
					}
				}
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/call")
				if front != nil {
					b.ReportMetric(float64(front.handshakes.Load()-before)*100/float64(b.N), "handshakes/100calls")
				}
			})
		}
	}
}

// BenchmarkWireProcess runs the built extension under the fake Lambda with real freezes (SIGSTOP)
// between 100 invocations of 20 lines each, flush "end", against fakeKinesis over plain HTTP,
// TLS+HTTP/1.1 and TLS+HTTP/2, with the connection kept across freezes, or closed by the server
// during each freeze (idle timeout 20 ms, freezes of 60 ms: a NAT or load balancer after minutes).
// It reports:
//
//	cold-start-ms   process start to its first /event/next (no call is made during init)
//	first-call-ms   what the first invocation added to its duration: the first PutRecords, on
//	                a new connection (dial, handshake)
//	added-ms-p50    median of what an invocation added: its PutRecords after a thaw
//	cpu-ms/inv      the extension process's CPU (user+system, 10 ms ticks) per invocation
//	handshakes/100inv
//
//	go test -run '^$' -bench BenchmarkWireProcess -benchtime 1x .
func BenchmarkWireProcess(b *testing.B) {
	const invocations = 100
	for _, w := range []wire{wirePlain, wireH1, wireH2} {
		for _, closed := range []bool{false, true} {
			if closed && w == wirePlain {
				continue // fakeKinesis itself keeps connections; the front is what closes them
			}
			name := w.String() + map[bool]string{false: "/kept", true: "/closed-while-frozen"}[closed]
			b.Run(name, func(b *testing.B) {
				var cold, first, p50, cpu, handshakes float64
				for b.Loop() {
					fk := newFakeKinesis(b, allOK)
					o := frontOptions{}
					pause := 30 * time.Millisecond
					if closed {
						o.idleTimeout, pause = 20*time.Millisecond, 60*time.Millisecond
					}
					endpoint, front := overWire(b, fk.URL, w, o)
					fl := newFakeLambda(b)
					started := time.Now()
					ext := startExtension(b, fl, trusting(testEnv(endpoint, "KINESIS_TELEMETRY_FLUSH", "end"), front))
					fl.freeze = ext.cmd.Process
					fl.init()
					fl.mu.Lock()
					cold += float64(fl.nextAt[0].Sub(started).Microseconds()) / 1000
					fl.mu.Unlock()
					cpu0 := procCPU(ext.cmd.Process.Pid)
					for i := range invocations {
						fl.invoke(invocation{requestID: fmt.Sprintf("r%03d", i), textLines: 20, pause: pause})
					}
					fl.awaitNext()
					cpu += float64((procCPU(ext.cmd.Process.Pid) - cpu0).Microseconds()) / 1000 / invocations
					added := fl.addedTimes()
					first += float64(added[0].Microseconds()) / 1000
					sortDurations(added)
					p50 += float64(added[len(added)/2].Microseconds()) / 1000
					if front != nil {
						handshakes += float64(front.handshakes.Load()) * 100 / invocations
					}
					fl.shutdownAndWait(ext)
				}
				n := float64(b.N)
				b.ReportMetric(cold/n, "cold-start-ms")
				b.ReportMetric(first/n, "first-call-ms")
				b.ReportMetric(p50/n, "added-ms-p50")
				b.ReportMetric(cpu/n, "cpu-ms/inv")
				b.ReportMetric(handshakes/n, "handshakes/100inv")
			})
		}
	}
}
