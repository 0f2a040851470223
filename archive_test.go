package main

// The archive can be queried: the template's Glue table and Athena named queries, checked on
// records the extension really writes. The extension runs under the fake Lambda (three execution
// environments of two functions: errors, a timeout, cold starts, a trace across environments,
// records Kinesis rejects) into a fake Kinesis; what landed is written gzipped under Firehose's
// prefix, as the template's delivery stream would (a newline after each record; ndjson split
// into its lines and partitioned by event type); and the table's schema and every named query
// are run over those files in DuckDB (npm @duckdb/node-api).
//
// Athena's SQL (Trino) and DuckDB's differ in three function names the queries use, and in
// nothing else the queries use: json_extract_scalar is DuckDB's json_extract_string;
// approx_percentile is DuckDB's quantile_disc (exact nearest rank; Athena's is approximate);
// date_format (MySQL-style %Y/%m/%d/%H) is DuckDB's strftime with the same codes. Each query runs
// twice, in Athena's spelling (those three defined as DuckDB macros) and rewritten into DuckDB's
// own, and both must give the rows computed here from the records themselves.

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// athenaToDuckDB is the whole difference between the two spellings of the named queries.
var athenaToDuckDB = []struct{ athena, duckdb string }{
	{"json_extract_scalar(", "json_extract_string("},
	{"approx_percentile(", "quantile_disc("},
	{"date_format(", "strftime("},
}

// athenaMacros define Athena's names in DuckDB, to run the queries as the template has them.
var athenaMacros = []string{
	"CREATE MACRO json_extract_scalar(j, p) AS json_extract_string(j, p)",
	"CREATE MACRO approx_percentile(x, q) AS quantile_disc(x, q)",
	"CREATE MACRO date_format(ts, f) AS strftime(ts, f)",
}

// archiveInv is one invocation of the scenario.
type archiveInv struct {
	req, trace, tenant, status, errorType string
	ms                                    float64
	memMB                                 int
	lines                                 []string
}

// archiveEnv is one execution environment: a start of the extension.
type archiveEnv struct {
	function, initType string
	initMs             float64
	invs               []archiveInv
}

const (
	traceA = "1-5759e988-bd862e3fe1be46a994272793"
	traceB = "1-66a0c1f2-0123456789abcdef01234567"
)

var archiveScenario = []archiveEnv{
	{"orders", "on-demand", 120.5, []archiveInv{
		{req: "a1", trace: traceA, status: "success", ms: 10, memMB: 60, lines: []string{"order 1 received"}},
		{req: "a2", trace: traceA, status: "success", ms: 30, memMB: 64},
		{req: "a3", trace: traceB, status: "error", errorType: "Runtime.ExitError", ms: 50, memMB: 70, lines: []string{"panic: boom"}},
	}},
	{"orders", "on-demand", 300, []archiveInv{
		{req: "b1", trace: traceB, status: "timeout", ms: 3000, memMB: 90},
		{req: "b2", trace: traceA, status: "success", ms: 20, memMB: 80, lines: []string{"order 2 received"}},
	}},
	{"billing", "provisioned-concurrency", 200, []archiveInv{
		{req: "c1", status: "success", tenant: "tenant-7", ms: 5, memMB: 50, lines: []string{"reject-me: Kinesis refuses this line", "invoice 9"}},
		{req: "c2", status: "error", errorType: "Handled.Error", tenant: "tenant-7", ms: 7, memMB: 55, lines: []string{"reject-me too"}},
	}},
}

// rejectMarked answers like allOK, except that records holding "reject-me" are refused for good.
func rejectMarked(call int, req putRecordsRequest) (int, string) {
	var rs []string
	failed := 0
	for i, r := range req.Records {
		data, _ := base64.StdEncoding.DecodeString(r.Data)
		if bytes.Contains(data, []byte("reject-me")) {
			failed++
			rs = append(rs, `{"ErrorCode":"InvalidArgumentException","ErrorMessage":"refused by the test"}`)
			continue
		}
		rs = append(rs, fmt.Sprintf(`{"SequenceNumber":"%d","ShardId":"shardId-000000000000","ErrorCode":null}`, i))
	}
	return 200, fmt.Sprintf(`{"FailedRecordCount":%d,"Records":[%s]}`, failed, strings.Join(rs, ","))
}

// runArchiveScenario runs every environment of the scenario against fk in the given format.
func runArchiveScenario(t *testing.T, fk *fakeKinesis, format string) {
	seq := 0
	ev := func(typ, record string) postedEvent {
		seq++ // one clock for all environments, so that the trace's events have one order
		ts := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC).Add(time.Duration(seq) * time.Millisecond).Format("2006-01-02T15:04:05.000Z")
		return postedEvent{raw: fmt.Sprintf(`{"time":%q,"type":%q,"record":%s}`, ts, typ, record)}
	}
	report := func(inv archiveInv) postedEvent {
		errType := ""
		if inv.errorType != "" {
			errType = fmt.Sprintf(`"errorType":%q,`, inv.errorType)
		}
		return ev("platform.report", fmt.Sprintf(`{"requestId":%q,"status":%q,%s"metrics":{"durationMs":%v,"billedDurationMs":%d,"memorySizeMB":128,"maxMemoryUsedMB":%d}%s}`,
			inv.req, inv.status, errType, inv.ms, int(math.Ceil(inv.ms)), inv.memMB, tracing(inv.trace)))
	}
	for _, env := range archiveScenario {
		fl := newFakeLambda(t)
		fl.functionName = env.function
		ext := startExtension(t, fl, testEnv(fk.URL, "KINESIS_TELEMETRY_RECORD_FORMAT", format))
		fl.awaitNext()
		fl.post("",
			ev("platform.initStart", fmt.Sprintf(`{"initializationType":%q,"phase":"init","functionName":%q,"functionVersion":"$LATEST"}`, env.initType, env.function)),
			ev("platform.initRuntimeDone", fmt.Sprintf(`{"initializationType":%q,"phase":"init","status":"success"}`, env.initType)),
			ev("platform.initReport", fmt.Sprintf(`{"initializationType":%q,"phase":"init","status":"success","metrics":{"durationMs":%v}}`, env.initType, env.initMs)))
		for i, inv := range env.invs {
			if i > 0 {
				fl.awaitNext() // Lambda produces the report after the extension's next
				fl.post("", report(env.invs[i-1]))
			}
			fl.deliver(fmt.Sprintf(`{"eventType":"INVOKE","deadlineMs":%d,"requestId":%q}`, time.Now().Add(5*time.Second).UnixMilli(), inv.req))
			tenant := ""
			if inv.tenant != "" {
				tenant = fmt.Sprintf(`,"tenantId":%q`, inv.tenant)
			}
			batch := []postedEvent{ev("platform.start", fmt.Sprintf(`{"requestId":%q,"version":"$LATEST"%s%s}`, inv.req, tracing(inv.trace), tenant))}
			for _, l := range inv.lines {
				text, _ := json.Marshal(l + "\n")
				batch = append(batch, ev("function", string(text)))
			}
			batch = append(batch, ev("platform.runtimeDone", fmt.Sprintf(`{"requestId":%q,"status":%q,"metrics":{"durationMs":%v}%s}`, inv.req, inv.status, inv.ms, tracing(inv.trace))))
			fl.post(inv.req, batch...)
		}
		fl.awaitNext()
		fl.post("", report(env.invs[len(env.invs)-1]))
		fl.shutdownAndWait(ext)
	}
}

func tracing(root string) string {
	if root == "" {
		return ""
	}
	return fmt.Sprintf(`,"tracing":{"spanId":"53995c3f42cd8ad8","type":"X-Amzn-Trace-Id","value":"Root=%s;Parent=53995c3f42cd8ad8;Sampled=1"}`, root)
}

// firehoseObjects writes what landed as the template's delivery stream would: gzipped objects
// under its prefix, rendered at the arrival hour, one line per record (per event for ndjson, whose
// lines Firehose splits and partitions by .event.type). It returns every line written.
func firehoseObjects(t *testing.T, root, prefix string, data [][]byte, format string, arrival time.Time) [][]byte {
	t.Helper()
	var lines [][]byte
	for _, d := range data {
		if format == "ndjson" {
			for _, l := range bytes.SplitAfter(d, []byte("\n")) {
				if len(l) > 0 {
					lines = append(lines, l)
				}
			}
			continue
		}
		lines = append(lines, append(slices.Clone(d), '\n'))
	}
	ts := regexp.MustCompile(`!\{timestamp:([^}]+)\}`)
	objects := map[string][]byte{}
	for i, l := range lines {
		var env struct{ Event struct{ Type string } }
		if err := json.Unmarshal(l, &env); err != nil {
			t.Fatalf("line %d is not an envelope: %v", i, err)
		}
		dir := strings.ReplaceAll(prefix, "!{partitionKeyFromQuery:type}", env.Event.Type)
		dir = ts.ReplaceAllStringFunc(dir, func(m string) string { return javaDate(arrival, ts.FindStringSubmatch(m)[1]) })
		// Two objects per prefix, as two buffer flushes would write.
		name := filepath.Join(root, dir, fmt.Sprintf("telemetry-archive-1-%s-%d.gz", arrival.Format("2006-01-02-15-04-05"), i%2))
		objects[name] = append(objects[name], l...)
	}
	for name, body := range objects {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Write(body)
		zw.Close()
		if err := os.MkdirAll(filepath.Dir(name), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(name, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return lines
}

// javaDate formats t with the yyyy/MM/dd/HH-style patterns Firehose's prefixes and Athena's
// projections use (the letters here: yyyy MM dd HH).
func javaDate(t time.Time, pattern string) string {
	return t.UTC().Format(strings.NewReplacer("yyyy", "2006", "MM", "01", "dd", "02", "HH", "15").Replace(pattern))
}

// glueToDuckDB is a Glue (Hive) column type as DuckDB reads it from JSON. A struct field declared
// string that holds objects (event.record) is JSON: the OpenX SerDe reads an object into a string
// column as its JSON text, and DuckDB's JSON type does the same for either.
func glueToDuckDB(t *testing.T, name, typ string) string {
	switch {
	case typ == "string" && name == "record":
		return "JSON"
	case typ == "string":
		return "VARCHAR"
	case typ == "bigint":
		return "BIGINT"
	case strings.HasPrefix(typ, "struct<") && strings.HasSuffix(typ, ">"):
		var fields []string
		for _, f := range strings.Split(typ[7:len(typ)-1], ",") { // no nested structs here
			n, ft, _ := strings.Cut(f, ":")
			fields = append(fields, fmt.Sprintf("%q %s", n, glueToDuckDB(t, n, ft)))
		}
		return "STRUCT(" + strings.Join(fields, ", ") + ")"
	}
	t.Fatalf("column %s: Glue type %s has no DuckDB mapping in this test", name, typ)
	return ""
}

// checkJSONType fails unless the JSON value v fits the Glue type typ.
func checkJSONType(t *testing.T, where string, v any, typ string) {
	t.Helper()
	switch {
	case v == nil:
	case typ == "string":
		if _, ok := v.(string); !ok && !strings.HasSuffix(where, ".record") {
			t.Errorf("%s: %v is not a string", where, v)
		}
	case typ == "bigint":
		if f, ok := v.(float64); !ok || f != math.Trunc(f) {
			t.Errorf("%s: %v is not a whole number", where, v)
		}
	case strings.HasPrefix(typ, "struct<"):
		m, ok := v.(map[string]any)
		if !ok {
			t.Errorf("%s: %v is not an object", where, v)
			return
		}
		fields := map[string]string{}
		for _, f := range strings.Split(typ[7:len(typ)-1], ",") {
			n, ft, _ := strings.Cut(f, ":")
			fields[n] = ft
		}
		for k, x := range m {
			ft, ok := fields[strings.ToLower(k)]
			if !ok {
				t.Errorf("%s.%s: not in the table's struct %s", where, k, typ)
				continue
			}
			checkJSONType(t, where+"."+k, x, ft)
		}
	}
}

// TestArchiveQueries checks the Glue table and every Athena named query of the template, for each
// archive format that is JSON lines, on what the extension wrote (see the top of this file).
func TestArchiveQueries(t *testing.T) {
	node, modules := nodeAndModules(t)
	if _, err := os.Stat(filepath.Join(modules, "@duckdb", "node-api", "package.json")); err != nil {
		requirePeers(t, fmt.Sprintf("@duckdb/node-api not installed: %v", err))
	}
	for _, format := range []string{"event", "ndjson"} {
		t.Run(format, func(t *testing.T) {
			tpl, err := renderTemplate(readTemplate(t), map[string]any{"ArchiveToS3": "true", "ArchiveRecordFormat": format})
			if err != nil {
				t.Fatal(err)
			}
			table := tplMap(tplPath(tpl, "Resources", "ArchiveTable", "Properties", "TableInput"))
			if table == nil {
				t.Fatalf("format %s: no Glue table", format)
			}
			prefix := fmt.Sprint(tplPath(tpl, "Resources", "ArchiveDeliveryStream", "Properties", "ExtendedS3DestinationConfiguration", "Prefix"))

			// The projection follows Firehose's prefix: the same path with ${dt} for the
			// arrival hour in the projection's format, and ${eventtype} for the partition key.
			tp := tplMap(table["Parameters"])
			loc, _ := tplPath(tp, "storage.location.template", "Fn::Sub").(string)
			wantLoc := "s3://${ArchiveBucket}/" + strings.NewReplacer("!{partitionKeyFromQuery:type}", "${!eventtype}",
				"!{timestamp:"+fmt.Sprint(tp["projection.dt.format"])+"}", "${!dt}").Replace(prefix)
			if loc != wantLoc {
				t.Errorf("storage.location.template %q does not follow Firehose's prefix %q (want %q)", loc, prefix, wantLoc)
			}
			if tp["projection.enabled"] != "true" || tp["projection.dt.type"] != "date" || tp["projection.dt.interval.unit"] != "HOURS" {
				t.Errorf("projection: %v", tp)
			}

			fk := newFakeKinesis(t, rejectMarked)
			runArchiveScenario(t, fk, format)
			data, _ := fk.callsData()
			root := t.TempDir()
			arrival := time.Now().UTC()
			lines := firehoseObjects(t, root, prefix, data, format, arrival)

			// The schema: every key of every line is a column of the table, of its type.
			var envs []map[string]any
			columns := map[string]string{}
			for _, c := range tplSlice(tplPath(table, "StorageDescriptor", "Columns")) {
				columns[fmt.Sprint(tplMap(c)["Name"])] = fmt.Sprint(tplMap(c)["Type"])
			}
			jsonKey := map[string]string{}
			for i, l := range lines {
				var env map[string]any
				if err := json.Unmarshal(l, &env); err != nil {
					t.Fatalf("line %d: %v", i, err)
				}
				envs = append(envs, env)
				for k, v := range env {
					typ, ok := columns[strings.ToLower(k)]
					if !ok {
						t.Errorf("line %d: key %q is not a column of the table", i, k)
						continue
					}
					jsonKey[strings.ToLower(k)] = k
					checkJSONType(t, fmt.Sprintf("line %d %s", i, k), v, typ)
				}
			}
			for c := range columns {
				if _, ok := jsonKey[c]; !ok && c != "truncatedbytes" { // set only for events over 1 MiB
					t.Errorf("column %s: no line has it; the scenario should exercise every column", c)
				}
			}

			// DuckDB reads the files with the table's columns and partitions.
			var cols, selects []string
			for _, c := range slices.Sorted(func(yield func(string) bool) {
				for c := range columns {
					if !yield(c) {
						return
					}
				}
			}) {
				key := jsonKey[c]
				if key == "" {
					key = c
				}
				cols = append(cols, fmt.Sprintf("%q: '%s'", key, strings.ReplaceAll(glueToDuckDB(t, c, columns[c]), "'", "''")))
				selects = append(selects, fmt.Sprintf("%q AS %q", key, c))
			}
			partRE := regexp.QuoteMeta(strings.TrimPrefix(loc, "s3://${ArchiveBucket}/"))
			partRE = strings.ReplaceAll(partRE, regexp.QuoteMeta("${!dt}"), `(\d{4}/\d{2}/\d{2}/\d{2})`)
			var parts []string
			for _, p := range tplSlice(table["PartitionKeys"]) {
				parts = append(parts, fmt.Sprint(tplMap(p)["Name"]))
			}
			for _, p := range parts {
				selects = append(selects, fmt.Sprintf("regexp_extract(filename, '%s', 1) AS %q", sqlQuote(anyPartition(partRE, parts, p)), p))
			}
			view := fmt.Sprintf("CREATE VIEW %s AS SELECT %s FROM read_json('%s', format='newline_delimited', compression='gzip', filename=true, columns={%s})",
				table["Name"], strings.Join(selects, ", "), sqlQuote(filepath.Join(root, "**", "*.gz")), strings.Join(cols, ", "))

			queries := map[string]string{}
			for _, id := range tplResourcesOfType(tpl, "AWS::Athena::NamedQuery") {
				props := tplMap(tplPath(tpl, "Resources", id, "Properties"))
				if !strings.Contains(fmt.Sprint(props["QueryString"]), "FROM "+fmt.Sprint(table["Name"])) {
					t.Errorf("%s does not read the table %s", id, table["Name"])
				}
				queries[id] = fmt.Sprint(props["QueryString"])
			}
			want := archiveExpectations(envs)
			if len(queries) != len(want) {
				t.Errorf("named queries %v, want one per question: %v", slices.Sorted(mapKeys(queries)), slices.Sorted(mapKeys(want)))
			}
			schemaCheck := "SELECT count(*) AS n, count(DISTINCT id) AS ids, count(" + parts[len(parts)-1] + ") AS dated FROM " + fmt.Sprint(table["Name"])
			for _, spelling := range []string{"athena", "duckdb"} {
				setup := []string{"SET TimeZone='UTC'", view}
				if spelling == "athena" {
					setup = append(setup, athenaMacros...)
				}
				var qs []duckQuery
				for id, sql := range queries {
					if spelling == "duckdb" {
						for _, r := range athenaToDuckDB {
							sql = strings.ReplaceAll(sql, r.athena, r.duckdb)
						}
					}
					var params []any
					if strings.Contains(sql, "?") {
						params = []any{traceA}
					}
					qs = append(qs, duckQuery{Name: id, SQL: sql, Params: params})
				}
				qs = append(qs, duckQuery{Name: "schema", SQL: schemaCheck})
				for _, res := range runDuckDB(t, node, modules, setup, qs) {
					if res.Error != "" {
						t.Errorf("%s spelling, %s: %s", spelling, res.Name, res.Error)
						continue
					}
					if res.Name == "schema" {
						n := float64(len(lines))
						if got := res.Rows[0]; got["n"] != n || got["ids"] != n || got["dated"] != n {
							t.Errorf("%s: DuckDB read %v of the %d lines written (ids, with a partition)", spelling, got, len(lines))
						}
						continue
					}
					if len(want[res.Name]) == 0 {
						t.Errorf("%s: the scenario gives no row to check", res.Name)
					}
					compareRows(t, spelling+" "+res.Name, res.Rows, want[res.Name])
					if spelling == "athena" {
						t.Logf("%s: %d rows, first %v", res.Name, len(res.Rows), res.Rows[0])
					}
				}
			}
		})
	}
}

// anyPartition turns the location template's regexp into one that captures partition p only.
func anyPartition(re string, parts []string, p string) string {
	for _, q := range parts {
		var with string
		switch {
		case q == p && q == "dt":
			continue // already a capture
		case q == p:
			with = `([^/]+)`
		case q == "dt":
			re = strings.Replace(re, `(\d{4}/\d{2}/\d{2}/\d{2})`, `\d{4}/\d{2}/\d{2}/\d{2}`, 1)
			continue
		default:
			with = `[^/]+`
		}
		re = strings.ReplaceAll(re, regexp.QuoteMeta("${!"+q+"}"), with)
	}
	return re
}

func sqlQuote(s string) string { return strings.ReplaceAll(s, "'", "''") }

type duckQuery struct {
	Name   string `json:"name"`
	SQL    string `json:"sql"`
	Params []any  `json:"params,omitempty"`
}

type duckResult struct {
	Name  string           `json:"name"`
	Rows  []map[string]any `json:"rows"`
	Error string           `json:"error"`
}

// runDuckDB runs testdata/peers/duckdb-run.js.
func runDuckDB(t *testing.T, node, modules string, setup []string, queries []duckQuery) []duckResult {
	t.Helper()
	in, _ := json.Marshal(map[string]any{"setup": setup, "queries": queries})
	cmd := exec.Command(node, launcherPath(t, "duckdb-run.js"), modules)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("duckdb-run.js: %v: %s", err, stderr.String())
	}
	var res []duckResult
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(queries) {
		t.Fatalf("duckdb-run.js: %d results for %d queries (%v): %.500s", len(res), len(queries), err, out)
	}
	return res
}

// compareRows fails unless got and want have the same rows in the same order; numbers within
// 1e-9 relative, and JSON text (a record) equal as JSON.
func compareRows(t *testing.T, name string, got, want []map[string]any) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%s: %d rows, want %d\ngot  %v\nwant %v", name, len(got), len(want), got, want)
		return
	}
	for i := range want {
		if len(got[i]) != len(want[i]) {
			t.Errorf("%s row %d: columns %v, want %v", name, i, slices.Sorted(mapKeys(got[i])), slices.Sorted(mapKeys(want[i])))
		}
		for k, w := range want[i] {
			g := got[i][k]
			switch w := w.(type) {
			case float64:
				f, ok := g.(float64)
				if !ok || math.Abs(f-w) > 1e-9*math.Max(1, math.Abs(w)) {
					t.Errorf("%s row %d %s: got %v, want %v", name, i, k, g, w)
				}
			case json.RawMessage:
				var a, b any
				s, _ := g.(string)
				if json.Unmarshal([]byte(s), &a) != nil || json.Unmarshal(w, &b) != nil || !jsonEqual(a, b) {
					t.Errorf("%s row %d %s: got %v, want %s", name, i, k, g, w)
				}
			default:
				if g != w {
					t.Errorf("%s row %d %s: got %v, want %v", name, i, k, g, w)
				}
			}
		}
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return bytes.Equal(x, y)
}

// archiveExpectations computes each named query's rows from the archived envelopes, in Go.
func archiveExpectations(envs []map[string]any) map[string][]map[string]any {
	type ev struct {
		id, function, requestID, traceID, typ, time string
		seq                                         int
		record                                      map[string]any
		raw                                         json.RawMessage
	}
	var evs []ev
	for _, e := range envs {
		event, _ := e["event"].(map[string]any)
		raw, _ := json.Marshal(event["record"])
		rec, _ := event["record"].(map[string]any)
		id := fmt.Sprint(e["id"])
		var seq int
		fmt.Sscanf(id[strings.LastIndexByte(id, '-')+1:], "%d", &seq)
		tr, _ := e["traceId"].(string)
		evs = append(evs, ev{id: id, function: fmt.Sprint(e["function"]), requestID: fmt.Sprint(e["requestId"]), traceID: tr,
			typ: fmt.Sprint(event["type"]), time: fmt.Sprint(event["time"]), seq: seq, record: rec, raw: raw})
	}
	num := func(m map[string]any, path string) float64 {
		var v any = m
		for _, k := range strings.Split(path, ".") {
			mm, _ := v.(map[string]any)
			v = mm[k]
		}
		f, _ := v.(float64)
		return f
	}
	str := func(m map[string]any, k string) any {
		if s, ok := m[k].(string); ok {
			return s
		}
		return nil
	}
	group := func(filter func(ev) bool, key func(ev) string) (map[string][]ev, []string) {
		g := map[string][]ev{}
		for _, e := range evs {
			if filter(e) {
				g[key(e)] = append(g[key(e)], e)
			}
		}
		return g, slices.Sorted(mapKeys(g))
	}
	distinct := func(es []ev) float64 {
		ids := map[string]bool{}
		for _, e := range es {
			ids[e.id] = true
		}
		return float64(len(ids))
	}
	out := map[string][]map[string]any{}

	g, ks := group(func(e ev) bool { return e.typ == "platform.report" && e.record["status"] != "success" },
		func(e ev) string {
			return e.function + "\x00" + fmt.Sprint(e.record["status"]) + "\x00" + fmt.Sprint(e.record["errorType"])
		})
	for _, k := range ks {
		es := g[k]
		out["QueryErrorsPerFunction"] = append(out["QueryErrorsPerFunction"], map[string]any{
			"function": es[0].function, "status": str(es[0].record, "status"), "error_type": str(es[0].record, "errorType"), "invocations": distinct(es)})
	}
	sort.SliceStable(out["QueryErrorsPerFunction"], func(i, j int) bool {
		return out["QueryErrorsPerFunction"][i]["invocations"].(float64) > out["QueryErrorsPerFunction"][j]["invocations"].(float64)
	})

	g, ks = group(func(e ev) bool { return e.typ == "platform.initReport" }, func(e ev) string { return e.function + "\x00" + fmt.Sprint(e.record["initializationType"]) })
	for _, k := range ks {
		es := g[k]
		var sum, mx float64
		for _, e := range es {
			d := num(e.record, "metrics.durationMs")
			sum, mx = sum+d, math.Max(mx, d)
		}
		out["QueryColdStarts"] = append(out["QueryColdStarts"], map[string]any{"function": es[0].function,
			"initialization_type": str(es[0].record, "initializationType"), "cold_starts": distinct(es), "avg_init_ms": sum / float64(len(es)), "max_init_ms": mx})
	}
	sort.SliceStable(out["QueryColdStarts"], func(i, j int) bool {
		return out["QueryColdStarts"][i]["cold_starts"].(float64) > out["QueryColdStarts"][j]["cold_starts"].(float64)
	})

	nearestRank := func(xs []float64, q float64) float64 {
		slices.Sort(xs)
		return xs[int(math.Ceil(q*float64(len(xs))))-1]
	}
	g, ks = group(func(e ev) bool { return e.typ == "platform.report" }, func(e ev) string { return e.function })
	for _, k := range ks {
		var ds []float64
		var mem, size float64
		for _, e := range g[k] {
			ds = append(ds, num(e.record, "metrics.durationMs"))
			mem, size = math.Max(mem, num(e.record, "metrics.maxMemoryUsedMB")), math.Max(size, num(e.record, "metrics.memorySizeMB"))
		}
		out["QueryDurationAndMemory"] = append(out["QueryDurationAndMemory"], map[string]any{"function": k, "invocations": distinct(g[k]),
			"p50_ms": nearestRank(ds, 0.5), "p99_ms": nearestRank(ds, 0.99), "max_memory_mb": mem, "memory_size_mb": size})
	}

	g, ks = group(func(e ev) bool { return e.typ == countsType }, func(e ev) string { return e.function + "\x00" + e.id[:strings.IndexByte(e.id, '-')] })
	for _, k := range ks {
		row := map[string]any{"function": g[k][0].function, "environment": g[k][0].id[:strings.IndexByte(g[k][0].id, '-')]}
		for col, path := range map[string]string{"received": "received", "dropped": "dropped.total", "buffer_full": "dropped.bufferFull",
			"shutdown": "dropped.shutdown", "unknown": "unknown", "lambda_dropped": "lambdaDropped.records"} {
			var mx float64
			for _, e := range g[k] {
				mx = math.Max(mx, num(e.record, path))
			}
			row[col] = mx
		}
		out["QueryExtensionDropsPerEnvironment"] = append(out["QueryExtensionDropsPerEnvironment"], row)
	}
	sort.SliceStable(out["QueryExtensionDropsPerEnvironment"], func(i, j int) bool {
		a, b := out["QueryExtensionDropsPerEnvironment"][i], out["QueryExtensionDropsPerEnvironment"][j]
		if a["dropped"] != b["dropped"] {
			return a["dropped"].(float64) > b["dropped"].(float64)
		}
		return a["unknown"].(float64) > b["unknown"].(float64)
	})

	var trace []ev
	for _, e := range evs {
		if e.traceID == traceA {
			trace = append(trace, e)
		}
	}
	sort.Slice(trace, func(i, j int) bool {
		if trace[i].time != trace[j].time {
			return trace[i].time < trace[j].time
		}
		return trace[i].seq < trace[j].seq
	})
	for _, e := range trace {
		out["QueryTraceInvocations"] = append(out["QueryTraceInvocations"], map[string]any{"event_time": e.time, "function": e.function,
			"requestid": e.requestID, "event_type": e.typ, "record": e.raw})
	}
	return out
}
