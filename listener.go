package main

// The Telemetry API side: the subscription, and the HTTP listener Lambda posts event batches to,
// with its server. A batch is decoded by json.go's scanner into events (event.go) and handed to
// the buffer (buffer.go) through the filter (filter.go).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// subscription is the outcome of the Telemetry API subscription.
type subscription struct {
	Active bool   // Lambda answered 200: batches will arrive
	Detail string // why not, when not active
}

// Telemetry API schema versions: the classic one, and the only one Lambda Managed Instances accept.
const (
	telemetrySchema        = "2022-12-13"
	telemetrySchemaManaged = "2025-01-29"
)

// telemetryRequest is what the subscription asks of Lambda: which types, posted to which port,
// buffered how (KINESIS_TELEMETRY_TYPES, _PORT, _BUFFER_*), and for Lambda Managed Instances.
type telemetryRequest struct {
	Managed                                   bool
	Port                                      int
	Types                                     []string
	BufferItems, BufferBytes, BufferTimeoutMS int
}

// telemetryPut sends the subscription's body to the Telemetry API (a PUT through the Extensions
// API client) and returns Lambda's answer.
type telemetryPut func(ctx context.Context, body []byte) (status int, answer []byte, err error)

// subscribe asks Lambda to post the requested telemetry types to the listener. A refusal is not
// an error: the extension keeps running without telemetry, and the caller says so once.
func subscribe(ctx context.Context, put telemetryPut, req telemetryRequest) (subscription, error) {
	schema := telemetrySchema
	if req.Managed {
		schema = telemetrySchemaManaged
	}
	body, err := json.Marshal(map[string]any{
		"schemaVersion": schema,
		"destination":   map[string]any{"protocol": "HTTP", "URI": "http://sandbox.localdomain:" + strconv.Itoa(req.Port)},
		"types":         req.Types,
		"buffering":     map[string]any{"maxItems": req.BufferItems, "maxBytes": req.BufferBytes, "timeoutMs": req.BufferTimeoutMS},
	})
	if err != nil {
		return subscription{}, fmt.Errorf("subscribe telemetry: %w", err)
	}
	status, answer, err := put(ctx, body)
	if err != nil {
		return subscription{}, fmt.Errorf("subscribe telemetry: %w", err)
	}
	if status == http.StatusOK {
		return subscription{Active: true}, nil
	}
	var apiErr struct{ ErrorType, ErrorMessage string }
	_ = json.Unmarshal(answer, &apiErr)
	detail := fmt.Sprintf("HTTP %d %s %s", status, apiErr.ErrorType, apiErr.ErrorMessage)
	return subscription{Detail: strings.TrimSpace(detail)}, nil
}

// resolveListenHost returns the address that sandbox.localdomain resolves to, which is where
// Lambda delivers telemetry, or 127.0.0.1 where it does not resolve (emulators, tests). It never
// returns an address that listens on all interfaces.
func resolveListenHost(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	// IPv4 only: Lambda's sandbox address is IPv4, and one DNS question is faster than two.
	ips, err := net.DefaultResolver.LookupIP(ctx, "ip4", "sandbox.localdomain")
	if err == nil {
		for _, ip := range ips {
			if !ip.IsUnspecified() {
				return ip.String()
			}
		}
	}
	return "127.0.0.1"
}

// resolveTimeout bounds the wait for DNS at start-up: the sandbox resolves at once or not at all.
const resolveTimeout = 200 * time.Millisecond

// listener receives the batches Lambda posts. It answers as soon as the batch is in the buffer:
// a slow answer makes Lambda buffer, retry and eventually drop telemetry.
type listener struct {
	buf     *buffer
	stats   *stats
	maxBody int64
	filter  *filter
	bodies  sync.Pool
}

// newBatchListener makes the listener for a subscription buffered at bufferBytes (the Telemetry
// API's maxBytes), adding what passes f to buf.
func newBatchListener(buf *buffer, st *stats, bufferBytes int, f *filter) *listener {
	return &listener{buf: buf, stats: st, maxBody: maxBatchBody(bufferBytes), filter: f}
}

// maxBatchBody is the largest batch body accepted: Lambda's batches reach about twice maxBytes;
// this leaves room for one more, and a MiB.
func maxBatchBody(bufferBytes int) int64 { return int64(3*bufferBytes + 1<<20) }

func (l *listener) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/" {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	body, _ := l.bodies.Get().(*bytes.Buffer)
	if body == nil {
		body = new(bytes.Buffer)
	}
	defer l.bodies.Put(body)
	body.Reset()
	_, err := body.ReadFrom(http.MaxBytesReader(w, r.Body, l.maxBody))
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		l.stats.badBatches.Add(1)
		http.Error(w, fmt.Sprintf("body larger than %d bytes", l.maxBody), http.StatusRequestEntityTooLarge)
		return
	case err != nil:
		l.stats.badBatches.Add(1)
		http.Error(w, "read body: "+err.Error(), http.StatusBadRequest)
		return
	}
	if err := l.accept(body.Bytes()); err != nil {
		l.stats.badBatches.Add(1)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// readHeaderTimeout bounds how long a connection may take to send its headers; Lambda sends them
// at once.
const readHeaderTimeout = 5 * time.Second

// serveListener serves l on ln. Its goroutine is owned by the caller through the returned stop
// function, which closes the server and waits for the goroutine.
func serveListener(ln net.Listener, l *listener, errorLog *log.Logger) (stop func()) {
	srv := &http.Server{Handler: l, ReadHeaderTimeout: readHeaderTimeout, ErrorLog: errorLog}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // returns http.ErrServerClosed after Close
	}()
	return func() {
		_ = srv.Close()
		<-done
	}
}

// accept decodes one posted batch and adds its events to the buffer. A body that is not a JSON
// array is refused whole; elements that are not event objects are counted and skipped.
func (l *listener) accept(body []byte) error {
	// One copy of the whole batch, instead of one allocation per event: log lines keep pointing
	// into it (they are shipped and dropped oldest first, so batches are freed in order), while
	// platform events, which may outlive the log lines around them, get copies of their own.
	arena := bytes.Clone(body)
	evs := make([]event, 0, 64)
	err := scanBatch(arena, func(f eventFields) {
		if !f.object || f.typ == nil {
			l.stats.badEvents.Add(1)
			return
		}
		evs = append(evs, newEvent(f))
	})
	if err != nil {
		return fmt.Errorf("telemetry batch: %w", err)
	}
	l.stats.received.Add(uint64(len(evs)))
	l.buf.add(evs, l.filter)
	return nil
}
