package main

// Where the test harness lives (docs/development.md, "Test harness", says the same for readers):
//
//	main_test.go           TestMain builds the extension once; testEnv, freePort; reading back what
//	                       landed: decodeShipped (counts records strictly into counts.go's countsRecord),
//	                       lastCounts, checkExactlyOnce/checkDelivery
//	fakelambda_test.go     fakeLambda, the Lambda side (Extensions and Telemetry API): init, invoke,
//	                       shutdown, shutdownAndWait; startExtension runs the binary against it
//	fakekinesis_test.go    fakeKinesis, PutRecords answered from a script (allOK, …); decoded
//	peers_test.go          kinesalite and kinesis-mock, the real emulators (npm); readAll, decoded
//	faultproxy_test.go     faultProxy, a PutRecords-aware proxy in front of an emulator that throttles,
//	                       fails, resets, delays or plays an outage
//	peers_selftest_test.go checks that the emulators and the proxy behave as the tests assume
//	rie_test.go            the real Lambda Runtime Interface Emulator, with testdata/probe (a second
//	                       extension that records the ground truth) and testdata/function
//	coldstart_test.go      benchmarks against testdata/floor, the smallest possible extension
//	shardproxy_test.go     shardProxy, Kinesis's per-shard limits in front of kinesalite (checked by
//	                       shardproxy_selftest_test.go)
//	fleet_test.go          TestFleet, BenchmarkFleet: many frozen environments on one throttled stream
//	sim_test.go            TestSim, BenchmarkSim: fleets of 10 to 10,000 real extension values driven as
//	                       Lambda drives them, on a testing/synctest virtual clock, in process;
//	                       TestSim also checks BENCHMARKS.md's rows at 10 against them
//	simkinesis_test.go     simStream, the simulation's Kinesis model (a recordPutter): hash ranges, shard
//	                       buckets, hot key, on-demand scaling, answer spikes, KMS throttling
//	fakests_test.go        fakeSTS (AssumeRole, every request's SigV4 checked) and signedKinesis;
//	                       the role tests that use them are in sts_test.go
//	formats_test.go        kpl and cloudwatch decoders: protowire, aws-lambda-go, npm aws-kinesis-agg
//	formats_rie_test.go    the kpl and cloudwatch formats in the RIE's managed-instances mode
//	emf_test.go            decodeEMF, emfLines (the EMF lines in the extension's output), validateEMF
//	                       (npm ajv with testdata/emf/schema.json, and aws-embedded-metrics, through
//	                       testdata/peers/emf-validate.js)
//	archive_test.go        firehoseObjects (what landed, gzipped under Firehose's prefix), runDuckDB (npm
//	                       @duckdb/node-api through testdata/peers/duckdb-run.js), compareRows
//	cgroup_test.go         cpuCgroup, a CPU cgroup (v1 or v2) with Lambda's CPU share for a memory size
//	cpufunction_test.go    cpuFunction, a CPU-bound fake function process (this test binary re-run)
//	                       that burns a fixed CPU time per invocation and prints its log lines
//	cpushare_test.go       BenchmarkCPUShare: extension and function in one cgroup at 128/512/1,769 MB,
//	                       beside the floor (issue 20)
//	profile_test.go        BenchmarkExtensionProfile: the extension's run in-process under the pprof
//	                       label side=extension, for go tool pprof -tagfocus
//	tlsfront_test.go       the test CA (SSL_CERT_FILE) and tlsFront, TLS with h2+http/1.1 or http/1.1 in
//	                       front of any plain-HTTP peer (overWire, trusting); stalls, idle closes
//	h2faults_test.go       frame-level HTTP/2 faults (GOAWAY, REFUSED_STREAM) with x/net/http2's Framer;
//	                       the wire-fault tests are in wirefaults_test.go, the benchmark wire_bench_test.go
//
// The usual end-to-end test:
//
//	fk := newFakeKinesis(t, allOK)
//	fl := newFakeLambda(t)
//	ext := startExtension(t, fl, testEnv(fk.URL))
//	fl.init()
//	fl.invoke(invocation{requestID: "r1", textLines: 3})
//	fl.shutdownAndWait(ext)
//	events, counts := fk.decoded(t)
//	checkExactlyOnce(t, fl.postedEvents(), events)

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// extensionBinary is the extension, built once for the tests that run it as a process.
var extensionBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kinesis-telemetry-extension-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	extensionBinary = filepath.Join(dir, "kinesis-telemetry-extension")
	args := []string{"build", "-o", extensionBinary}
	if os.Getenv("TEST_RACE") == "1" {
		// The extension under the race detector: a race makes it exit 66, which tests see.
		args = append(args, "-race")
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build the extension: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// testEnv is the environment of an extension under test shipping to endpoint.
func testEnv(endpoint string, extra ...string) map[string]string {
	env := map[string]string{
		"KINESIS_TELEMETRY_STREAM":        "telemetry",
		"KINESIS_TELEMETRY_ENDPOINT":      endpoint,
		"KINESIS_TELEMETRY_PORT":          fmt.Sprint(freePort()),
		"AWS_REGION":                      "eu-west-1",
		"AWS_ACCESS_KEY_ID":               "AKIDTESTTESTTESTTEST",
		"AWS_SECRET_ACCESS_KEY":           testSecret,
		"AWS_SESSION_TOKEN":               "test-session-token",
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
		"AWS_LAMBDA_LOG_STREAM_NAME":      "2024/05/01/[$LATEST]0123456789abcdef0123456789abcdef",
	}
	for i := 0; i+1 < len(extra); i += 2 {
		env[extra[i]] = extra[i+1]
	}
	return env
}

// testSecret must never appear in the extension's output.
const testSecret = "SECRET-never-logged-0123456789"

// freePort returns a port that was free on 127.0.0.1 a moment ago.
func freePort() int {
	// Below Linux's ephemeral range (32768-60999), so that no outgoing connection of the tests
	// (hundreds, in the fleet) takes the port between this check and the server's own listen; and
	// never the same port twice in one test process.
	for range freePortSpan {
		p := freePortBase + int(nextFreePort.Add(1))%freePortSpan
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		return p
	}
	panic("no free port in 20000-31999")
}

// freePort hands out ports from freePortBase on, starting at a random offset per test process.
const freePortBase, freePortSpan = 20000, 12000

var nextFreePort = func() *atomic.Int64 {
	var n atomic.Int64
	n.Store(int64(os.Getpid() * 7 % freePortSpan))
	return &n
}()

// shipped is one record read back from the stream, decoded.
type shipped struct {
	envelopeOf
	key  string
	Type string
}

// decodeShipped decodes records read back from a stream (data and partition keys, in stream
// order) into the shipped events and the counts records, typed.
func decodeShipped(t testing.TB, data [][]byte, keys []string) (events []shipped, counts []countsRecord) {
	t.Helper()
	events, raw := splitRecords(t, data, keys)
	for i, r := range raw {
		// Strictly, into the extension's own type: a field added or renamed on one side only
		// fails here.
		dec := json.NewDecoder(bytes.NewReader(r))
		dec.DisallowUnknownFields()
		var c countsRecord
		if err := dec.Decode(&c); err != nil {
			t.Fatalf("counts record %d does not decode: %v: %.300s", i, err, r)
		}
		counts = append(counts, c)
	}
	return events, counts
}

// splitRecords decodes each record's envelope and returns the shipped events and the "record"
// of each counts record, in stream order.
func splitRecords(t testing.TB, data [][]byte, keys []string) (events []shipped, counts []json.RawMessage) {
	t.Helper()
	for i, d := range data {
		var s shipped
		if err := json.Unmarshal(d, &s.envelopeOf); err != nil {
			t.Fatalf("record %d is not an envelope: %v: %.200s", i, err, d)
		}
		var ev struct {
			Type   string
			Record json.RawMessage
		}
		json.Unmarshal(s.Event, &ev)
		s.Type, s.key = ev.Type, keys[i]
		if ev.Type == countsType {
			counts = append(counts, ev.Record)
			continue
		}
		events = append(events, s)
	}
	return events, counts
}

// lastCounts returns the newest counts record, failing t when none was shipped.
func lastCounts(t testing.TB, counts []countsRecord) countsRecord {
	t.Helper()
	if len(counts) == 0 {
		t.Fatal("no counts record shipped")
	}
	return counts[len(counts)-1]
}

// checkExactlyOnce asserts that every posted event was shipped exactly once, byte for byte, with
// the right request id, and in posting order within each partition key.
func checkExactlyOnce(t *testing.T, posted []postedEvent, got []shipped) {
	t.Helper()
	checkDelivery(t, posted, got, true, 0)
}

// checkDelivery is checkExactlyOnce, with the order check optional: when Kinesis fails some
// entries of a call and they are retried, entries after them may already be stored (PutRecords
// does not order across failures), so tests with partial failures check the ids instead. Up to
// maxDups events may be stored twice (a call whose answer was lost), each copy with the same id.
func checkDelivery(t *testing.T, posted []postedEvent, got []shipped, ordered bool, maxDups int) {
	t.Helper()
	want := map[string]postedEvent{}
	for _, p := range posted {
		want[p.raw] = p
	}
	seen := map[string]int{}
	idOf := map[string]string{}    // event -> id
	eventOf := map[string]string{} // id -> event
	for _, s := range got {
		seen[string(s.Event)]++
		p, ok := want[string(s.Event)]
		switch {
		case !ok:
			t.Errorf("shipped an event that was never posted: %.200s", s.Event)
		case s.RequestID != p.requestID:
			t.Errorf("event %.120s shipped with requestId %q, want %q", s.Event, s.RequestID, p.requestID)
		}
		if id, ok := idOf[string(s.Event)]; ok && id != s.ID {
			t.Errorf("copies of one event carry ids %s and %s", id, s.ID)
		}
		if ev, ok := eventOf[s.ID]; ok && ev != string(s.Event) {
			t.Errorf("id %s used for two events", s.ID)
		}
		idOf[string(s.Event)], eventOf[s.ID] = s.ID, string(s.Event)
	}
	missing, dup := 0, 0
	for _, p := range posted {
		switch n := seen[p.raw]; {
		case n == 0:
			missing++
			if missing <= 3 {
				t.Errorf("event never shipped: %.200s", p.raw)
			}
		case n > 1:
			dup += n - 1
			if maxDups == 0 {
				t.Errorf("event shipped %d times: %.200s", n, p.raw)
			}
		}
	}
	if missing > 0 || dup > maxDups {
		t.Errorf("%d of %d events missing, %d duplicated (%d allowed)", missing, len(posted), dup, maxDups)
	}
	if !ordered {
		return
	}
	// Order: within a partition key, the stream must hold events in the order they were posted.
	pos := map[string]int{}
	for i, p := range posted {
		pos[p.raw] = i
	}
	last := map[string]int{}
	first := map[string]bool{}
	for _, s := range got {
		i, ok := pos[string(s.Event)]
		if !ok || first[string(s.Event)] {
			continue // a re-sent copy: the first one holds the event's place
		}
		first[string(s.Event)] = true
		if prev, ok := last[s.key]; ok && i < prev {
			t.Errorf("partition %s: event %d shipped after event %d", s.key, i, prev)
		}
		last[s.key] = i
	}
}

// TestLifecycleEndToEnd drives the built extension through init, invocations and shutdown with
// the fake Lambda side, against a Kinesis fake that checks nothing is sent while the extension
// waits in /event/next.
func TestLifecycleEndToEnd(t *testing.T) {
	for _, flush := range []string{"end", "background", "adaptive", "periodic,100"} {
		t.Run(flush, func(t *testing.T) {
			var inFlight atomic.Int32
			fk := newFakeKinesis(t, func(call int, req putRecordsRequest) (int, string) {
				inFlight.Add(1)
				defer inFlight.Add(-1)
				time.Sleep(5 * time.Millisecond)
				return allOK(call, req)
			})
			fl := newFakeLambda(t)
			var violations atomic.Int32
			fl.set(func() {
				fl.onNext = func() {
					if inFlight.Load() > 0 {
						violations.Add(1)
					}
				}
			})
			ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_FLUSH", flush))
			fl.init()
			for i := range 8 {
				fl.invoke(invocation{requestID: fmt.Sprintf("req-%d", i), textLines: 3, jsonLines: 2, logsDropped: map[bool]int{true: 7}[i == 3], runFor: 10 * time.Millisecond})
			}
			fl.shutdownAndWait(ext)
			if v := violations.Load(); v > 0 {
				t.Errorf("/event/next called %d times while a PutRecords was in flight", v)
			}
			events, counts := fk.decoded(t)
			checkExactlyOnce(t, fl.postedEvents(), events)
			last := lastCounts(t, counts)
			if ld := last.LambdaDropped.Records; ld != 7 {
				t.Errorf("counts record reports %v records dropped by Lambda, want 7", ld)
			}
			if d := last.Dropped.Total; d != 0 {
				t.Errorf("counts record reports %v dropped, want 0", d)
			}
			if strings.Contains(ext.stderr.String(), testSecret) {
				t.Error("the extension logged the secret access key")
			}
		})
	}
}

// TestErrorPathsNeverBreakTheFunction runs the extension with broken configuration or a refusing
// Lambda: it must stay registered, answer every event, say what is wrong once, and exit 0.
func TestErrorPathsNeverBreakTheFunction(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	busyPort := fmt.Sprint(busy.Addr().(*net.TCPAddr).Port)

	for _, tt := range []struct {
		name         string
		env          []string // changes to testEnv; a value "-" unsets
		subscribe    int      // subscription answer status
		subscribeMsg string
		wantLog      string
		wantShipping bool
	}{
		{name: "missing stream", env: []string{"KINESIS_TELEMETRY_STREAM", "-"}, wantLog: "KINESIS_TELEMETRY_STREAM"},
		{name: "bad port", env: []string{"KINESIS_TELEMETRY_PORT", "http"}, wantLog: `KINESIS_TELEMETRY_PORT="http"`},
		{name: "port in use", env: []string{"KINESIS_TELEMETRY_PORT", busyPort}, wantLog: "KINESIS_TELEMETRY_PORT=" + busyPort},
		{name: "several problems at once", env: []string{"KINESIS_TELEMETRY_BUFFER_ITEMS", "5", "KINESIS_TELEMETRY_FLUSH", "never"}, wantLog: "KINESIS_TELEMETRY_FLUSH"},
		{name: "subscription not supported (local emulators)", subscribe: 202, subscribeMsg: `{"errorMessage":"Telemetry API is not supported","errorType":"Telemetry.NotSupported"}`, wantLog: "Telemetry.NotSupported"},
		{name: "subscription refused", subscribe: 400, subscribeMsg: `{"errorMessage":"bad buffering","errorType":"ValidationError"}`, wantLog: "ValidationError"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fk := newFakeKinesis(t, allOK)
			fl := newFakeLambda(t)
			fl.set(func() { fl.subscribeStatus, fl.subscribeBody = tt.subscribe, tt.subscribeMsg })
			env := testEnv(fk.URL)
			for i := 0; i+1 < len(tt.env); i += 2 {
				if tt.env[i+1] == "-" {
					delete(env, tt.env[i])
				} else {
					env[tt.env[i]] = tt.env[i+1]
				}
			}
			ext := startExtension(t, fl, env)
			fl.awaitNext()
			for i := range 3 {
				fl.deliver(fmt.Sprintf(`{"eventType":"INVOKE","deadlineMs":%d,"requestId":"r%d"}`, time.Now().Add(3*time.Second).UnixMilli(), i))
				fl.awaitNext()
			}
			fl.deliver(fmt.Sprintf(`{"eventType":"SHUTDOWN","shutdownReason":"spindown","deadlineMs":%d}`, time.Now().Add(2*time.Second).UnixMilli()))
			if code := ext.wait(3 * time.Second); code != 0 {
				t.Fatalf("exit code %d, want 0", code)
			}
			out := ext.stderr.String()
			if !strings.Contains(out, tt.wantLog) {
				t.Errorf("log does not mention %q:\n%s", tt.wantLog, out)
			}
			if n := strings.Count(out, tt.wantLog); n != 1 {
				t.Errorf("the problem is logged %d times, want once:\n%s", n, out)
			}
			fl.set(func() {
				if len(fl.errorsSeen) != 0 {
					t.Errorf("reported %v to Lambda: that would fail the function", fl.errorsSeen)
				}
			})
		})
	}
}

// TestFailOnErrorReportsInitError: with KINESIS_TELEMETRY_FAIL_ON_ERROR the same configuration
// problem is reported to Lambda as an init error, for users who prefer a failing deployment.
func TestFailOnErrorReportsInitError(t *testing.T) {
	fl := newFakeLambda(t)
	env := testEnv("http://127.0.0.1:1", "KINESIS_TELEMETRY_FAIL_ON_ERROR", "true", "KINESIS_TELEMETRY_PORT", "9001")
	ext := startExtension(t, fl, env)
	if code := ext.wait(5 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	fl.set(func() {
		if len(fl.errorsSeen) != 1 || fl.errorsSeen[0] != "/2020-01-01/extension/init/error Extension.ConfigInvalid" {
			t.Errorf("errors reported: %v, want one init error Extension.ConfigInvalid", fl.errorsSeen)
		}
	})
}

// TestMalformedAndOversizedTelemetry posts a malformed batch and an event too large for a record
// in the middle of normal traffic: the first is refused and counted, the second truncated and
// shipped, and everything else arrives.
func TestMalformedAndOversizedTelemetry(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_FLUSH", "end", "KINESIS_TELEMETRY_MAX_BUFFER_BYTES", "67108864"))
	fl.init()
	fl.invoke(invocation{requestID: "r1", textLines: 2})
	resp, err := http.Post(fmt.Sprintf("http://127.0.0.1:%d/", fl.listenerPort), "application/json", strings.NewReader(`[{"time":"x","type":"function","record":"cut`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("malformed batch: HTTP %d, want 400", resp.StatusCode)
	}
	huge := fl.ev("function", `"`+strings.Repeat("a", 1200000)+`"`)
	fl.post("r1", huge)
	fl.invoke(invocation{requestID: "r2", textLines: 2})
	fl.shutdownAndWait(ext)
	data, keys := fk.callsData()
	events, counts := decodeShipped(t, data, keys)
	var posted []postedEvent
	var truncated *shipped
	for _, p := range fl.postedEvents() {
		if p.raw != huge.raw {
			posted = append(posted, p)
		}
	}
	var rest []shipped
	for i := range events {
		if events[i].TruncatedBytes != nil {
			truncated = &events[i]
			continue
		}
		rest = append(rest, events[i])
	}
	checkExactlyOnce(t, posted, rest)
	if truncated == nil {
		t.Fatal("the oversized event was not shipped")
	}
	if len(data[0]) > maxRecordBytes || *truncated.TruncatedBytes < 1200000-maxRecordBytes {
		t.Errorf("truncated record: %d bytes cut", *truncated.TruncatedBytes)
	}
	if m := lastCounts(t, counts).Malformed.Batches; m != 1 {
		t.Errorf("counts record: %v malformed batches, want 1", m)
	}
}

// emulatorCase is one real Kinesis implementation and how the extension addresses the stream.
type emulatorCase struct {
	name  string
	start func(t *testing.T, streams ...streamSpec) *kinesisPeer
	byARN bool
}

var emulators = []emulatorCase{
	{"kinesalite", func(t *testing.T, s ...streamSpec) *kinesisPeer { return startKinesalite(t, s...) }, false},
	{"kinesis-mock", func(t *testing.T, s ...streamSpec) *kinesisPeer {
		return startKinesisMock(t, "eu-west-1", "123456789012", s...)
	}, false},
	{"kinesis-mock by ARN", func(t *testing.T, s ...streamSpec) *kinesisPeer {
		return startKinesisMock(t, "eu-west-1", "123456789012", s...)
	}, true},
}

// extensionEnvFor is the extension's environment for a stream on a real emulator, reached at endpoint
// (the emulator itself, or a proxy in front of it).
func extensionEnvFor(p *kinesisPeer, stream, endpoint string, byARN bool, extra ...string) map[string]string {
	env := testEnv(endpoint, extra...)
	env["KINESIS_TELEMETRY_STREAM"] = stream
	if byARN {
		env["KINESIS_TELEMETRY_STREAM"] = p.streamARN(stream)
	}
	// kinesis-mock keeps streams per region and per account, taken from a 12-digit access key.
	env["AWS_REGION"], env["AWS_ACCESS_KEY_ID"] = p.Region, p.Account
	return env
}

func storedData(recs []storedRecord) (data [][]byte, keys []string) {
	for _, r := range recs {
		data, keys = append(data, r.Data), append(keys, r.PartitionKey)
	}
	return data, keys
}

// TestEndToEndOnEmulators: the same end-to-end run against both real Kinesis implementations:
// init, invocations with text and JSON lines, Lambda-reported loss, an event too large for a
// record, shutdown; every event lands exactly once, in per-request order, read back with the SDK.
func TestEndToEndOnEmulators(t *testing.T) {
	for _, em := range emulators {
		for _, w := range tlsWires {
			t.Run(em.name+" over "+w.String(), func(t *testing.T) { endToEndOnEmulator(t, em, w) })
		}
	}
}

// endToEndOnEmulator is one run of TestEndToEndOnEmulators, over w (tlsfront_test.go).
func endToEndOnEmulator(t *testing.T, em emulatorCase, w wire) {
	const stream = "telemetry"
	peer := em.start(t, streamSpec{Name: stream, Shards: 2})
	endpoint, front := overWire(t, peer.Endpoint, w, frontOptions{})
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, trusting(extensionEnvFor(peer, stream, endpoint, em.byARN), front))
	defer front.checkWire(t, w)
	fl.init()
	for i := range 6 {
		fl.invoke(invocation{requestID: fmt.Sprintf("req-%d", i), textLines: 4, jsonLines: 3, logsDropped: map[bool]int{true: 5}[i == 2]})
		if i == 3 {
			fl.post(fmt.Sprintf("req-%d", i), fl.ev("function", `"`+strings.Repeat("big ", 300000)+`"`))
		}
	}
	fl.shutdownAndWait(ext)
	data, keys := storedData(peer.waitForRecords(t, stream, len(fl.postedEvents()), 10*time.Second))
	events, counts := decodeShipped(t, data, keys)
	var normal []postedEvent
	for _, p := range fl.postedEvents() {
		if len(p.raw) < maxRecordBytes {
			normal = append(normal, p)
		}
	}
	var small []shipped
	truncated := 0
	for _, e := range events {
		if e.TruncatedBytes != nil {
			truncated++
			if e.RequestID != "req-3" || *e.TruncatedBytes <= 0 {
				t.Errorf("truncated event: requestId %q, %d bytes cut", e.RequestID, *e.TruncatedBytes)
			}
			continue
		}
		small = append(small, e)
	}
	// A call cut short (kinesis-mock takes seconds for a 1 MiB record) is sent again: the
	// extension counts those events as unconfirmed, the only ones that may be doubled.
	if len(counts) == 0 {
		t.Fatal("no counts record")
	}
	// The counters are cumulative: the largest is the latest (the final counts record may
	// itself be cut short by a slow emulator). A cut call may have stored part of its
	// entries, so stream order is promised only where no call was cut, and only on
	// kinesalite: kinesis-mock's answers are slow enough to be pushback, after which the
	// shutdown sends the newest invocation first. The ids restore the order in every case.
	unconfirmed := 0
	for _, c := range counts {
		unconfirmed = max(unconfirmed, int(c.Kinesis.Unconfirmed))
	}
	checkDelivery(t, normal, small, unconfirmed == 0 && em.name == "kinesalite", unconfirmed)
	checkIDsOrdered(t, normal, small)
	if truncated < 1 || truncated > 1+unconfirmed {
		t.Errorf("%d truncated events in the stream, want 1 (%d unconfirmed)", truncated, unconfirmed)
	}
	if last := lastCounts(t, counts); last.LambdaDropped.Records != 5 {
		t.Errorf("counts record: %d records dropped by Lambda, want 5: %+v", last.LambdaDropped.Records, last)
	}
}

// TestBrokenRuntimeAPIIsReportedAsExitError: when /event/next itself fails, the extension cannot
// go on; it tells Lambda with /extension/exit/error and exits non-zero.
func TestBrokenRuntimeAPIIsReportedAsExitError(t *testing.T) {
	fk := newFakeKinesis(t, allOK)
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, testEnv(fk.URL))
	fl.awaitNext()
	fl.set(func() { fl.nextBroken = true })
	fl.deliver(fmt.Sprintf(`{"eventType":"INVOKE","deadlineMs":%d,"requestId":"r1"}`, time.Now().Add(3*time.Second).UnixMilli()))
	if code := ext.wait(5 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	fl.set(func() {
		if len(fl.errorsSeen) != 1 || fl.errorsSeen[0] != "/2020-01-01/extension/exit/error Extension.NextFailed" {
			t.Errorf("reported %v, want one exit error Extension.NextFailed", fl.errorsSeen)
		}
	})
}

// TestHarnessMapsAgree checks that the map at the top of this file and docs/development.md's "Test
// harness" table name the same files, and that each exists: the two are written for different
// readers and drifted apart once (the doc lacked ten files).
func TestHarnessMapsAgree(t *testing.T) {
	src, err := os.ReadFile("main_test.go")
	if err != nil {
		t.Fatal(err)
	}
	inMap := map[string]bool{}
	for _, line := range strings.Split(string(src), "\n") {
		if line == "// The usual end-to-end test:" {
			break
		}
		if f := strings.Fields(strings.TrimPrefix(line, "//\t")); strings.HasPrefix(line, "//\t") && len(f) > 0 && strings.HasSuffix(f[0], "_test.go") {
			inMap[f[0]] = true
		}
	}
	doc, err := os.ReadFile(filepath.Join("docs", "development.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, table, _ := strings.Cut(string(doc), "## Test harness")
	inDoc := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		first, _, ok := strings.Cut(strings.TrimPrefix(line, "| "), " |")
		if !strings.HasPrefix(line, "| `") || !ok {
			continue
		}
		for _, name := range strings.Split(first, ", ") {
			inDoc[strings.Trim(name, "`")] = true
		}
	}
	if len(inMap) == 0 || len(inDoc) == 0 {
		t.Fatalf("found %d files in main_test.go's map and %d in docs/development.md's table", len(inMap), len(inDoc))
	}
	for name := range inMap {
		if !inDoc[name] {
			t.Errorf("%s is in main_test.go's map, not in docs/development.md's \"Test harness\" table", name)
		}
		if _, err := os.Stat(name); err != nil {
			t.Errorf("main_test.go's map names %s: %v", name, err)
		}
	}
	for name := range inDoc {
		if !inMap[name] {
			t.Errorf("%s is in docs/development.md's \"Test harness\" table, not in main_test.go's map", name)
		}
	}
}
