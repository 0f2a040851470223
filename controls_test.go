package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"testing"
)

// runControls drives one extension with the given settings through n invocations against a
// real kinesalite stream of the given shards, and returns what landed.
func runControls(t *testing.T, shards, n int, settings ...string) (*fakeLambda, []storedRecord) {
	t.Helper()
	const stream = "telemetry"
	peer := startKinesalite(t, streamSpec{Name: stream, Shards: shards})
	fl := newFakeLambda(t)
	ext := startExtension(t, fl, extensionEnvFor(peer, stream, peer.Endpoint, false, append([]string{"KINESIS_TELEMETRY_FLUSH", "end"}, settings...)...))
	fl.init()
	for i := range n {
		fl.invoke(invocation{requestID: fmt.Sprintf("%08x-aaaa-bbbb-cccc-%012d", i*2654435761, i), textLines: 50, jsonLines: 50})
	}
	fl.shutdownAndWait(ext)
	return fl, peer.readAll(t, stream)
}

// TestPartitionKeyDistribution shows, on a 4-shard stream, how each partition key mode spreads
// the records: request ids spread by invocation, the function key uses one shard, random spreads
// evenly. It prints the distribution.
func TestPartitionKeyDistribution(t *testing.T) {
	for _, tt := range []struct {
		mode  string
		check func(perShard map[string]int, total int) string
	}{
		{"request", func(s map[string]int, total int) string {
			if len(s) < 3 {
				return "invocations should spread over the shards"
			}
			return ""
		}},
		{"function", func(s map[string]int, total int) string {
			if len(s) != 1 {
				return "all records should be on one shard"
			}
			return ""
		}},
		{"random", func(s map[string]int, total int) string {
			for shard, n := range s {
				if float64(n) < 0.15*float64(total) || float64(n) > 0.35*float64(total) {
					return fmt.Sprintf("%s holds %d of %d: not even", shard, n, total)
				}
			}
			if len(s) != 4 {
				return "random keys should reach every shard"
			}
			return ""
		}},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			_, recs := runControls(t, 4, 20, "KINESIS_TELEMETRY_PARTITION_KEY", tt.mode)
			perShard := map[string]int{}
			for _, r := range recs {
				perShard[r.ShardID]++
			}
			var shards []string
			for s := range perShard {
				shards = append(shards, s)
			}
			sort.Strings(shards)
			var line []string
			for _, s := range shards {
				line = append(line, fmt.Sprintf("%s=%d", s, perShard[s]))
			}
			t.Logf("%-8s %d records: %s", tt.mode, len(recs), strings.Join(line, " "))
			if msg := tt.check(perShard, len(recs)); msg != "" {
				t.Error(msg)
			}
		})
	}
}

// TestNDJSONOnKinesis ships the same traffic as one record per event and packed as ndjson, decodes
// the packed records as a consumer would, and compares record counts and PUT payload units.
func TestNDJSONOnKinesis(t *testing.T) {
	units := func(recs []storedRecord) int {
		n := 0
		for _, r := range recs {
			n += (len(r.Data) + len(r.PartitionKey) + 25*1024 - 1) / (25 * 1024)
		}
		return n
	}
	fl, plain := runControls(t, 2, 10)
	_, packed := runControls(t, 2, 10, "KINESIS_TELEMETRY_RECORD_FORMAT", "ndjson")
	var data [][]byte
	var keys []string
	for _, r := range packed {
		for _, line := range strings.Split(strings.TrimSuffix(string(r.Data), "\n"), "\n") {
			data, keys = append(data, []byte(line)), append(keys, r.PartitionKey)
		}
	}
	events, _ := decodeRecords(t, data, keys)
	checkExactlyOnce(t, fl.postedEvents(), events)
	t.Logf("10 invocations of 100 log lines: event format %d records, %d PUT payload units; ndjson %d records, %d units",
		len(plain), units(plain), len(packed), units(packed))
	if len(packed)*10 > len(plain) || units(packed)*10 > units(plain) {
		t.Errorf("ndjson should cut records and payload units at least tenfold")
	}
}

// TestFiltersOnKinesis: exclusion, minimum level, redaction and sampling, checked on what lands.
func TestFiltersOnKinesis(t *testing.T) {
	fl, recs := runControls(t, 1, 40,
		"KINESIS_TELEMETRY_EXCLUDE", "platform.runtimeDone",
		"KINESIS_TELEMETRY_MIN_LEVEL", "WARN",
		"KINESIS_TELEMETRY_REDACT", `text line \d+`,
		"KINESIS_TELEMETRY_SAMPLE", "0.5")
	data, keys := storedData(recs)
	events, counts := decodeShipped(t, data, keys)
	kept := map[string]bool{}
	for _, e := range events {
		var ev struct {
			Type   string
			Record json.RawMessage
		}
		json.Unmarshal(e.Event, &ev)
		switch {
		case ev.Type == "platform.runtimeDone":
			t.Fatal("an excluded type landed")
		case ev.Type == "function" && strings.Contains(string(ev.Record), `"level":"INFO"`):
			t.Fatal("an INFO line landed with MIN_LEVEL=WARN")
		case ev.Type == "function" && strings.Contains(string(ev.Record), "text line"):
			t.Fatalf("a redacted pattern landed: %s", ev.Record)
		case ev.Type == "function":
			kept[e.RequestID] = true
		}
	}
	// Text lines survive the level filter; sampling keeps about half of the invocations whole.
	if len(kept) < 10 || len(kept) > 30 {
		t.Errorf("function lines of %d of 40 invocations landed, want about half", len(kept))
	}
	platform := 0
	for _, p := range fl.postedEvents() {
		if strings.Contains(p.raw, `"type":"platform.`) && !strings.Contains(p.raw, "runtimeDone") {
			platform++
		}
	}
	if got := len(events) - countFunction(events); got != platform {
		t.Errorf("%d platform events landed, want all %d", got, platform)
	}
	f := lastCounts(t, counts).Filtered
	t.Logf("filtered: %+v", f)
	if f.Excluded != 40 || f.BelowLevel == 0 || f.SampledOut == 0 {
		t.Errorf("filter counts %+v", f)
	}
}

func countFunction(evs []shipped) int {
	n := 0
	for _, e := range evs {
		if e.Type == "function" {
			n++
		}
	}
	return n
}
