package main

// Unit tests of config.go: every variable's default, value and error, stream and role ARNs,
// endpoints.

import (
	"strings"
	"testing"
	"time"
)

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig(envOf(map[string]string{"KINESIS_TELEMETRY_STREAM": "telemetry", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Stream != (streamRef{Name: "telemetry"}) || c.Port != 4243 || strings.Join(c.Types, ",") != "platform,function" ||
		c.BufferItems != 1000 || c.BufferBytes != 262144 || c.BufferTimeoutMS != 25 ||
		c.FlushBudget != time.Second || c.MaxDelay != 10*time.Second || c.Flush.Mode != "adaptive" ||
		c.MaxBufferBytes != 8<<20 || c.RecordFormat != "event" || c.PartitionKey != "request" || c.Sample != 1 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestParseConfigErrorsNameTheVariable(t *testing.T) {
	// Each variable with values it refuses ("" is unset); some errors also say why.
	says := map[string]string{"KINESIS_TELEMETRY_PORT=9001": "reserved", "KINESIS_TELEMETRY_PORT=80": "from 1024 to 65535"}
	for variable, values := range map[string][]string{
		"KINESIS_TELEMETRY_STREAM":            {"", "bad name!", "arn:aws:kinesis:eu-west-1:12:stream/x"},
		"KINESIS_TELEMETRY_PORT":              {"http", "9001", "80"},
		"KINESIS_TELEMETRY_TYPES":             {"platform,logs"},
		"KINESIS_TELEMETRY_BUFFER_ITEMS":      {"10"},
		"KINESIS_TELEMETRY_BUFFER_BYTES":      {"2000000"},
		"KINESIS_TELEMETRY_BUFFER_TIMEOUT_MS": {"5"},
		"KINESIS_TELEMETRY_ENDPOINT":          {"http://kinesis.example.com"},
		"KINESIS_TELEMETRY_FLUSH":             {"sometimes", "periodic,5"},
		"KINESIS_TELEMETRY_REDACT":            {"(unclosed", `["ok", 3]`},
		"KINESIS_TELEMETRY_MIN_LEVEL":         {"LOUD"},
		"KINESIS_TELEMETRY_SAMPLE":            {"1.5"},
		"KINESIS_TELEMETRY_PARTITION_KEY":     {"shard"},
		"KINESIS_TELEMETRY_RECORD_FORMAT":     {"csv"},
	} {
		for _, value := range values {
			env := map[string]string{"KINESIS_TELEMETRY_STREAM": "s"}
			env[variable] = value
			_, err := parseConfig(envOf(env))
			why := says[variable+"="+value]
			if err == nil || !strings.Contains(err.Error(), variable) || !strings.Contains(err.Error(), why) {
				t.Errorf("%s=%q: error %v, want one naming the variable (and saying %q)", variable, value, err, why)
			}
		}
	}
}

func TestParseConfigValues(t *testing.T) {
	c, err := parseConfig(envOf(map[string]string{
		"KINESIS_TELEMETRY_STREAM":         "arn:aws:kinesis:eu-west-1:123456789012:stream/t",
		"KINESIS_TELEMETRY_FLUSH":          "periodic,250",
		"KINESIS_TELEMETRY_TYPES":          "platform, function ,extension",
		"KINESIS_TELEMETRY_REDACT":         `["a+b", "c\\d"]`,
		"KINESIS_TELEMETRY_REDACT_SECRETS": "true",
		"AWS_LAMBDA_INITIALIZATION_TYPE":   "lambda-managed-instances",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Stream.ARN == "" || c.Stream.Name == "" || c.Flush.Period != 250*time.Millisecond || len(c.Types) != 3 ||
		len(c.Redact) != 2+len(builtinSecrets) || !c.Managed {
		t.Errorf("parsed %+v", c)
	}
}

func TestParseStreamARN(t *testing.T) {
	for _, tt := range []struct {
		arn  string
		want streamRef
		ok   bool
	}{
		{"arn:aws:kinesis:eu-west-1:123456789012:stream/my.stream_1-x", streamRef{Name: "my.stream_1-x", Region: "eu-west-1", Account: "123456789012"}, true},
		{"arn:aws-cn:kinesis:cn-north-1:123456789012:stream/s", streamRef{Name: "s", Region: "cn-north-1", Account: "123456789012"}, true},
		{"arn:aws-us-gov:kinesis:us-gov-west-1:123456789012:stream/s", streamRef{Name: "s", Region: "us-gov-west-1", Account: "123456789012"}, true},
		{"arn:aws:kinesis:eu-west-1:12345678901:stream/s", streamRef{}, false},
		{"arn:aws:kinesis:eu-west-1:123456789012:stream/", streamRef{}, false},
		{"arn:aws:kinesis:eu-west-1:123456789012:stream/a/b", streamRef{}, false},
		{"arn:aws:kinesis:eu-west-1:123456789012:consumer/s", streamRef{}, false},
		{"arn:aws:firehose:eu-west-1:123456789012:stream/s", streamRef{}, false},
		{"arn:aws:kinesis:EU:123456789012:stream/s", streamRef{}, false},
		{"arn:aws:kinesis:eu-west-1:123456789012:stream/" + strings.Repeat("x", 129), streamRef{}, false},
	} {
		got, ok := parseStreamARN(tt.arn)
		if tt.ok {
			tt.want.ARN = tt.arn
		}
		if ok != tt.ok || got != tt.want {
			t.Errorf("parseStreamARN(%q) = %+v, %v; want %+v, %v", tt.arn, got, ok, tt.want, tt.ok)
		}
	}
	if !validStreamName(strings.Repeat("a", 128)) || validStreamName(strings.Repeat("a", 129)) || validStreamName("") || validStreamName("a b") {
		t.Error("validStreamName limits")
	}
}

func TestCheckEndpoint(t *testing.T) {
	for _, tt := range []struct {
		url string
		ok  bool
	}{
		{"https://kinesis.eu-west-1.amazonaws.com", true},
		{"https://vpce-1.kinesis.eu-west-1.vpce.amazonaws.com", true},
		{"http://127.0.0.1:4567", true},
		{"http://localhost:4567", true},
		{"http://[::1]:4567", true},
		{"http://kinesis.eu-west-1.amazonaws.com", false},
		{"http://10.0.0.1:4567", false},
		{"ftp://127.0.0.1", false},
		{"kinesis.eu-west-1.amazonaws.com", false},
	} {
		if err := checkEndpoint(tt.url); (err == nil) != tt.ok {
			t.Errorf("checkEndpoint(%q) = %v, want ok=%v", tt.url, err, tt.ok)
		}
	}
}

func TestParseConfigRole(t *testing.T) {
	base := map[string]string{"KINESIS_TELEMETRY_STREAM": "s"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	c, err := parseConfig(envOf(with("KINESIS_TELEMETRY_ROLE_ARN", "arn:aws:iam::222222222222:role/path/telemetry-writer",
		"KINESIS_TELEMETRY_ROLE_EXTERNAL_ID", "org-logging:7f3a/x", "AWS_ENDPOINT_URL_STS", "https://sts.eu-west-1.amazonaws.com")))
	if err != nil || c.Role != (roleConfig{"arn:aws:iam::222222222222:role/path/telemetry-writer", "org-logging:7f3a/x", "https://sts.eu-west-1.amazonaws.com"}) {
		t.Errorf("valid role: %+v, %v", c.Role, err)
	}
	if c, err := parseConfig(envOf(base)); err != nil || c.Role != (roleConfig{}) {
		t.Errorf("no role: %+v, %v", c.Role, err)
	}
	for _, tt := range []struct {
		env      map[string]string
		variable string
	}{
		{with("KINESIS_TELEMETRY_ROLE_ARN", "arn:aws:iam::222222222222:user/someone"), "KINESIS_TELEMETRY_ROLE_ARN"},
		{with("KINESIS_TELEMETRY_ROLE_ARN", "arn:aws:sts::222222222222:assumed-role/r/s"), "KINESIS_TELEMETRY_ROLE_ARN"},
		{with("KINESIS_TELEMETRY_ROLE_ARN", "arn:aws:iam::2222:role/r"), "KINESIS_TELEMETRY_ROLE_ARN"},
		{with("KINESIS_TELEMETRY_ROLE_ARN", "telemetry-writer"), "KINESIS_TELEMETRY_ROLE_ARN"},
		{with("KINESIS_TELEMETRY_ROLE_ARN", "arn:aws:iam::222222222222:role/"+strings.Repeat("r", 65)), "KINESIS_TELEMETRY_ROLE_ARN"},
		{with("KINESIS_TELEMETRY_ROLE_EXTERNAL_ID", "abc"), "KINESIS_TELEMETRY_ROLE_EXTERNAL_ID"},
		{with("KINESIS_TELEMETRY_ROLE_ARN", centralRole, "KINESIS_TELEMETRY_ROLE_EXTERNAL_ID", "has space"), "KINESIS_TELEMETRY_ROLE_EXTERNAL_ID"},
		{with("KINESIS_TELEMETRY_ROLE_ARN", centralRole, "AWS_ENDPOINT_URL_STS", "http://sts.example.com"), "AWS_ENDPOINT_URL_STS"},
	} {
		_, err := parseConfig(envOf(tt.env))
		if err == nil || !strings.HasPrefix(err.Error(), tt.variable+"=") {
			t.Errorf("%v: error %v, want one naming %s", tt.env, err, tt.variable)
		}
	}
}
