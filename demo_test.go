package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestDemo is the demonstration behind `./build.sh demo`, not a check: it starts kinesalite and
// the Lambda Runtime Interface Emulator (managed-instances mode) on 127.0.0.1 with the built
// extension, invokes the function five times, shuts the emulator down, prints every record that
// landed in the stream, decoded, one line each, and stops everything it started. Run it with
//
//	TEST_DEMO=1 go test -count=1 -run '^TestDemo$' -v .
func TestDemo(t *testing.T) {
	if os.Getenv("TEST_DEMO") != "1" {
		t.Skip("demo only: set TEST_DEMO=1 (./build.sh demo) to run it")
	}
	requireRIE(t)
	const stream = "demo-telemetry"
	kinesis := startKinesalite(t, streamSpec{Name: stream, Shards: 2})
	product := rieProductBinary(t)
	r := startRIE(t, rieOptions{
		Managed:    true,
		Extensions: map[string]string{rieProductName: product},
		Env:        rieProductEnv(kinesis, stream, freePort()),
	})
	fmt.Printf("kinesalite %s, stream %q; Lambda RIE on %s with /opt/extensions/%s\n",
		kinesis.Endpoint, stream, r.InvokeAddr, rieProductName)
	for i := 1; i <= 5; i++ {
		id := r.invokeN(t, i)
		fmt.Printf("invoke %d -> request %s\n", i, id)
		// Lets the emulator relay this invocation's lines before the next one starts.
		time.Sleep(100 * time.Millisecond)
	}
	r.shutdown(t, 6*time.Second)
	fmt.Printf("emulator stopped in %v; extension: %v\n", r.ShutdownTook.Round(time.Millisecond), r.Exits[rieProductName])

	landed := rieDecodeLanded(t, kinesis.readAll(t, stream))
	fmt.Printf("%d records in %q:\n", len(landed), stream)
	for _, l := range landed {
		fmt.Println(demoLine(l))
	}
	if got := r.Exits[rieProductName]; got != (rieExit{Code: 0}) {
		t.Errorf("%s: %v, want exit status 0", rieProductName, got)
	}
	if len(landed) == 0 {
		t.Errorf("no records landed in %q", stream)
	}
}

// demoLine renders a record as: shard, sequence-number tail, request id, event type, record.
func demoLine(l rieLanded) string {
	seq := l.Record.SequenceNumber
	if len(seq) > 6 {
		seq = "…" + seq[len(seq)-6:]
	}
	id := l.RequestID
	if id == "" {
		id = "-"
	}
	var ev struct {
		Time   string          `json:"time"`
		Record json.RawMessage `json:"record"`
	}
	_ = json.Unmarshal(l.Event, &ev)
	rec := strings.Join(strings.Fields(string(ev.Record)), " ")
	if len(rec) > 140 {
		rec = rec[:140] + "…"
	}
	return fmt.Sprintf("%s %s  %-36s  %s %-34s %s", strings.TrimPrefix(l.Record.ShardID, "shardId-"), seq, id, ev.Time, l.Type, rec)
}
