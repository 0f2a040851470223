package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
)

func TestEncodeBody(t *testing.T) {
	for _, tt := range []struct {
		name      string
		cfg       config
		wantField string
	}{
		{"by name", config{Stream: streamRef{Name: "my-stream"}}, "StreamName"},
		{"by ARN", config{Stream: testStreamARN("arn:aws:kinesis:eu-west-1:123456789012:stream/my-stream")}, "StreamARN"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := &shipper{cfg: tt.cfg, meta: testMeta(tt.cfg)}
			evs := []event{
				{raw: []byte(`{"type":"platform.start","record":{"requestId":"r1"}}`), typ: "platform.start", requestID: "r1", idPrefix: "p", seq: 0},
				{raw: []byte(`{"type":"platform.initStart","record":{}}`), typ: "platform.initStart", idPrefix: "p", seq: 1},
			}
			body := s.encodeBody(nil, s.meta.pack(evs, s.cfg.RecordBytes, &s.gz))
			var req map[string]json.RawMessage
			if err := json.Unmarshal(body, &req); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			if len(req) != 2 || req[tt.wantField] == nil || req["Records"] == nil {
				t.Fatalf("body members %v, want %s and Records only", keys(req), tt.wantField)
			}
			var recs []map[string]string
			json.Unmarshal(req["Records"], &recs)
			if len(recs) != 2 || recs[0]["PartitionKey"] != "r1" || recs[1]["PartitionKey"] != "env1" {
				t.Fatalf("records %v: want partition keys r1 and env1", recs)
			}
			for i, r := range recs {
				data, err := base64.StdEncoding.DecodeString(r["Data"])
				if err != nil {
					t.Fatalf("record %d data is not base64: %v", i, err)
				}
				var env envelopeOf
				if err := json.Unmarshal(data, &env); err != nil || string(env.Event) != string(evs[i].raw) {
					t.Errorf("record %d: event %s, want %s (%v)", i, env.Event, evs[i].raw, err)
				}
			}
		})
	}
}

// sigV4 is an independent implementation of AWS Signature Version 4 from its specification,
// used to check the SDK signer's output on the extension's own requests.
func sigV4(method, path, query string, hdr http.Header, signed []string, payloadHash, secret, date, region, service string) string {
	var canon strings.Builder
	canon.WriteString(method + "\n" + path + "\n" + query + "\n")
	for _, h := range signed {
		canon.WriteString(h + ":" + strings.TrimSpace(strings.Join(hdr.Values(h), ",")) + "\n")
	}
	canon.WriteString("\n" + strings.Join(signed, ";") + "\n" + payloadHash)
	sum := sha256.Sum256([]byte(canon.String()))
	scope := date[:8] + "/" + region + "/" + service + "/aws4_request"
	toSign := "AWS4-HMAC-SHA256\n" + date + "\n" + scope + "\n" + hex.EncodeToString(sum[:])
	return hex.EncodeToString(hmacSHA256(signingKey(secret, date[:8], region, service), toSign))
}

func signingKey(secret, day, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), day)
	k = hmacSHA256(k, region)
	k = hmacSHA256(k, service)
	return hmacSHA256(k, "aws4_request")
}

func hmacSHA256(key []byte, s string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(s))
	return h.Sum(nil)
}

const emptySHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

// TestSigV4TestSuite checks the independent signer against AWS's published SigV4 test suite
// vectors (get-vanilla, post-vanilla, get-vanilla-query-order-key-case), so that it can be
// trusted to judge the SDK signer below.
func TestSigV4TestSuite(t *testing.T) {
	const secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
	if got := hex.EncodeToString(signingKey(secret, "20150830", "us-east-1", "service")); got != "938127b5336810ddb6a5d6af445fcac9e371f9ed418ed386b022aed82901be75" {
		t.Errorf("signing key %s", got)
	}
	hdr := http.Header{"Host": {"example.amazonaws.com"}, "X-Amz-Date": {"20150830T123600Z"}}
	signed := []string{"host", "x-amz-date"}
	for _, tt := range []struct{ method, query, want string }{
		{"GET", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
		{"POST", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
		{"GET", "Param1=value1&Param2=value2", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
	} {
		if got := sigV4(tt.method, "/", tt.query, hdr, signed, emptySHA256, secret, "20150830T123600Z", "us-east-1", "service"); got != tt.want {
			t.Errorf("%s ?%s: signature %s, want %s", tt.method, tt.query, got, tt.want)
		}
	}
	// The SDK signer gives the published get-vanilla signature too.
	req, _ := http.NewRequest("GET", "https://example.amazonaws.com/", nil)
	creds := aws.Credentials{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: secret}
	when, _ := time.Parse("20060102T150405Z", "20150830T123600Z")
	if err := newKinesisClient("https://example.amazonaws.com", "us-east-1", nil, time.Second).signer.SignHTTP(context.Background(), creds, req, emptySHA256, "service", "us-east-1", when); err != nil {
		t.Fatal(err)
	}
	want := "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
	if got := req.Header.Get("Authorization"); got != want {
		t.Errorf("SDK signer: %s\nwant %s", got, want)
	}
}

// TestPutRecordsRequestIsSignedAndShaped captures a real PutRecords request from the extension
// and checks its headers, body and signature with the independent implementation.
func TestPutRecordsRequestIsSignedAndShaped(t *testing.T) {
	const secret = "test-secret-key"
	var got *http.Request
	var gotBody []byte
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, gotBody = r, must(io.ReadAll(r.Body))
		io.WriteString(w, `{"FailedRecordCount":0,"Records":[{"SequenceNumber":"1","ShardId":"shardId-000000000000"}]}`)
	}))
	defer srv.Close()
	creds := aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider("AKIDTEST", secret, "session-token"))
	k := newKinesisClient(srv.URL, "eu-west-1", creds, time.Second)
	body := []byte(`{"StreamName":"s","Records":[{"Data":"e30=","PartitionKey":"k"}]}`)
	if _, err := k.putRecords(context.Background(), body, 1); err != nil {
		t.Fatal(err)
	}
	if string(gotBody) != string(body) || got.Method != "POST" || got.URL.Path != "/" {
		t.Fatalf("sent %s %s %s", got.Method, got.URL.Path, gotBody)
	}
	for h, want := range map[string]string{
		"X-Amz-Target":         "Kinesis_20131202.PutRecords",
		"Content-Type":         "application/x-amz-json-1.1",
		"X-Amz-Security-Token": "session-token",
	} {
		if got.Header.Get(h) != want {
			t.Errorf("%s: %q, want %q", h, got.Header.Get(h), want)
		}
	}
	auth := got.Header.Get("Authorization")
	date := got.Header.Get("X-Amz-Date")
	var signedHeaders, signature string
	for _, part := range strings.Split(strings.TrimPrefix(auth, "AWS4-HMAC-SHA256 "), ", ") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "Credential":
			if v != "AKIDTEST/"+date[:8]+"/eu-west-1/kinesis/aws4_request" {
				t.Errorf("credential scope %s", v)
			}
		case "SignedHeaders":
			signedHeaders = v
		case "Signature":
			signature = v
		}
	}
	signed := strings.Split(signedHeaders, ";")
	for _, h := range []string{"content-type", "host", "x-amz-date", "x-amz-security-token", "x-amz-target"} {
		if !contains(signed, h) {
			t.Errorf("header %s is not signed (%s)", h, signedHeaders)
		}
	}
	hdr := got.Header.Clone()
	hdr.Set("Host", got.Host)
	hdr.Set("Content-Length", fmt.Sprint(len(gotBody)))
	sum := sha256.Sum256(gotBody)
	if want := sigV4("POST", "/", "", hdr, signed, hex.EncodeToString(sum[:]), secret, date, "eu-west-1", "kinesis"); signature != want {
		t.Errorf("signature %s, independent implementation says %s", signature, want)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// testStreamARN parses a stream ARN that a test knows to be valid.
func testStreamARN(s string) streamRef {
	ref, ok := parseStreamARN(s)
	if !ok {
		panic("not a stream ARN: " + s)
	}
	return ref
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestLoadKinesisClientEndpoints(t *testing.T) {
	t.Setenv("AWS_REGION", "eu-west-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	for _, tt := range []struct {
		cfg                 config
		wantURL, wantRegion string
	}{
		{config{Stream: streamRef{Name: "s"}}, "https://kinesis.eu-west-1.amazonaws.com/", "eu-west-1"},
		{config{Stream: testStreamARN("arn:aws:kinesis:us-east-2:123456789012:stream/s")}, "https://123456789012.data-kinesis.us-east-2.amazonaws.com/", "us-east-2"},
		{config{Stream: testStreamARN("arn:aws-cn:kinesis:cn-north-1:123456789012:stream/s")}, "https://123456789012.data-kinesis.cn-north-1.amazonaws.com.cn/", "cn-north-1"},
		{config{Stream: streamRef{Name: "s"}, Endpoint: "http://127.0.0.1:1"}, "http://127.0.0.1:1/", "eu-west-1"},
	} {
		k, _, err := loadKinesisClient(context.Background(), tt.cfg.clientSettings(), "fn", newStats(), newLogger(io.Discard))
		if err != nil {
			t.Fatal(err)
		}
		if k.url != tt.wantURL || k.region != tt.wantRegion {
			t.Errorf("%+v: url %s region %s, want %s %s", tt.cfg, k.url, k.region, tt.wantURL, tt.wantRegion)
		}
	}
}

func FuzzAppendBase64(f *testing.F) {
	f.Add([]byte("kinesis"), []byte{})
	f.Add(bytes.Repeat([]byte{0xff, 0, 0x7f}, 40), []byte("prefix"))
	f.Fuzz(func(t *testing.T, src, prefix []byte) {
		got := appendBase64(bytes.Clone(prefix), src)
		want := base64.StdEncoding.AppendEncode(bytes.Clone(prefix), src)
		if !bytes.Equal(got, want) {
			t.Fatalf("appendBase64(%x) = %s, want %s", src, got, want)
		}
	})
}

// TestStaleConnectionsAreNotTrusted: after a pause as long as a freeze can be, the client opens a
// fresh connection instead of writing into a pooled one the server (or a NAT) may have forgotten,
// which would hang until the timeout; without a pause it reuses the connection.
func TestStaleConnectionsAreNotTrusted(t *testing.T) {
	var mu sync.Mutex
	conns := 0
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, `{"FailedRecordCount":0,"Records":[{"SequenceNumber":"1","ShardId":"s"}]}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			mu.Lock()
			conns++
			mu.Unlock()
		}
	}
	srv.Start()
	defer srv.Close()
	creds := aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""))
	k := newKinesisClient(srv.URL, "eu-west-1", creds, time.Second)
	put := func() {
		if _, err := k.putRecords(context.Background(), []byte(`{"StreamName":"s","Records":[{"Data":"e30=","PartitionKey":"k"}]}`), 1); err != nil {
			t.Fatal(err)
		}
	}
	newConns := func() int { mu.Lock(); defer mu.Unlock(); return conns }
	put()
	put()
	if got := newConns(); got != 1 {
		t.Fatalf("%d connections for two calls in a row, want 1 (reuse)", got)
	}
	k.lastDone.Store(time.Now().Add(-staleAfter - time.Second).UnixNano()) // as after a freeze
	put()
	if got := newConns(); got != 2 {
		t.Errorf("%d connections after a long pause, want a fresh one (2)", got)
	}
}

func TestIsRetryableCode(t *testing.T) {
	// Throttling, server faults and expired credentials are retried by their code, whatever the
	// status says; so is any call a server failed (5xx) or rate-limited (429).
	for _, code := range []string{"ProvisionedThroughputExceededException", "KMSThrottlingException",
		"InternalFailure", "ServiceUnavailable", "ExpiredTokenException"} {
		if !isRetryableCode(code, 400) {
			t.Errorf("isRetryableCode(%s, 400) = false, want true", code)
		}
	}
	for _, status := range []int{500, 502, 503, 429} {
		if code := fmt.Sprintf("HTTP%d", status); !isRetryableCode(code, status) {
			t.Errorf("isRetryableCode(%s, %d) = false, want true", code, status)
		}
	}
	// What the caller or the request got wrong is final: retrying cannot fix it.
	for _, code := range []string{"AccessDeniedException", "ResourceNotFoundException", "KMSDisabledException",
		"ValidationException", "InvalidArgumentException", "UnrecognizedClientException"} {
		for _, status := range []int{400, 0} {
			if isRetryableCode(code, status) {
				t.Errorf("isRetryableCode(%s, %d) = true, want false", code, status)
			}
		}
	}
}

func TestDecodeAPIError(t *testing.T) {
	for _, tt := range []struct {
		name     string
		status   int
		header   string // X-Amzn-ErrorType
		body     string
		want     apiError
		wantText string
	}{
		{"__type and message", 400, "", `{"__type":"ResourceNotFoundException","message":"Stream s not found"}`, apiError{400, "ResourceNotFoundException", "Stream s not found"}, "HTTP 400 ResourceNotFoundException: Stream s not found"},
		{"namespaced type, Message", 400, "", `{"__type":"com.amazonaws.kinesis.v20131202#AccessDeniedException","Message":"no"}`, apiError{400, "AccessDeniedException", "no"}, ""},
		{"type from the header", 400, "KMSThrottlingException:http://internal", `not json`, apiError{400, "KMSThrottlingException", ""}, ""},
		{"nothing but a status", 502, "", `<html>bad gateway</html>`, apiError{502, "HTTP502", ""}, ""},
		{"long message cut", 400, "", `{"__type":"ValidationException","message":"` + strings.Repeat("x", 400) + `"}`, apiError{400, "ValidationException", strings.Repeat("x", 300) + "…"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := &http.Response{StatusCode: tt.status, Header: http.Header{}}
			if tt.header != "" {
				resp.Header.Set("X-Amzn-ErrorType", tt.header)
			}
			got := decodeAPIError(resp, []byte(tt.body))
			if *got != tt.want {
				t.Errorf("got %+v, want %+v", *got, tt.want)
			}
			if tt.wantText != "" && got.Error() != tt.wantText {
				t.Errorf("Error() = %q, want %q", got.Error(), tt.wantText)
			}
		})
	}
}
