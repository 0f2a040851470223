package main

// The template's alarms and dashboard (CreateAlarms, CreateDashboard): every metric they use must
// be one that its publisher publishes, under exactly the dimensions it publishes it with. For the
// extension's own metrics the publisher is emf.go, so the names, units and dimension sets are
// taken from a line it writes; for Kinesis and Firehose, from AWS's metric references (cited).

import (
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"
)

// awsPublished are the metrics the template may use from AWS services, with the dimension set
// each is published under.
//   - Kinesis Data Streams, stream-level metrics, dimension StreamName:
//     https://docs.aws.amazon.com/streams/latest/dev/monitoring-with-cloudwatch.html
//   - Amazon Data Firehose, delivery to S3, dimension DeliveryStreamName:
//     https://docs.aws.amazon.com/firehose/latest/dev/monitoring-with-cloudwatch-metrics.html
var awsPublished = map[string]map[string][]string{
	"AWS/Kinesis": {
		"IncomingBytes": {"StreamName"}, "IncomingRecords": {"StreamName"},
		"WriteProvisionedThroughputExceeded": {"StreamName"}, "PutRecords.ThrottledRecords": {"StreamName"},
		"PutRecords.FailedRecords": {"StreamName"},
	},
	"AWS/Firehose": {
		"DeliveryToS3.Success": {"DeliveryStreamName"}, "DeliveryToS3.DataFreshness": {"DeliveryStreamName"},
		"DeliveryToS3.Records": {"DeliveryStreamName"},
	},
}

// dimensionResource is the resource whose Ref each AWS dimension's value must be.
var dimensionResource = map[string]string{"StreamName": "TelemetryStream", "DeliveryStreamName": "ArchiveDeliveryStream"}

// emfPublished is what the extension publishes with the default dimensions: a line from emf.go
// with every metric, decoded. Its namespace is the one the extension uses by default.
func emfPublished(t *testing.T) (namespace string, metrics map[string]string, sets [][]string) {
	t.Helper()
	cfg := emfConfigOf(t, map[string]string{"KINESIS_TELEMETRY_METRICS": "true", "AWS_LAMBDA_FUNCTION_NAME": "f"})
	all := emfTotals{1, 2, 3, 4, 5, 6, 7, 8, 9, 10} // every counter moved: every metric in the line
	d := decodeEMF(t, strings.TrimSpace(string(cfg.line(time.Now(), all))))
	if len(d.Units) != len(emfMetrics) {
		t.Fatalf("the line has %d metrics, emf.go defines %d", len(d.Units), len(emfMetrics))
	}
	return d.Namespace, d.Units, d.Dimensions
}

// usedMetric is one metric an alarm or a widget reads.
type usedMetric struct {
	where, namespace, name, stat string
	dims                         map[string]any // name -> value as rendered (a Ref, or a dashboard's text)
}

// checkPublished fails unless m is published by its namespace's publisher under exactly m's
// dimension names, with values naming this stack's resources.
func checkPublished(t *testing.T, m usedMetric, emfNamespace string, emfMetricUnits map[string]string, emfSets [][]string, ref func(id string) any) {
	t.Helper()
	names := slices.Sorted(maps.Keys(m.dims))
	if names == nil {
		names = []string{}
	}
	if pub, ok := awsPublished[m.namespace]; ok {
		dims, ok := pub[m.name]
		if !ok {
			t.Errorf("%s: %s does not publish %s", m.where, m.namespace, m.name)
			return
		}
		if !slices.Equal(names, dims) {
			t.Errorf("%s: %s %s with dimensions %v; it is published with %v", m.where, m.namespace, m.name, names, dims)
		}
		for k, v := range m.dims {
			if want := ref(dimensionResource[k]); !reflect.DeepEqual(v, want) {
				t.Errorf("%s: %s %s dimension %s = %v, want %v", m.where, m.namespace, m.name, k, v, want)
			}
		}
		return
	}
	if m.namespace != emfNamespace {
		t.Errorf("%s: namespace %q is neither AWS's nor the extension's (%q)", m.where, m.namespace, emfNamespace)
		return
	}
	if _, ok := emfMetricUnits[m.name]; !ok {
		t.Errorf("%s: the extension publishes no metric %s (emf.go: %v)", m.where, m.name, slices.Sorted(maps.Keys(emfMetricUnits)))
	}
	found := false
	for _, set := range emfSets {
		s := slices.Clone(set)
		sort.Strings(s)
		found = found || slices.Equal(s, names)
	}
	if !found {
		t.Errorf("%s: %s with dimensions %v; the extension publishes the sets %v", m.where, m.name, names, emfSets)
	}
	// The lines carry deltas: only Sum adds them up right (an average of deltas means nothing).
	if m.stat != "" && m.stat != "Sum" {
		t.Errorf("%s: %s read with %s; EMF lines carry deltas, which only Sum adds up", m.where, m.name, m.stat)
	}
}

// alarmMetrics returns the metrics an alarm reads, and its metric math expressions by id.
func alarmMetrics(t *testing.T, id string, props map[string]any) (used []usedMetric, exprs map[string]string) {
	dimsOf := func(v any) map[string]any {
		out := map[string]any{}
		for _, d := range tplSlice(v) {
			out[fmt.Sprint(tplMap(d)["Name"])] = tplMap(d)["Value"]
		}
		return out
	}
	if name, ok := props["MetricName"]; ok {
		return []usedMetric{{where: id, namespace: fmt.Sprint(props["Namespace"]), name: fmt.Sprint(name),
			stat: fmt.Sprint(props["Statistic"]), dims: dimsOf(props["Dimensions"])}}, nil
	}
	exprs = map[string]string{}
	returned := 0
	for _, q := range tplSlice(props["Metrics"]) {
		q := tplMap(q)
		if q["ReturnData"] == true {
			returned++
		}
		qid := fmt.Sprint(q["Id"])
		if e, ok := q["Expression"]; ok {
			if sub, ok := e.(map[string]any); ok {
				e = sub["Fn::Sub"] // with ${Parameter}s, which subParams fills in
			}
			exprs[qid] = fmt.Sprint(e)
			continue
		}
		ms := tplMap(q["MetricStat"])
		metric := tplMap(ms["Metric"])
		used = append(used, usedMetric{where: id + "." + qid, namespace: fmt.Sprint(metric["Namespace"]), name: fmt.Sprint(metric["MetricName"]),
			stat: fmt.Sprint(ms["Stat"]), dims: dimsOf(metric["Dimensions"])})
	}
	if returned != 1 {
		t.Errorf("%s: %d queries return data, want 1", id, returned)
	}
	return used, exprs
}

// TestTemplateAlarms: each variant has exactly the alarms its parameters ask for, each notifies
// the topic (created or given), and each reads metrics exactly as their publishers publish them.
func TestTemplateAlarms(t *testing.T) {
	emfNS, emfUnits, emfSets := emfPublished(t)
	if def := tplPath(readTemplate(t), "Parameters", "MetricsNamespace", "Default"); def != emfNS {
		t.Errorf("MetricsNamespace defaults to %v, the extension to %q", def, emfNS)
	}
	seen := map[string]bool{}
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		alarms := params["CreateAlarms"] == "true"
		central := params["StreamArn"] == ""
		want := map[string]bool{
			"StreamThrottledAlarm":     alarms && central,
			"StreamNearCapacityAlarm":  alarms && central && params["StreamMode"] == "PROVISIONED",
			"ArchiveDeliveryAlarm":     alarms && central && params["ArchiveToS3"] == "true",
			"ArchiveStaleAlarm":        alarms && central && params["ArchiveToS3"] == "true",
			"ExtensionDroppedAlarm":    alarms,
			"ExtensionUnknownAlarm":    alarms,
			"ExtensionAssumeRoleAlarm": alarms && params["WriterRoleArn"] != "",
		}
		got := tplResourcesOfType(tpl, "AWS::CloudWatch::Alarm")
		for id, w := range want {
			if w != slices.Contains(got, id) {
				t.Errorf("alarm %s: present %v, want %v", id, !w, w)
			}
		}
		if len(got) != len(slices.Collect(func(yield func(string) bool) {
			for id, w := range want {
				if w && !yield(id) {
					return
				}
			}
		})) {
			t.Errorf("alarms %v, want those of %v that are true", got, want)
		}
		topic := any(params["AlarmTopicArn"])
		if params["AlarmTopicArn"] == "" {
			topic = tplRef("AlarmTopic")
		}
		if alarms != (tplPath(tpl, "Resources", "AlarmTopic") != nil && params["AlarmTopicArn"] == "" || alarms && params["AlarmTopicArn"] != "") {
			t.Errorf("alarm topic: created %v with AlarmTopicArn %q", tplPath(tpl, "Resources", "AlarmTopic") != nil, params["AlarmTopicArn"])
		}
		if sub := tplPath(tpl, "Resources", "AlarmTopic", "Properties", "Subscription"); (params["AlarmEmail"] != "") != (sub != nil) ||
			(sub != nil && !reflect.DeepEqual(sub, []any{map[string]any{"Protocol": "email", "Endpoint": params["AlarmEmail"]}})) {
			t.Errorf("topic subscription %v for AlarmEmail %q", sub, params["AlarmEmail"])
		}
		for _, id := range got {
			seen[id] = true
			props := tplMap(tplPath(tpl, "Resources", id, "Properties"))
			for _, k := range []string{"AlarmActions", "OKActions"} {
				if !reflect.DeepEqual(props[k], []any{topic}) {
					t.Errorf("%s %s: got %v, want [%v]", id, k, props[k], topic)
				}
			}
			if props["TreatMissingData"] != "notBreaching" {
				t.Errorf("%s: TreatMissingData %v: no data (no traffic, or no loss: the extension leaves zero metrics out) must not alarm", id, props["TreatMissingData"])
			}
			used, exprs := alarmMetrics(t, id, props)
			if len(used) == 0 {
				t.Errorf("%s reads no metric", id)
			}
			for _, m := range used {
				checkPublished(t, m, fmt.Sprint(params["MetricsNamespace"]), emfUnits, emfSets, func(rid string) any { return tplRef(rid) })
			}
			for eid, e := range exprs {
				checkExpressionIDs(t, id+"."+eid, e, used)
			}
		}
		if want["StreamNearCapacityAlarm"] {
			var e string
			_, exprs := alarmMetrics(t, "StreamNearCapacityAlarm", tplMap(tplPath(tpl, "Resources", "StreamNearCapacityAlarm", "Properties")))
			for _, x := range exprs {
				e = x
			}
			// Per shard: 1 MiB/s and 1,000 records/s (NOTES, Kinesis limits), over 60-second sums.
			shards := fmt.Sprint(params["ShardCount"])
			if want := fmt.Sprintf("100 * MAX([bytes / (60 * 1048576 * %s), records / (60 * 1000 * %s)])", shards, shards); subParams(e, params) != want {
				t.Errorf("capacity expression: got %s, want %s", subParams(e, params), want)
			}
		}
	})
	for _, id := range []string{"StreamThrottledAlarm", "StreamNearCapacityAlarm", "ArchiveDeliveryAlarm", "ArchiveStaleAlarm",
		"ExtensionDroppedAlarm", "ExtensionUnknownAlarm", "ExtensionAssumeRoleAlarm"} {
		if !seen[id] {
			t.Errorf("no templateCases variant creates %s", id)
		}
	}
}

// subParams evaluates what renderTemplate leaves of an Fn::Sub: {"Fn::Sub": "…${Param}…"}.
func subParams(v any, params map[string]any) string {
	s := fmt.Sprint(v)
	if m, ok := v.(map[string]any); ok {
		s = fmt.Sprint(m["Fn::Sub"])
	}
	return regexp.MustCompile(`\$\{([^}]+)\}`).ReplaceAllStringFunc(s, func(m string) string {
		if p, ok := params[m[2:len(m)-1]]; ok {
			return fmt.Sprint(p)
		}
		return m
	})
}

// checkExpressionIDs fails unless a metric math expression uses every metric id and only them.
func checkExpressionIDs(t *testing.T, where, expr string, used []usedMetric) {
	t.Helper()
	ids := map[string]bool{}
	for _, m := range used {
		ids[m.where[strings.LastIndexByte(m.where, '.')+1:]] = true
	}
	words := map[string]bool{}
	expr = regexp.MustCompile(`\$\{[^}]*\}`).ReplaceAllString(expr, "1") // a parameter is a number here
	for _, w := range regexp.MustCompile(`[A-Za-z_][A-Za-z0-9_]*`).FindAllString(expr, -1) {
		if w != "MAX" && w != "SUM" && w != "MIN" {
			words[w] = true
		}
	}
	if !reflect.DeepEqual(words, ids) {
		t.Errorf("%s: expression %q uses %v, the metrics are %v", where, expr, slices.Sorted(maps.Keys(words)), slices.Sorted(maps.Keys(ids)))
	}
}

// dashboardBody evaluates the rendered DashboardBody (Fn::Join of text and Fn::Subs) to its
// JSON, with ${Resource} as "ref:<Resource>" and ${AWS::Region} as eu-west-1.
func dashboardBody(t *testing.T, tpl, params map[string]any) map[string]any {
	t.Helper()
	join := tplPath(tpl, "Resources", "Dashboard", "Properties", "DashboardBody", "Fn::Join")
	args := tplSlice(join)
	if len(args) != 2 || args[0] != "" {
		t.Fatalf("DashboardBody: want an Fn::Join with \"\", got %v", tplPath(tpl, "Resources", "Dashboard", "Properties", "DashboardBody"))
	}
	var b strings.Builder
	for _, part := range tplSlice(args[1]) {
		s, ok := part.(string)
		if !ok {
			s = subParams(part, params)
		}
		s = regexp.MustCompile(`\$\{([^}]+)\}`).ReplaceAllStringFunc(s, func(m string) string {
			name := m[2 : len(m)-1]
			switch {
			case name == "AWS::Region":
				return "eu-west-1"
			case tplPath(tpl, "Resources", name) != nil:
				return "ref:" + name
			}
			t.Errorf("dashboard: ${%s} is neither a parameter nor a resource of this variant", name)
			return m
		})
		b.WriteString(s)
	}
	var body map[string]any
	if err := json.Unmarshal([]byte(b.String()), &body); err != nil {
		t.Fatalf("DashboardBody is not JSON: %v\n%s", err, b.String())
	}
	return body
}

// insightsQuery matches the Metrics Insights queries the dashboard uses.
var insightsQuery = regexp.MustCompile(`^SELECT SUM\((\w+)\) FROM SCHEMA\("([^"]+)", (\w+)\) GROUP BY (\w+) ORDER BY SUM\(\) DESC LIMIT \d+$`)

// TestTemplateDashboard: the dashboard shows every metric the variant's alarms watch, the time
// added per invocation (the sum of the added time over the number of invocations), and only
// metrics that are published as read.
func TestTemplateDashboard(t *testing.T) {
	emfNS, emfUnits, emfSets := emfPublished(t)
	_ = emfNS
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		if (params["CreateDashboard"] == "true") != (tplPath(tpl, "Resources", "Dashboard") != nil) {
			t.Fatalf("CreateDashboard=%v, dashboard present: %v", params["CreateDashboard"], tplPath(tpl, "Resources", "Dashboard") != nil)
		}
		if params["CreateDashboard"] != "true" {
			return
		}
		ns := fmt.Sprint(params["MetricsNamespace"])
		body := dashboardBody(t, tpl, params)
		shown := map[string]bool{}
		var perInvocation bool
		for i, w := range tplSlice(body["widgets"]) {
			props := tplMap(tplMap(w)["properties"])
			where := fmt.Sprintf("widget %d (%v)", i, props["title"])
			var used []usedMetric
			exprs := map[string]string{}
			for _, row := range tplSlice(props["metrics"]) {
				r := tplSlice(row)
				if opts, ok := r[0].(map[string]any); ok {
					e := fmt.Sprint(opts["expression"])
					if m := insightsQuery.FindStringSubmatch(e); m != nil {
						if m[3] != m[4] {
							t.Errorf("%s: grouped by %s over the schema of %s", where, m[4], m[3])
						}
						used = append(used, usedMetric{where: where, namespace: m[2], name: m[1], stat: "Sum", dims: map[string]any{m[3]: "any"}})
						continue
					}
					exprs[fmt.Sprint(opts["id"])] = e
					continue
				}
				m := usedMetric{where: where, namespace: fmt.Sprint(r[0]), name: fmt.Sprint(r[1]), stat: fmt.Sprint(props["stat"]), dims: map[string]any{}}
				rest := r[2:]
				if len(rest) > 0 {
					if opts, ok := rest[len(rest)-1].(map[string]any); ok {
						rest = rest[:len(rest)-1]
						if s, ok := opts["stat"]; ok {
							m.stat = fmt.Sprint(s)
						}
						if id, ok := opts["id"]; ok {
							m.where += "." + fmt.Sprint(id)
						}
					}
				}
				for j := 0; j+1 < len(rest); j += 2 {
					m.dims[fmt.Sprint(rest[j])] = rest[j+1]
				}
				used = append(used, m)
				shown[m.namespace+" "+m.name] = true
			}
			for _, m := range used {
				checkPublished(t, m, ns, emfUnits, emfSets, func(rid string) any { return "ref:" + rid })
			}
			for eid, e := range exprs {
				var withIDs []usedMetric
				for _, m := range used {
					if strings.Contains(m.where, ".") {
						withIDs = append(withIDs, m)
					}
				}
				checkExpressionIDs(t, where+"."+eid, e, withIDs)
				perInvocation = perInvocation || e == "addedMs / invocations"
			}
		}
		if !perInvocation || !shown[ns+" PostRuntimeDuration"] || !shown[ns+" PostRuntimeInvocations"] {
			t.Error("the dashboard does not show the time added per invocation (PostRuntimeDuration / PostRuntimeInvocations)")
		}
		// Every metric an alarm of a variant with the same switches watches is on the dashboard.
		alarmed, err := renderTemplate(readTemplate(t), withParam(params, "CreateAlarms", "true"))
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range tplResourcesOfType(alarmed, "AWS::CloudWatch::Alarm") {
			used, _ := alarmMetrics(t, id, tplMap(tplPath(alarmed, "Resources", id, "Properties")))
			for _, m := range used {
				if !shown[m.namespace+" "+m.name] {
					t.Errorf("alarm %s watches %s %s, which the dashboard does not show", id, m.namespace, m.name)
				}
			}
		}
	})
}

// withParam is the overrides of a rendered variant with one more.
func withParam(params map[string]any, k string, v any) map[string]any {
	out := map[string]any{}
	raw := map[string]any{}
	for name, val := range params {
		raw[name] = val
	}
	raw[k] = v
	for name, val := range raw {
		if val != nil {
			out[name] = val
		}
	}
	return out
}
