package main

// Test peers: local Kinesis emulators (kinesalite and kinesis-mock) started from the repository's
// node_modules, and helpers to create streams and read back what was stored. Every emulator is
// bound to 127.0.0.1 on a kernel-chosen port and is killed by the test that started it.
// The emulators' quirks that the tests rely on, each checked in peers_selftest_test.go:
// kinesalite ignores the request's region and credentials, does not know StreamARN and rejects a
// whole call for one bad record; kinesis-mock keeps streams per region and per account (the
// 12-digit access key id selects it), accepts StreamARN and fails an oversized record on its own.
// Neither throttles nor checks signatures: the fault proxy (faultproxy_test.go) plays those.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
)

// streamSpec describes a stream to create on a peer.
type streamSpec struct {
	Name   string
	Shards int
}

// storedRecord is one record as read back from a peer.
type storedRecord struct {
	Data           []byte
	PartitionKey   string
	ShardID        string
	SequenceNumber string
}

// kinesisPeer is a running Kinesis emulator owned by one test.
type kinesisPeer struct {
	Name     string // "kinesalite" or "kinesis-mock"
	Endpoint string // "http://127.0.0.1:<port>"
	Region   string // region the streams live in (kinesis-mock keeps streams per region)
	Account  string // 12-digit account id; kinesis-mock keeps streams per account, selected by the access key id

	cmd     *exec.Cmd
	output  *peerOutputBuffer
	exited  chan struct{} // closed when the process has exited
	waitErr error         // valid once exited is closed
	stdin   io.WriteCloser
	sdk     *kinesis.Client
}

const (
	// kinesaliteRegion and kinesaliteAccount are what kinesalite puts in its ARNs (it ignores the
	// request's region and credentials).
	kinesaliteRegion  = "us-east-1"
	kinesaliteAccount = "000000000000"

	// peerSecretKey is the secret of the static test credentials; neither emulator checks signatures.
	peerSecretKey = "kinesis-telemetry-extension-test-secret"

	// peerStartTimeout is generous because kinesis-mock needs 1–2 s on an idle 2-core machine
	// and much more when other tests load the machine.
	peerStartTimeout = 30 * time.Second
)

// requirePeers skips the test because the peer described by what is unavailable, or fails it when
// TEST_REQUIRE_PEERS=1 (CI), so that nothing is skipped silently there.
func requirePeers(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("TEST_REQUIRE_PEERS") == "1" {
		t.Fatalf("test peer unavailable and TEST_REQUIRE_PEERS=1: %s", what)
	}
	t.Skipf("test peer unavailable: %s (needs node on PATH and `npm ci` in the repository root; TEST_REQUIRE_PEERS=1 makes this fatal)", what)
}

// startKinesalite starts kinesalite (in-memory, streams ACTIVE at once, shard limit 100), creates
// the given streams and returns when they are ACTIVE. The process is killed when t ends.
func startKinesalite(t testing.TB, streams ...streamSpec) *kinesisPeer {
	t.Helper()
	node, modules := nodeAndModules(t)
	pkg := filepath.Join(modules, "kinesalite")
	if _, err := os.Stat(filepath.Join(pkg, "index.js")); err != nil {
		requirePeers(t, fmt.Sprintf("kinesalite not installed: %v", err))
	}
	p := &kinesisPeer{Name: "kinesalite", Region: kinesaliteRegion, Account: kinesaliteAccount}
	env := map[string]string{
		// Only used for the ARNs kinesalite reports.
		"AWS_ACCOUNT_ID": p.Account,
		"AWS_REGION":     p.Region,
	}
	p.start(t, node, []string{launcherPath(t, "kinesalite.js"), pkg}, env)
	for _, s := range streams {
		p.createStream(t, s)
	}
	return p
}

// startKinesisMock starts kinesis-mock with region and account as its defaults, creates the
// given streams in that region and account, and returns when they are ACTIVE. The process is
// killed when t ends.
func startKinesisMock(t testing.TB, region, account string, streams ...streamSpec) *kinesisPeer {
	t.Helper()
	if !regexp.MustCompile(`^[0-9]{12}$`).MatchString(account) {
		t.Fatalf("startKinesisMock: account %q is not a 12-digit account id", account)
	}
	node, modules := nodeAndModules(t)
	mainJS := filepath.Join(modules, "kinesis-local", "main.js")
	if _, err := os.Stat(mainJS); err != nil {
		requirePeers(t, fmt.Sprintf("kinesis-mock (npm kinesis-local) not installed: %v", err))
	}
	p := &kinesisPeer{Name: "kinesis-mock", Region: region, Account: account}
	env := map[string]string{
		"AWS_ACCOUNT_ID":         account,
		"AWS_REGION":             region,
		"CREATE_STREAM_DURATION": "0ms",
		"DELETE_STREAM_DURATION": "0ms",
		"SHARD_LIMIT":            "100",
		"LOG_LEVEL":              "WARN",
		// kinesis-mock would otherwise load ./data/kinesis-data.json if the working directory had one.
		"LOAD_DATA_IF_EXISTS": "false",
		"SHOULD_PERSIST_DATA": "false",
	}
	p.start(t, node, []string{launcherPath(t, "kinesis-mock.js"), mainJS}, env)
	p.waitUntilServing(t)
	for _, s := range streams {
		p.createStream(t, s)
	}
	return p
}

// createStream creates stream s and waits until it is ACTIVE.
func (p *kinesisPeer) createStream(t testing.TB, s streamSpec) {
	t.Helper()
	if s.Shards < 1 {
		s.Shards = 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := p.client().CreateStream(ctx, &kinesis.CreateStreamInput{
		StreamName: aws.String(s.Name),
		ShardCount: aws.Int32(int32(s.Shards)),
	})
	if err != nil {
		t.Fatalf("%s: create stream %q: %v", p.Name, s.Name, err)
	}
	for {
		out, err := p.client().DescribeStreamSummary(ctx, &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(s.Name)})
		if err != nil {
			t.Fatalf("%s: describe stream %q: %v", p.Name, s.Name, err)
		}
		if out.StreamDescriptionSummary.StreamStatus == types.StreamStatusActive {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: stream %q not ACTIVE after 10 s (status %s)", p.Name, s.Name, out.StreamDescriptionSummary.StreamStatus)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// streamARN returns the ARN of stream name on this peer.
func (p *kinesisPeer) streamARN(name string) string {
	return fmt.Sprintf("arn:aws:kinesis:%s:%s:stream/%s", p.Region, p.Account, name)
}

// client returns the peer's SDK client: it sends straight to the peer, signs for the peer's
// region with its account as the access key id (which is how kinesis-mock selects the account)
// and does not retry. It is safe for concurrent use.
func (p *kinesisPeer) client() *kinesis.Client {
	return p.sdk
}

// newPeerSDKClient returns an SDK client that sends to endpoint, signs for region with static
// credentials whose access key id is accessKey (and session token, when not empty) and never
// retries, so that tests see every fault as it happens. It reads no environment or files.
func newPeerSDKClient(endpoint, region, accessKey, sessionToken string) *kinesis.Client {
	return kinesis.New(kinesis.Options{
		Region:       region,
		BaseEndpoint: aws.String(endpoint),
		Credentials:  credentials.NewStaticCredentialsProvider(accessKey, peerSecretKey, sessionToken),
		Retryer:      aws.NopRetryer{},
		// A private transport keeps connections from one test out of every other test's pool.
		HTTPClient: &http.Client{Transport: &http.Transport{}},
	})
}

// readAll returns every record on every shard of stream, from TRIM_HORIZON to the tip: shards
// in ShardId order, records in sequence order within a shard. It must be called from the test
// goroutine.
func (p *kinesisPeer) readAll(t testing.TB, stream string) []storedRecord {
	t.Helper()
	recs, err := p.read(stream)
	if err != nil {
		t.Fatalf("%s: read stream %q: %v", p.Name, stream, err)
	}
	return recs
}

// decoded reads the whole stream back (readAll) and decodes it.
func (p *kinesisPeer) decoded(t testing.TB, stream string) (events []shipped, counts []countsRecord) {
	t.Helper()
	data, keys := storedData(p.readAll(t, stream))
	return decodeShipped(t, data, keys)
}

// waitForRecords polls the stream until it holds at least n records or timeout has passed, and
// returns what it holds then (the caller checks the count).
func (p *kinesisPeer) waitForRecords(t testing.TB, stream string, n int, timeout time.Duration) []storedRecord {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		recs := p.readAll(t, stream)
		if len(recs) >= n || time.Now().After(deadline) {
			return recs
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *kinesisPeer) read(stream string) ([]storedRecord, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := p.client()

	var shards []types.Shard
	in := &kinesis.ListShardsInput{StreamName: aws.String(stream)}
	for {
		out, err := c.ListShards(ctx, in)
		if err != nil {
			return nil, fmt.Errorf("list shards: %w", err)
		}
		shards = append(shards, out.Shards...)
		if out.NextToken == nil {
			break
		}
		// With NextToken the stream must not be named again.
		in = &kinesis.ListShardsInput{NextToken: out.NextToken}
	}
	sort.Slice(shards, func(i, j int) bool { return aws.ToString(shards[i].ShardId) < aws.ToString(shards[j].ShardId) })

	var recs []storedRecord
	for _, sh := range shards {
		it, err := c.GetShardIterator(ctx, &kinesis.GetShardIteratorInput{
			StreamName:        aws.String(stream),
			ShardId:           sh.ShardId,
			ShardIteratorType: types.ShardIteratorTypeTrimHorizon,
		})
		if err != nil {
			return nil, fmt.Errorf("get shard iterator for %s: %w", aws.ToString(sh.ShardId), err)
		}
		iter := it.ShardIterator
		for calls := 0; iter != nil; calls++ {
			if calls == 10000 {
				return nil, fmt.Errorf("shard %s: no end after %d GetRecords calls", aws.ToString(sh.ShardId), calls)
			}
			out, err := c.GetRecords(ctx, &kinesis.GetRecordsInput{ShardIterator: iter, Limit: aws.Int32(10000)})
			if err != nil {
				return nil, fmt.Errorf("get records from %s: %w", aws.ToString(sh.ShardId), err)
			}
			for _, r := range out.Records {
				recs = append(recs, storedRecord{
					Data:           r.Data,
					PartitionKey:   aws.ToString(r.PartitionKey),
					ShardID:        aws.ToString(sh.ShardId),
					SequenceNumber: aws.ToString(r.SequenceNumber),
				})
			}
			if len(out.Records) == 0 && aws.ToInt64(out.MillisBehindLatest) == 0 {
				break
			}
			iter = out.NextShardIterator
		}
	}
	return recs, nil
}

// nodeAndModules finds node on PATH and the repository's node_modules, or skips (fails in CI).
func nodeAndModules(t testing.TB) (node, modules string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		requirePeers(t, fmt.Sprintf("node not found: %v", err))
	}
	root, err := peerRepoRoot()
	if err != nil {
		requirePeers(t, err.Error())
	}
	modules = filepath.Join(root, "node_modules")
	if fi, err := os.Stat(modules); err != nil || !fi.IsDir() {
		requirePeers(t, fmt.Sprintf("%s missing", modules))
	}
	return node, modules
}

// peerRepoRoot walks up from the working directory (the package directory under go test) to the
// directory holding go.mod.
func peerRepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("find repository root: %w", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("find repository root: no go.mod above the working directory")
		}
		dir = parent
	}
}

func launcherPath(t testing.TB, name string) string {
	t.Helper()
	root, err := peerRepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "testdata", "peers", name)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("peer launcher: %v", err)
	}
	return p
}

var peerListeningLine = regexp.MustCompile(`(?m)^LISTENING plain (127\.0\.0\.1:[0-9]+)$`)

// start runs node with args and the given environment (on top of a copy of ours without AWS and
// emulator settings), waits for the launcher to report the plain-HTTP address and registers the
// cleanup that kills the process.
func (p *kinesisPeer) start(t testing.TB, node string, args []string, env map[string]string) {
	t.Helper()
	cmd := exec.Command(node, args...)
	cmd.Dir = t.TempDir()
	cmd.Env = peerEnv(env)
	p.output = &peerOutputBuffer{max: 1 << 20}
	cmd.Stdout = p.output
	cmd.Stderr = p.output
	// The launchers exit when stdin closes, so an emulator cannot outlive a test binary that
	// dies without running its cleanups (a timeout panic, say).
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("%s: stdin pipe: %v", p.Name, err)
	}
	begun := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: start %s: %v", p.Name, node, err)
	}
	p.cmd, p.stdin, p.exited = cmd, stdin, make(chan struct{})
	go func() {
		p.waitErr = cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() { p.stop(t) })

	deadline := time.After(peerStartTimeout)
	for {
		if m := peerListeningLine.FindStringSubmatch(p.output.String()); m != nil {
			p.Endpoint = "http://" + m[1]
			p.sdk = newPeerSDKClient(p.Endpoint, p.Region, p.Account, "")
			t.Logf("%s listening at %s after %v (pid %d)", p.Name, p.Endpoint, time.Since(begun).Round(time.Millisecond), cmd.Process.Pid)
			return
		}
		select {
		case <-p.exited:
			t.Fatalf("%s exited before listening: %v\n%s", p.Name, p.waitErr, p.output)
		case <-deadline:
			t.Fatalf("%s not listening after %v\n%s", p.Name, peerStartTimeout, p.output)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// waitUntilServing polls until the peer answers API calls: kinesis-mock binds its port before it
// is ready to serve.
func (p *kinesisPeer) waitUntilServing(t testing.TB) {
	t.Helper()
	begun := time.Now()
	deadline := begun.Add(peerStartTimeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := p.client().ListStreams(ctx, &kinesis.ListStreamsInput{})
		cancel()
		if err == nil {
			t.Logf("%s serving after another %v", p.Name, time.Since(begun).Round(time.Millisecond))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not serving after %v: %v\n%s", p.Name, peerStartTimeout, err, p.output)
		}
		select {
		case <-p.exited:
			t.Fatalf("%s exited: %v\n%s", p.Name, p.waitErr, p.output)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop kills the process this peer started and waits for it. A peer that died on its own during
// the test fails the test.
func (p *kinesisPeer) stop(t testing.TB) {
	select {
	case <-p.exited:
		t.Errorf("%s (pid %d) exited during the test: %v\n%s", p.Name, p.cmd.Process.Pid, p.waitErr, p.output)
	default:
		if err := p.cmd.Process.Kill(); err != nil {
			t.Errorf("%s: kill pid %d: %v", p.Name, p.cmd.Process.Pid, err)
		}
		<-p.exited
	}
	p.stdin.Close()
	if p.sdk != nil {
		if tr, ok := p.sdk.Options().HTTPClient.(*http.Client); ok {
			tr.CloseIdleConnections()
		}
	}
}

// peerEnv returns our environment without variables that would change an emulator's behaviour,
// plus extra.
func peerEnv(extra map[string]string) []string {
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "AWS_") || strings.HasPrefix(name, "KINESIS_") || strings.HasPrefix(name, "NODE_") {
			continue
		}
		if _, ours := extra[name]; ours {
			continue
		}
		switch name {
		case "INITIALIZE_STREAMS", "LOG_LEVEL", "ROOT_LOG_LEVEL", "SHARD_LIMIT", "PERSIST_PATH", "PERSIST_FILE_NAME":
			continue
		}
		env = append(env, kv)
	}
	for k, v := range extra {
		env = append(env, k+"="+v)
	}
	return env
}

// peerOutputBuffer keeps the last max bytes written to it; it is safe for concurrent use.
type peerOutputBuffer struct {
	mu  sync.Mutex
	max int
	buf bytes.Buffer
}

func (b *peerOutputBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf.Write(p)
	if over := b.buf.Len() - b.max; over > 0 {
		b.buf.Next(over)
	}
	return len(p), nil
}

func (b *peerOutputBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
