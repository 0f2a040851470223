package main

// Unit tests of credentials.go: the wait between failed AssumeRole calls, the STS endpoint, the
// session name. The tests that write through a role to Kinesis, with the fake STS, are in
// sts_test.go.

import (
	"context"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/smithy-go"
)

// TestAssumeGateWaits: after each failure in a row STS is not called again for a wait that
// doubles from firstAssumeWait up to maxAssumeWait; a success ends the series, and its
// credentials are kept until they are invalidated (or expire: TestRoleCredentialsSignKinesisAndRefresh).
func TestAssumeGateWaits(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	provider := &scriptedProvider{}
	g := &assumeGate{assume: provider, role: roleConfig{ARN: centralRole}, counts: &codeCounts{}, logs: newLogger(io.Discard), now: func() time.Time { return now }}
	try := func() error { _, err := g.Retrieve(context.Background()); return err }

	provider.err = &fakeAPIError{"AccessDenied"}
	if err := try(); !errors.As(err, new(*credentialsError)) || provider.calls != 1 {
		t.Fatalf("Retrieve: %v after %d STS calls, want a credentialsError after 1", err, provider.calls)
	}
	var waits []time.Duration
	for range 9 {
		calls, wait := provider.calls, time.Duration(0)
		for provider.calls == calls {
			now = now.Add(time.Second)
			wait += time.Second
			if err := try(); !errors.As(err, new(*credentialsError)) {
				t.Fatalf("Retrieve: %v, want the remembered credentialsError", err)
			}
		}
		waits = append(waits, wait)
	}
	want := []time.Duration{5 * time.Second, 10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 300 * time.Second, 300 * time.Second, 300 * time.Second}
	if !reflect.DeepEqual(waits, want) {
		t.Errorf("waits between STS calls: got %v, want %v", waits, want)
	}
	if got := g.counts.snapshot()["AccessDenied"]; got != 9+1 {
		t.Errorf("AccessDenied counted %d times, want once per STS call (10)", got)
	}

	provider.err = nil
	now = now.Add(maxAssumeWait)
	if err := try(); err != nil {
		t.Fatalf("after the fix: %v", err)
	}
	provider.err = &fakeAPIError{"AccessDenied"}
	calls := provider.calls
	if err := try(); err != nil || provider.calls != calls {
		t.Fatalf("credentials still valid: %v after %d STS calls, want them again from the cache", err, provider.calls-calls)
	}
	g.Invalidate() // as when Kinesis refuses them
	try()
	now = now.Add(firstAssumeWait)
	try()
	if provider.calls != calls+2 {
		t.Errorf("after a success the next failure waits %s again: got %d calls, want 2", firstAssumeWait, provider.calls-calls)
	}

	// A flush deadline that cuts the call short is not a verdict on the role.
	provider.err = context.DeadlineExceeded
	now = now.Add(maxAssumeWait)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	calls = provider.calls
	g.Retrieve(ctx)
	g.Retrieve(ctx)
	if provider.calls != calls+2 {
		t.Errorf("a cancelled call started a wait: %d calls, want 2", provider.calls-calls)
	}
}

type scriptedProvider struct {
	err   error
	calls int
}

func (p *scriptedProvider) Retrieve(context.Context) (aws.Credentials, error) {
	p.calls++
	if p.err != nil {
		return aws.Credentials{}, p.err
	}
	return aws.Credentials{AccessKeyID: "ASIAOK", SecretAccessKey: "s", CanExpire: true, Expires: time.Now().Add(time.Hour)}, nil
}

// fakeAPIError is an AWS API error as the SDK returns it (smithy.APIError).
type fakeAPIError struct{ code string }

func (e *fakeAPIError) Error() string                 { return e.code + ": refused" }
func (e *fakeAPIError) ErrorCode() string             { return e.code }
func (e *fakeAPIError) ErrorMessage() string          { return "refused" }
func (e *fakeAPIError) ErrorFault() smithy.ErrorFault { return smithy.FaultClient }

// TestSTSEndpoints: without AWS_ENDPOINT_URL_STS the role is assumed at the regional STS
// endpoint of the function's region (also in us-east-1, where the global endpoint is the old
// default), and AWS_ENDPOINT_URL_STS replaces it.
func TestSTSEndpoints(t *testing.T) {
	for _, tt := range []struct {
		region, override, wantHost string
	}{
		{"eu-west-1", "", "sts.eu-west-1.amazonaws.com"},
		{"us-east-1", "", "sts.us-east-1.amazonaws.com"},
		{"cn-north-1", "", "sts.cn-north-1.amazonaws.com.cn"},
		{"eu-west-1", "https://sts-fips.us-east-2.amazonaws.com", "sts-fips.us-east-2.amazonaws.com"},
	} {
		var host string
		awsCfg := aws.Config{
			Region:      tt.region,
			Credentials: credentials.NewStaticCredentialsProvider(functionKey, functionSecret, ""),
			HTTPClient: roundTripFunc(func(r *http.Request) (*http.Response, error) {
				host = r.URL.Host
				return nil, errors.New("not sent")
			}),
			RetryMaxAttempts: 1,
		}
		creds := newRoleCredentials(awsCfg, roleConfig{ARN: centralRole, STSEndpoint: tt.override}, "fn", &codeCounts{}, newLogger(io.Discard))
		creds.Retrieve(context.Background())
		if host != tt.wantHost {
			t.Errorf("region %s, override %q: STS host %q, want %q", tt.region, tt.override, host, tt.wantHost)
		}
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) Do(r *http.Request) (*http.Response, error) { return f(r) }

func TestRoleSessionName(t *testing.T) {
	for _, tt := range []struct{ function, want string }{
		{"my-function_1", "my-function_1"},
		{"a", "lambda-a"},
		{"", "lambda-"},
		{"fn:with/odd chars", "fn-with-odd-chars"},
		{strings.Repeat("x", 70), strings.Repeat("x", 64)},
	} {
		if got := roleSessionName(tt.function); got != tt.want {
			t.Errorf("roleSessionName(%q) = %q, want %q", tt.function, got, tt.want)
		}
	}
}
