package main

// Writing through a role (KINESIS_TELEMETRY_ROLE_ARN): the function's own credentials assume a
// role, usually in the stream's account, and PutRecords is signed with the role's credentials.
// The role's credentials are cached and refreshed before they expire; a role that cannot be
// assumed is asked for again only after a wait that grows with each failure, so that a broken
// trust policy costs one STS call per wait, not one per flush or per retry.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
)

const (
	// roleSessionDuration is asked of STS for each session. One hour is the most AWS allows when
	// the caller is itself a role session ("role chaining"), as a function's role always is.
	roleSessionDuration = time.Hour
	// roleRefreshWindow is how long before expiry the credentials are refreshed, so that a
	// request is never signed with credentials that expire while it is on the wire.
	roleRefreshWindow = 5 * time.Minute
	// After a failed AssumeRole, STS is not called again for firstAssumeWait, doubling with each
	// failure in a row up to maxAssumeWait.
	firstAssumeWait = 5 * time.Second
	maxAssumeWait   = 5 * time.Minute
)

// newRoleCredentials returns the role's credentials provider: AssumeRole through the AWS SDK's
// stscreds, behind a gate that caches the credentials and remembers failures. STS is reached at
// the endpoint the SDK resolves for the function's region (regional STS), or at
// AWS_ENDPOINT_URL_STS.
func newRoleCredentials(awsCfg aws.Config, role roleConfig, function string, counts *codeCounts, logs *logger) *assumeGate {
	client := sts.NewFromConfig(awsCfg, func(o *sts.Options) {
		if role.STSEndpoint != "" {
			o.BaseEndpoint = aws.String(role.STSEndpoint)
		}
	})
	session := roleSessionName(function)
	assume := stscreds.NewAssumeRoleProvider(client, role.ARN, func(o *stscreds.AssumeRoleOptions) {
		o.RoleSessionName = session
		o.Duration = roleSessionDuration
		if role.ExternalID != "" {
			o.ExternalID = aws.String(role.ExternalID)
		}
	})
	return &assumeGate{assume: assume, role: role, session: session, counts: counts, logs: logs, now: time.Now}
}

// roleSessionName derives the session name, which CloudTrail records in the stream's account,
// from the function's name: 2 to 64 of the characters STS allows.
func roleSessionName(function string) string {
	b := []byte(function)
	for i, c := range b {
		if !strings.ContainsRune(stsNameChars, rune(c)) {
			b[i] = '-'
		}
	}
	s := string(b[:min(len(b), 64)])
	if len(s) < 2 {
		s = "lambda-" + s
	}
	return s
}

// assumeGate calls AssumeRole and keeps the credentials until roleRefreshWindow before they
// expire; it remembers a failure and answers with it, without calling STS, until the wait after
// it has passed. It is the credentials cache, rather than the SDK's aws.CredentialsCache, so that
// expiry follows its clock (now), which tests set.
type assumeGate struct {
	assume  aws.CredentialsProvider
	role    roleConfig
	session string
	counts  *codeCounts
	logs    *logger
	now     func() time.Time

	mu       sync.Mutex // held through the STS call: one AssumeRole at a time
	creds    aws.Credentials
	failures int       // in a row
	retryAt  time.Time // no STS call before this
	last     *credentialsError
}

func (g *assumeGate) Retrieve(ctx context.Context) (aws.Credentials, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.creds.HasKeys() && (!g.creds.CanExpire || g.now().Before(g.creds.Expires.Add(-roleRefreshWindow))) {
		return g.creds, nil
	}
	if g.last != nil && g.now().Before(g.retryAt) {
		return aws.Credentials{}, g.last
	}
	creds, err := g.assume.Retrieve(ctx)
	if err == nil {
		g.creds, g.failures, g.last = creds, 0, nil
		return creds, nil
	}
	if ctx.Err() != nil {
		// The flush deadline cut the call short: no verdict on the role.
		return aws.Credentials{}, fmt.Errorf("assume role %s: %w", g.role.ARN, err)
	}
	code := "NetworkError"
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code = ae.ErrorCode()
	}
	g.counts.add(code)
	wait := maxAssumeWait
	if g.failures < 10 {
		wait = min(firstAssumeWait<<g.failures, maxAssumeWait)
	}
	g.failures++
	g.retryAt = g.now().Add(wait)
	g.last = &credentialsError{Code: code, Role: g.role.ARN, Err: err}
	g.logs.once("assume-role:"+code, "kinesis: %v; telemetry stays buffered (when the buffer is full the oldest is dropped and counted) and STS is asked again in %s, then after longer waits%s",
		g.last, wait, assumeRoleFix(code, g.role, g.session))
	return aws.Credentials{}, g.last
}

// Invalidate forgets the credentials, which Kinesis refused (kinesis.go): the next call assumes
// the role again.
func (g *assumeGate) Invalidate() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.creds = aws.Credentials{}
}

// assumeRoleFix tells the reader of the log line what to change.
func assumeRoleFix(code string, role roleConfig, session string) string {
	switch code {
	case "AccessDenied":
		externalID := "; if the trust policy has an sts:ExternalId condition, set KINESIS_TELEMETRY_ROLE_EXTERNAL_ID to its value"
		if role.ExternalID != "" {
			externalID = "; its sts:ExternalId condition must equal KINESIS_TELEMETRY_ROLE_EXTERNAL_ID exactly (STS answers a wrong external id with this same AccessDenied)"
		}
		return fmt.Sprintf(". Fix: the trust policy of %s must allow sts:AssumeRole for the function's role (the principal named in the message above)%s; and the function's role needs an IAM policy allowing sts:AssumeRole on %s (template.json, writer side, with WriterRoleArn, creates it). Session name: %s",
			role.ARN, externalID, role.ARN, session)
	case "RegionDisabledException":
		return ". Fix: activate STS in the function's region for the role's account (IAM account settings), or set AWS_ENDPOINT_URL_STS to an STS endpoint of an active region"
	case "ExpiredToken", "InvalidClientTokenId", "SignatureDoesNotMatch":
		return ". Fix: the function's own credentials were rejected by STS; check the function's execution role"
	case "NetworkError":
		return ". Fix: the function must reach STS (a VPC function needs an STS interface endpoint or a NAT; AWS_ENDPOINT_URL_STS overrides the endpoint)"
	}
	return ""
}

// credentialsError is a failure to get the role's credentials. It surfaces from putRecords before
// anything is sent, so the records are certainly not stored.
type credentialsError struct {
	Code string // the STS error code, or NetworkError
	Role string
	Err  error
}

func (e *credentialsError) Error() string {
	return fmt.Sprintf("assume role %s (KINESIS_TELEMETRY_ROLE_ARN): %s: %v", e.Role, e.Code, e.Err)
}

func (e *credentialsError) Unwrap() error { return e.Err }

// roleConfig is the role the extension writes through (KINESIS_TELEMETRY_ROLE_ARN); empty ARN:
// the function's own credentials.
type roleConfig struct {
	ARN         string
	ExternalID  string
	STSEndpoint string // AWS_ENDPOINT_URL_STS; empty: the regional STS endpoint
}

// stsNameChars are the characters STS allows in role names and session names.
const stsNameChars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+=,.@-_"
