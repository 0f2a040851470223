package main

// The fakes of the role tests (sts_test.go): fakeSTS, the AssumeRole side of STS, and
// signedKinesis, a PutRecords endpoint (or a proxy in front of kinesis-mock) that accepts only
// the role's credentials.

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSTS models the AWS STS Query API's AssumeRole, as documented in the STS API reference
// (AssumeRole; "Common parameters"; "Common errors"): a form-encoded POST of
// Action=AssumeRole&Version=2011-06-15 with RoleArn, RoleSessionName, DurationSeconds and
// ExternalId, signed with SigV4 for service "sts". It checks every request's signature with
// the independent verifier (sigV4, kinesis_test.go) against the secrets of the callers it knows,
// and the signing region. It answers the documented AssumeRoleResponse XML, or the documented
// ErrorResponse XML: AccessDenied (HTTP 403) when the role is unknown, the caller is not in the
// role's trust policy, or the external id differs from the trust policy's sts:ExternalId
// condition — real STS answers a wrong or missing external id with that same AccessDenied.
//
// It does not model: the 900 s minimum and the role's maximum of DurationSeconds (it issues
// credentials with the lifetime the test sets), session policies and tags, source identity, MFA,
// STS regions that are not activated, throttling, clock skew (RequestExpired), or the validity
// of the caller's session token beyond its presence.
type fakeSTS struct {
	*httptest.Server
	t        testing.TB
	callers  map[string]string   // access key id -> secret of the principals that may call
	roles    map[string]fakeRole // role ARN -> trust policy
	lifetime time.Duration       // of the credentials issued

	mu     sync.Mutex
	calls  []stsCall
	issued map[string]issuedCreds // access key id -> the credentials issued with it
}

// fakeRole is a role's trust policy, reduced to what AssumeRole checks here.
type fakeRole struct {
	trusted    []string // access key ids of the principals the trust policy names
	externalID string   // the sts:ExternalId condition; empty: none
}

type issuedCreds struct{ secret, token string }

// stsCall is one AssumeRole request as the fake saw it, with its answer's status.
type stsCall struct {
	caller, roleARN, session, externalID, duration string
	status                                         int
}

func newFakeSTS(t testing.TB, lifetime time.Duration) *fakeSTS {
	f := &fakeSTS{
		t: t, lifetime: lifetime, issued: map[string]issuedCreds{},
		callers: map[string]string{functionKey: functionSecret},
		roles:   map[string]fakeRole{centralRole: {trusted: []string{functionKey}, externalID: centralExternal}},
	}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve)) // binds 127.0.0.1
	t.Cleanup(f.Close)
	return f
}

func (f *fakeSTS) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	form, err := url.ParseQuery(string(body))
	if r.Method != http.MethodPost || err != nil || form.Get("Action") != "AssumeRole" || form.Get("Version") != "2011-06-15" ||
		r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		f.t.Errorf("fake STS: not an AssumeRole Query request: %s %s %q %s", r.Method, r.URL, r.Header.Get("Content-Type"), body)
		stsError(w, http.StatusBadRequest, "InvalidAction", "not AssumeRole")
		return
	}
	caller, err := checkSigV4(r, body, "sts", stsTestRegion, func(key string) (string, string, bool) {
		secret, ok := f.callers[key]
		return secret, functionToken, ok
	})
	c := stsCall{caller: caller, roleARN: form.Get("RoleArn"), session: form.Get("RoleSessionName"),
		externalID: form.Get("ExternalId"), duration: form.Get("DurationSeconds")}
	role, known := f.roles[c.roleARN]
	switch {
	case err != nil:
		f.t.Errorf("fake STS: %v", err)
		c.status = stsError(w, http.StatusForbidden, "SignatureDoesNotMatch", err.Error())
	case !known || !contains(role.trusted, caller) || c.externalID != role.externalID:
		c.status = stsError(w, http.StatusForbidden, "AccessDenied", fmt.Sprintf(
			"User: arn:aws:sts::%s:assumed-role/fn-role/fn is not authorized to perform: sts:AssumeRole on resource: %s", writerAccount, c.roleARN))
	default:
		f.mu.Lock()
		key := fmt.Sprintf("ASIAFAKESTS%09d", len(f.issued)+1)
		creds := issuedCreds{secret: "role-secret-" + key, token: "role-token-" + key}
		f.issued[key] = creds
		f.mu.Unlock()
		c.status = http.StatusOK
		w.Header().Set("Content-Type", "text/xml")
		w.Header().Set("X-Amzn-Requestid", "c6104cbe-af31-11e0-8154-cbc7ccf896c7")
		fmt.Fprintf(w, `<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::%s:assumed-role/%s/%s</Arn>
      <AssumedRoleId>AROA3XFRBF535PLBIFPI4:%s</AssumedRoleId>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>%s</AccessKeyId>
      <SecretAccessKey>%s</SecretAccessKey>
      <SessionToken>%s</SessionToken>
      <Expiration>%s</Expiration>
    </Credentials>
    <PackedPolicySize>0</PackedPolicySize>
  </AssumeRoleResult>
  <ResponseMetadata>
    <RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId>
  </ResponseMetadata>
</AssumeRoleResponse>`, centralAccount, c.roleARN[strings.LastIndexByte(c.roleARN, '/')+1:], c.session, c.session,
			key, creds.secret, creds.token, time.Now().Add(f.lifetime).UTC().Format("2006-01-02T15:04:05.000Z"))
	}
	f.mu.Lock()
	f.calls = append(f.calls, c)
	f.mu.Unlock()
}

// stsError writes the documented STS error XML and returns the status.
func stsError(w http.ResponseWriter, status int, code, message string) int {
	w.Header().Set("Content-Type", "text/xml")
	w.Header().Set("X-Amzn-Requestid", "f0e3c1a2-1b2c-4d5e-8f90-a1b2c3d4e5f6")
	w.WriteHeader(status)
	fmt.Fprintf(w, `<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <Error>
    <Type>Sender</Type>
    <Code>%s</Code>
    <Message>%s</Message>
  </Error>
  <RequestId>f0e3c1a2-1b2c-4d5e-8f90-a1b2c3d4e5f6</RequestId>
</ErrorResponse>`, code, message)
	return status
}

func (f *fakeSTS) seen() []stsCall { return snapshot(&f.mu, &f.calls) }

// credentialsOf returns the secret and token STS issued with key.
func (f *fakeSTS) credentialsOf(key string) (string, string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.issued[key]
	return c.secret, c.token, ok
}

// checkSigV4 verifies r's SigV4 Authorization header with the independent implementation: the
// credential scope names service and region, the date is current, the payload hash is the
// body's, the security token is the one issued with the access key, and the signature matches
// the secret secretOf returns for the access key. It returns the access key id.
func checkSigV4(r *http.Request, body []byte, service, region string, secretOf func(key string) (secret, token string, ok bool)) (string, error) {
	auth, ok := strings.CutPrefix(r.Header.Get("Authorization"), "AWS4-HMAC-SHA256 ")
	if !ok {
		return "", fmt.Errorf("no SigV4 Authorization header: %q", r.Header.Get("Authorization"))
	}
	var credential, signedHeaders, signature string
	for _, part := range strings.Split(auth, ", ") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "Credential":
			credential = v
		case "SignedHeaders":
			signedHeaders = v
		case "Signature":
			signature = v
		}
	}
	date := r.Header.Get("X-Amz-Date")
	when, err := time.Parse("20060102T150405Z", date)
	if err != nil || time.Since(when).Abs() > 5*time.Minute {
		return "", fmt.Errorf("X-Amz-Date %q is not the current time", date)
	}
	key, scope, _ := strings.Cut(credential, "/")
	if want := date[:8] + "/" + region + "/" + service + "/aws4_request"; scope != want {
		return key, fmt.Errorf("credential scope %q, want %q", scope, want)
	}
	secret, token, ok := secretOf(key)
	if !ok {
		return key, fmt.Errorf("signed with access key %s, which this endpoint does not know", key)
	}
	if got := r.Header.Get("X-Amz-Security-Token"); got != token {
		return key, fmt.Errorf("X-Amz-Security-Token %q, want the one issued with %s", got, key)
	}
	signed := strings.Split(signedHeaders, ";")
	for _, h := range []string{"host", "x-amz-date", "x-amz-security-token"} {
		if !contains(signed, h) {
			return key, fmt.Errorf("header %s is not signed (%s)", h, signedHeaders)
		}
	}
	hdr := r.Header.Clone()
	hdr.Set("Host", r.Host)
	hdr.Set("Content-Length", fmt.Sprint(len(body)))
	sum := sha256.Sum256(body)
	if want := sigV4(r.Method, r.URL.EscapedPath(), r.URL.RawQuery, hdr, signed, hex.EncodeToString(sum[:]), secret, date, region, service); signature != want {
		return key, fmt.Errorf("signature %s, the independent implementation says %s", signature, want)
	}
	return key, nil
}

// signedKinesis is a PutRecords endpoint that accepts only requests signed with credentials the
// fake STS issued: the function's own credentials get AccessDeniedException, as a stream whose
// resource policy names only the role would answer. With a target it forwards accepted requests
// there (kinesis-mock), otherwise it answers every record with success.
type signedKinesis struct {
	*httptest.Server
	sts    *fakeSTS
	target string

	mu      sync.Mutex
	signers []string // access key id of each accepted call
	refused int
}

func newSignedKinesis(t testing.TB, sts *fakeSTS, target string) *signedKinesis {
	k := &signedKinesis{sts: sts, target: target}
	k.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		key, err := checkSigV4(r, body, "kinesis", stsTestRegion, sts.credentialsOf)
		if err != nil {
			k.mu.Lock()
			k.refused++
			k.mu.Unlock()
			t.Errorf("Kinesis call not signed with the role's credentials: %v", err)
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, `{"__type":"AccessDeniedException","message":"not signed with the role's credentials"}`)
			return
		}
		k.mu.Lock()
		k.signers = append(k.signers, key)
		k.mu.Unlock()
		if k.target == "" {
			var req putRecordsRequest
			json.Unmarshal(body, &req)
			_, answer := allOK(0, req)
			io.WriteString(w, answer)
			return
		}
		out, _ := http.NewRequest(r.Method, k.target+r.URL.Path, bytes.NewReader(body))
		out.Header = r.Header.Clone()
		resp, err := http.DefaultClient.Do(out)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, resp.Body)
	}))
	t.Cleanup(k.Close)
	return k
}

func (k *signedKinesis) signedBy() []string { return snapshot(&k.mu, &k.signers) }
