// Command probe is a minimal Lambda external extension used by the RIE tests
// as the ground truth of "every telemetry event the emulator produced".
//
// It registers (SHUTDOWN only on managed instances, INVOKE and SHUTDOWN
// otherwise), subscribes to the platform and function telemetry types with the
// schema the mode accepts, and appends every event it receives, byte for byte
// as the emulator sent it, one JSON value per line, to the file named by
// PROBE_OUT. It exits 0 on SHUTDOWN.
//
// Environment:
//
//	PROBE_OUT    file the events are appended to (required)
//	PROBE_LOG    optional file of lifecycle notes (JSON lines): what the probe
//	             saw at registration, subscription, each batch and SHUTDOWN
//	PROBE_RAW    optional file each telemetry POST is appended to verbatim
//	             (method, path, headers, body), for samples of the wire format
//	PROBE_PORT   listener port (default 4244; the product uses 4243)
//	PROBE_TYPES  comma-separated telemetry types (default "platform,function")
//
// Each of them can be given as KEY_<NAME>, NAME being the executable's file
// name in upper case (PROBE_OUT_PROBE2=...), which wins over KEY: extensions
// share one environment, and this lets two copies run side by side.
//
// It deliberately shares no code with the product, so that a misunderstanding
// in the product cannot hide in the probe as well.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

const managedInitType = "lambda-managed-instances"

type probe struct {
	api     string
	name    string
	id      string
	managed bool

	mu  sync.Mutex
	out *os.File
	log *os.File
	raw *os.File
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "probe: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	p := &probe{
		api:     os.Getenv("AWS_LAMBDA_RUNTIME_API"),
		name:    filepath.Base(os.Args[0]),
		managed: os.Getenv("AWS_LAMBDA_INITIALIZATION_TYPE") == managedInitType,
	}
	var err error
	if p.out, err = openAppend(p.setting("PROBE_OUT")); err != nil {
		return fmt.Errorf("PROBE_OUT: %w", err)
	}
	if path := p.setting("PROBE_LOG"); path != "" {
		if p.log, err = openAppend(path); err != nil {
			return fmt.Errorf("PROBE_LOG: %w", err)
		}
	}
	if path := p.setting("PROBE_RAW"); path != "" {
		if p.raw, err = openAppend(path); err != nil {
			return fmt.Errorf("PROBE_RAW: %w", err)
		}
	}
	p.note("env", envNotes())

	port := p.setting("PROBE_PORT")
	if port == "" {
		port = "4244"
	}
	// Listen before registering: the emulator replays the init events to a
	// new subscriber at once, so the listener must already accept them.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	go func() { _ = http.Serve(ln, http.HandlerFunc(p.receive)) }()

	if err := p.register(); err != nil {
		return err
	}
	if err := p.subscribe(port); err != nil {
		return err
	}
	for {
		ev, err := p.next()
		if err != nil {
			return err
		}
		if ev["eventType"] == "SHUTDOWN" {
			p.mu.Lock()
			syncErr := p.out.Sync()
			p.mu.Unlock()
			return syncErr
		}
	}
}

// setting reads a PROBE_* variable. All extensions of a function share one
// environment, so KEY_<NAME> (the executable's name in upper case) wins over
// KEY: that lets two copies of the probe run side by side.
func (p *probe) setting(key string) string {
	if v, ok := os.LookupEnv(key + "_" + strings.ToUpper(p.name)); ok {
		return v
	}
	return os.Getenv(key)
}

func openAppend(path string) (*os.File, error) {
	if path == "" {
		return nil, fmt.Errorf("not set")
	}
	return os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
}

// envNotes records which of the variables the tests care about reached the
// extension; secret values are reduced to whether they are set.
func envNotes() map[string]string {
	notes := map[string]string{"uid": fmt.Sprint(os.Getuid()), "gid": fmt.Sprint(os.Getgid())}
	if wd, err := os.Getwd(); err == nil {
		notes["cwd"] = wd
	}
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		switch {
		case k == "AWS_SECRET_ACCESS_KEY" || k == "AWS_SESSION_TOKEN" || k == "AWS_LAMBDA_METADATA_TOKEN":
			notes[k] = fmt.Sprintf("<%d bytes>", len(v))
		case strings.HasPrefix(k, "AWS_") || strings.HasPrefix(k, "KINESIS_") ||
			strings.HasPrefix(k, "PROBE_") || strings.HasPrefix(k, "LAMBDA_") ||
			k == "HOME" || k == "PATH" || k == "TZ" || k == "LANG" || strings.HasPrefix(k, "_"):
			notes[k] = v
		}
	}
	return notes
}

func (p *probe) note(kind string, v any) {
	if p.log == nil {
		return
	}
	b, err := json.Marshal(map[string]any{"kind": kind, "at": time.Now().UnixMilli(), "data": v})
	if err != nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	_, _ = p.log.Write(append(b, '\n'))
}

// call sends a request to the Runtime API with the given header name/value pairs and returns
// the answer, its body read whole.
func (p *probe) call(method, path string, body []byte, header ...string) (*http.Response, []byte, error) {
	req, err := http.NewRequest(method, "http://"+p.api+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	return resp, answer, err
}

func (p *probe) register() error {
	events := []string{"INVOKE", "SHUTDOWN"}
	if p.managed {
		events = []string{"SHUTDOWN"}
	}
	body, _ := json.Marshal(map[string]any{"events": events})
	resp, answer, err := p.call(http.MethodPost, "/2020-01-01/extension/register", body,
		"Lambda-Extension-Name", p.name, "Lambda-Extension-Accept-Feature", "accountId")
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	p.note("register", map[string]any{"status": resp.StatusCode, "body": json.RawMessage(jsonOrString(answer)), "events": events})
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("register: %s: %s", resp.Status, answer)
	}
	p.id = resp.Header.Get("Lambda-Extension-Identifier")
	return nil
}

func (p *probe) subscribe(port string) error {
	schema := "2022-12-13"
	if p.managed {
		schema = "2025-01-29"
	}
	types := []string{"platform", "function"}
	if t := p.setting("PROBE_TYPES"); t != "" {
		types = strings.Split(t, ",")
	}
	body, _ := json.Marshal(map[string]any{
		"schemaVersion": schema,
		"destination":   map[string]any{"protocol": "HTTP", "URI": "http://sandbox.localdomain:" + port},
		"types":         types,
		"buffering":     map[string]any{"maxItems": 1000, "maxBytes": 262144, "timeoutMs": 25},
	})
	resp, answer, err := p.call(http.MethodPut, "/2022-07-01/telemetry", body,
		"Lambda-Extension-Identifier", p.id, "Content-Type", "application/json")
	if err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	p.note("subscribe", map[string]any{"status": resp.StatusCode, "body": json.RawMessage(jsonOrString(answer)), "schemaVersion": schema})
	// Classic RIE answers 202 Telemetry.NotSupported; the probe then just
	// follows the lifecycle, which is still worth observing.
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("subscribe: %s: %s", resp.Status, answer)
	}
	return nil
}

func (p *probe) next() (map[string]any, error) {
	resp, body, err := p.call(http.MethodGet, "/2020-01-01/extension/event/next", nil, "Lambda-Extension-Identifier", p.id)
	if err != nil {
		return nil, fmt.Errorf("next: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("next: %s: %s", resp.Status, body)
	}
	var ev map[string]any
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, fmt.Errorf("next: %w", err)
	}
	p.note("next", json.RawMessage(body))
	return ev, nil
}

// receive stores a telemetry batch before answering, so that when the
// emulator has seen the answer the events are already on disk.
func (p *probe) receive(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var events []json.RawMessage
	if err := json.Unmarshal(body, &events); err != nil {
		p.note("bad-batch", string(body))
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var buf bytes.Buffer
	for _, ev := range events {
		buf.Write(ev)
		buf.WriteByte('\n')
	}
	p.mu.Lock()
	_, werr := p.out.Write(buf.Bytes())
	if p.raw != nil {
		rec, _ := json.Marshal(map[string]any{"method": r.Method, "path": r.URL.RequestURI(), "headers": r.Header, "body": json.RawMessage(body)})
		_, _ = p.raw.Write(append(rec, '\n'))
	}
	p.mu.Unlock()
	if werr != nil {
		http.Error(w, werr.Error(), http.StatusInternalServerError)
		return
	}
	p.note("batch", map[string]any{"events": len(events), "bytes": len(body), "sequenceId": r.Header.Get("Sequence-Id")})
	w.WriteHeader(http.StatusOK)
}

func jsonOrString(b []byte) []byte {
	if json.Valid(b) {
		return b
	}
	s, _ := json.Marshal(string(b))
	return s
}
