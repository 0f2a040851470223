package main

// The Kinesis client: PutRecords request bodies within the service's limits, SigV4 signing, the
// call itself, and the classification of its answer — the only place that knows HTTP status
// codes and Kinesis error shapes. What is sent, and when, is the shipper's (shipper.go).

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
)

// appendPutRecordsBody appends the PutRecords JSON request for recs to dst, naming the stream by
// ARN when it has one; data returns one record's data (before base64), which it may overwrite
// at its next call.
func appendPutRecordsBody(dst []byte, stream streamRef, recs []pendingRecord, data func(r *pendingRecord) []byte) []byte {
	if stream.ARN != "" {
		dst = append(dst, `{"StreamARN":`...)
		dst = appendJSONString(dst, stream.ARN)
	} else {
		dst = append(dst, `{"StreamName":`...)
		dst = appendJSONString(dst, stream.Name)
	}
	dst = append(dst, `,"Records":[`...)
	for i := range recs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"Data":"`...)
		dst = appendBase64(dst, data(&recs[i]))
		dst = append(dst, `","PartitionKey":`...)
		dst = appendJSONString(dst, recs[i].key)
		if recs[i].hashKey != "" {
			dst = append(dst, `,"ExplicitHashKey":`...)
			dst = appendJSONString(dst, recs[i].hashKey)
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}

// appendBase64 appends the standard base64 encoding of src, as base64.StdEncoding.AppendEncode
// does, about twice as fast: twelve bytes at a time, two output characters per table lookup.
// Record data is most of what the extension handles, so this is its hottest loop.
func appendBase64(dst, src []byte) []byte {
	n := base64.StdEncoding.EncodedLen(len(src))
	dst = slices.Grow(dst, n)
	out := dst[len(dst) : len(dst)+n]
	i, o := 0, 0
	for ; i+12 <= len(src); i, o = i+12, o+16 {
		in, w := src[i:i+12:i+12], out[o:o+16:o+16]
		hi := uint64(binary.BigEndian.Uint32(in[0:]))<<32 | uint64(binary.BigEndian.Uint32(in[4:])) // bytes 0-7
		lo := hi<<32 | uint64(binary.BigEndian.Uint32(in[8:]))                                      // bytes 4-11
		binary.LittleEndian.PutUint64(w[0:], uint64(base64Pairs[hi>>52&0xfff])|uint64(base64Pairs[hi>>40&0xfff])<<16|
			uint64(base64Pairs[hi>>28&0xfff])<<32|uint64(base64Pairs[hi>>16&0xfff])<<48)
		binary.LittleEndian.PutUint64(w[8:], uint64(base64Pairs[lo>>36&0xfff])|uint64(base64Pairs[lo>>24&0xfff])<<16|
			uint64(base64Pairs[lo>>12&0xfff])<<32|uint64(base64Pairs[lo&0xfff])<<48)
	}
	base64.StdEncoding.Encode(out[o:], src[i:])
	return dst[:len(dst)+n]
}

// base64Pairs maps twelve bits to their two base64 characters, first character in the low byte.
var base64Pairs = func() (t [4096]uint16) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range t {
		t[i] = uint16(alphabet[i>>6]) | uint16(alphabet[i&63])<<8
	}
	return t
}()

// kinesisClient sends signed PutRecords requests to one stream's endpoint.
type kinesisClient struct {
	url       string
	region    string // signing region
	creds     aws.CredentialsProvider
	signer    *v4.Signer
	http      *http.Client
	transport *http.Transport
	timeout   time.Duration
	lastDone  atomic.Int64   // unix nanoseconds of the last answer (calls may run at once: shipCounts)
	refused   *atomic.Uint64 // calls not sent for a refused TLS certificate (stats.certRefused); nil: not counted
}

// staleAfter is how long a pooled connection may sit unused before it is no longer trusted. After
// a freeze the server or a NAT may have forgotten it; a request on it would wait for a timeout.
const staleAfter = 15 * time.Second

// clientSettings are what the Kinesis client is built from: the stream, an endpoint override,
// the role to write through, the timeout of a call.
type clientSettings struct {
	Stream   streamRef
	Endpoint string // empty: the public regional endpoint
	Role     roleConfig
	Timeout  time.Duration
}

// endpoint is where PutRecords goes and the region it is signed for: the
// KINESIS_TELEMETRY_ENDPOINT override, else for a stream ARN the account's data endpoint in the
// ARN's region (what the AWS SDK uses), else the public endpoint of the function's region.
func (c clientSettings) endpoint(region string) (endpoint, signingRegion string) {
	if c.Stream.ARN != "" {
		region = c.Stream.Region
	}
	switch {
	case c.Endpoint != "":
		return c.Endpoint, region
	case c.Stream.ARN != "":
		return "https://" + c.Stream.Account + ".data-kinesis." + region + "." + dnsSuffix(region), region
	}
	return "https://kinesis." + region + "." + dnsSuffix(region), region
}

// loadKinesisClient reads the region and credentials from the AWS SDK's default chain (Lambda's
// environment variables, or the container credentials endpoint of SnapStart and managed
// instances) and builds the client, and returns the region it read. With
// KINESIS_TELEMETRY_ROLE_ARN the calls are signed with that role's credentials instead
// (credentials.go), under a session named for function; the role is first assumed at the first
// PutRecords, not here.
func loadKinesisClient(ctx context.Context, c clientSettings, function string, st *stats, logs *logger) (*kinesisClient, string, error) {
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, "", errors.New("no AWS region: set AWS_REGION (Lambda sets it for every function)")
	}
	creds := awsCfg.Credentials
	if c.Role.ARN != "" {
		creds = newRoleCredentials(awsCfg, c.Role, function, &st.assumeRole, logs)
	}
	endpoint, region := c.endpoint(awsCfg.Region)
	k := newKinesisClient(endpoint, region, creds, c.Timeout)
	k.refused = &st.certRefused
	return k, awsCfg.Region, nil
}

// Transport settings. A connection or handshake that takes longer than connectTimeout is a bad
// path, and a new one is better than waiting within a flush budget of a second; keep-alive probes
// notice a dead peer between invocations; idleConns covers the calls of one round (one at a
// time, plus the counts record's) with room to spare. The shutdown's last counts record in calls
// at once (countsCallsMax, where KMS refuses calls whole) may open more over HTTP/1.1, a TLS
// handshake each, once, in the extension's last second.
const (
	connectTimeout = 2 * time.Second
	keepAlive      = 15 * time.Second
	idleConns      = 4
)

func newKinesisClient(endpoint, region string, creds aws.CredentialsProvider, timeout time.Duration) *kinesisClient {
	t := &http.Transport{
		Proxy:       http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{Timeout: connectTimeout, KeepAlive: keepAlive}).DialContext,
		// HTTP/1.1 even where the endpoint offers HTTP/2: one call at a time has no use for
		// streams, and HTTP/2 cost more CPU per invocation (BENCHMARKS.md, "The wire").
		ForceAttemptHTTP2:   false,
		MaxIdleConnsPerHost: idleConns,
		IdleConnTimeout:     staleAfter,
		TLSHandshakeTimeout: connectTimeout,
	}
	return &kinesisClient{
		url: endpoint + "/", region: region, creds: creds, signer: v4.NewSigner(),
		http: &http.Client{Transport: t}, transport: t, timeout: timeout,
	}
}

// putResult is one entry of a PutRecords answer.
type putResult struct {
	ErrorCode    string // null in kinesis-mock's answers, which decodes as ""
	ErrorMessage string
	ShardID      []byte // of a stored entry; it points into the answer
}

// apiError is a whole-call error answer from Kinesis.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string {
	if e.Status == 0 {
		return e.Code + ": " + e.Message
	}
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

// putRecords signs and sends one PutRecords request holding n records and returns the per-record
// results. This is the only place that knows HTTP status codes and Kinesis error shapes. A failure
// without an answer is a *networkError that says whether the request had been written: only then
// may Kinesis have stored the records.
func (k *kinesisClient) putRecords(ctx context.Context, body []byte, n int) ([]putResult, error) {
	if last := k.lastDone.Load(); last != 0 && time.Since(time.Unix(0, last)) > staleAfter {
		k.transport.CloseIdleConnections()
	}
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	creds, err := k.creds.Retrieve(ctx)
	if ce := (*credentialsError)(nil); errors.As(err, &ce) {
		return nil, ce // nothing was sent; STS is asked again only after a wait (credentials.go)
	}
	if err != nil {
		// Nothing was sent: pushback (the events wait), not a loss.
		return nil, &networkError{err: fmt.Errorf("get AWS credentials: %w", err)}
	}
	var written atomic.Bool
	var conn atomic.Pointer[net.Conn]
	trace := &httptrace.ClientTrace{
		GotConn: func(info httptrace.GotConnInfo) { conn.Store(&info.Conn) },
		WroteRequest: func(info httptrace.WroteRequestInfo) {
			if info.Err == nil {
				written.Store(true)
			}
		},
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), http.MethodPost, k.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "Kinesis_20131202.PutRecords")
	sum := sha256.Sum256(body)
	if err := k.signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "kinesis", k.region, time.Now()); err != nil {
		return nil, fmt.Errorf("sign request: %w", err)
	}
	resp, err := k.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			abandon(conn.Load())
		}
		return nil, &networkError{err: k.explain(err), written: written.Load()}
	}
	defer resp.Body.Close()
	answer, err := readAnswer(resp, n)
	k.lastDone.Store(time.Now().UnixNano())
	if err != nil {
		return nil, &networkError{err: fmt.Errorf("read answer: %w", err), written: true}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, decodeAPIError(resp, answer)
	}
	results, err := scanPutAnswer(answer)
	if err != nil {
		return nil, &networkError{err: fmt.Errorf("decode answer: %w", err), written: true}
	}
	if len(results) != n {
		return nil, &networkError{err: fmt.Errorf("answer has %d results for %d records", len(results), n), written: true}
	}
	return results, nil
}

// readAnswer reads an answer body of up to 8 MiB into one allocation of its announced length, or
// when it has none (chunked) of what n entries take, about 100 bytes each (io.ReadAll would grow
// and copy it about ten times for a 500-entry answer).
func readAnswer(resp *http.Response, n int) ([]byte, error) {
	const limit = 8 << 20
	size := 128*n + bytes.MinRead
	if resp.ContentLength > 0 && resp.ContentLength <= limit {
		size = int(resp.ContentLength) + bytes.MinRead // ReadFrom wants MinRead free to see EOF
	}
	buf := bytes.NewBuffer(make([]byte, 0, size))
	_, err := buf.ReadFrom(io.LimitReader(resp.Body, limit))
	return buf.Bytes(), err
}

// explain names the endpoint and the fix when a call failed on a TLS certificate the client
// refused, and counts it. Nothing was sent then: the handshake failed. The events wait (a
// certificate may be fixed, or a CA bundle rolled out), and the log says what to check.
func (k *kinesisClient) explain(err error) error {
	cv := (*tls.CertificateVerificationError)(nil)
	if !errors.As(err, &cv) {
		return err
	}
	if k.refused != nil {
		k.refused.Add(1)
	}
	return fmt.Errorf("%s refused: its TLS certificate is not valid for this host or not trusted (%w); check KINESIS_TELEMETRY_ENDPOINT, and for a private CA set SSL_CERT_FILE to its PEM file", k.url, cv)
}

// abandon closes the connection of a call given up (cut or timed out) before putRecords returns.
// Cancelling an HTTP/2 request returns at once and leaves its RST_STREAM to another goroutine; if
// Lambda froze the environment in between, the stream would stay open on the server, which may
// still store the records while the extension is frozen and later sends them again. Closing the
// socket itself (not the TLS layer, whose close_notify may wait behind a blocked write) ends every
// stream on it now; the next call pays one handshake. Calls are given up only under faults.
func abandon(c *net.Conn) {
	if c == nil || *c == nil {
		return
	}
	conn := *c
	if tc, ok := conn.(*tls.Conn); ok {
		conn = tc.NetConn()
	}
	conn.Close()
}

func (k *kinesisClient) invalidateCredentials() {
	// The function's own credentials come in the SDK's aws.CredentialsCache, a role's in an
	// assumeGate (credentials.go).
	if c, ok := k.creds.(interface{ Invalidate() }); ok {
		c.Invalidate()
	}
}

// hint tells the reader of a log line what to do about a permanent error.
func hint(code string, stream streamRef, region string) string {
	switch {
	case code == "AccessDeniedException":
		return fmt.Sprintf(" (the function's role needs kinesis:PutRecords on stream %s: attach the managed policy from template.json)", stream)
	case code == "ResourceNotFoundException":
		return fmt.Sprintf(" (check KINESIS_TELEMETRY_STREAM=%s: the stream must exist in region %s)", stream, region)
	case strings.HasPrefix(code, "KMS"):
		return " (the stream's KMS key refused the request: the role needs kms:GenerateDataKey on a customer managed key, and the key must be enabled)"
	case code == "UnrecognizedClientException" || code == "InvalidSignatureException":
		return " (the AWS credentials were rejected)"
	}
	return ""
}

// maxErrorMessage bounds an error message kept from an answer: it goes into log lines, and an
// endpoint that answers with a page of HTML should not fill the log.
const maxErrorMessage = 300

func decodeAPIError(resp *http.Response, body []byte) *apiError {
	var e struct {
		Type     string `json:"__type"`
		Message  string `json:"message"`
		Message2 string `json:"Message"`
	}
	_ = json.Unmarshal(body, &e)
	code := e.Type
	if code == "" {
		code, _, _ = strings.Cut(resp.Header.Get("X-Amzn-ErrorType"), ":")
	}
	if i := strings.LastIndexByte(code, '#'); i >= 0 {
		code = code[i+1:]
	}
	if code == "" {
		code = "HTTP" + strconv.Itoa(resp.StatusCode)
	}
	msg := e.Message + e.Message2
	if len(msg) > maxErrorMessage {
		msg = msg[:maxErrorMessage] + "…"
	}
	return &apiError{Status: resp.StatusCode, Code: code, Message: msg}
}

// networkError marks failures where Kinesis gave no answer: always worth retrying. written says
// the request had been sent whole, so that Kinesis may have stored its records.
type networkError struct {
	err     error
	written bool
}

func (e *networkError) Error() string { return e.err.Error() }
func (e *networkError) Unwrap() error { return e.err }

// maybeStored reports whether a failed call may nevertheless have stored its records: the request
// was written and no answer said otherwise. Dial, TLS and credential failures happen before.
func maybeStored(err error) bool {
	var ne *networkError
	return errors.As(err, &ne) && ne.written
}

// throttleCodes are the error codes of throughput pushback; transientCodes those of other faults
// worth another attempt. Each code is listed once.
var (
	throttleCodes = []string{"ProvisionedThroughputExceededException", "KMSThrottlingException",
		"ThrottlingException", "Throttling", "LimitExceededException", "SlowDown"}
	transientCodes = []string{"InternalFailure", "InternalFailureException", "ServiceUnavailable",
		"ServiceUnavailableException", "RequestTimeout", "RequestTimeoutException",
		"ResourceInUseException", "ExpiredTokenException", "RequestExpired"}
)

// isThrottleCode tells throughput pushback from other transient faults (for the throttles count).
func isThrottleCode(code string) bool { return slices.Contains(throttleCodes, code) }

// refusedWhateverRate reports whether a refusal is one that the sender's rate does not cause, so
// that sending slower would not end it: KMS throttling. Kinesis asks KMS for a data key about
// every five minutes per credential, not per record (Kinesis Data Streams developer guide, "Costs,
// Regions, and performance considerations"), so a KMSThrottlingException is the account's KMS
// quota spent elsewhere. The pacers do not learn from it; the entries go again at once, and a
// call refused whole waits out a backoff.
func refusedWhateverRate(code string) bool { return code == "KMSThrottlingException" }

func isRetryable(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return isRetryableCode(ae.Code, ae.Status)
	}
	return true
}

// isRetryableCode tells throttling and transient faults, worth another attempt, from errors that
// can never succeed (validation, access denied, not found, disabled keys).
func isRetryableCode(code string, status int) bool {
	if isThrottleCode(code) || slices.Contains(transientCodes, code) {
		return true
	}
	return status >= 500 || status == http.StatusTooManyRequests
}

func errorCode(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Code
	}
	var ne *networkError
	if errors.As(err, &ne) {
		return "NetworkError"
	}
	var ce *credentialsError
	if errors.As(err, &ce) {
		return "AssumeRole." + ce.Code
	}
	return "Error"
}

// streamRef is KINESIS_TELEMETRY_STREAM parsed once: a stream name, or a stream ARN and what it
// names. Requests carry StreamARN when ARN is set, StreamName otherwise.
type streamRef struct {
	Name            string
	ARN             string // empty when the stream was given by name
	Region, Account string // from the ARN
}

// String is the stream as the user gave it.
func (s streamRef) String() string {
	if s.ARN != "" {
		return s.ARN
	}
	return s.Name
}

func dnsSuffix(region string) string {
	if strings.HasPrefix(region, "cn-") {
		return "amazonaws.com.cn"
	}
	return "amazonaws.com"
}

// scanPutAnswer reads a PutRecords answer: each entry of "Records", in order, with its ErrorCode
// and ErrorMessage (null or absent is "") and its ShardId, left in the answer's bytes (the pacing
// per shard interns it). Sequence numbers, which the extension does not use, are scanned past,
// not built: decoding the answer with encoding/json cost about 1 µs per entry (BENCHMARKS.md, "CPU
// share"). Keys match exactly, as Kinesis writes them.
func scanPutAnswer(answer []byte) ([]putResult, error) {
	s := scanner{data: answer}
	var out []putResult
	s.ws()
	err := s.members(func(key []byte) error {
		if string(key) != `"Records"` || s.peek() != '[' {
			return s.value()
		}
		s.pos++
		out = make([]putResult, 0, bytes.Count(answer, []byte(`"SequenceNumber"`)))
		s.ws()
		if s.consume(']') {
			return nil
		}
		for {
			s.ws()
			var code, msg, shard []byte
			if s.peek() == '{' {
				err := s.members(func(key []byte) error {
					switch string(key) {
					case `"ErrorCode"`:
						return s.strInto(&code)
					case `"ErrorMessage"`:
						return s.strInto(&msg)
					case `"ShardId"`:
						return s.strInto(&shard)
					}
					return s.value()
				})
				if err != nil {
					return err
				}
			} else if err := s.value(); err != nil {
				return err
			}
			if len(shard) >= 2 && bytes.IndexByte(shard, '\\') < 0 {
				shard = shard[1 : len(shard)-1]
			} else {
				shard = []byte(unquote(shard))
			}
			out = append(out, putResult{ErrorCode: unquote(code), ErrorMessage: unquote(msg), ShardID: shard})
			s.ws()
			if s.consume(']') {
				return nil
			}
			if !s.consume(',') {
				return s.fail("expected , or ] after a record result")
			}
		}
	})
	if err != nil {
		return nil, err
	}
	return out, s.end()
}
