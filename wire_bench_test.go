package main

import (
	"encoding/base64"
	"fmt"
	"os"
	"strings"
	"testing"

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
