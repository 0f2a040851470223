package main

import (
	"bytes"
	"fmt"
	"io"
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
// encoded PutRecords request bodies (no network): decoding, buffering, record building and
// base64. Run: ./build.sh bench -bench Ingest -cpu 1
func BenchmarkIngest(b *testing.B) {
	const perBatch = 500
	body := ingestBody(perBatch)
	cfg := config{BufferBytes: maxBufferBytes, Sample: 1, Stream: "telemetry", RecordFormat: "event", PartitionKey: "request"}
	st := newStats()
	buf := newBuffer(1<<30, "p", st)
	l := newListener(buf, st, cfg)
	s := newShipper(cfg, buf, st, newLogger(io.Discard), testMeta(cfg))
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
			evs := buf.take(everything, s.eventsPerCall(), maxCallBytes, s.recordSize)
			if len(evs) == 0 {
				break
			}
			recs := s.packRecords(evs)
			s.body = s.encodeBody(s.body[:0], recs)
			buf.release(evs)
		}
	}
	b.StopTimer()
	perEvent := float64(b.Elapsed().Nanoseconds()) / float64(b.N*perBatch)
	b.ReportMetric(1e9/perEvent, "events/s")
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
