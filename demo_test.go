package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestDemo is the demonstration behind `./build.sh demo`, not a check: it starts kinesalite and
// the Lambda Runtime Interface Emulator (managed-instances mode) on 127.0.0.1 with the built
// extension, invokes the function five times, shuts the emulator down, prints every record that
// landed in the stream, decoded, one line each in time order under a header, and stops
// everything it started. Run it with
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
	// The stream holds records per shard; in the order they happened they read as a story.
	slices.SortStableFunc(landed, func(a, b rieLanded) int {
		return cmp.Or(strings.Compare(demoTime(a), demoTime(b)), cmp.Compare(demoSeq(a), demoSeq(b)))
	})
	fmt.Printf("%d records in %q, in time order (request ids cut to 8 characters, records to %d):\n", len(landed), stream, demoRecordWidth)
	fmt.Printf(demoFormat, "TIME (UTC)", "SHARD", "REQUEST", "EVENT TYPE", "RECORD")
	for _, l := range landed {
		fmt.Print(demoLine(l))
	}
	if got := r.Exits[rieProductName]; got != (rieExit{Code: 0}) {
		t.Errorf("%s: %v, want exit status 0", rieProductName, got)
	}
	if len(landed) == 0 {
		t.Errorf("no records landed in %q", stream)
	}
}

// demoFormat lays out one line of the demo's table: about 110 characters.
const (
	demoFormat      = "%-12s  %-5s  %-8s  %-34s  %s\n"
	demoRecordWidth = 40
)

// demoLine renders a record as one line of the table: the event's time of day, the shard, the
// request id, the event type and the start of the record.
func demoLine(l rieLanded) string {
	id := l.RequestID
	if id == "" {
		id = "-"
	}
	var ev struct {
		Record json.RawMessage `json:"record"`
	}
	_ = json.Unmarshal(l.Event, &ev)
	rec := strings.Join(strings.Fields(string(ev.Record)), " ")
	if r := []rune(rec); len(r) > demoRecordWidth {
		rec = string(r[:demoRecordWidth-1]) + "…"
	}
	clock := demoTime(l)
	if len(clock) >= len("2006-01-02T15:04:05.000") {
		clock = clock[len("2006-01-02T"):len("2006-01-02T15:04:05.000")]
	}
	return fmt.Sprintf(demoFormat, clock, strings.TrimPrefix(l.Record.ShardID, "shardId-00000000"), id[:min(8, len(id))], l.Type, rec)
}

// demoTime is the event's own time (RFC 3339, UTC, milliseconds: sortable as text).
func demoTime(l rieLanded) string {
	var ev struct {
		Time string `json:"time"`
	}
	_ = json.Unmarshal(l.Event, &ev)
	return ev.Time
}

// demoSeq is the extension's arrival number from the record id ("<prefix>-<n>"): the order
// among events of the same millisecond.
func demoSeq(l rieLanded) int {
	n, _ := strconv.Atoi(l.ID[strings.LastIndex(l.ID, "-")+1:])
	return n
}
