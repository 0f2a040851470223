package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestListenerAnswers(t *testing.T) {
	cfg := config{BufferBytes: minBufferBytes, Sample: 1}
	b, st := newTestBuffer(1 << 30)
	l := newListener(b, st, cfg)
	srv := httptest.NewServer(l)
	defer srv.Close()

	post := func(method, path, body string) int {
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	good := `[{"time":"t","type":"platform.start","record":{"requestId":"r"}},{"time":"t","type":"platform.somethingNew","record":{"x":1}}]`
	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"a batch", "POST", "/", good, 200},
		{"unknown event types are kept", "POST", "/", `[{"type":"brand.new","record":[1]}]`, 200},
		{"wrong method", "GET", "/", "", 405},
		{"wrong path", "POST", "/other", good, 404},
		{"not JSON", "POST", "/", "hello", 400},
		{"truncated", "POST", "/", good[:40], 400},
		{"wrong shape", "POST", "/", `{"type":"function"}`, 400},
		{"too big", "POST", "/", "[" + strings.Repeat(`"x",`, int(l.maxBody)/4) + `"x"]`, 413},
		{"elements of the wrong shape are skipped", "POST", "/", `[1,{"type":"function","record":"ok"}]`, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := post(tt.method, tt.path, tt.body); got != tt.want {
				t.Errorf("got HTTP %d, want %d", got, tt.want)
			}
		})
	}
	if n, _ := b.state(); n != 4 {
		t.Errorf("buffered %d events, want 4 (2 + 1 + 1)", n)
	}
	if got := st.badBatches.Load(); got != 4 {
		t.Errorf("counted %d bad batches, want 4", got)
	}
	if got := st.badEvents.Load(); got != 1 {
		t.Errorf("counted %d bad events, want 1", got)
	}
}

func TestListenerReplacesInvalidUTF8(t *testing.T) {
	b, st := newTestBuffer(1 << 30)
	l := newListener(b, st, config{BufferBytes: minBufferBytes, Sample: 1})
	if err := l.accept([]byte("[{\"type\":\"function\",\"record\":\"bad \xff\xfe byte\"}]")); err != nil {
		t.Fatal(err)
	}
	evs := b.take(everything, 10, 1<<30, func(*event) int { return 1 })
	if len(evs) != 1 || !json.Valid(evs[0].raw) || !strings.Contains(string(evs[0].raw), "bad \uFFFD byte") {
		t.Fatalf("got %q, want valid JSON with U+FFFD", evs[0].raw)
	}
}

// newListener is the listener for a configuration, as the extension makes it (lifecycle.go).
func newListener(b *buffer, st *stats, cfg config) *listener {
	return newBatchListener(b, st, cfg.BufferBytes, cfg.filter())
}
