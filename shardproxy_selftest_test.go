package main

// Self-tests of the shard-throttling proxy (shardproxy_test.go): its bucket arithmetic with a
// clock the test moves, its routing against kinesalite's own, and its answers.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
	"github.com/aws/aws-sdk-go-v2/service/kinesis/types"
	"github.com/aws/smithy-go"
)

// bucketStep tries entries at one moment and says how many must be admitted.
type bucketStep struct {
	after   time.Duration // from the start
	try     int           // entries offered
	size    int           // bytes each
	want    int           // entries admitted
	records float64       // record tokens left afterwards
}

func TestTokenBucketMath(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	newShard := func(l shardLimits) *throttledShard {
		return &throttledShard{records: newTokenBucket(l.Records, l.Burst, t0), bytes: newTokenBucket(l.Bytes, l.Burst, t0)}
	}
	admitted := func(s *throttledShard, at time.Time, n, size int) int {
		got := 0
		for range n {
			if s.take(at, size) {
				got++
			}
		}
		return got
	}
	tests := []struct {
		name   string
		limits shardLimits
		steps  []bucketStep
	}{
		{"a full second's burst, then the refill rate", kinesisShardLimits, []bucketStep{
			{0, 1500, 100, 1000, 0},
			{250 * time.Millisecond, 400, 100, 250, 0},
			{250 * time.Millisecond, 10, 100, 0, 0}, // no time passed: nothing new
			// Ten idle seconds save up one second, not ten.
			{10250 * time.Millisecond, 5000, 100, 1000, 0},
		}},
		{"300 records/s", shardLimits{Records: 300, Bytes: 1 << 20, Burst: time.Second}, []bucketStep{
			{0, 400, 10, 300, 0},
			{100 * time.Millisecond, 100, 10, 30, 0},
		}},
		{"the byte limit binds, and a refused entry takes no record token", kinesisShardLimits, []bucketStep{
			{0, 5, 300 << 10, 3, 997},
			// 124 KiB left, plus 100 KiB per 100 ms: one more 300 KiB entry after 200 ms.
			{100 * time.Millisecond, 1, 300 << 10, 0, 1000}, // the record bucket is full again
			{200 * time.Millisecond, 1, 300 << 10, 1, 1000 - 1},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newShard(tt.limits)
			for i, st := range tt.steps {
				if got := admitted(s, t0.Add(st.after), st.try, st.size); got != st.want {
					t.Errorf("step %d (at +%v): admitted %d of %d entries of %d bytes, want %d", i, st.after, got, st.try, st.size, st.want)
				}
				if diff := s.records.tokens - st.records; diff > 1e-6 || diff < -1e-6 {
					t.Errorf("step %d: %.3f record tokens left, want %.0f", i, s.records.tokens, st.records)
				}
			}
		})
	}
}

// TestShardProxyRoutesByMD5 sends records through the proxy to a 4-shard kinesalite stream: the
// shard kinesalite stores each on (the ground truth) is the one the proxy computed.
func TestShardProxyRoutesByMD5(t *testing.T) {
	const stream = "routing"
	peer := startKinesalite(t, streamSpec{Name: stream, Shards: 4})
	proxy := startShardProxy(t, peer, stream, shardLimits{Records: 1e6, Bytes: 1e9, Burst: time.Second})
	client := newPeerSDKClient(proxy.URL, peer.Region, "AKIASHARDPROXYTEST01", "")
	var entries []types.PutRecordsRequestEntry
	for i := range 400 {
		entries = append(entries, types.PutRecordsRequestEntry{Data: []byte(fmt.Sprint(i)), PartitionKey: aws.String(fmt.Sprintf("key-%d", i))})
	}
	// An explicit hash key wins over the partition key: the last shard's first hash key.
	last := proxy.shards[len(proxy.shards)-1]
	entries = append(entries, types.PutRecordsRequestEntry{Data: []byte("explicit"), PartitionKey: aws.String("key-0"), ExplicitHashKey: aws.String(last.start.String())})
	out, err := client.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries})
	if err != nil {
		t.Fatal(err)
	}
	perShard := map[string]int{}
	for i, r := range out.Records {
		sh, err := proxy.shardFor(aws.ToString(entries[i].PartitionKey), aws.ToString(entries[i].ExplicitHashKey))
		if err != nil {
			t.Fatal(err)
		}
		if r.ErrorCode != nil || aws.ToString(r.ShardId) != sh.id {
			t.Errorf("entry %d: kinesalite answered shard %s (error %v), the proxy routed it to %s", i, aws.ToString(r.ShardId), aws.ToString(r.ErrorCode), sh.id)
		}
		perShard[sh.id]++
	}
	if len(perShard) != 4 {
		t.Errorf("400 keys reached %d of 4 shards: %v", len(perShard), perShard)
	}
	if got := aws.ToString(out.Records[len(out.Records)-1].ShardId); got != last.id {
		t.Errorf("the entry with ExplicitHashKey went to %s, want %s", got, last.id)
	}
	if c := proxy.snapshot(); c.Calls != 1 || c.Entries != 401 || c.Stored != 401 || c.Throttled != 0 {
		t.Errorf("counts %+v, want 1 call, 401 entries, all stored", c)
	}
}

// TestShardProxyThrottlesPerShard: with 10 records/s per shard and a clock the test moves, a call
// of entries spread over two shards gets the first ten of each stored and the rest refused with
// Kinesis's code and message, in request order; what kinesalite holds is exactly what was
// answered as stored.
func TestShardProxyThrottlesPerShard(t *testing.T) {
	const stream = "throttled"
	peer := startKinesalite(t, streamSpec{Name: stream, Shards: 2})
	proxy := startShardProxy(t, peer, stream, shardLimits{Records: 10, Bytes: 1000, Burst: time.Second})
	now := time.Now()
	proxy.mu.Lock()
	proxy.now = func() time.Time { return now }
	proxy.mu.Unlock()
	client := newPeerSDKClient(proxy.URL, peer.Region, "AKIASHARDPROXYTEST02", "")

	// Keys for each shard.
	keysOf := map[string][]string{}
	for i := 0; len(keysOf[proxy.shards[0].id]) < 20 || len(keysOf[proxy.shards[1].id]) < 20; i++ {
		k := fmt.Sprintf("k%d", i)
		sh, _ := proxy.shardFor(k, "")
		keysOf[sh.id] = append(keysOf[sh.id], k)
	}
	a, b := proxy.shards[0].id, proxy.shards[1].id
	put := func(shards []string, data func(i int) []byte) *kinesis.PutRecordsOutput {
		t.Helper()
		used := map[string]int{}
		var entries []types.PutRecordsRequestEntry
		for i, sh := range shards {
			entries = append(entries, types.PutRecordsRequestEntry{Data: data(i), PartitionKey: aws.String(keysOf[sh][used[sh]])})
			used[sh]++
		}
		out, err := client.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String(stream), Records: entries})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Records) != len(entries) {
			t.Fatalf("%d entries answered for %d sent", len(out.Records), len(entries))
		}
		return out
	}
	small := func(i int) []byte { return []byte(fmt.Sprintf("%02d", i)) }

	// 15 entries per shard, alternating: the first 10 of each are stored.
	var shards []string
	for range 15 {
		shards = append(shards, a, b)
	}
	out := put(shards, small)
	nth := map[string]int{}
	failed := 0
	for i, r := range out.Records {
		sh := shards[i]
		wantOK := nth[sh] < 10
		nth[sh]++
		switch {
		case wantOK && (r.ErrorCode != nil || aws.ToString(r.ShardId) != sh || aws.ToString(r.SequenceNumber) == ""):
			t.Errorf("entry %d: %+v, want stored on %s", i, r, sh)
		case !wantOK:
			failed++
			wantMsg := fmt.Sprintf("Rate exceeded for shard %s in stream %s under account %s.", sh, stream, peer.Account)
			if aws.ToString(r.ErrorCode) != "ProvisionedThroughputExceededException" || aws.ToString(r.ErrorMessage) != wantMsg {
				t.Errorf("entry %d: %s %q, want ProvisionedThroughputExceededException %q", i, aws.ToString(r.ErrorCode), aws.ToString(r.ErrorMessage), wantMsg)
			}
		}
	}
	if int(aws.ToInt32(out.FailedRecordCount)) != failed || failed != 10 {
		t.Errorf("FailedRecordCount %d, %d entries failed, want 10", aws.ToInt32(out.FailedRecordCount), failed)
	}

	// Every entry throttled: answered without forwarding.
	out = put([]string{a, b}, small)
	if aws.ToInt32(out.FailedRecordCount) != 2 {
		t.Errorf("with both shards empty: FailedRecordCount %d, want 2", aws.ToInt32(out.FailedRecordCount))
	}

	// Half a second later, shard a has room for five records and its full 1,000 bytes (data
	// plus key): three 300-byte entries fit, the next two do not. Counted as base64 (400 bytes),
	// only two would fit.
	now = now.Add(500 * time.Millisecond)
	sized := func(i int) []byte { return []byte(strings.Repeat("x", 300-len(keysOf[a][i]))) }
	out = put([]string{a, a, a, a, a}, sized)
	for i, r := range out.Records {
		if got, want := r.ErrorCode == nil, i < 3; got != want {
			t.Errorf("after 500 ms, 300-byte entry %d: stored %v, want %v", i, got, want)
		}
	}

	stored := map[string][]string{}
	for _, r := range peer.readAll(t, stream) {
		stored[r.ShardID] = append(stored[r.ShardID], string(r.Data))
	}
	if len(stored[a]) != 13 || len(stored[b]) != 10 {
		t.Errorf("kinesalite holds %d records on %s and %d on %s, want 13 and 10", len(stored[a]), a, len(stored[b]), b)
	}
	if got := strings.Join(stored[b], ","); got != "01,03,05,07,09,11,13,15,17,19" {
		t.Errorf("shard %s holds %s, want the first ten entries sent to it, in order", b, got)
	}
	c := proxy.snapshot()
	if c.Calls != 3 || c.Entries != 37 || c.Stored != 23 || c.Throttled != 14 {
		t.Errorf("counts %+v, want 3 calls, 37 entries, 23 stored, 14 throttled", c)
	}
}

// TestShardProxyOutageAndInFlight: an outage answers 503 or refuses connections and stores
// nothing; a call counts as in flight for its client from its first byte until it is answered or
// the client gives up.
func TestShardProxyOutageAndInFlight(t *testing.T) {
	const stream = "outage"
	peer := startKinesalite(t, streamSpec{Name: stream, Shards: 1})
	proxy := startShardProxy(t, peer, stream, kinesisShardLimits)
	client := newPeerSDKClient(proxy.URL, peer.Region, "AKIASHARDPROXYTEST03", "")
	put := func() error {
		_, err := client.PutRecords(context.Background(), &kinesis.PutRecordsInput{StreamName: aws.String(stream),
			Records: []types.PutRecordsRequestEntry{{Data: []byte("x"), PartitionKey: aws.String("k")}}})
		return err
	}
	proxy.setOutage(outageUnavailable)
	var re interface{ HTTPStatusCode() int }
	var ae smithy.APIError
	if err := put(); !errors.As(err, &re) || re.HTTPStatusCode() != 503 || !errors.As(err, &ae) || ae.ErrorCode() != "ServiceUnavailable" {
		t.Errorf("during a 503 outage: %v, want HTTP 503 ServiceUnavailable", err)
	}
	proxy.setOutage(outageRefused)
	if err := put(); err == nil || !strings.Contains(err.Error(), "connection reset") {
		t.Errorf("during a refusing outage: %v, want a connection reset", err)
	}
	proxy.setOutage(outageNone)
	if err := put(); err != nil {
		t.Errorf("after the outage: %v", err)
	}
	if recs := peer.readAll(t, stream); len(recs) != 1 {
		t.Errorf("kinesalite holds %d records, want the one sent after the outage", len(recs))
	}
	if c := proxy.snapshot(); c.OutageCalls+c.Refused < 2 || c.Stored != 1 {
		t.Errorf("counts %+v: want both outage calls counted and 1 stored", c)
	}

	// In flight: a request whose body is still being sent, then one the client abandons.
	const key = "AKIAINFLIGHTTEST0001"
	for _, abandon := range []bool{false, true} {
		body, w := io.Pipe()
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, proxy.URL, body)
		req.Header.Set("X-Amz-Target", "Kinesis_20131202.PutRecords")
		req.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential="+key+"/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0")
		done := make(chan error, 1)
		go func() {
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
		io.WriteString(w, `{"StreamName":"outage","Records":[`)
		waitFor(t, func() bool { return proxy.inFlight(key) == 1 }, "the open call counted in flight")
		if n := proxy.awaitedCalls(key); n != 1 {
			t.Errorf("awaitedCalls %d while the client sends its request, want 1", n)
		}
		if abandon {
			cancel()
			w.CloseWithError(context.Canceled) // the transport waits for the body's writer to stop
		} else {
			io.WriteString(w, `{"Data":"eA==","PartitionKey":"k"}]}`)
			w.Close()
		}
		<-done
		if n := proxy.awaitedCalls(key); n != 0 && abandon {
			// The client closed its connection: whatever the proxy's HTTP server has noticed yet.
			t.Errorf("awaitedCalls %d after the client gave up, want 0", n)
		}
		waitFor(t, func() bool { return proxy.inFlight(key) == 0 }, "the call no longer in flight")
		cancel()
		w.Close()
	}
}

// waitFor polls cond for up to 2 s.
func waitFor(t *testing.T, cond func() bool, what string) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("not within 2 s: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
