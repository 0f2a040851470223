package main

// End-to-end tests against the real AWS Lambda Runtime Interface Emulator (RIE), the Go tool
// pinned in go.mod. The harness runs the RIE in a private mount namespace with folders of the
// test bound over /opt (and /var in managed-instances mode), so that the machine's own /opt and
// /var are never touched; everything listens on 127.0.0.1 on free ports and is stopped by PID.
// What the tests rely on (the RIE's source is in the module cache, under
// github.com/aws/aws-lambda-runtime-interface-emulator@<go.mod's version>): extensions are
// found in /opt/extensions; in classic mode the Telemetry API answers 202 Telemetry.NotSupported
// and SIGTERM becomes SHUTDOWN "SandboxTerminated" with 2 s; with AWS_LAMBDA_MAX_CONCURRENCY set
// it runs managed instances, where telemetry really flows (to 127.0.0.1, path /, with a
// Sequence-Id header), extensions may register only SHUTDOWN, and everything runs as uid 993.
// testdata/rie-samples holds captures of both modes.

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rieOptions says what one emulator instance runs.
type rieOptions struct {
	Managed    bool              // set AWS_LAMBDA_MAX_CONCURRENCY=1: the managed-instances emulator
	Extensions map[string]string // name in /opt/extensions -> path of a built binary to copy there
	Env        map[string]string // passed to runtime and extensions (through the RIE's environment)
	Function   string            // path of the built handler; default: testdata/function built for the test
}

// rieExit is how one extension process ended.
type rieExit struct {
	Code   int  // exit status, valid when !Killed
	Killed bool // no status was recorded: the process group was SIGKILLed (or it never ran)
}

func (e rieExit) String() string {
	if e.Killed {
		return "killed (no exit status recorded)"
	}
	return fmt.Sprintf("exit status %d", e.Code)
}

// rieInstance is a running emulator owned by one test.
type rieInstance struct {
	Managed    bool
	InvokeAddr string // 127.0.0.1:port of the invoke endpoint
	RuntimeAPI string // 127.0.0.1:port given to runtime and extensions as AWS_LAMBDA_RUNTIME_API
	Root       string // the test-owned tree: opt/, var/, home/, rie.stdout, rie.stderr

	// Filled in by shutdown.
	ExitCode     int                // the RIE's own exit status
	ShutdownTook time.Duration      // from SIGTERM to the RIE's exit
	Exits        map[string]rieExit // per extension name

	cmd        *exec.Cmd
	done       chan struct{} // closed when the RIE has exited
	waitErr    error         // valid once done is closed
	extensions []string
	stdoutPath string
	stderrPath string
	client     *http.Client
}

const (
	// rieStatusDir is where the harness's wrapper scripts record exit statuses, as seen inside
	// the mount namespace.
	rieStatusDir = "/opt/.rie-harness/status"
	rieBinDir    = "/opt/.rie-harness/bin"

	rieStartTimeout  = 15 * time.Second
	rieInvokeTimeout = 30 * time.Second
)

// requireRIE skips the test when the RIE cannot run here (it needs root for mount namespaces and,
// in managed mode, to run processes as uid 993), or fails it when TEST_REQUIRE_PEERS=1 (CI), so
// that nothing is skipped silently there.
func requireRIE(t testing.TB) {
	t.Helper()
	if runtime.GOOS != "linux" {
		rieUnavailable(t, "the Lambda RIE runs on Linux only")
	}
	if os.Geteuid() != 0 {
		rieUnavailable(t, "the Lambda RIE tests need root (private mount namespace over /opt and /var; managed mode runs processes as uid 993)")
	}
	for _, tool := range []string{"unshare", "mount", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			rieUnavailable(t, fmt.Sprintf("%s not found for the RIE's private mount namespace: %v", tool, err))
		}
	}
	rieNamespaceOnce.Do(func() { rieNamespaceErr = rieCheckMountNamespace() })
	if rieNamespaceErr != nil {
		rieUnavailable(t, fmt.Sprintf("cannot bind-mount in a private mount namespace: %v", rieNamespaceErr))
	}
}

func rieUnavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("TEST_REQUIRE_PEERS") == "1" {
		t.Fatalf("Lambda RIE unavailable and TEST_REQUIRE_PEERS=1: %s", why)
	}
	t.Skipf("Lambda RIE unavailable: %s (TEST_REQUIRE_PEERS=1 makes this fatal)", why)
}

var (
	rieNamespaceOnce sync.Once
	rieNamespaceErr  error
)

// rieCheckMountNamespace proves that a bind mount over /opt works in a private namespace and is
// invisible outside it.
func rieCheckMountNamespace() error {
	dir, err := os.MkdirTemp("", "rie-ns-check")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	marker := filepath.Join(dir, "rie-ns-marker")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		return err
	}
	out, err := exec.Command("unshare", "-m", "--propagation", "private", "--",
		"sh", "-c", `mount --bind "$1" /opt && test -e /opt/rie-ns-marker`, "sh", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("unshare: %v: %s", err, bytes.TrimSpace(out))
	}
	if _, err := os.Stat("/opt/rie-ns-marker"); err == nil {
		return errors.New("the bind mount leaked out of the namespace")
	}
	return nil
}

var (
	rieBinaryOnce sync.Once
	rieBinaryPath string
	rieBinaryErr  error
)

// rieBinary builds the RIE pinned in go.mod once per test run. `go tool -n` builds the tool into
// the Go build cache and prints its path, so nothing is left in temp folders.
func rieBinary(t testing.TB) string {
	t.Helper()
	rieBinaryOnce.Do(func() {
		out, err := exec.Command("go", "tool", "-n", "aws-lambda-rie").Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
			}
			rieBinaryErr = fmt.Errorf("go tool -n aws-lambda-rie: %w", err)
			return
		}
		rieBinaryPath = strings.TrimSpace(string(out))
	})
	if rieBinaryErr != nil {
		t.Fatalf("build the RIE: %v", rieBinaryErr)
	}
	return rieBinaryPath
}

// rieBuild builds the Go package pkg (e.g. "./testdata/probe") into dir/name.
func rieBuild(t testing.TB, pkg, dir, name string) string {
	t.Helper()
	out := filepath.Join(dir, name)
	cmd := exec.Command("go", "build", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	return out
}

// rieSharedDir returns a new folder that the RIE's processes can write to even when they run as
// uid 993 (managed mode): it and its parent (t.TempDir's per-test folder, created 0700) are opened
// up. Use it for files extensions write, such as the probe's output.
func rieSharedDir(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatalf("chmod %s: %v", d, err)
		}
	}
	out := filepath.Join(dir, "out")
	if err := os.Mkdir(out, 0o777); err != nil {
		t.Fatal(err)
	}
	// Mkdir is subject to the umask.
	if err := os.Chmod(out, 0o777); err != nil {
		t.Fatal(err)
	}
	return out
}

// rieCopyExecutable copies src to dst with mode 0755.
func rieCopyExecutable(t testing.TB, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("read %s: %v", src, err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatalf("write %s: %v", dst, err)
	}
	if err := os.Chmod(dst, 0o755); err != nil {
		t.Fatal(err)
	}
}

// startRIE starts an emulator for the test and stops it (by PID) when the test ends. Extensions
// are installed in the /opt/extensions the emulator sees; in managed mode the function is
// /var/task/bootstrap, in classic mode it is given on the command line. The RIE gets a clean
// environment (PATH, HOME and o.Env): it forwards all of it to function and
// extensions, and the test process's own AWS settings must not leak into them.
func startRIE(t *testing.T, o rieOptions) *rieInstance {
	t.Helper()
	requireRIE(t)
	rie := rieBinary(t)

	// Everything below root must be reachable by uid 993 in managed mode.
	root := filepath.Join(rieSharedDir(t), "rie")
	dirs := []string{"opt/extensions", "opt/.rie-harness/bin", "var/task", "var/runtime", "home"}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	statusDir := filepath.Join(root, "opt/.rie-harness/status")
	if err := os.MkdirAll(statusDir, 0o777); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(statusDir, 0o777); err != nil {
		t.Fatal(err)
	}

	function := o.Function
	if function == "" {
		function = rieBuild(t, "./testdata/function", t.TempDir(), "bootstrap")
	}
	bootstrap := filepath.Join(root, "var/task/bootstrap")
	rieCopyExecutable(t, function, bootstrap)

	r := &rieInstance{
		Managed:    o.Managed,
		InvokeAddr: fmt.Sprintf("127.0.0.1:%d", freePort()),
		RuntimeAPI: fmt.Sprintf("127.0.0.1:%d", freePort()),
		Root:       root,
		Exits:      map[string]rieExit{},
		done:       make(chan struct{}),
		stdoutPath: filepath.Join(root, "rie.stdout"),
		stderrPath: filepath.Join(root, "rie.stderr"),
		client:     &http.Client{Timeout: rieInvokeTimeout},
	}
	for name, bin := range o.Extensions {
		r.installExtension(t, name, bin)
	}
	sort.Strings(r.extensions)

	env := map[string]string{
		"PATH": "/usr/local/bin:/usr/bin:/bin",
		"HOME": "/var/.rie-home",
	}
	if !o.Managed {
		// /var is not replaced in classic mode.
		env["HOME"] = filepath.Join(root, "home")
	} else {
		if err := os.MkdirAll(filepath.Join(root, "var/.rie-home"), 0o755); err != nil {
			t.Fatal(err)
		}
		env["AWS_LAMBDA_MAX_CONCURRENCY"] = "1"
	}
	for k, v := range o.Env {
		env[k] = v
	}
	var envList []string
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	sort.Strings(envList)

	// unshare does not fork and the shell execs: the PID we start is the RIE's from start to end.
	script := `mount --bind "$1" /opt || exit 97
if [ -n "$2" ]; then mount --bind "$2" /var || exit 98; fi
shift 2
exec "$@"`
	varDir := ""
	if o.Managed {
		varDir = filepath.Join(root, "var")
	}
	args := []string{"-m", "--propagation", "private", "--", "sh", "-c", script, "rie-mounts",
		filepath.Join(root, "opt"), varDir,
		rie,
		"--runtime-interface-emulator-address", r.InvokeAddr,
		"--runtime-api-address", r.RuntimeAPI,
		// A flag, not LOG_LEVEL: the RIE would pass the variable on to function and extensions.
		"--log-level", "debug",
	}
	if !o.Managed {
		args = append(args, bootstrap)
	}
	stdout, err := os.Create(r.stdoutPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stdout.Close()
	stderr, err := os.Create(r.stderrPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()

	cmd := exec.Command("unshare", args...)
	cmd.Env = envList
	// The bootstrap's folder, as Lambda does; extensions inherit the RIE's working directory.
	cmd.Dir = filepath.Join(root, "var/task")
	cmd.Stdout = stdout
	cmd.Stderr = stderr
	// If the test binary dies, the RIE goes with it rather than holding its ports.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start RIE: %v", err)
	}
	r.cmd = cmd
	go func() {
		r.waitErr = cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() { r.stop(t) })

	if err := r.waitServing(rieStartTimeout); err != nil {
		t.Fatalf("RIE not serving on %s: %v\n%s", r.InvokeAddr, err, r.logTail(8000))
	}
	t.Logf("RIE (%s mode, pid %d) serving on %s, Runtime API %s, extensions %v",
		r.mode(), cmd.Process.Pid, r.InvokeAddr, r.RuntimeAPI, r.extensions)
	return r
}

func (r *rieInstance) mode() string {
	if r.Managed {
		return "managed-instances"
	}
	return "classic"
}

// installExtension puts a wrapper at /opt/extensions/name that runs the real binary, installed
// under the same base name (the name it registers with), and records its exit status: the
// classic RIE does not report how extensions exited.
func (r *rieInstance) installExtension(t testing.TB, name, bin string) {
	t.Helper()
	if name == "" || strings.ContainsAny(name, "/'\" \n") {
		t.Fatalf("bad extension name %q", name)
	}
	real := filepath.Join(rieBinDir, name, name)
	rieCopyExecutable(t, bin, filepath.Join(r.Root, "opt", strings.TrimPrefix(real, "/opt/")))
	wrapper := fmt.Sprintf(`#!/bin/sh
# Written by rie_test.go: runs the extension and records its exit status for the test.
'%s' "$@"
status=$?
echo "$status" > '%s/%s'
exit "$status"
`, real, rieStatusDir, name)
	path := filepath.Join(r.Root, "opt/extensions", name)
	if err := os.WriteFile(path, []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o755); err != nil {
		t.Fatal(err)
	}
	r.extensions = append(r.extensions, name)
}

// waitServing waits until the invoke endpoint accepts connections or the RIE has exited.
func (r *rieInstance) waitServing(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		select {
		case <-r.done:
			return fmt.Errorf("RIE exited: %v", r.waitErr)
		default:
		}
		c, err := net.DialTimeout("tcp", r.InvokeAddr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// invoke sends payload to the function and returns the emulator's answer. The managed RIE
// answers 400 Runtime.Unavailable, before any telemetry, when the runtime has not come back to
// /next since its last answer (the caller gets the answer first); invoke then tries again, as
// Lambda's front end would route the request once a runtime is free.
func (r *rieInstance) invoke(t *testing.T, payload string) (status int, body []byte) {
	t.Helper()
	url := "http://" + r.InvokeAddr + "/2015-03-31/functions/function/invocations"
	deadline := time.Now().Add(rieInvokeTimeout)
	for {
		status, body = r.post(t, url, payload)
		if !r.Managed || status != http.StatusBadRequest || !bytes.Contains(body, []byte(`"Runtime.Unavailable"`)) ||
			time.Now().After(deadline) {
			return status, body
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (r *rieInstance) post(t *testing.T, url, payload string) (int, []byte) {
	t.Helper()
	resp, err := r.client.Post(url, "application/json", strings.NewReader(payload))
	if err != nil {
		t.Fatalf("invoke %s: %v\n%s", payload, err, r.logTail(4000))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("invoke %s: read answer: %v", payload, err)
	}
	return resp.StatusCode, body
}

// rieAnswer is what testdata/function answers.
type rieAnswer struct {
	N         int    `json:"n"`
	RequestID string `json:"requestId"`
}

// invokeN invokes the function with {"n":n} and returns the request id it ran under; any answer
// other than 200 with that n fails the test.
func (r *rieInstance) invokeN(t *testing.T, n int) string {
	t.Helper()
	status, body := r.invoke(t, fmt.Sprintf(`{"n":%d}`, n))
	var a rieAnswer
	if status != http.StatusOK || json.Unmarshal(body, &a) != nil || a.N != n || a.RequestID == "" {
		t.Fatalf("invoke n=%d: got %d %s, want 200 {\"n\":%d,\"requestId\":…}\n%s", n, status, body, n, r.logTail(4000))
	}
	return a.RequestID
}

// shutdown sends SIGTERM (Lambda's SHUTDOWN for the extensions), waits for the RIE to exit and
// records how it and every extension exited. Not exiting within the given time fails the test.
func (r *rieInstance) shutdown(t *testing.T, within time.Duration) {
	t.Helper()
	start := time.Now()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM RIE (pid %d): %v", r.cmd.Process.Pid, err)
	}
	select {
	case <-r.done:
	case <-time.After(within):
		t.Errorf("RIE did not exit within %v of SIGTERM; killing it\n%s", within, r.logTail(8000))
		r.kill()
		<-r.done
	}
	r.ShutdownTook = time.Since(start)
	r.ExitCode = r.cmd.ProcessState.ExitCode()
	r.readExits(t)
	var parts []string
	for _, name := range r.extensions {
		parts = append(parts, fmt.Sprintf("%s: %v", name, r.Exits[name]))
	}
	t.Logf("RIE exited with status %d %v after SIGTERM; extensions: %s",
		r.ExitCode, r.ShutdownTook.Round(time.Millisecond), strings.Join(parts, "; "))
}

func (r *rieInstance) readExits(t testing.TB) {
	t.Helper()
	for _, name := range r.extensions {
		b, err := os.ReadFile(filepath.Join(r.Root, "opt/.rie-harness/status", name))
		if err != nil {
			r.Exits[name] = rieExit{Killed: true}
			continue
		}
		code, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("exit status of %s: %q: %v", name, b, err)
		}
		r.Exits[name] = rieExit{Code: code}
	}
}

// stop ends the RIE if the test has not shut it down: SIGTERM first so that it stops its
// children, then SIGKILL for it and the process groups of its children.
func (r *rieInstance) stop(t testing.TB) {
	select {
	case <-r.done:
	default:
		_ = r.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			r.kill()
			<-r.done
		}
	}
	if t.Failed() {
		t.Logf("RIE output (tail):\n%s", r.logTail(16000))
	}
}

// kill SIGKILLs the RIE and the process groups of its children (runtime and extensions run in
// their own groups), all by PID.
func (r *rieInstance) kill() {
	pid := r.cmd.Process.Pid
	children := rieChildren(pid)
	_ = r.cmd.Process.Kill()
	for _, c := range children {
		_ = syscall.Kill(-c, syscall.SIGKILL)
		_ = syscall.Kill(c, syscall.SIGKILL)
	}
}

// rieChildren lists the PIDs whose parent is pid.
func rieChildren(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state ppid ...
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(pid) {
			out = append(out, child)
		}
	}
	return out
}

// stdout returns what the RIE wrote to stdout: the function's and (classic) the extensions'
// output, and in managed mode the RIE's own log as well.
func (r *rieInstance) stdout(t testing.TB) string { t.Helper(); return readText(t, r.stdoutPath) }

// stderr returns what the RIE wrote to stderr.
func (r *rieInstance) stderr(t testing.TB) string { t.Helper(); return readText(t, r.stderrPath) }

// readText returns the file's content, failing the test where it cannot be read.
func readText(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// logTail returns the last n bytes of the RIE's stdout and stderr.
func (r *rieInstance) logTail(n int) string {
	var sb strings.Builder
	for _, p := range []string{r.stdoutPath, r.stderrPath} {
		b, _ := os.ReadFile(p)
		if len(b) > n {
			b = append([]byte("…"), b[len(b)-n:]...)
		}
		fmt.Fprintf(&sb, "--- %s ---\n%s\n", filepath.Base(p), b)
	}
	return sb.String()
}

// rieEvent is one Telemetry API event as the probe stored it.
type rieEvent struct {
	Raw    json.RawMessage
	Time   string          `json:"time"`
	Type   string          `json:"type"`
	Record json.RawMessage `json:"record"`
}

// requestID is the event record's own requestId, if it has one.
func (e rieEvent) requestID() string {
	var rec struct {
		RequestID string `json:"requestId"`
	}
	if json.Unmarshal(e.Record, &rec) != nil {
		return ""
	}
	return rec.RequestID
}

// text is the record of a function or extension event when it is a string.
func (e rieEvent) text() (string, bool) {
	var s string
	if json.Unmarshal(e.Record, &s) != nil {
		return "", false
	}
	return s, true
}

// probeEvents parses the probe's output file: one event per line.
func probeEvents(t testing.TB, path string) []rieEvent {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("probe output: %v", err)
	}
	return probeEventsIfAny(t, path)
}

// probeEventsIfAny is probeEvents for a file that may not exist yet. A last line the
// probe is still writing (no newline yet) is left for the next read.
func probeEventsIfAny(t testing.TB, path string) []rieEvent {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatalf("probe output: %v", err)
	}
	var events []rieEvent
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			break
		}
		line := b[:i]
		b = b[i+1:]
		var e rieEvent
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatalf("probe output %s: bad line %q: %v", path, line, err)
		}
		e.Raw = line
		events = append(events, e)
	}
	return events
}

// probeNote is one line of the probe's PROBE_LOG.
type probeNote struct {
	Kind string          `json:"kind"`
	At   int64           `json:"at"`
	Data json.RawMessage `json:"data"`
}

func probeNotes(t testing.TB, path string) []probeNote {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("probe log: %v", err)
	}
	var notes []probeNote
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var n probeNote
		if err := json.Unmarshal(line, &n); err != nil {
			t.Fatalf("probe log: bad line %q: %v", line, err)
		}
		notes = append(notes, n)
	}
	return notes
}

// probeNoteOf returns the data of the first note of kind, decoded into v.
func probeNoteOf(t testing.TB, notes []probeNote, kind string, v any) {
	t.Helper()
	for _, n := range notes {
		if n.Kind == kind {
			if err := json.Unmarshal(n.Data, v); err != nil {
				t.Fatalf("probe note %s: %v", kind, err)
			}
			return
		}
	}
	t.Fatalf("probe log has no %q note", kind)
}

// rieCanonicalJSON re-encodes a JSON value with sorted keys and no insignificant white space,
// keeping number literals as written: two encodings of the same event compare equal, any
// change of a value (including 1.790 → 1.79) does not.
func rieCanonicalJSON(raw []byte) (string, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return "", err
	}
	if dec.More() {
		return "", errors.New("trailing data after the JSON value")
	}
	b, err := json.Marshal(v)
	return string(b), err
}

// rieLines are the function lines testdata/function prints for {"n":n}.
func rieLines(n int) []string {
	return []string{fmt.Sprintf("line %d text", n), fmt.Sprintf(`{"level":"INFO","msg":"line %d json"}`, n)}
}

// probeWaitInvocation waits until the probe has stored platform.report for request id and both
// lines the function printed for n. The managed RIE relays the function's output through a pipe
// reader of its own, so the lines can reach subscribers after platform.report (observed); waiting
// before the next invoke keeps every request's lines ahead of the next request's platform.start,
// the only order in which "the invocation a line was printed in" can be told from the stream.
func probeWaitInvocation(t *testing.T, path string, n int, id string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		seen := 0
		for _, e := range probeEventsIfAny(t, path) {
			if e.Type == "platform.report" && e.requestID() == id {
				seen++
			}
			if s, ok := e.text(); ok && e.Type == "function" && (s == rieLines(n)[0] || s == rieLines(n)[1]) {
				seen++
			}
		}
		if seen == 3 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the probe did not receive platform.report and the lines of request %d (%s) within 5s", n, id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// probeCheckInvocations asserts that events hold, for every request (ids[i] ran with n = i+1),
// exactly one platform.start, exactly one platform.report after it, and the function's two lines
// after that platform.start and before the next request's. It returns how many requests had a
// line arrive after their platform.report.
func probeCheckInvocations(t *testing.T, events []rieEvent, ids []string) (lateLines int) {
	t.Helper()
	pos := func(pred func(rieEvent) bool) []int {
		var at []int
		for i, e := range events {
			if pred(e) {
				at = append(at, i)
			}
		}
		return at
	}
	startOf := func(id string) []int {
		return pos(func(e rieEvent) bool { return e.Type == "platform.start" && e.requestID() == id })
	}
	for i, id := range ids {
		n := i + 1
		starts := startOf(id)
		reports := pos(func(e rieEvent) bool { return e.Type == "platform.report" && e.requestID() == id })
		if len(starts) != 1 || len(reports) != 1 {
			t.Errorf("request %d (%s): got %d platform.start and %d platform.report, want 1 each", n, id, len(starts), len(reports))
			continue
		}
		if reports[0] < starts[0] {
			t.Errorf("request %d: platform.report (%d) before platform.start (%d)", n, reports[0], starts[0])
		}
		next := len(events)
		if i+1 < len(ids) {
			if s := startOf(ids[i+1]); len(s) == 1 {
				next = s[0]
			}
		}
		late := false
		for _, want := range rieLines(n) {
			lines := pos(func(e rieEvent) bool { s, ok := e.text(); return e.Type == "function" && ok && s == want })
			if len(lines) != 1 {
				t.Errorf("request %d: function line %q seen %d times, want once", n, want, len(lines))
				continue
			}
			if !(starts[0] < lines[0] && lines[0] < next) {
				t.Errorf("request %d: line %q at %d, not between its platform.start (%d) and the next request's (%d)",
					n, want, lines[0], starts[0], next)
			}
			late = late || lines[0] > reports[0]
		}
		if late {
			lateLines++
		}
	}
	return lateLines
}

// TestRIEProbe proves the harness and the probe: in managed-instances mode two copies of the
// probe, subscribed on different ports, each capture the whole init sequence and, for every
// invocation, platform.start, the function's lines and platform.report — the same events.
func TestRIEProbe(t *testing.T) {
	requireRIE(t)
	probe := rieBuild(t, "./testdata/probe", t.TempDir(), "probe")
	out := rieSharedDir(t)
	r := startRIE(t, rieOptions{
		Managed:    true,
		Extensions: map[string]string{"probe": probe, "probe2": probe},
		Env: map[string]string{
			"PROBE_OUT":                filepath.Join(out, "probe.jsonl"),
			"PROBE_LOG":                filepath.Join(out, "probe.log"),
			"PROBE_PORT":               strconv.Itoa(freePort()),
			"PROBE_OUT_PROBE2":         filepath.Join(out, "probe2.jsonl"),
			"PROBE_LOG_PROBE2":         filepath.Join(out, "probe2.log"),
			"PROBE_PORT_PROBE2":        strconv.Itoa(freePort()),
			"AWS_REGION":               "eu-west-1",
			"AWS_ACCESS_KEY_ID":        "AKIDRIEPROBETEST",
			"AWS_SECRET_ACCESS_KEY":    "rie-probe-test-secret",
			"KINESIS_TELEMETRY_STREAM": "probe-stream",
		},
	})

	const n = 5
	var ids []string
	for i := 1; i <= n; i++ {
		ids = append(ids, r.invokeN(t, i))
		probeWaitInvocation(t, filepath.Join(out, "probe.jsonl"), i, ids[i-1])
	}
	r.shutdown(t, 5*time.Second)
	for _, name := range []string{"probe", "probe2"} {
		if got := r.Exits[name]; got != (rieExit{Code: 0}) {
			t.Errorf("%s: %v, want exit status 0", name, got)
		}
	}

	events := probeEvents(t, filepath.Join(out, "probe.jsonl"))
	t.Logf("probe captured %d events", len(events))
	// The init sequence is replayed to every subscriber, so each probe sees all of it.
	var initTypes []string
	for _, e := range events {
		if strings.HasPrefix(e.Type, "platform.init") || e.Type == "platform.extension" || e.Type == "platform.telemetrySubscription" {
			initTypes = append(initTypes, e.Type)
		}
	}
	sort.Strings(initTypes)
	wantInit := []string{"platform.extension", "platform.extension", "platform.initReport", "platform.initRuntimeDone",
		"platform.initStart", "platform.telemetrySubscription", "platform.telemetrySubscription"}
	if strings.Join(initTypes, ",") != strings.Join(wantInit, ",") {
		t.Errorf("init events: got %v, want %v", initTypes, wantInit)
	}
	if len(events) == 0 || events[0].Type != "platform.initStart" {
		t.Fatalf("probe captured %d events, the first not platform.initStart", len(events))
	}
	late := probeCheckInvocations(t, events, ids)
	t.Logf("%d of %d requests had a function line arrive after their platform.report", late, n)
	for _, e := range events {
		if e.Type == "platform.runtimeDone" || e.Type == "platform.logsDropped" {
			t.Errorf("unexpected %s in managed mode: %s", e.Type, e.Raw)
		}
	}
	if want := len(wantInit) + 4*n; len(events) != want {
		t.Errorf("probe captured %d events, want %d", len(events), want)
	}

	// Both subscribers got the same events, in the same order.
	events2 := probeEvents(t, filepath.Join(out, "probe2.jsonl"))
	if len(events2) != len(events) {
		t.Errorf("probe2 captured %d events, probe %d", len(events2), len(events))
	} else {
		for i := range events {
			if !bytes.Equal(events[i].Raw, events2[i].Raw) {
				t.Errorf("event %d differs:\nprobe:  %s\nprobe2: %s", i, events[i].Raw, events2[i].Raw)
				break
			}
		}
	}

	// What the extension saw of the lifecycle and its environment.
	notes := probeNotes(t, filepath.Join(out, "probe.log"))
	probeCheckEnv(t, notes, map[string]string{
		"AWS_LAMBDA_INITIALIZATION_TYPE": "lambda-managed-instances",
		"AWS_REGION":                     "eu-west-1",
		"AWS_ACCESS_KEY_ID":              "AKIDRIEPROBETEST",
		"AWS_SECRET_ACCESS_KEY":          fmt.Sprintf("<%d bytes>", len("rie-probe-test-secret")),
		"KINESIS_TELEMETRY_STREAM":       "probe-stream",
		"AWS_LAMBDA_RUNTIME_API":         r.RuntimeAPI,
		"uid":                            "993",
	})
	var reg struct {
		Status int `json:"status"`
		Body   struct {
			FunctionName, FunctionVersion, AccountID string
		} `json:"body"`
	}
	probeNoteOf(t, notes, "register", &reg)
	if reg.Status != 200 || reg.Body.FunctionName != "test_function" || reg.Body.AccountID != "123456789012" {
		t.Errorf("register: got %+v, want 200 with functionName test_function and accountId 123456789012", reg)
	}
	var sub struct {
		Status int             `json:"status"`
		Body   json.RawMessage `json:"body"`
	}
	probeNoteOf(t, notes, "subscribe", &sub)
	if sub.Status != 200 || string(sub.Body) != `"OK"` {
		t.Errorf("subscribe: got %d %s, want 200 \"OK\"", sub.Status, sub.Body)
	}
	probeCheckShutdown(t, notes, "spindown")
}

// probeCheckEnv asserts that the environment the probe noted (values of secrets as their length)
// has the wanted values; "" wants a variable unset or empty.
func probeCheckEnv(t *testing.T, notes []probeNote, want map[string]string) {
	t.Helper()
	var env map[string]string
	probeNoteOf(t, notes, "env", &env)
	for k, w := range want {
		if env[k] != w {
			t.Errorf("extension environment %s: got %q, want %q", k, env[k], w)
		}
	}
}

// probeCheckShutdown asserts that the probe got SHUTDOWN with the reason and a deadline of about
// two seconds after it arrived.
func probeCheckShutdown(t *testing.T, notes []probeNote, reason string) {
	t.Helper()
	for _, n := range notes {
		if n.Kind != "next" {
			continue
		}
		var ev struct {
			EventType      string `json:"eventType"`
			ShutdownReason string `json:"shutdownReason"`
			DeadlineMs     int64  `json:"deadlineMs"`
		}
		if err := json.Unmarshal(n.Data, &ev); err != nil {
			t.Fatal(err)
		}
		if ev.EventType != "SHUTDOWN" {
			continue
		}
		if ev.ShutdownReason != reason {
			t.Errorf("SHUTDOWN reason: got %q, want %q", ev.ShutdownReason, reason)
		}
		if left := ev.DeadlineMs - n.At; left < 1000 || left > 2100 {
			t.Errorf("SHUTDOWN deadlineMs is %d ms after its arrival, want about 2000", left)
		}
		return
	}
	t.Errorf("the probe saw no SHUTDOWN")
}

// TestRIEProbeClassic shows what the classic emulator gives an extension: INVOKE events with the
// right request ids, a 202 Telemetry.NotSupported answer to the subscription, the test's
// environment, and SHUTDOWN (SandboxTerminated, 2 s deadline) on SIGTERM.
func TestRIEProbeClassic(t *testing.T) {
	requireRIE(t)
	probe := rieBuild(t, "./testdata/probe", t.TempDir(), "probe")
	out := rieSharedDir(t)
	r := startRIE(t, rieOptions{
		Extensions: map[string]string{"probe": probe},
		Env: map[string]string{
			"PROBE_OUT":                filepath.Join(out, "probe.jsonl"),
			"PROBE_LOG":                filepath.Join(out, "probe.log"),
			"PROBE_PORT":               strconv.Itoa(freePort()),
			"AWS_REGION":               "eu-west-1",
			"AWS_ACCESS_KEY_ID":        "AKIDRIEPROBETEST",
			"AWS_SECRET_ACCESS_KEY":    "rie-probe-test-secret",
			"KINESIS_TELEMETRY_STREAM": "probe-stream",
		},
	})
	var ids []string
	for i := 1; i <= 3; i++ {
		ids = append(ids, r.invokeN(t, i))
	}
	r.shutdown(t, 5*time.Second)
	if got := r.Exits["probe"]; got != (rieExit{Code: 0}) {
		t.Errorf("probe: %v, want exit status 0", got)
	}
	if r.ExitCode != 0 {
		t.Errorf("RIE exit status %d, want 0", r.ExitCode)
	}

	notes := probeNotes(t, filepath.Join(out, "probe.log"))
	probeCheckEnv(t, notes, map[string]string{
		"AWS_LAMBDA_INITIALIZATION_TYPE": "", // classic sets none
		"AWS_REGION":                     "eu-west-1",
		"AWS_ACCESS_KEY_ID":              "AKIDRIEPROBETEST",
		"KINESIS_TELEMETRY_STREAM":       "probe-stream",
		"AWS_LAMBDA_FUNCTION_NAME":       "test_function",
		"uid":                            "0",
	})
	var sub struct {
		Status int `json:"status"`
		Body   struct {
			ErrorType string `json:"errorType"`
		} `json:"body"`
	}
	probeNoteOf(t, notes, "subscribe", &sub)
	if sub.Status != http.StatusAccepted || sub.Body.ErrorType != "Telemetry.NotSupported" {
		t.Errorf("subscribe: got %d %+v, want 202 Telemetry.NotSupported", sub.Status, sub.Body)
	}
	var invoked []string
	for _, n := range notes {
		var ev struct {
			EventType string `json:"eventType"`
			RequestID string `json:"requestId"`
		}
		if n.Kind == "next" && json.Unmarshal(n.Data, &ev) == nil && ev.EventType == "INVOKE" {
			invoked = append(invoked, ev.RequestID)
		}
	}
	if strings.Join(invoked, ",") != strings.Join(ids, ",") {
		t.Errorf("INVOKE request ids: got %v, want %v", invoked, ids)
	}
	probeCheckShutdown(t, notes, "SandboxTerminated")
	if events, err := os.ReadFile(filepath.Join(out, "probe.jsonl")); err != nil || len(events) != 0 {
		t.Errorf("classic mode delivered telemetry (%v): %q", err, events)
	}
}

// The product under test.
const (
	rieProductName = "kinesis-telemetry-extension"
	rieCountsType  = "kinesis-telemetry-extension.counts"
)

// rieProductBinary returns the extension binary from the layer zip in dist/ for this machine's
// architecture, or, when the zip has not been built, a fresh `go build` of the repository.
func rieProductBinary(t testing.TB) string {
	t.Helper()
	arch := map[string]string{"amd64": "x86_64", "arm64": "arm64"}[runtime.GOARCH]
	zipPath := filepath.Join("dist", fmt.Sprintf("%s-%s.zip", rieProductName, arch))
	dir := t.TempDir()
	zr, err := zip.OpenReader(zipPath)
	if err != nil {
		t.Logf("%s not available (%v): building the extension with `go build` instead", zipPath, err)
		return rieBuild(t, ".", dir, rieProductName)
	}
	defer zr.Close()
	for _, f := range zr.File {
		if f.Name != "extensions/"+rieProductName {
			continue
		}
		rc, err := f.Open()
		if err != nil {
			t.Fatalf("%s: %v", zipPath, err)
		}
		defer rc.Close()
		out := filepath.Join(dir, rieProductName)
		w, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(w, rc); err != nil {
			t.Fatalf("unzip %s: %v", zipPath, err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		t.Logf("extension from %s (mode %v in the zip)", zipPath, f.Mode())
		return out
	}
	t.Fatalf("%s holds no extensions/%s", zipPath, rieProductName)
	return ""
}

// rieEnvelope is the data of one record the extension writes to Kinesis.
type rieEnvelope = envelopeOf

// rieLanded is one record read back from the stream, decoded.
type rieLanded struct {
	rieEnvelope
	Type   string // event.type
	Canon  string // rieCanonicalJSON(event)
	Record storedRecord
}

func rieDecodeLanded(t testing.TB, recs []storedRecord) []rieLanded {
	t.Helper()
	var out []rieLanded
	for _, rec := range recs {
		var l rieLanded
		if err := json.Unmarshal(rec.Data, &l.rieEnvelope); err != nil {
			t.Fatalf("record %s/%s is not a JSON envelope: %v: %q", rec.ShardID, rec.SequenceNumber, err, rec.Data)
		}
		var head struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(l.Event, &head); err != nil {
			t.Fatalf("record %s/%s: event: %v: %q", rec.ShardID, rec.SequenceNumber, err, rec.Data)
		}
		canon, err := rieCanonicalJSON(l.Event)
		if err != nil {
			t.Fatalf("record %s/%s: event: %v", rec.ShardID, rec.SequenceNumber, err)
		}
		l.Type, l.Canon, l.Record = head.Type, canon, rec
		out = append(out, l)
	}
	return out
}

// rieProductEnv is the configuration every product test gives the extension.
func rieProductEnv(p *kinesisPeer, stream string, port int) map[string]string {
	env := map[string]string{
		"KINESIS_TELEMETRY_STREAM":   stream,
		"KINESIS_TELEMETRY_ENDPOINT": p.Endpoint,
		"KINESIS_TELEMETRY_PORT":     strconv.Itoa(port),
		"AWS_REGION":                 p.Region,
		"AWS_ACCESS_KEY_ID":          "AKIDRIETEST",
		"AWS_SECRET_ACCESS_KEY":      "rie-test-secret",
		"AWS_LAMBDA_FUNCTION_NAME":   "kte-rie-function",
	}
	if p.Account != "" {
		// The managed RIE answers register with this account id.
		env["AWS_ACCOUNT_ID"] = p.Account
	}
	return env
}

// runRIEManagedProbe runs the built extension beside the probe in the RIE's managed-instances
// mode, shipping to stream on kinesis with the given extra settings (name, value, ...), through n
// invocations, each until the probe has seen its events, then SIGTERM. It checks that both exit 0
// before the SHUTDOWN deadline and returns what the probe received (the ground truth), the
// request ids, in order, and the extensions' environment.
func runRIEManagedProbe(t *testing.T, kinesis *kinesisPeer, stream string, n int, settings ...string) (probed []rieEvent, ids []string, env map[string]string) {
	t.Helper()
	product := rieProductBinary(t)
	probe := rieBuild(t, "./testdata/probe", t.TempDir(), "probe")
	out := rieSharedDir(t)
	env = rieProductEnv(kinesis, stream, freePort())
	front := rieOverTLS(t, env) // HTTPS, as in production (tlsfront_test.go)
	defer front.checkWire(t, wireH2)
	for i := 0; i+1 < len(settings); i += 2 {
		env[settings[i]] = settings[i+1]
	}
	env["PROBE_OUT"] = filepath.Join(out, "probe.jsonl")
	env["PROBE_PORT"] = strconv.Itoa(freePort())
	r := startRIE(t, rieOptions{
		Managed:    true,
		Extensions: map[string]string{rieProductName: product, "probe": probe},
		Env:        env,
	})
	ids = make([]string, n)
	for i := 1; i <= n; i++ {
		ids[i-1] = r.invokeN(t, i)
		probeWaitInvocation(t, env["PROBE_OUT"], i, ids[i-1])
	}
	r.shutdown(t, 6*time.Second)
	if got := r.Exits[rieProductName]; got != (rieExit{Code: 0}) {
		t.Errorf("%s: %v, want exit status 0 before the SHUTDOWN deadline", rieProductName, got)
	}
	if got := r.Exits["probe"]; got != (rieExit{Code: 0}) {
		t.Fatalf("probe: %v, want exit status 0 (the ground truth is incomplete)", got)
	}
	return probeEvents(t, env["PROBE_OUT"]), ids, env
}

// TestRIEManaged runs the built extension beside the probe in the managed-instances emulator
// against kinesalite: after N invocations and SIGTERM, every event the emulator produced (as the
// probe saw it) is in the stream exactly once, with one request's events in the emulator's
// order, each in an envelope with the right request id and function metadata.
//
// Events are compared semantically (rieCanonicalJSON: key order and white space ignored, every
// value including number literals kept): "exactly as received" is about content, and a
// re-encoding that keeps every value is not a loss. How many were also byte-identical is logged.
// It runs against both Kinesis emulators: kinesalite with the stream by name, kinesis-mock (an
// independent implementation) with the stream by ARN.
func TestRIEManaged(t *testing.T) {
	requireRIE(t)
	const stream = "rie-managed"
	for _, tt := range []struct {
		name  string
		start func(t *testing.T) *kinesisPeer
		byARN bool
	}{
		{"kinesalite", func(t *testing.T) *kinesisPeer { return startKinesalite(t, streamSpec{Name: stream, Shards: 2}) }, false},
		{"kinesis-mock by ARN", func(t *testing.T) *kinesisPeer {
			return startKinesisMock(t, "eu-west-1", "123456789012", streamSpec{Name: stream, Shards: 2})
		}, true},
	} {
		t.Run(tt.name, func(t *testing.T) { testRIEManaged(t, tt.start(t), stream, tt.byARN) })
	}
}

func testRIEManaged(t *testing.T, kinesis *kinesisPeer, stream string, byARN bool) {
	var settings []string
	if byARN {
		settings = []string{"KINESIS_TELEMETRY_STREAM", kinesis.streamARN(stream)}
	}
	const n = 60
	probed, ids, env := runRIEManagedProbe(t, kinesis, stream, n, settings...)
	lineOwner := map[string]string{} // function line -> request id that printed it
	for i, id := range ids {
		for _, line := range rieLines(i + 1) {
			lineOwner[line] = id
		}
	}
	late := probeCheckInvocations(t, probed, ids)
	t.Logf("%d of %d requests had a function line arrive after their platform.report", late, n)
	kinesis.waitForRecords(t, stream, len(probed), 15*time.Second)
	// Read once more: anything beyond the expected count (duplicates) must be seen too.
	landed := rieDecodeLanded(t, kinesis.readAll(t, stream))
	var events []rieLanded
	counts := 0
	for _, l := range landed {
		if l.Type == rieCountsType {
			counts++
			continue
		}
		events = append(events, l)
	}
	t.Logf("probe: %d events; stream: %d records (%d events, %d counts records)", len(probed), len(landed), len(events), counts)

	// Exactly once: the stream's events and the probe's are the same multiset.
	want := map[string]int{}
	rawByCanon := map[string][]byte{}
	for _, e := range probed {
		c, err := rieCanonicalJSON(e.Raw)
		if err != nil {
			t.Fatal(err)
		}
		want[c]++
		rawByCanon[c] = e.Raw
	}
	got := map[string]int{}
	byteIdentical := 0
	for _, l := range events {
		got[l.Canon]++
		if bytes.Equal(l.Event, rawByCanon[l.Canon]) {
			byteIdentical++
		}
	}
	t.Logf("%d of %d landed events are byte-identical to what the probe received", byteIdentical, len(events))
	var wrong []string
	for c, w := range want {
		if g := got[c]; g != w {
			wrong = append(wrong, fmt.Sprintf("in the stream %d times, want %d: %s", g, w, c))
		}
	}
	for c, g := range got {
		if _, ok := want[c]; !ok {
			wrong = append(wrong, fmt.Sprintf("in the stream %d times, never sent by the emulator (or missed by the probe): %s", g, c))
		}
	}
	rieReportSome(t, "events not exactly once", wrong)

	// Envelopes: function metadata, unique ids, and the request id the event belongs to.
	seenIDs := map[string]bool{}
	for _, l := range landed {
		if l.ID == "" || seenIDs[l.ID] {
			t.Errorf("record id %q is empty or not unique: %s", l.ID, l.Record.Data)
		}
		seenIDs[l.ID] = true
		if l.Function != env["AWS_LAMBDA_FUNCTION_NAME"] || l.Version != "$LATEST" || l.Region != env["AWS_REGION"] ||
			(kinesis.Account != "" && l.Account != kinesis.Account) {
			t.Errorf("envelope metadata: got function=%q version=%q account=%q region=%q, want %q $LATEST %q %q",
				l.Function, l.Version, l.Account, l.Region, env["AWS_LAMBDA_FUNCTION_NAME"], kinesis.Account, env["AWS_REGION"])
			break
		}
	}
	var wrongIDs []string
	for _, l := range events {
		var wantID string
		switch {
		case l.Type == "function":
			var s string
			if err := json.Unmarshal(l.eventRecord(), &s); err != nil {
				t.Errorf("function event with a non-string record: %s", l.Event)
				continue
			}
			wantID = lineOwner[s]
		case l.Type == "platform.start" || l.Type == "platform.report":
			wantID = rieEvent{Record: l.eventRecord()}.requestID()
		default:
			wantID = "" // init-phase events belong to no request
		}
		if l.RequestID != wantID {
			wrongIDs = append(wrongIDs, fmt.Sprintf("got %q, want %q for %s", l.RequestID, wantID, l.Canon))
		}
	}
	rieReportSome(t, "envelopes with a wrong requestId", wrongIDs)

	// Per-request order: one request's events appear in the stream in the probe's order.
	probeOrder := map[string][]string{}
	for _, e := range probed {
		id := e.requestID()
		if s, ok := e.text(); ok && e.Type == "function" {
			id = lineOwner[s]
		}
		if id == "" {
			continue
		}
		c, _ := rieCanonicalJSON(e.Raw)
		probeOrder[id] = append(probeOrder[id], c)
	}
	// In the stream's order on kinesalite; on kinesis-mock, whose answers are slow enough to be
	// pushback, after which the shutdown sends the newest invocation first, in the order of the
	// ids, which restore it in every case.
	ordered := rieStreamOrder(events)
	if kinesis.Name != "kinesalite" {
		ordered = append([]rieLanded(nil), events...)
		sort.SliceStable(ordered, func(i, j int) bool { return idSeq(ordered[i].ID) < idSeq(ordered[j].ID) })
	}
	streamOrder := map[string][]string{}
	for _, l := range ordered {
		if l.RequestID != "" {
			streamOrder[l.RequestID] = append(streamOrder[l.RequestID], l.Canon)
		}
	}
	var misordered []string
	for _, id := range ids {
		if g, w := strings.Join(streamOrder[id], "\n  "), strings.Join(probeOrder[id], "\n  "); g != w {
			misordered = append(misordered, fmt.Sprintf("request %s in the stream:\n  %s\nwant the emulator's order:\n  %s", id, g, w))
		}
	}
	rieReportSome(t, "requests whose events are out of order", misordered)
}

// rieReportSome fails the test with the first few of problems, sorted, and their number.
func rieReportSome(t *testing.T, what string, problems []string) {
	t.Helper()
	if len(problems) == 0 {
		return
	}
	sort.Strings(problems)
	const most = 8
	shown := problems
	if len(shown) > most {
		shown = shown[:most]
	}
	t.Errorf("%d %s; the first %d:\n%s", len(problems), what, len(shown), strings.Join(shown, "\n"))
}

// eventRecord returns the record member of the landed event.
func (l rieLanded) eventRecord() json.RawMessage {
	var ev struct {
		Record json.RawMessage `json:"record"`
	}
	_ = json.Unmarshal(l.Event, &ev)
	return ev.Record
}

// rieStreamOrder sorts events by shard, then by sequence number (decimal strings of up to 56
// digits): the order Kinesis keeps within a shard.
func rieStreamOrder(events []rieLanded) []rieLanded {
	out := append([]rieLanded(nil), events...)
	sort.SliceStable(out, func(i, j int) bool {
		a, b := out[i].Record, out[j].Record
		if a.ShardID != b.ShardID {
			return a.ShardID < b.ShardID
		}
		if len(a.SequenceNumber) != len(b.SequenceNumber) {
			return len(a.SequenceNumber) < len(b.SequenceNumber)
		}
		return a.SequenceNumber < b.SequenceNumber
	})
	return out
}

// rieSubscriptionNotice finds the extension's own lines about the subscription answer in the
// classic RIE's stdout (where extension output goes), leaving out the function's lines.
var rieSubscriptionNotice = regexp.MustCompile(`NotSupported|\b202\b`)

// TestRIEClassic runs the built extension in the classic emulator, which answers the Telemetry
// API with 202 Telemetry.NotSupported: the extension says so in one line, keeps serving INVOKE
// (a crash would make an invoke answer 502 and the emulator init again), and exits 0 on
// SHUTDOWN before the 2 s deadline.
func TestRIEClassic(t *testing.T) {
	requireRIE(t)
	const stream = "rie-classic"
	kinesis := startKinesalite(t, streamSpec{Name: stream, Shards: 1})
	product := rieProductBinary(t)
	env := rieProductEnv(kinesis, stream, freePort())
	rieOverTLS(t, env) // HTTPS, as in production (tlsfront_test.go)
	r := startRIE(t, rieOptions{
		Extensions: map[string]string{rieProductName: product},
		Env:        env,
	})
	for i := 1; i <= 10; i++ {
		r.invokeN(t, i)
	}
	r.shutdown(t, 5*time.Second)
	if got := r.Exits[rieProductName]; got != (rieExit{Code: 0}) {
		t.Errorf("%s: %v, want exit status 0 before the SHUTDOWN deadline", rieProductName, got)
	}
	if r.ShutdownTook >= 2*time.Second {
		t.Errorf("shutdown took %v, want under the 2 s SHUTDOWN deadline", r.ShutdownTook)
	}
	if got := strings.Count(r.stderr(t), "INIT START"); got != 1 {
		t.Errorf("the emulator initialised %d times, want once (an extension crash makes it init again)", got)
	}
	var notices []string
	for _, line := range strings.Split(r.stdout(t), "\n") {
		if strings.HasPrefix(line, "line ") || strings.HasPrefix(line, `{"level":"INFO","msg":"line `) {
			continue // the function's own lines
		}
		if rieSubscriptionNotice.MatchString(line) {
			notices = append(notices, line)
		}
	}
	if len(notices) != 1 {
		t.Errorf("extension lines about the 202 subscription answer: got %d %q, want exactly one", len(notices), notices)
	}
	if out := r.stdout(t); strings.Contains(out, "panic:") || strings.Contains(out, "goroutine ") {
		t.Errorf("extension panicked:\n%s", out)
	}
}
