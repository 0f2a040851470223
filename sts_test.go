package main

// Tests of writing through a role (credentials.go), with a fake STS and SigV4-checking Kinesis
// endpoints: fakeSTS (AssumeRole) and signedKinesis (a PutRecords endpoint, or a proxy in front
// of kinesis-mock, that accepts only the role's credentials), in fakests_test.go.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// The function's own credentials in these tests, and the accounts.
const (
	stsTestRegion   = "eu-west-1"
	functionKey     = "AKIDFUNCTIONOWNKEY00"
	functionSecret  = "function-own-secret"
	functionToken   = "function-own-session-token"
	writerAccount   = "111111111111" // the function's account
	centralAccount  = "222222222222" // the stream's account
	centralRole     = "arn:aws:iam::" + centralAccount + ":role/telemetry-writer"
	centralStream   = "central-telemetry"
	centralExternal = "org-logging-7f3a"
)

// setFunctionCredentials gives the AWS SDK's default chain the function's own credentials and
// nothing else.
func setFunctionCredentials(t *testing.T) {
	t.Setenv("AWS_REGION", stsTestRegion)
	t.Setenv("AWS_ACCESS_KEY_ID", functionKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", functionSecret)
	t.Setenv("AWS_SESSION_TOKEN", functionToken)
	t.Setenv("AWS_CONFIG_FILE", "/nonexistent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_ENDPOINT_URL_STS", "")
}

// roleShipper is a shipper as the extension builds it (loadKinesisClient, not a test client),
// writing through the role to endpoint.
func roleShipper(t *testing.T, sts *fakeSTS, endpoint, externalID string) (*shipper, *buffer, *stats, *syncBuffer) {
	setFunctionCredentials(t)
	cfg := config{
		Stream: streamRef{Name: centralStream}, Endpoint: endpoint, RequestTimeout: time.Second,
		RecordFormat: "event", PartitionKey: "request", Sample: 1,
		Role: roleConfig{ARN: centralRole, ExternalID: externalID, STSEndpoint: sts.URL},
	}
	st := newStats()
	buf := newBuffer(1<<30, "p", st)
	logs := &syncBuffer{}
	s := newShipper(cfg, buf, st, newLogger(logs), testMeta(cfg))
	return s, buf, st, logs
}

// TestRoleCredentialsSignKinesisAndRefresh: the Kinesis calls are signed with the credentials
// AssumeRole returned (never the function's own), the STS call itself is signed with the
// function's credentials for the function's region and names the role, the external id, a
// session name from the function's name and one hour; the credentials are reused while valid
// and replaced once they expire (minus the refresh window). The gate's clock is the test's: it
// moves past the expiry without a sleep.
func TestRoleCredentialsSignKinesisAndRefresh(t *testing.T) {
	const valid = 1500 * time.Millisecond
	sts := newFakeSTS(t, roleRefreshWindow+valid)
	kin := newSignedKinesis(t, sts, "")
	s, buf, st, _ := roleShipper(t, sts, kin.URL, centralExternal)
	ship := func() {
		t.Helper()
		addLogs(buf, 3)
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		if err := s.ship(ctx, everything); err != nil {
			t.Fatal(err)
		}
	}
	ship()                 // builds the client, with the gate
	var ahead atomic.Int64 // how far the gate's clock runs ahead of the wall clock
	s.client.(*kinesisClient).creds.(*assumeGate).now = func() time.Time {
		return time.Now().Add(time.Duration(ahead.Load()))
	}
	ship()
	ahead.Store(int64(valid + 300*time.Millisecond))
	ship()

	calls := sts.seen()
	if len(calls) != 2 {
		t.Fatalf("AssumeRole calls: got %d, want 2 (one, then one after the credentials expired): %+v", len(calls), calls)
	}
	for _, c := range calls {
		want := stsCall{caller: functionKey, roleARN: centralRole, session: roleSessionName(testReg.FunctionName), externalID: centralExternal, duration: "3600", status: 200}
		if c != want {
			t.Errorf("AssumeRole call: got %+v, want %+v", c, want)
		}
	}
	signers := kin.signedBy()
	want := []string{"ASIAFAKESTS000000001", "ASIAFAKESTS000000001", "ASIAFAKESTS000000002"}
	if !reflect.DeepEqual(signers, want) {
		t.Errorf("Kinesis calls signed by %q, want %q", signers, want)
	}
	if st.delivered.Load() != 9 {
		t.Errorf("delivered %d events, want 9", st.delivered.Load())
	}
}

// TestRoleRefused: a role that refuses the function (not in its trust policy, a wrong or
// missing external id) gives one log line with the fix, is counted under STS's error code,
// keeps every event buffered, sends nothing to Kinesis, and is not asked again at the next
// flush: the failure is remembered for a growing wait (TestAssumeGateWaits).
func TestRoleRefused(t *testing.T) {
	for _, tt := range []struct {
		name       string
		trusted    []string
		externalID string
		wantFix    string
	}{
		{"not trusted", nil, centralExternal, "must allow sts:AssumeRole for the function's role"},
		{"wrong external id", []string{functionKey}, "wrong-external-id", "must equal KINESIS_TELEMETRY_ROLE_EXTERNAL_ID exactly"},
		{"missing external id", []string{functionKey}, "", "set KINESIS_TELEMETRY_ROLE_EXTERNAL_ID to its value"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sts := newFakeSTS(t, time.Hour)
			sts.roles[centralRole] = fakeRole{trusted: tt.trusted, externalID: centralExternal}
			kin := newSignedKinesis(t, sts, "")
			s, buf, st, logs := roleShipper(t, sts, kin.URL, tt.externalID)
			addLogs(buf, 5)
			for range 2 {
				ctx, cancel := context.WithTimeout(context.Background(), 400*time.Millisecond)
				start := time.Now()
				s.ship(ctx, everything)
				cancel()
				if d := time.Since(start); d > time.Second {
					t.Errorf("ship took %s with a 400 ms deadline: a refused role must not hold up the flush", d)
				}
			}
			if calls := sts.seen(); len(calls) != 1 || calls[0].status != http.StatusForbidden {
				t.Errorf("AssumeRole calls: got %+v, want exactly one, refused (no retry storm)", calls)
			}
			if n := len(kin.signedBy()); n != 0 {
				t.Errorf("%d Kinesis calls without credentials", n)
			}
			if n, _ := buf.state(); n != 5 {
				t.Errorf("buffered: got %d events, want all 5 kept", n)
			}
			if m := st.marks(); m.rejected != 0 || m.full != 0 {
				t.Errorf("events dropped: %+v", m)
			}
			if got := st.assumeRole.snapshot(); !reflect.DeepEqual(got, map[string]uint64{"AccessDenied": 1}) {
				t.Errorf("assumeRole counts: got %v, want AccessDenied: 1", got)
			}
			var counts countsRecord
			if err := json.Unmarshal(st.json(buf.buffered()), &counts); err != nil || counts.AssumeRoleErrors["AccessDenied"] != 1 {
				t.Errorf("counts record: assumeRoleErrors %v (%v), want AccessDenied: 1", counts.AssumeRoleErrors, err)
			}
			var fixes []string
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, "Fix:") {
					fixes = append(fixes, line)
				}
			}
			if len(fixes) != 1 {
				t.Fatalf("log lines with a fix: got %d, want 1:\n%s", len(fixes), logs.String())
			}
			for _, want := range []string{"KINESIS_TELEMETRY_ROLE_ARN", "AccessDenied", "trust policy of " + centralRole, tt.wantFix, "sts:AssumeRole on " + centralRole, "stays buffered"} {
				if !strings.Contains(fixes[0], want) {
					t.Errorf("log line lacks %q:\n%s", want, fixes[0])
				}
			}
			if strings.Contains(logs.String(), functionSecret) || strings.Contains(logs.String(), functionToken) {
				t.Error("the log shows the function's credentials")
			}
		})
	}
}

// TestOtherAccountStreamOnKinesisMock: a function in one account writes to a stream of another
// account, addressed by its ARN, end to end: the extension binary, the fake Lambda, kinesis-mock.
//
// kinesis-mock keeps streams per account. A request that names the stream by ARN is served
// from the ARN's account whatever the signing key; by name, from the account of a 12-digit
// access key id, else its AWS_ACCOUNT_ID (checked by hand with the SDK, kinesis-mock 0.6.2). So
// it holds the central account's stream itself and no account mapping is needed. It checks no
// signatures and no policies: "resource policy" only shows that the ARN reaches the other
// account's stream with the function's own credentials; "role" puts signedKinesis in front of
// it, which lets through only calls signed with the credentials the fake STS issued.
func TestOtherAccountStreamOnKinesisMock(t *testing.T) {
	for _, variant := range []string{"resource policy", "role"} {
		t.Run(variant, func(t *testing.T) {
			peer := startKinesisMock(t, stsTestRegion, centralAccount, streamSpec{Name: centralStream})
			// The function's account has a stream of the same name: a request that reached the
			// function's own account would land there and not be found in the central stream.
			own := *peer
			own.sdk = newPeerSDKClient(peer.Endpoint, stsTestRegion, writerAccount, "")
			own.createStream(t, streamSpec{Name: centralStream})
			fl := newFakeLambda(t)
			// Every endpoint over HTTPS, as in production (tlsfront_test.go).
			front := startTLSFront(t, peer.Endpoint, frontOptions{})
			env := testEnv(front.URL, "SSL_CERT_FILE", front.CAFile,
				"KINESIS_TELEMETRY_STREAM", peer.streamARN(centralStream),
				"AWS_REGION", stsTestRegion, "AWS_ACCESS_KEY_ID", functionKey,
				"AWS_SECRET_ACCESS_KEY", functionSecret, "AWS_SESSION_TOKEN", functionToken)
			var sts *fakeSTS
			var kin *signedKinesis
			if variant == "role" {
				sts = newFakeSTS(t, time.Hour)
				kin = newSignedKinesis(t, sts, peer.Endpoint)
				env["KINESIS_TELEMETRY_ENDPOINT"] = startTLSFront(t, kin.URL, frontOptions{}).URL
				env["KINESIS_TELEMETRY_ROLE_ARN"] = centralRole
				env["KINESIS_TELEMETRY_ROLE_EXTERNAL_ID"] = centralExternal
				env["AWS_ENDPOINT_URL_STS"] = startTLSFront(t, sts.URL, frontOptions{}).URL
			}
			ext := startExtension(t, fl, env)
			fl.init()
			for i := range 3 {
				fl.invoke(invocation{requestID: fmt.Sprintf("req-%d", i), textLines: 3, jsonLines: 2})
			}
			fl.shutdown("spindown", 2*time.Second)
			if code := ext.wait(3 * time.Second); code != 0 {
				t.Fatalf("exit code %d", code)
			}
			recs := peer.waitForRecords(t, centralStream, len(fl.postedEvents()), 10*time.Second)
			data, keys := storedData(recs)
			events, _ := decodeShipped(t, data, keys)
			checkExactlyOnce(t, fl.postedEvents(), events)
			if n := len(own.readAll(t, centralStream)); n != 0 {
				t.Errorf("%d records in the function's own account's stream of the same name", n)
			}
			if variant == "role" {
				if calls := sts.seen(); len(calls) != 1 || calls[0].caller != functionKey || calls[0].externalID != centralExternal {
					t.Errorf("AssumeRole calls: %+v, want one by the function's key with the external id", calls)
				}
				for _, k := range kin.signedBy() {
					if k == functionKey {
						t.Error("a Kinesis call was signed with the function's own key")
					}
				}
				if len(kin.signedBy()) == 0 {
					t.Error("no Kinesis call went through the role")
				}
			}
		})
	}
}
