package main

// A fake of Kinesis's per-shard write limits, in front of one kinesalite stream: neither emulator
// throttles, and the fleet test (fleet_test.go) needs a stream that pushes back the way a busy
// provisioned stream does.
//
// What it models, from the Kinesis Data Streams PutRecords reference and its quotas page:
//   - A record goes to the shard whose hash key range holds the MD5 of its partition key, read as
//     a 128-bit unsigned integer (or its ExplicitHashKey), over the ranges ListShards reports. The
//     proxy checks its routing against the ShardId kinesalite answers for every stored entry.
//   - Each shard accepts 1,000 records/s and 1 MiB/s (data plus partition key), as a token bucket
//     per limit, refilled continuously and holding at most about one second of capacity, so a
//     shard idle for a while takes a burst of that size.
//   - An entry over either limit fails by itself with ProvisionedThroughputExceededException and
//     "Rate exceeded for shard shardId-… in stream … under account …"; the other entries of the
//     call are forwarded to kinesalite, stored, and answered with its SequenceNumber and ShardId.
//     The answer lists both in request order, with FailedRecordCount.
//   - An outage: every call answered 503 ServiceUnavailable, or every connection refused (reset
//     as it is accepted, and any request on an already open connection reset).
//
//   - On request (shardFaults, set before traffic): answer times with spikes (a base delay, and
//     shares of calls delayed more); one hot shard with limits of its own among healthy ones; a
//     share of entries refused at random whatever the rate, as KMS throttling or a hot key does,
//     answered with the same per-shard message.
//
// What it does not model: AWS's exact metering (it documents per-second limits, not a bucket, and
// no burst allowance), throttling of a whole call, the 5 MiB per-call limit, on-demand streams and
// their scaling, resharding, read limits, and per-account limits.
// It keeps counters, not bodies, so its memory does not grow with the traffic.

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kinesis"
)

// shardLimits are one shard's write limits.
type shardLimits struct {
	Records float64       // records per second
	Bytes   float64       // bytes per second (data plus partition key)
	Burst   time.Duration // how much unused capacity a shard saves up
}

// kinesisShardLimits are a provisioned shard's documented limits.
var kinesisShardLimits = shardLimits{Records: 1000, Bytes: 1 << 20, Burst: time.Second}

// tokenBucket holds up to capacity tokens, refilled at rate per second.
type tokenBucket struct {
	rate, capacity, tokens float64
	at                     time.Time
}

// newTokenBucket returns a full bucket.
func newTokenBucket(rate float64, burst time.Duration, now time.Time) tokenBucket {
	c := rate * burst.Seconds()
	return tokenBucket{rate: rate, capacity: c, tokens: c, at: now}
}

func (b *tokenBucket) refill(now time.Time) {
	if now.After(b.at) {
		b.tokens = min(b.capacity, b.tokens+b.rate*now.Sub(b.at).Seconds())
		b.at = now
	}
}

// throttledShard is one shard: its hash key range and its two buckets.
type throttledShard struct {
	id         string
	start, end *big.Int // inclusive
	records    tokenBucket
	bytes      tokenBucket
}

// take admits an entry of size bytes at now if both buckets hold enough; a refused entry takes
// nothing, as Kinesis does not count a throttled record against the shard.
func (s *throttledShard) take(now time.Time, size int) bool {
	s.records.refill(now)
	s.bytes.refill(now)
	if s.records.tokens < 1 || s.bytes.tokens < float64(size) {
		return false
	}
	s.records.tokens--
	s.bytes.tokens -= float64(size)
	return true
}

// outageMode is what the proxy does to every PutRecords call during an outage.
type outageMode int

const (
	outageNone        outageMode = iota
	outageUnavailable            // answer HTTP 503 ServiceUnavailable; nothing stored
	outageRefused                // reset connections as they are accepted, and requests on open ones
)

// shardFaults are the proxy's optional faults beyond the shards' limits.
type shardFaults struct {
	Latency   time.Duration  // added to every PutRecords answer
	Spikes    []latencySpike // shares of calls answered later still
	HotShard  *shardLimits   // the first shard's limits, when set: a hot shard among healthy ones
	Refuse    float64        // share of entries refused at random, whatever the rate
	KMSCalls  float64        // share of calls refused whole with KMSThrottlingException
	Fail5xx   float64        // share of calls answered 500 InternalFailure, nothing stored
	RandSeed  uint64
	randState *rand.Rand
}

// latencySpike delays Share of the calls by Extra more.
type latencySpike struct {
	Share float64
	Extra time.Duration
}

// delay is one call's answer time, beyond the proxy's own.
func (f *shardFaults) delay() time.Duration {
	d := f.Latency
	x := f.randState.Float64()
	for _, s := range f.Spikes {
		if x < s.Share {
			return d + s.Extra
		}
		x -= s.Share
	}
	return d
}

// shardProxyCounts are the proxy's counters; entries of every PutRecords call it received.
type shardProxyCounts struct {
	Calls         int // PutRecords calls
	Entries       int // entries in them, whatever became of them (amplification's numerator)
	Bytes         int // their data plus partition keys
	Stored        int // entries kinesalite stored
	Throttled     int // entries failed for a shard's limits
	OutageCalls   int // calls answered 503 or reset during an outage
	OutageEntries int // their entries
	Refused       int // connections reset as they were accepted during an outage

	Forwarded   int           // calls forwarded to kinesalite
	ForwardTime time.Duration // their total time there: kinesalite's own latency, queueing included
	ForwardMax  time.Duration
}

// shardProxy is a running proxy owned by one test.
type shardProxy struct {
	URL             string // "http://127.0.0.1:<port>"
	stream, account string

	proxyPlumbing
	target *url.URL
	pass   *httputil.ReverseProxy

	mu       sync.Mutex
	now      func() time.Time // the buckets' clock; tests may replace it before traffic starts
	shards   []*throttledShard
	outage   outageMode
	faults   shardFaults
	counts   shardProxyCounts
	inflight map[string]map[string]int // PutRecords calls open per client (access key id) and connection (remote address)
}

// startShardProxy lists the shards of stream on peer once and starts a proxy on 127.0.0.1 in
// front of it, with limits per shard. The test's cleanup stops it and fails the test if the proxy
// itself misbehaved (a routing mismatch, an answer it could not read).
func startShardProxy(t testing.TB, peer *kinesisPeer, stream string, limits shardLimits) *shardProxy {
	t.Helper()
	target, err := url.Parse(peer.Endpoint)
	if err != nil {
		t.Fatalf("startShardProxy: %v", err)
	}
	p := &shardProxy{
		stream: stream, account: peer.Account, target: target,
		now:      time.Now,
		inflight: map[string]map[string]int{},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := peer.client().ListShards(ctx, &kinesis.ListShardsInput{StreamName: aws.String(stream)})
	if err != nil {
		t.Fatalf("startShardProxy: ListShards %s: %v", stream, err)
	}
	if out.NextToken != nil {
		t.Fatalf("startShardProxy: more shards than one ListShards page; not supported")
	}
	now := time.Now()
	for _, sh := range out.Shards {
		start, ok1 := new(big.Int).SetString(aws.ToString(sh.HashKeyRange.StartingHashKey), 10)
		end, ok2 := new(big.Int).SetString(aws.ToString(sh.HashKeyRange.EndingHashKey), 10)
		if !ok1 || !ok2 {
			t.Fatalf("startShardProxy: shard %s has hash key range %v", aws.ToString(sh.ShardId), sh.HashKeyRange)
		}
		p.shards = append(p.shards, &throttledShard{
			id: aws.ToString(sh.ShardId), start: start, end: end,
			records: newTokenBucket(limits.Records, limits.Burst, now),
			bytes:   newTokenBucket(limits.Bytes, limits.Burst, now),
		})
	}
	p.forward = newForwardClient()
	p.pass = &httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target); r.Out.Host = r.In.Host },
		Transport: p.forward.Transport,
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("startShardProxy: listen: %v", err)
	}
	p.URL = "http://" + tcp.Addr().String()
	p.serve(&refusingListener{Listener: tcp, p: p}, p.serveHTTP)
	t.Logf("shard proxy %s -> %s, stream %s: %d shards at %.0f records/s and %.0f bytes/s each", p.URL, peer.Endpoint, stream, len(p.shards), limits.Records, limits.Bytes)
	t.Cleanup(func() { p.stop(t) })
	return p
}

// setFaults sets the proxy's faults; call it before traffic starts.
func (p *shardProxy) setFaults(f shardFaults) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f.randState = rand.New(rand.NewPCG(f.RandSeed, 7))
	if f.HotShard != nil && len(p.shards) > 1 {
		now := p.now()
		p.shards[0].records = newTokenBucket(f.HotShard.Records, f.HotShard.Burst, now)
		p.shards[0].bytes = newTokenBucket(f.HotShard.Bytes, f.HotShard.Burst, now)
	}
	p.faults = f
}

// setOutage starts (or, with outageNone, ends) an outage.
func (p *shardProxy) setOutage(m outageMode) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.outage = m
}

// settle waits until no call is being handled: a call whose client has gone (an extension that
// cut it, or exited) may still be forwarded, and then stored. Call it only when no client is left.
func (p *shardProxy) settle() { p.handlers.Wait() }

// snapshot returns the counters.
func (p *shardProxy) snapshot() shardProxyCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts
}

// inFlight returns how many PutRecords calls from the client signing with accessKey are open:
// received and neither answered nor abandoned by the client.
func (p *shardProxy) inFlight(accessKey string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, c := range p.inflight[accessKey] {
		n += c
	}
	return n
}

// awaitedCalls returns how many of the client's calls in flight it still waits for: those whose
// connection the client has not closed. It asks the kernel (/proc/net/tcp), where a connection
// the client closed is in CLOSE_WAIT on the proxy's side as soon as the client's close returns,
// while the proxy's HTTP server notices only when its goroutine next runs, which on a loaded
// machine can take long enough to mistake an abandoned call for an awaited one. Without /proc it
// returns inFlight.
func (p *shardProxy) awaitedCalls(accessKey string) int {
	p.mu.Lock()
	var remotes []string
	for addr, n := range p.inflight[accessKey] {
		if n > 0 {
			remotes = append(remotes, addr)
		}
	}
	p.mu.Unlock()
	if len(remotes) == 0 {
		return 0
	}
	table, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		return len(remotes)
	}
	_, port, _ := strings.Cut(strings.TrimPrefix(p.URL, "http://"), ":")
	local, _ := strconv.Atoi(port)
	established := map[int]bool{} // client ports of connections to the proxy still open both ways
	for _, line := range strings.Split(string(table), "\n")[1:] {
		f := strings.Fields(line)
		// sl local_address rem_address st …; addresses as hex IP:port, st 01 = ESTABLISHED.
		if len(f) < 4 || f[3] != "01" || !strings.HasSuffix(f[1], fmt.Sprintf(":%04X", local)) {
			continue
		}
		if _, rp, ok := strings.Cut(f[2], ":"); ok {
			if n, err := strconv.ParseInt(rp, 16, 32); err == nil {
				established[int(n)] = true
			}
		}
	}
	n := 0
	for _, addr := range remotes {
		if ap, err := netip.ParseAddrPort(addr); err != nil || established[int(ap.Port())] {
			n++
		}
	}
	return n
}

// shardFor returns the shard a record goes to: by its explicit hash key when given, else by the
// MD5 of its partition key as a 128-bit unsigned integer.
func (p *shardProxy) shardFor(partitionKey, explicitHashKey string) (*throttledShard, error) {
	h := new(big.Int)
	if explicitHashKey != "" {
		if _, ok := h.SetString(explicitHashKey, 10); !ok {
			return nil, fmt.Errorf("ExplicitHashKey %q is not a decimal integer", explicitHashKey)
		}
	} else {
		sum := md5.Sum([]byte(partitionKey))
		h.SetBytes(sum[:])
	}
	for _, s := range p.shards {
		if h.Cmp(s.start) >= 0 && h.Cmp(s.end) <= 0 {
			return s, nil
		}
	}
	return nil, fmt.Errorf("hash key %s is in no shard's range", h)
}

func (p *shardProxy) stop(t testing.TB) { p.close(t, "shard proxy") }

func (p *shardProxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	p.handlers.Add(1)
	defer p.handlers.Done()
	if r.Method != http.MethodPost || r.Header.Get("X-Amz-Target") != "Kinesis_20131202.PutRecords" {
		p.pass.ServeHTTP(w, r)
		return
	}
	release := p.track(r)
	defer release()
	p.putRecords(w, r, release)
}

// sigV4AccessKey extracts the access key id from a SigV4 Authorization header: it tells the fleet's
// environments apart.
var sigV4AccessKey = regexp.MustCompile(`Credential=([^/,\s]+)/`)

// track counts r as open for its client until release is called or the client goes away.
func (p *shardProxy) track(r *http.Request) (release func()) {
	key := ""
	if m := sigV4AccessKey.FindStringSubmatch(r.Header.Get("Authorization")); m != nil {
		key = m[1]
	}
	p.mu.Lock()
	if p.inflight[key] == nil {
		p.inflight[key] = map[string]int{}
	}
	p.inflight[key][r.RemoteAddr]++
	p.mu.Unlock()
	var once sync.Once
	done := func() {
		once.Do(func() {
			p.mu.Lock()
			if p.inflight[key][r.RemoteAddr]--; p.inflight[key][r.RemoteAddr] == 0 {
				delete(p.inflight[key], r.RemoteAddr)
			}
			p.mu.Unlock()
		})
	}
	// A client that gave up (its timeout) no longer has the call in flight, even while the
	// proxy still forwards it.
	stop := context.AfterFunc(r.Context(), done)
	return func() { stop(); done() }
}

// shardEntry is the part of a PutRecords entry the proxy routes and meters by.
type shardEntry struct {
	Data            string
	PartitionKey    string
	ExplicitHashKey string
}

func (p *shardProxy) putRecords(w http.ResponseWriter, r *http.Request, release func()) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
	if err != nil {
		return // the client went away while sending
	}
	var req proxyPutRequest
	var entries []shardEntry
	parseErr := json.Unmarshal(body, &req.members)
	if parseErr == nil {
		parseErr = json.Unmarshal(req.members["Records"], &req.records)
	}
	if parseErr == nil {
		parseErr = json.Unmarshal(req.members["Records"], &entries)
	}

	p.mu.Lock()
	p.counts.Calls++
	p.counts.Entries += len(entries)
	outage := p.outage
	if outage != outageNone {
		p.counts.OutageCalls++
		p.counts.OutageEntries += len(entries)
		p.mu.Unlock()
		release()
		if outage == outageRefused {
			proxyResetConn(w)
		} else {
			proxyWriteError(w, http.StatusServiceUnavailable, "ServiceUnavailable", "shard proxy: outage")
		}
		return
	}
	if parseErr != nil {
		// Not a body the proxy understands: let kinesalite judge it.
		p.mu.Unlock()
		status, header, answer, err := p.send(r, body)
		if err != nil {
			p.fail("PutRecords with a body the proxy could not read: %v", err)
			status, answer = http.StatusBadGateway, nil
		}
		release()
		p.answer(w, status, header, answer)
		return
	}
	kms := p.faults.KMSCalls > 0 && p.faults.randState != nil && p.faults.randState.Float64() < p.faults.KMSCalls
	failed := !kms && p.faults.Fail5xx > 0 && p.faults.randState != nil && p.faults.randState.Float64() < p.faults.Fail5xx
	if kms || failed {
		// KMS throttling refuses the whole call, whatever the rate (PutRecords answers an entry
		// with a shard's throughput or an internal failure only); a 5xx stores nothing either.
		if kms {
			p.counts.Throttled += len(entries)
		}
		delay := p.faults.delay()
		p.mu.Unlock()
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
		}
		release()
		if kms {
			proxyWriteError(w, http.StatusBadRequest, "KMSThrottlingException", "The request was denied due to request throttling. (Service: AWSKMS; Status Code: 400; Error Code: ThrottlingException)")
		} else {
			proxyWriteError(w, http.StatusInternalServerError, "InternalFailure", "Internal service failure.")
		}
		return
	}
	now := p.now()
	throttled := map[int]string{} // request index -> error message
	routed := make([]string, len(entries))
	var refused []int
	for i, e := range entries {
		sh, err := p.shardFor(e.PartitionKey, e.ExplicitHashKey)
		if err != nil {
			p.fail("entry %d: %v", i, err)
			continue
		}
		size := base64.StdEncoding.DecodedLen(len(e.Data)) + len(e.PartitionKey)
		if n, err := base64.StdEncoding.DecodeString(e.Data); err == nil {
			size = len(n) + len(e.PartitionKey)
		}
		p.counts.Bytes += size
		routed[i] = sh.id
		if p.faults.randState != nil && p.faults.randState.Float64() < p.faults.Refuse || !sh.take(now, size) {
			throttled[i] = fmt.Sprintf("Rate exceeded for shard %s in stream %s under account %s.", sh.id, p.stream, p.account)
			refused = append(refused, i)
		}
	}
	p.counts.Throttled += len(refused)
	var delay time.Duration
	if p.faults.randState != nil {
		delay = p.faults.delay()
	}
	p.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-r.Context().Done():
		}
	}

	var status int
	var header http.Header
	var answer []byte
	if len(refused) == len(entries) && len(entries) > 0 {
		// Every entry throttled: nothing to forward.
		status = http.StatusOK
		answer, _, err = shardMergeAnswer([]byte(`{"Records":[]}`), nil, throttled, len(entries))
	} else {
		began := time.Now()
		status, header, answer, err = p.send(r, req.without(refused))
		took := time.Since(began)
		p.mu.Lock()
		p.counts.Forwarded++
		p.counts.ForwardTime += took
		p.counts.ForwardMax = max(p.counts.ForwardMax, took)
		p.mu.Unlock()
		if err == nil && status == http.StatusOK {
			var stored int
			answer, stored, err = shardMergeAnswer(answer, routed, throttled, len(entries))
			p.mu.Lock()
			p.counts.Stored += stored
			p.mu.Unlock()
		}
	}
	if err != nil {
		p.fail("PutRecords: %v", err)
		status, answer = http.StatusBadGateway, nil
	}
	release()
	p.answer(w, status, header, answer)
}

// shardMergeAnswer builds the answer to a call of total entries: those in throttled fail with
// their message, the others take kinesalite's entries (which answer the forwarded ones) in order.
// Each stored entry's ShardId must be the one the proxy routed it to (routed, by request index).
// It returns the answer and how many entries were stored.
func shardMergeAnswer(peerAnswer []byte, routed []string, throttled map[int]string, total int) ([]byte, int, error) {
	var members map[string]json.RawMessage
	if err := json.Unmarshal(peerAnswer, &members); err != nil {
		return nil, 0, fmt.Errorf("kinesalite's answer is not a JSON object: %w", err)
	}
	var peer []json.RawMessage
	if err := json.Unmarshal(members["Records"], &peer); err != nil {
		return nil, 0, fmt.Errorf("kinesalite's answer's Records: %w", err)
	}
	if len(peer) != total-len(throttled) {
		return nil, 0, fmt.Errorf("kinesalite answered %d entries for %d forwarded", len(peer), total-len(throttled))
	}
	entries := make([]json.RawMessage, 0, total)
	failed, stored := 0, 0
	for i := range total {
		if msg, ok := throttled[i]; ok {
			e, _ := json.Marshal(map[string]string{"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": msg})
			entries = append(entries, e)
			failed++
			continue
		}
		e := peer[0]
		peer = peer[1:]
		var got struct {
			ErrorCode *string
			ShardID   string `json:"ShardId"`
		}
		if err := json.Unmarshal(e, &got); err != nil {
			return nil, 0, fmt.Errorf("kinesalite's answer entry: %w", err)
		}
		if got.ErrorCode != nil && *got.ErrorCode != "" {
			failed++
		} else {
			stored++
			if routed != nil && got.ShardID != routed[i] {
				return nil, 0, fmt.Errorf("entry %d: routed to %s, kinesalite stored it on %s", i, routed[i], got.ShardID)
			}
		}
		entries = append(entries, e)
	}
	members["Records"], _ = json.Marshal(entries)
	members["FailedRecordCount"], _ = json.Marshal(failed)
	b, err := json.Marshal(members)
	return b, stored, err
}

// send forwards body to kinesalite with r's headers. Once started, a forward completes even if
// the client leaves, so that what the proxy counts as stored is stored.
func (p *shardProxy) send(r *http.Request, body []byte) (int, http.Header, []byte, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), 60*time.Second)
	defer cancel()
	out, err := http.NewRequestWithContext(ctx, http.MethodPost, p.target.JoinPath(r.URL.Path).String(), bytes.NewReader(body))
	if err != nil {
		return 0, nil, nil, err
	}
	out.Header = r.Header.Clone()
	for _, h := range []string{"Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Accept-Encoding"} {
		out.Header.Del(h)
	}
	out.Host = r.Host
	resp, err := p.forward.Do(out)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("forward to kinesalite: %w", err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, nil, fmt.Errorf("read kinesalite's answer: %w", err)
	}
	return resp.StatusCode, resp.Header, answer, nil
}

func (p *shardProxy) answer(w http.ResponseWriter, status int, header http.Header, body []byte) {
	if status == http.StatusBadGateway && body == nil {
		proxyWriteError(w, status, "InternalFailure", "shard proxy failed; see the test log")
		return
	}
	proxyAnswerHeaders(w, header, len(body))
	w.WriteHeader(status)
	w.Write(body)
}

// refusingListener resets connections as they are accepted while the outage is outageRefused.
type refusingListener struct {
	net.Listener
	p *shardProxy
}

func (l *refusingListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		l.p.mu.Lock()
		refuse := l.p.outage == outageRefused
		if refuse {
			l.p.counts.Refused++
		}
		l.p.mu.Unlock()
		if !refuse {
			return conn, nil
		}
		abortConn(conn)
	}
}
