package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestHostileInput posts every kind of bad body to the running extension between normal batches:
// each gets its defined answer, the extension keeps serving, ships the good events exactly once,
// counts the bad ones, and exits 0.
func TestHostileInput(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_FLUSH", "end", "KINESIS_TELEMETRY_BUFFER_BYTES", "262144"))
	fl.init()
	url := fmt.Sprintf("http://127.0.0.1:%d", fl.listenerPort)
	deep := strings.Repeat("[", 5000) + strings.Repeat("]", 5000) // deeper still is kept too (see TestScanBatchDeepNesting), but encoding/json, which reads the stream here, stops at 10,000
	for _, tt := range []struct {
		name, method, path, body string
		want                     int
	}{
		{"huge", "POST", "/", "[" + strings.Repeat(`{"type":"function","record":"xxxxxxxxxx"},`, 60000) + "1]", 413},
		{"truncated", "POST", "/", `[{"time":"t","type":"function","record":"abc`, 400},
		{"not JSON", "POST", "/", "GET / HTTP/1.1\r\n", 400},
		{"empty", "POST", "/", "", 400},
		{"wrong shape", "POST", "/", `{"events":[]}`, 400},
		{"binary", "POST", "/", "\x00\x01\x02\xff", 400},
		{"wrong method", "PUT", "/", `[]`, 405},
		{"wrong path", "POST", "/admin", `[]`, 404},
		{"wrong path traversal", "POST", "/../etc/passwd", `[]`, 404},
	} {
		req, _ := http.NewRequest(tt.method, url+tt.path, strings.NewReader(tt.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s: HTTP %d, want %d", tt.name, resp.StatusCode, tt.want)
		}
	}
	// Accepted and shipped as they are: unknown types, deep nesting, invalid UTF-8 (replaced).
	fl.invoke(invocation{requestID: "r1", textLines: 2})
	fl.post("r1",
		fl.ev("platform.someFutureEvent", `{"requestId":"r1","newField":[1,2,{"x":null}]}`),
		fl.ev("function", `{"level":"INFO","deep":`+deep+`}`),
	)
	fl.postRaw("[{\"time\":\"t\",\"type\":\"function\",\"record\":\"bad \xff byte\"}, 42, \"not an event\"]")
	fl.invoke(invocation{requestID: "r2", textLines: 2})
	fl.shutdown("spindown", 2*time.Second)
	if code := ext.wait(3 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	data, keys := fk.callsData()
	events, counts := decodeRecords(t, data, keys)
	var invalid *shipped
	var rest []shipped
	for i := range events {
		if strings.Contains(string(events[i].Event), "bad \uFFFD byte") {
			invalid = &events[i]
		} else {
			rest = append(rest, events[i])
		}
	}
	checkExactlyOnce(t, fl.postedEvents(), rest)
	if invalid == nil {
		t.Error("the event with invalid UTF-8 was not shipped with U+FFFD")
	}
	last := counts[len(counts)-1]
	malformed := last["malformed"].(map[string]any)
	if malformed["batches"].(float64) != 6 || malformed["events"].(float64) != 2 {
		t.Errorf("counted malformed %v, want 6 batches (the refused methods and paths are not batches) and 2 events", malformed)
	}
}

// TestWritesNothingToDisk runs a whole lifecycle with the working directory, HOME and TMPDIR in
// empty folders: the extension must leave them empty.
func TestWritesNothingToDisk(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	dirs := map[string]string{"cwd": t.TempDir(), "HOME": t.TempDir(), "TMPDIR": t.TempDir()}
	env := testEnv(fk.URL, "HOME", dirs["HOME"], "TMPDIR", dirs["TMPDIR"])
	ext := startExtensionIn(t, fl, env, dirs["cwd"])
	fl.init()
	for i := range 3 {
		fl.invoke(invocation{requestID: fmt.Sprintf("r%d", i), textLines: 3})
	}
	fl.shutdown("spindown", 2*time.Second)
	if code := ext.wait(3 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	for name, dir := range dirs {
		entries, err := os.ReadDir(dir)
		if err != nil || len(entries) != 0 {
			t.Errorf("%s (%s) holds %v after the run (%v)", name, dir, entries, err)
		}
	}
}

// TestListenerBindsLoopbackOnly reads the kernel's socket table: the telemetry listener must
// listen on 127.0.0.1 here (where sandbox.localdomain does not resolve), never on all interfaces.
func TestListenerBindsLoopbackOnly(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	env := testEnv(fk.URL)
	ext := startExtension(t, fl, env)
	fl.init()
	table, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", ext.cmd.Process.Pid))
	if err != nil {
		t.Skipf("no /proc socket table here: %v", err)
	}
	port := fmt.Sprintf("%04X", fl.listenerPort)
	var found []string
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 3 && f[3] == "0A" && strings.HasSuffix(f[1], ":"+port) { // 0A: LISTEN
			found = append(found, f[1])
		}
	}
	if len(found) != 1 || found[0] != "0100007F:"+port {
		t.Errorf("listening sockets on port %d: %v, want only 127.0.0.1 (0100007F)", fl.listenerPort, found)
	}
	if tcp6, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp6", ext.cmd.Process.Pid)); err == nil && strings.Contains(string(tcp6), ":"+port+" 00000000000000000000000000000000:0000 0A") {
		t.Errorf("listening on an IPv6 address on port %d", fl.listenerPort)
	}
	fl.shutdown("spindown", 2*time.Second)
	ext.wait(3 * time.Second)
}
