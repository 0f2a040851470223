package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

func contextWithTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestParseConfigDefaults(t *testing.T) {
	c, err := parseConfig(envOf(map[string]string{"KINESIS_TELEMETRY_STREAM": "telemetry", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.Stream != "telemetry" || c.Port != 4243 || strings.Join(c.Types, ",") != "platform,function" ||
		c.BufferItems != 1000 || c.BufferBytes != 262144 || c.BufferTimeoutMS != 25 ||
		c.FlushBudget != time.Second || c.MaxDelay != 10*time.Second || c.Flush.Mode != "adaptive" ||
		c.MaxBufferBytes != 8<<20 || c.RecordFormat != "event" || c.PartitionKey != "request" || c.Sample != 1 {
		t.Errorf("defaults: %+v", c)
	}
}

func TestParseConfigErrorsNameTheVariable(t *testing.T) {
	for _, tt := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{}, "KINESIS_TELEMETRY_STREAM"},
		{map[string]string{"KINESIS_TELEMETRY_STREAM": "bad name!"}, "KINESIS_TELEMETRY_STREAM"},
		{map[string]string{"KINESIS_TELEMETRY_STREAM": "arn:aws:kinesis:eu-west-1:12:stream/x"}, "KINESIS_TELEMETRY_STREAM"},
		{map[string]string{"KINESIS_TELEMETRY_PORT": "http"}, "KINESIS_TELEMETRY_PORT"},
		{map[string]string{"KINESIS_TELEMETRY_PORT": "9001"}, "reserved"},
		{map[string]string{"KINESIS_TELEMETRY_PORT": "80"}, "from 1024 to 65535"},
		{map[string]string{"KINESIS_TELEMETRY_TYPES": "platform,logs"}, "KINESIS_TELEMETRY_TYPES"},
		{map[string]string{"KINESIS_TELEMETRY_BUFFER_ITEMS": "10"}, "KINESIS_TELEMETRY_BUFFER_ITEMS"},
		{map[string]string{"KINESIS_TELEMETRY_BUFFER_BYTES": "2000000"}, "KINESIS_TELEMETRY_BUFFER_BYTES"},
		{map[string]string{"KINESIS_TELEMETRY_BUFFER_TIMEOUT_MS": "5"}, "KINESIS_TELEMETRY_BUFFER_TIMEOUT_MS"},
		{map[string]string{"KINESIS_TELEMETRY_ENDPOINT": "http://kinesis.example.com"}, "KINESIS_TELEMETRY_ENDPOINT"},
		{map[string]string{"KINESIS_TELEMETRY_FLUSH": "sometimes"}, "KINESIS_TELEMETRY_FLUSH"},
		{map[string]string{"KINESIS_TELEMETRY_FLUSH": "periodic,5"}, "KINESIS_TELEMETRY_FLUSH"},
		{map[string]string{"KINESIS_TELEMETRY_REDACT": "(unclosed"}, "KINESIS_TELEMETRY_REDACT"},
		{map[string]string{"KINESIS_TELEMETRY_REDACT": `["ok", 3]`}, "KINESIS_TELEMETRY_REDACT"},
		{map[string]string{"KINESIS_TELEMETRY_MIN_LEVEL": "LOUD"}, "KINESIS_TELEMETRY_MIN_LEVEL"},
		{map[string]string{"KINESIS_TELEMETRY_SAMPLE": "1.5"}, "KINESIS_TELEMETRY_SAMPLE"},
		{map[string]string{"KINESIS_TELEMETRY_PARTITION_KEY": "shard"}, "KINESIS_TELEMETRY_PARTITION_KEY"},
		{map[string]string{"KINESIS_TELEMETRY_RECORD_FORMAT": "csv"}, "KINESIS_TELEMETRY_RECORD_FORMAT"},
	} {
		env := map[string]string{"KINESIS_TELEMETRY_STREAM": "s"}
		for k, v := range tt.env {
			env[k] = v
		}
		if len(tt.env) == 0 {
			delete(env, "KINESIS_TELEMETRY_STREAM")
		}
		_, err := parseConfig(envOf(env))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%v: error %v, want one mentioning %s", tt.env, err, tt.want)
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
	if c.StreamARN == "" || c.Stream != "" || c.Flush.Period != 250*time.Millisecond || len(c.Types) != 3 ||
		len(c.Redact) != 2+len(builtinSecrets) || !c.Managed {
		t.Errorf("parsed %+v", c)
	}
}
