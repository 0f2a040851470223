package main

// Tests of the test harness itself (peers_test.go, faultproxy_test.go): they use the SDK or a
// fake backend, never the extension's code, so that a failure here points at the harness.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// ---------------------------------------------------------------------------------------------
// Emulators on their own.

func TestPeerKinesalite(t *testing.T) {
	p := startKinesalite(t, streamSpec{"three", 3})
	checkLoopbackOnly(t, p.Endpoint)

	t.Run("ARN", func(t *testing.T) { checkStreamSummary(t, p, "three", 3) })
	t.Run("ReadAllOrder", func(t *testing.T) { checkReadAllOrder(t, p, "three", 60) })
	t.Run("CreateStreamLater", func(t *testing.T) {
		p.createStream(t, streamSpec{Name: "later", Shards: 2})
		sdkPutAll(t, p.client(), "later", false, makePayloads(t, 5))
		if got := len(p.readAll(t, "later")); got != 5 {
			t.Errorf("records: got %d, want 5", got)
		}
	})
	t.Run("WaitForRecordsTimesOut", func(t *testing.T) {
		p.createStream(t, streamSpec{Name: "empty", Shards: 1})
		begun := time.Now()
		got := p.waitForRecords(t, "empty", 1, 200*time.Millisecond)
		if len(got) != 0 || time.Since(begun) < 200*time.Millisecond {
			t.Errorf("got %d records after %v, want 0 after at least 200ms", len(got), time.Since(begun))
		}
	})
	t.Run("Over500Records", func(t *testing.T) {
		_, err := sdkPutRecords(p.client(), "three", false, makePayloads(t, 501))
		wantKinesisAPIError(t, err, 400, "ValidationException")
	})
	t.Run("StreamARNUnknown", func(t *testing.T) {
		// kinesalite predates StreamARN: a request naming only the ARN is invalid there.
		_, err := sdkPutRecords(p.client(), p.streamARN("three"), true, makePayloads(t, 1))
		wantKinesisAPIError(t, err, 400, "ValidationException")
	})
}

func TestPeerKinesisMock(t *testing.T) {
	const region, account = "eu-west-1", "210987654321"
	p := startKinesisMock(t, region, account, streamSpec{"three", 3}, streamSpec{"arn", 1})
	checkLoopbackOnly(t, p.Endpoint)

	t.Run("ARN", func(t *testing.T) { checkStreamSummary(t, p, "three", 3) })
	t.Run("ReadAllOrder", func(t *testing.T) { checkReadAllOrder(t, p, "three", 30) })
	t.Run("PutByARN", func(t *testing.T) {
		data := makePayloads(t, 4)
		sdkPutAll(t, p.client(), p.streamARN("arn"), true, data)
		checkStoredData(t, p.readAll(t, "arn"), data)
	})
	t.Run("WrongRegion", func(t *testing.T) {
		c := newPeerSDKClient(p.Endpoint, "us-west-2", p.Account, "")
		_, err := sdkPutRecords(c, "three", false, makePayloads(t, 1))
		wantKinesisAPIError(t, err, 400, "ResourceNotFoundException")
	})
	t.Run("OtherAccount", func(t *testing.T) {
		c := newPeerSDKClient(p.Endpoint, p.Region, "999999999999", "")
		_, err := sdkPutRecords(c, "three", false, makePayloads(t, 1))
		wantKinesisAPIError(t, err, 400, "ResourceNotFoundException")
	})
	t.Run("RecordOver1MiB", func(t *testing.T) {
		p.createStream(t, streamSpec{Name: "big", Shards: 1})
		data := makePayloads(t, 3)
		data[1] = make([]byte, 1<<20+1)
		out, err := sdkPutRecords(p.client(), "big", false, data)
		if err != nil {
			t.Fatal(err)
		}
		if got := aws.ToInt32(out.FailedRecordCount); got != 1 {
			t.Errorf("FailedRecordCount: got %d, want 1", got)
		}
		if got := aws.ToString(out.Records[1].ErrorCode); got != "InvalidArgumentException" {
			t.Errorf("entry 1 ErrorCode: got %q, want InvalidArgumentException", got)
		}
		checkStoredData(t, p.readAll(t, "big"), [][]byte{data[0], data[2]})
	})
}

// checkStreamSummary checks that the peer describes stream with the ARN streamARN builds and
// the given number of open shards.
func checkStreamSummary(t *testing.T, p *kinesisPeer, stream string, shards int32) {
	t.Helper()
	out, err := p.client().DescribeStreamSummary(context.Background(), &kinesis.DescribeStreamSummaryInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := aws.ToString(out.StreamDescriptionSummary.StreamARN), p.streamARN(stream); got != want {
		t.Errorf("StreamARN: got %q, want %q", got, want)
	}
	if got := aws.ToInt32(out.StreamDescriptionSummary.OpenShardCount); got != shards {
		t.Errorf("OpenShardCount: got %d, want %d", got, shards)
	}
}

// checkReadAllOrder puts n records with varied partition keys and checks that readAll returns
// them all, shards in ShardId order and records in sequence order within each shard.
func checkReadAllOrder(t *testing.T, p *kinesisPeer, stream string, n int) {
	data := makePayloads(t, n)
	sdkPutAll(t, p.client(), stream, false, data)
	got := p.readAll(t, stream)
	checkStoredData(t, got, data)
	shards := map[string]bool{}
	for i := 1; i < len(got); i++ {
		a, b := got[i-1], got[i]
		shards[a.ShardID] = true
		if a.ShardID > b.ShardID {
			t.Errorf("record %d: shard %s after %s", i, b.ShardID, a.ShardID)
		}
		if a.ShardID == b.ShardID && parseSeqNum(t, a.SequenceNumber).Cmp(parseSeqNum(t, b.SequenceNumber)) >= 0 {
			t.Errorf("record %d: sequence %s not after %s", i, b.SequenceNumber, a.SequenceNumber)
		}
	}
	if len(shards) < 2 {
		t.Errorf("records landed on %d shard(s); the test needs several to check the order", len(shards))
	}
}

// checkLoopbackOnly fails if the server at endpoint can be reached on a non-loopback address.
func checkLoopbackOnly(t *testing.T, endpoint string) {
	t.Helper()
	u, err := url.Parse(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	tried := 0
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		tried++
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(ipn.IP.String(), u.Port()), time.Second)
		if err == nil {
			conn.Close()
			t.Errorf("%s is reachable on %s: it must bind 127.0.0.1 only", endpoint, ipn.IP)
		}
	}
	if tried == 0 {
		t.Logf("no non-loopback address on this machine; binding not checked")
	}
}

// ---------------------------------------------------------------------------------------------
// The proxy against a fake backend: exact, fast, and independent of node.

// proxyBackend answers PutRecords like kinesis-mock does ("ErrorCode":null on success); an entry
// whose partition key starts with "peer-fail" fails with InternalFailure. It records what it got.
type proxyBackend struct {
	mu    sync.Mutex
	puts  [][]string // partition keys of each PutRecords call received
	other []string   // X-Amz-Target of every other call
}

func (f *proxyBackend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	if r.Header.Get("X-Amz-Target") != "Kinesis_20131202.PutRecords" {
		f.mu.Lock()
		f.other = append(f.other, r.Header.Get("X-Amz-Target"))
		f.mu.Unlock()
		w.Header().Set("X-Fake", "yes")
		w.Write(body) // echo, so the test can see the body went through untouched
		return
	}
	var req struct {
		Records []struct{ PartitionKey string }
	}
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var keys []string
	var entries []map[string]any
	failed := 0
	for i, rec := range req.Records {
		keys = append(keys, rec.PartitionKey)
		if strings.HasPrefix(rec.PartitionKey, "peer-fail") {
			failed++
			entries = append(entries, map[string]any{"ErrorCode": "InternalFailure", "ErrorMessage": "fake", "SequenceNumber": nil, "ShardId": nil})
			continue
		}
		entries = append(entries, map[string]any{"ErrorCode": nil, "ErrorMessage": nil, "SequenceNumber": fmt.Sprint(1000 + i), "ShardId": "shardId-000000000000"})
	}
	f.mu.Lock()
	f.puts = append(f.puts, keys)
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	json.NewEncoder(w).Encode(map[string]any{"EncryptionType": "NONE", "FailedRecordCount": failed, "Records": entries})
}

func (f *proxyBackend) received() [][]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.puts)
}

func (f *proxyBackend) otherTargets() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.other)
}

func startFakeKinesisProxy(t *testing.T) (*proxyBackend, *faultProxy) {
	f := &proxyBackend{}
	srv := httptest.NewServer(f) // httptest binds 127.0.0.1
	t.Cleanup(srv.Close)
	return f, startFaultProxy(t, srv.URL)
}

func fakeEntries(keys ...string) []types.PutRecordsRequestEntry {
	var recs []types.PutRecordsRequestEntry
	for _, k := range keys {
		recs = append(recs, types.PutRecordsRequestEntry{Data: []byte(k), PartitionKey: aws.String(k)})
	}
	return recs
}

func TestProxyFakeMergesFailures(t *testing.T) {
	f, p := startFakeKinesisProxy(t)
	p.set(faultPlan{FailIndices: []int{0, 2, 5}, FailCodes: []string{"InternalFailure"}})
	c := newPeerSDKClient(p.URL, "us-east-1", "123456789012", "")
	out, err := c.PutRecords(context.Background(), &kinesis.PutRecordsInput{
		StreamName: aws.String("s"),
		Records:    fakeEntries("k0", "k1", "k2", "peer-fail3", "k4", "k5", "k6"),
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := aws.ToInt32(out.FailedRecordCount); got != 4 {
		t.Errorf("FailedRecordCount: got %d, want 4", got)
	}
	var failedAt []int
	for i, e := range out.Records {
		if e.ErrorCode != nil {
			failedAt = append(failedAt, i)
		} else if e.SequenceNumber == nil {
			t.Errorf("entry %d: neither ErrorCode nor SequenceNumber", i)
		}
	}
	if want := []int{0, 2, 3, 5}; !slices.Equal(failedAt, want) {
		t.Errorf("failed entries: got %v, want %v", failedAt, want)
	}
	if got := aws.ToString(out.Records[0].ErrorCode); got != "InternalFailure" {
		t.Errorf("entry 0 ErrorCode: got %q, want InternalFailure", got)
	}
	if got, want := f.received(), [][]string{{"k1", "peer-fail3", "k4", "k6"}}; !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("backend received %v, want %v", got, want)
	}
	calls := p.calls()
	if len(calls) != 1 {
		t.Fatalf("calls: got %d, want 1", len(calls))
	}
	cl := calls[0]
	if cl.Records != 7 || cl.Forwarded != 4 || cl.Failed != 4 || cl.Status != 200 || cl.Outcome != outcomeForwarded || !slices.Equal(cl.Injected, []int{0, 2, 5}) {
		t.Errorf("call: got %+v", cl)
	}
	if cl.End.Before(cl.Start) || cl.Bytes == 0 {
		t.Errorf("call timing/size: got %+v", cl)
	}
}

func TestProxyFakeAllEntriesFailed(t *testing.T) {
	f, p := startFakeKinesisProxy(t)
	p.set(faultPlan{FailEntries: 1})
	c := newPeerSDKClient(p.URL, "us-east-1", "123456789012", "")
	out, err := c.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String("s"), Records: fakeEntries("a", "b", "c")})
	if err != nil {
		t.Fatal(err)
	}
	if got := aws.ToInt32(out.FailedRecordCount); got != 3 {
		t.Errorf("FailedRecordCount: got %d, want 3", got)
	}
	for i, e := range out.Records {
		if got := aws.ToString(e.ErrorCode); got != "ProvisionedThroughputExceededException" {
			t.Errorf("entry %d ErrorCode: got %q, want the default ProvisionedThroughputExceededException", i, got)
		}
	}
	if got := f.received(); len(got) != 0 {
		t.Errorf("backend received %v, want nothing", got)
	}
	if cl := p.calls()[0]; cl.Outcome != outcomeAllEntriesFailed || cl.Forwarded != 0 {
		t.Errorf("call: got %+v", cl)
	}
}

func TestProxyFakeFailCalls(t *testing.T) {
	f, p := startFakeKinesisProxy(t)
	p.set(faultPlan{FailCallStatus: 503, FailCallCode: "KMSThrottlingException", FailCalls: 2})
	for i := 0; i < 3; i++ {
		body := `{"StreamName":"s","Records":[{"Data":"eA==","PartitionKey":"k"}]}`
		resp := fakeRawPut(t, p.URL, body)
		answer, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if i < 2 {
			if resp.StatusCode != 503 || resp.Header.Get("X-Amzn-ErrorType") != "KMSThrottlingException" ||
				resp.Header.Get("Content-Type") != "application/x-amz-json-1.1" {
				t.Errorf("call %d: got %d %v", i, resp.StatusCode, resp.Header)
			}
			var m map[string]string
			if err := json.Unmarshal(answer, &m); err != nil || m["__type"] != "KMSThrottlingException" || m["message"] == "" {
				t.Errorf("call %d: body %s (err %v), want __type KMSThrottlingException and a message", i, answer, err)
			}
		} else if resp.StatusCode != 200 {
			t.Errorf("call %d: got status %d, want 200 once FailCalls is used up", i, resp.StatusCode)
		}
	}
	if got := len(f.received()); got != 1 {
		t.Errorf("backend received %d calls, want 1", got)
	}
	var outcomes []string
	for _, c := range p.calls() {
		outcomes = append(outcomes, c.Outcome)
	}
	if want := []string{outcomeCallError, outcomeCallError, outcomeForwarded}; !slices.Equal(outcomes, want) {
		t.Errorf("outcomes: got %v, want %v", outcomes, want)
	}
}

func TestProxyFakePassThrough(t *testing.T) {
	f, p := startFakeKinesisProxy(t)
	// Faults are for PutRecords only.
	p.set(faultPlan{FailCallStatus: 500, ResetBeforeForward: true})
	req, _ := http.NewRequest(http.MethodPost, p.URL+"/", strings.NewReader(`{"StreamName":"s"}`))
	req.Header.Set("X-Amz-Target", "Kinesis_20131202.DescribeStreamSummary")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != `{"StreamName":"s"}` || resp.Header.Get("X-Fake") != "yes" {
		t.Errorf("got %d %v %s, want the backend's echo", resp.StatusCode, resp.Header, body)
	}
	if len(p.calls()) != 0 || !slices.Equal(f.otherTargets(), []string{"Kinesis_20131202.DescribeStreamSummary"}) {
		t.Errorf("calls %v, backend saw %v", p.calls(), f.otherTargets())
	}
}

func TestProxyFakeConcurrentAccounting(t *testing.T) {
	f, p := startFakeKinesisProxy(t)
	p.set(faultPlan{Hold: 100 * time.Millisecond, FailEntries: 0.5})
	var mu sync.Mutex
	maxSeen, hooks := 0, 0
	p.onCallStart(func() {
		mu.Lock()
		defer mu.Unlock()
		hooks++
		maxSeen = max(maxSeen, p.inFlight())
	})
	const n = 20
	c := newPeerSDKClient(p.URL, "us-east-1", "123456789012", "")
	var wg sync.WaitGroup
	var failed, stored int32
	var resMu sync.Mutex
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out, err := c.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String("s"), Records: fakeEntries("a", "b", "c", "d")})
			if err != nil {
				t.Error(err)
				return
			}
			resMu.Lock()
			failed += aws.ToInt32(out.FailedRecordCount)
			stored += 4 - aws.ToInt32(out.FailedRecordCount)
			resMu.Unlock()
		}()
	}
	wg.Wait()
	if got := p.inFlight(); got != 0 {
		t.Errorf("inFlight after all calls: got %d, want 0", got)
	}
	if hooks != n || maxSeen < 2 || maxSeen > n {
		t.Errorf("hook ran %d times (want %d), max in flight %d (want 2..%d)", hooks, n, maxSeen, n)
	}
	calls := p.calls()
	injected, forwarded := 0, 0
	for _, cl := range calls {
		injected += len(cl.Injected)
		forwarded += cl.Forwarded
		if cl.End.Sub(cl.Start) < 100*time.Millisecond {
			t.Errorf("call took %v, want at least the 100ms hold", cl.End.Sub(cl.Start))
		}
	}
	backend := 0
	for _, keys := range f.received() {
		backend += len(keys)
	}
	if len(calls) != n || int(failed) != injected || int(stored) != forwarded || backend != forwarded {
		t.Errorf("calls %d (want %d); client saw %d failed, %d stored; proxy injected %d, forwarded %d; backend got %d",
			len(calls), n, failed, stored, injected, forwarded, backend)
	}
}

func TestProxyFakeUnreachable(t *testing.T) {
	_, p := startFakeKinesisProxy(t)
	p.set(faultPlan{Unreachable: true})
	c := newPeerSDKClient(p.URL, "us-east-1", "123456789012", "")
	if _, err := c.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String("s"), Records: fakeEntries("a")}); err == nil {
		t.Fatal("PutRecords through an unreachable proxy succeeded")
	}
	if p.refusedConns() == 0 {
		t.Errorf("no connection refused")
	}
	p.set(faultPlan{})
	if _, err := c.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String("s"), Records: fakeEntries("a")}); err != nil {
		t.Fatalf("PutRecords after recovery: %v", err)
	}
}

func TestProxyFakeStopsDespiteHeldCall(t *testing.T) {
	begun := time.Now()
	clientErr := make(chan error, 1)
	t.Run("held", func(t *testing.T) {
		_, p := startFakeKinesisProxy(t)
		p.set(faultPlan{Hold: time.Hour})
		go func() {
			req, _ := http.NewRequest(http.MethodPost, p.URL+"/", strings.NewReader(`{"StreamName":"s","Records":[]}`))
			req.Header.Set("X-Amz-Target", "Kinesis_20131202.PutRecords")
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
				err = fmt.Errorf("answered %s", resp.Status)
			}
			clientErr <- err
		}()
		for deadline := time.Now().Add(5 * time.Second); p.inFlight() == 0; time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the call never reached the proxy")
			}
		}
	})
	if d := time.Since(begun); d > 5*time.Second {
		t.Errorf("stopping the proxy took %v with a call on hold", d)
	}
	if err := <-clientErr; err == nil {
		t.Errorf("the held call got an answer")
	}
}

// fakeRawPut sends a PutRecords body without signing (for the fake backend only). The response is the
// caller's to close; on a transport error it reports the error and returns an empty 599 answer.
func fakeRawPut(t *testing.T, endpoint, body string) *http.Response {
	req, _ := http.NewRequest(http.MethodPost, endpoint+"/", strings.NewReader(body))
	req.Header.Set("X-Amz-Target", "Kinesis_20131202.PutRecords")
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("raw PutRecords: %v", err)
		return &http.Response{StatusCode: 599, Header: http.Header{}, Body: io.NopCloser(strings.NewReader(""))}
	}
	return resp
}

// ---------------------------------------------------------------------------------------------
// The proxy in front of each emulator.

func TestProxyFaultsOnPeers(t *testing.T) {
	peers := []struct {
		name  string
		start func(t *testing.T) *kinesisPeer
	}{
		{"kinesalite", func(t *testing.T) *kinesisPeer { return startKinesalite(t) }},
		{"kinesis-mock", func(t *testing.T) *kinesisPeer { return startKinesisMock(t, "ap-southeast-2", "111122223333") }},
	}
	for _, pc := range peers {
		t.Run(pc.name, func(t *testing.T) {
			peer := pc.start(t)
			proxy := startFaultProxy(t, peer.Endpoint)
			byARN := peer.Name == "kinesis-mock" // kinesalite does not know StreamARN
			n := 0
			// newStream gives each case a fresh stream and a clean plan.
			newStream := func(t *testing.T) (string, string) {
				n++
				name := fmt.Sprintf("s%d", n)
				peer.createStream(t, streamSpec{Name: name, Shards: 2})
				proxy.set(faultPlan{})
				if byARN {
					return name, peer.streamARN(name)
				}
				return name, name
			}
			client := newPeerSDKClient(proxy.URL, peer.Region, peer.Account, "")

			t.Run("PassThrough", func(t *testing.T) {
				name, ref := newStream(t)
				withToken := newPeerSDKClient(proxy.URL, peer.Region, peer.Account, "session-token-for-test")
				data := makePayloads(t, 10)
				sdkPutAll(t, withToken, ref, byARN, data)
				checkStoredData(t, peer.readAll(t, name), data)
				cl := lastProxyCall(t, proxy)
				h := cl.Header
				authRE := regexp.MustCompile(`^AWS4-HMAC-SHA256 Credential=` + peer.Account + `/[0-9]{8}/` + peer.Region +
					`/kinesis/aws4_request, SignedHeaders=[a-z0-9;-]+, Signature=[0-9a-f]{64}$`)
				switch {
				case h.Get("X-Amz-Target") != "Kinesis_20131202.PutRecords",
					h.Get("Content-Type") != "application/x-amz-json-1.1",
					!authRE.MatchString(h.Get("Authorization")),
					!regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z$`).MatchString(h.Get("X-Amz-Date")),
					h.Get("X-Amz-Security-Token") != "session-token-for-test":
					t.Errorf("recorded headers: %v", h)
				}
				if cl.Records != 10 || cl.Forwarded != 10 || cl.Failed != 0 || cl.Status != 200 || cl.Outcome != outcomeForwarded {
					t.Errorf("call: %+v", cl)
				}
			})
			t.Run("FailEntries", func(t *testing.T) {
				name, ref := newStream(t)
				proxy.set(faultPlan{FailEntries: 0.3, FailCodes: []string{"ProvisionedThroughputExceededException", "InternalFailure"}})
				data := makePayloads(t, 40)
				out, err := sdkPutRecords(client, ref, byARN, data)
				if err != nil {
					t.Fatal(err)
				}
				cl := lastProxyCall(t, proxy)
				var failedAt []int
				var kept [][]byte
				for i, e := range out.Records {
					switch code := aws.ToString(e.ErrorCode); code {
					case "":
						kept = append(kept, data[i])
					case "ProvisionedThroughputExceededException", "InternalFailure":
						failedAt = append(failedAt, i)
					default:
						t.Errorf("entry %d: unexpected ErrorCode %q", i, code)
					}
				}
				if len(failedAt) == 0 || len(failedAt) == len(data) {
					t.Errorf("%d of %d entries failed; 30%% should fail some and not all", len(failedAt), len(data))
				}
				if !slices.Equal(failedAt, cl.Injected) || int(aws.ToInt32(out.FailedRecordCount)) != len(failedAt) || cl.Failed != len(failedAt) {
					t.Errorf("failed entries %v, FailedRecordCount %d, proxy injected %v and counted %d",
						failedAt, aws.ToInt32(out.FailedRecordCount), cl.Injected, cl.Failed)
				}
				checkStoredData(t, peer.readAll(t, name), kept)
			})
			t.Run("FailCallStatus", func(t *testing.T) {
				name, ref := newStream(t)
				proxy.set(faultPlan{FailCallStatus: 500, FailCallCode: "InternalFailure", FailCalls: 1})
				data := makePayloads(t, 3)
				_, err := sdkPutRecords(client, ref, byARN, data)
				wantKinesisAPIError(t, err, 500, "InternalFailure")
				sdkPutAll(t, client, ref, byARN, data) // FailCalls is used up
				checkStoredData(t, peer.readAll(t, name), data)

				proxy.set(faultPlan{FailCallStatus: 400, FailCallCode: "AccessDeniedException"})
				_, err = sdkPutRecords(client, ref, byARN, data)
				wantKinesisAPIError(t, err, 400, "AccessDeniedException")
				checkStoredData(t, peer.readAll(t, name), data)
			})
			for _, tt := range []struct {
				name    string
				plan    faultPlan
				outcome string
				applied bool // the peer stored the records before the reset
			}{
				{"ResetBeforeForward", faultPlan{ResetBeforeForward: true}, outcomeResetBefore, false},
				{"ResetAfterForward", faultPlan{ResetAfterForward: true}, outcomeResetAfter, true},
			} {
				t.Run(tt.name, func(t *testing.T) {
					name, ref := newStream(t)
					proxy.set(tt.plan)
					data := makePayloads(t, 3)
					_, err := sdkPutRecords(client, ref, byARN, data)
					wantConnReset(t, err)
					var stored [][]byte
					if tt.applied {
						stored = data
					}
					if cl := lastProxyCall(t, proxy); cl.Outcome != tt.outcome || cl.Status != 0 || cl.Forwarded != len(stored) {
						t.Errorf("call: %+v", cl)
					}
					checkStoredData(t, peer.readAll(t, name), stored)
				})
			}
			t.Run("DelayClientTimesOut", func(t *testing.T) {
				name, ref := newStream(t)
				proxy.set(faultPlan{Delay: 5 * time.Second})
				data := makePayloads(t, 3)
				ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
				defer cancel()
				_, err := sdkPutRecordsCtx(ctx, client, ref, byARN, data)
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("got %v, want a deadline error", err)
				}
				checkStoredData(t, peer.waitForRecords(t, name, len(data), 5*time.Second), data)
				if cl := waitProxyCallEnd(t, proxy); cl.Outcome != outcomeClientGoneAfter || cl.End.Sub(cl.Start) > 4*time.Second {
					t.Errorf("call: %+v (the delay should end when the client leaves)", cl)
				}
			})
			t.Run("Hold", func(t *testing.T) {
				name, ref := newStream(t)
				proxy.set(faultPlan{Hold: 400 * time.Millisecond})
				data := makePayloads(t, 3)
				done := make(chan error, 1)
				begun := time.Now()
				go func() { done <- sdkPutAllErr(client, ref, byARN, data) }()
				sawInFlight := false
				for deadline := time.Now().Add(300 * time.Millisecond); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
					if proxy.inFlight() == 1 {
						sawInFlight = true
						if got := len(peer.readAll(t, name)); got != 0 {
							t.Errorf("%d records stored while the call is on hold", got)
						}
						break
					}
				}
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				if d := time.Since(begun); !sawInFlight || d < 400*time.Millisecond {
					t.Errorf("in flight seen: %v; call took %v, want at least the 400ms hold", sawInFlight, d)
				}
				checkStoredData(t, peer.readAll(t, name), data)

				// A client that gives up during the hold has nothing applied.
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				defer cancel()
				_, err := sdkPutRecordsCtx(ctx, client, ref, byARN, makePayloads(t, 2))
				if !errors.Is(err, context.DeadlineExceeded) {
					t.Errorf("got %v, want a deadline error", err)
				}
				if cl := waitProxyCallEnd(t, proxy); cl.Outcome != outcomeClientGoneBefore {
					t.Errorf("call: %+v", cl)
				}
				checkStoredData(t, peer.readAll(t, name), data)
			})
			t.Run("Unreachable", func(t *testing.T) {
				name, ref := newStream(t)
				proxy.set(faultPlan{Unreachable: true})
				_, err := sdkPutRecords(client, ref, byARN, makePayloads(t, 3))
				wantConnReset(t, err)
				checkStoredData(t, peer.readAll(t, name), nil)
				proxy.set(faultPlan{})
				data := makePayloads(t, 2)
				sdkPutAll(t, client, ref, byARN, data)
				checkStoredData(t, peer.readAll(t, name), data)
			})
		})
	}
}

// ---------------------------------------------------------------------------------------------
// Helpers.

// makePayloads returns n distinct payloads named after the test.
func makePayloads(t *testing.T, n int) [][]byte {
	data := make([][]byte, n)
	for i := range data {
		data[i] = fmt.Appendf(nil, "%s/%03d", t.Name(), i)
	}
	return data
}

func sdkPutRecordsCtx(ctx context.Context, c *kinesis.Client, stream string, byARN bool, data [][]byte) (*kinesis.PutRecordsOutput, error) {
	in := &kinesis.PutRecordsInput{}
	if byARN {
		in.StreamARN = aws.String(stream)
	} else {
		in.StreamName = aws.String(stream)
	}
	for i, d := range data {
		in.Records = append(in.Records, types.PutRecordsRequestEntry{Data: d, PartitionKey: aws.String(fmt.Sprintf("pk-%d", i))})
	}
	return c.PutRecords(ctx, in)
}

func sdkPutRecords(c *kinesis.Client, stream string, byARN bool, data [][]byte) (*kinesis.PutRecordsOutput, error) {
	return sdkPutRecordsCtx(context.Background(), c, stream, byARN, data)
}

// sdkPutAllErr puts data and fails unless every entry succeeded.
func sdkPutAllErr(c *kinesis.Client, stream string, byARN bool, data [][]byte) error {
	for start := 0; start < len(data); start += 500 {
		out, err := sdkPutRecords(c, stream, byARN, data[start:min(start+500, len(data))])
		if err != nil {
			return err
		}
		if n := aws.ToInt32(out.FailedRecordCount); n != 0 {
			return fmt.Errorf("%d entries failed", n)
		}
	}
	return nil
}

func sdkPutAll(t *testing.T, c *kinesis.Client, stream string, byARN bool, data [][]byte) {
	t.Helper()
	if err := sdkPutAllErr(c, stream, byARN, data); err != nil {
		t.Fatalf("put %d records to %s: %v", len(data), stream, err)
	}
}

// checkStoredData checks that got holds exactly want's payloads, in any order.
func checkStoredData(t *testing.T, got []storedRecord, want [][]byte) {
	t.Helper()
	var g, w []string
	for _, r := range got {
		g = append(g, string(r.Data))
	}
	for _, d := range want {
		w = append(w, string(d))
	}
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Errorf("stored records: got %d %s, want %d %s", len(g), abbrevList(g), len(w), abbrevList(w))
	}
}

func abbrevList(s []string) string {
	if len(s) > 6 {
		return fmt.Sprint(s[:6]) + "…"
	}
	return fmt.Sprint(s)
}

func parseSeqNum(t *testing.T, s string) *big.Int {
	n, ok := new(big.Int).SetString(s, 10)
	if !ok {
		t.Fatalf("sequence number %q is not a decimal number", s)
	}
	return n
}

func wantKinesisAPIError(t *testing.T, err error, status int, code string) {
	t.Helper()
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != code {
		t.Errorf("got error %v, want %s", err, code)
		return
	}
	var re *smithyhttp.ResponseError
	if !errors.As(err, &re) || re.HTTPStatusCode() != status {
		t.Errorf("got error %v, want HTTP status %d", err, status)
	}
}

// wantConnReset checks that err is a broken connection (the SDK wraps it in a
// ResponseError with status 0), not an answer from the server.
func wantConnReset(t *testing.T, err error) {
	t.Helper()
	var ae smithy.APIError
	var re *smithyhttp.ResponseError
	switch {
	case err == nil || errors.As(err, &ae) || (errors.As(err, &re) && re.HTTPStatusCode() != 0):
		t.Errorf("got %v, want a broken connection", err)
	case !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
		t.Errorf("got %v, want a connection reset", err)
	}
}

func lastProxyCall(t *testing.T, p *faultProxy) proxyCall {
	t.Helper()
	calls := p.calls()
	if len(calls) == 0 {
		t.Fatal("the proxy saw no PutRecords call")
	}
	return calls[len(calls)-1]
}

// waitProxyCallEnd waits until the proxy has finished the last call it saw and returns it.
func waitProxyCallEnd(t *testing.T, p *faultProxy) proxyCall {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if cl := lastProxyCall(t, p); !cl.End.IsZero() {
			return cl
		}
	}
	t.Fatal("the proxy's last call did not end within 5s")
	return proxyCall{}
}
