package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// ingestBody is one Telemetry API batch of n events, alternating a ~200-byte JSON log line and
// a ~4 KiB text log line, as Lambda posts them.
func ingestBody(n int) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	long := strings.Repeat("lorem ipsum dolor sit amet ", 150)[:4000]
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		if i%2 == 0 {
			fmt.Fprintf(&b, `{"time":"2024-05-01T10:00:00.%03dZ","type":"function","record":{"timestamp":"2024-05-01T10:00:00.%03dZ","level":"INFO","requestId":"79b4f56e-95b1-4643-9700-2807f4e68189","message":"processed order %d"}}`, i%1000, i%1000, i)
		} else {
			fmt.Fprintf(&b, `{"time":"2024-05-01T10:00:00.%03dZ","type":"function","record":"%d %s"}`, i%1000, i, long)
		}
	}
	b.WriteByte(']')
	return b.Bytes()
}

// BenchmarkIngest measures the extension's work per event from the listener's HTTP POST to
// encoded PutRecords request bodies (no network): decoding, buffering, record building (gzip for
// cloudwatch) and base64, for each record format. Run: ./build.sh bench -bench Ingest -cpu 1
func BenchmarkIngest(b *testing.B) {
	for _, format := range []recordFormat{formatEvent, formatNDJSON, formatKPL, formatCloudWatch} {
		b.Run(string(format), func(b *testing.B) { benchmarkIngest(b, format) })
	}
}

func benchmarkIngest(b *testing.B, format recordFormat) {
	const perBatch = 500
	body := ingestBody(perBatch)
	cfg := config{BufferBytes: maxBufferBytes, Sample: 1, Stream: streamRef{Name: "telemetry"}, RecordFormat: format, PartitionKey: "request",
		RecordBytes: 262144, LogStream: "2024/05/01/[$LATEST]3893xmpl7fac4485b47bb75b671a283c", LogGroup: "/aws/lambda/fn", LogFormat: logText}
	st := newStats()
	buf := newBuffer(1<<30, "p", st)
	l := newListener(buf, st, cfg)
	s := newShipper(cfg, buf, st, newLogger(io.Discard), testMeta(cfg))
	var stored int
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		w := httptest.NewRecorder()
		l.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body)))
		if w.Code != http.StatusOK {
			b.Fatalf("HTTP %d", w.Code)
		}
		for {
			evs := buf.take(everything, s.meta.format.eventsPerCall(), maxCallBytes, s.meta.callSize)
			if len(evs) == 0 {
				break
			}
			recs := s.meta.pack(evs, s.cfg.RecordBytes, &s.gz)
			for _, r := range recs {
				stored += r.size + len(r.key)
			}
			s.body = s.encodeBody(s.body[:0], recs)
			buf.release(evs, outcome{kind: outcomeDelivered})
		}
	}
	b.StopTimer()
	perEvent := float64(b.Elapsed().Nanoseconds()) / float64(b.N*perBatch)
	b.ReportMetric(1e9/perEvent, "events/s")
	b.ReportMetric(float64(stored)/float64(b.N*len(body)), "stored/in")
}

// BenchmarkScanBatch measures the batch decoder alone.
func BenchmarkScanBatch(b *testing.B) {
	body := ingestBody(500)
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if err := scanBatch(body, func(eventFields) {}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBatching ships a burst of 100,000 small events and reports how many PutRecords calls
// it took, against the minimum the 500-record and 5 MiB limits allow.
// Run: ./build.sh bench -bench Batching -benchtime 3x
func BenchmarkBatching(b *testing.B) {
	const n = 100000
	fk := newFakeKinesis(b, allOK)
	var calls, records, bytes, minCalls float64
	for i := 0; i < b.N; i++ {
		s, buf, _ := testShipper(b, config{}, fk.URL)
		before := len(fk.received())
		evs := make([]event, n)
		total := 0
		for k := range evs {
			evs[k] = logEvent(fmt.Sprintf("order %06d processed in %d ms", k, k%97))
			evs[k].requestID = fmt.Sprintf("79b4f56e-95b1-4643-9700-%012d", k/100)
		}
		buf.add(evs, &filter{sample: 1})
		for k := range evs {
			key := s.meta.partitionKey(&evs[k])
			total += s.meta.dataSize(&evs[k], len(key)) + len(key)
		}
		if err := s.ship(context.Background(), everything); err != nil {
			b.Fatal(err)
		}
		got := fk.received()[before:]
		for _, c := range got {
			records += float64(len(c.Records))
			for _, r := range c.Records {
				bytes += float64(base64.StdEncoding.DecodedLen(len(r.Data)) + len(r.PartitionKey))
			}
		}
		calls += float64(len(got))
		minCalls += math.Max(math.Ceil(n/float64(maxRecordsPerCall)), math.Ceil(float64(total)/maxCallBytes))
	}
	b.ReportMetric(calls/float64(b.N), "calls")
	b.ReportMetric(minCalls/float64(b.N), "min-calls")
	b.ReportMetric(records/calls, "records/call")
	b.ReportMetric(bytes/calls, "bytes/call")
	b.ReportMetric(100*(calls-minCalls)/minCalls, "%-over-min")
}
