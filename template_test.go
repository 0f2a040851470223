package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/awslabs/goformation/v7"
	"github.com/awslabs/goformation/v7/cloudformation"
)

// The template's tests work on "rendered" copies: parameters substituted,
// conditions evaluated, Fn::If chosen and AWS::NoValue removed, as
// CloudFormation does for one set of parameter values. Refs and GetAtts to
// resources stay as they are, so the tests can follow them. goformation alone
// cannot do this: its default processing turns references to resources into
// empty values, and its condition evaluation fails on resources that carry a
// Condition.

const templateFile = "template.json"

// templateKeyArn is a well-formed customer managed key ARN.
const templateKeyArn = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"

// Parameter values of the two sides in the template tests.
const (
	templateWriterAccounts = "111111111111,arn:aws:iam::333333333333:role/app"
	templateOrgID          = "o-a1b2c3d4e5"
	templateStreamArn      = "arn:aws:kinesis:eu-west-1:222222222222:stream/central-telemetry"
	templateRoleArn        = "arn:aws:iam::222222222222:role/telemetry-writer"
	templateExternalID     = "org-logging-7f3a"
	templateTopicArn       = "arn:aws:sns:eu-west-1:123456789012:telemetry-ops"
)

// templateCases are the parameter sets every template test renders: the central side alone,
// with writers in other accounts (resource policy and key, or a writer role), with the archive
// in each record format; the writer side writing directly or through the central role.
var templateCases = []struct {
	name   string
	params map[string]any // overrides of the defaults
}{
	{"defaults", nil},
	{"provisioned with customer key", map[string]any{
		"StreamName": "telemetry", "StreamMode": "PROVISIONED", "ShardCount": 3.0,
		"RetentionHours": 48.0, "KmsKeyArn": templateKeyArn,
	}},
	{"no demo", map[string]any{"CreateDemoFunction": "false"}},
	{"central, writer accounts, created key", map[string]any{"WriterAccounts": templateWriterAccounts, "CreateKmsKey": "true"}},
	{"central, organization, given key", map[string]any{"WriterOrgId": templateOrgID, "KmsKeyArn": templateKeyArn}},
	{"central, accounts and organization, created key", map[string]any{"WriterAccounts": "111111111111", "WriterOrgId": templateOrgID, "CreateKmsKey": "true", "CreateDemoFunction": "false"}},
	{"central, writer role", map[string]any{"WriterAccounts": templateWriterAccounts, "WriterOrgId": templateOrgID, "CreateWriterRole": "true", "RoleExternalId": templateExternalID}},
	{"central, writer role, created key", map[string]any{"WriterAccounts": "111111111111", "CreateWriterRole": "true", "RoleExternalId": templateExternalID, "CreateKmsKey": "true"}},
	{"writer", map[string]any{"StreamArn": templateStreamArn, "KmsKeyArn": templateKeyArn}},
	{"writer through role", map[string]any{"StreamArn": templateStreamArn, "WriterRoleArn": templateRoleArn, "RoleExternalId": templateExternalID}},
	{"writer through role, no external id, no demo", map[string]any{"StreamArn": templateStreamArn, "WriterRoleArn": templateRoleArn, "CreateDemoFunction": "false"}},
	{"archive event", map[string]any{"ArchiveToS3": "true"}},
	{"archive ndjson, created key", map[string]any{"ArchiveToS3": "true", "ArchiveRecordFormat": "ndjson", "WriterAccounts": "111111111111", "CreateKmsKey": "true"}},
	{"archive kpl", map[string]any{"ArchiveToS3": "true", "ArchiveRecordFormat": "kpl", "CreateDemoFunction": "false"}},
	{"archive cloudwatch, given key", map[string]any{"ArchiveToS3": "true", "ArchiveRecordFormat": "cloudwatch", "KmsKeyArn": templateKeyArn}},
	// Operating (template_ops_test.go): alarms and the dashboard on each side.
	{"alarms to a created topic with e-mail, dashboard", map[string]any{"CreateAlarms": "true", "AlarmEmail": "ops@example.com", "CreateDashboard": "true"}},
	{"provisioned, archive, alarms to a given topic, dashboard", map[string]any{"StreamMode": "PROVISIONED", "ShardCount": 4.0, "ArchiveToS3": "true",
		"ArchiveRecordFormat": "ndjson", "CreateAlarms": "true", "AlarmTopicArn": templateTopicArn, "CreateDashboard": "true", "MetricsNamespace": "Org/Telemetry"}},
	{"writer through role, alarms, no demo", map[string]any{"StreamArn": templateStreamArn, "WriterRoleArn": templateRoleArn, "CreateAlarms": "true", "CreateDemoFunction": "false"}},
	{"dashboard only, archive", map[string]any{"CreateDashboard": "true", "ArchiveToS3": "true"}},
}

// cfnPseudoParams are the pseudo parameters a template may Ref.
var cfnPseudoParams = []string{
	"AWS::AccountId", "AWS::NotificationARNs", "AWS::NoValue", "AWS::Partition",
	"AWS::Region", "AWS::StackId", "AWS::StackName", "AWS::URLSuffix",
}

// tplNoValue marks what AWS::NoValue removes.
type tplNoValue struct{}

func readTemplate(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(templateFile)
	if err != nil {
		t.Fatal(err)
	}
	var tpl map[string]any
	if err := json.Unmarshal(data, &tpl); err != nil {
		t.Fatalf("%s is not JSON: %v", templateFile, err)
	}
	return tpl
}

// renderTemplate returns a copy of tpl as CloudFormation would see it with
// the given parameter overrides; it fails for an unknown parameter or a value
// the parameter's AllowedValues/AllowedPattern/MinValue/MaxValue rejects.
func renderTemplate(tpl map[string]any, overrides map[string]any) (map[string]any, error) {
	params := map[string]any{}
	decls := tplMap(tpl["Parameters"])
	for name, d := range decls {
		if def, ok := tplMap(d)["Default"]; ok {
			params[name] = def
		}
	}
	for name, v := range overrides {
		if _, ok := decls[name]; !ok {
			return nil, fmt.Errorf("no parameter %s", name)
		}
		params[name] = v
	}
	for name, d := range decls {
		v, ok := params[name]
		if !ok {
			return nil, fmt.Errorf("parameter %s has no default and no value", name)
		}
		if err := checkTemplateParam(tplMap(d), v); err != nil {
			return nil, fmt.Errorf("parameter %s=%v: %w", name, v, err)
		}
		if tplMap(d)["Type"] == "CommaDelimitedList" {
			// A Ref to a CommaDelimitedList is the list of its comma-separated values.
			var list []any
			for _, e := range strings.Split(fmt.Sprint(v), ",") {
				list = append(list, e)
			}
			params[name] = list
		}
	}
	if msgs := failedRules(tpl, params); len(msgs) > 0 {
		return nil, fmt.Errorf("%w: %s", errRuleFailed, strings.Join(msgs, " | "))
	}

	conds := map[string]bool{}
	var evalCond func(name string) (bool, error)
	var eval func(v any) (any, error)
	evalCond = func(name string) (bool, error) {
		if b, ok := conds[name]; ok {
			return b, nil
		}
		def, ok := tplMap(tpl["Conditions"])[name]
		if !ok {
			return false, fmt.Errorf("no condition %s", name)
		}
		v, err := eval(def)
		if err != nil {
			return false, fmt.Errorf("condition %s: %w", name, err)
		}
		b, ok := v.(bool)
		if !ok {
			return false, fmt.Errorf("condition %s is %v, not a boolean", name, v)
		}
		conds[name] = b
		return b, nil
	}
	eval = func(v any) (any, error) {
		switch v := v.(type) {
		case map[string]any:
			if len(v) == 1 {
				for fn, arg := range v {
					switch fn {
					case "Ref":
						name, _ := arg.(string)
						if name == "AWS::NoValue" {
							return tplNoValue{}, nil
						}
						if p, ok := params[name]; ok {
							return p, nil
						}
					case "Condition":
						name, _ := arg.(string)
						return evalCond(name)
					case "Fn::If":
						args, _ := arg.([]any)
						if len(args) != 3 {
							return nil, fmt.Errorf("Fn::If needs 3 arguments: %v", arg)
						}
						name, _ := args[0].(string)
						b, err := evalCond(name)
						if err != nil {
							return nil, err
						}
						if b {
							return eval(args[1])
						}
						return eval(args[2])
					case "Fn::Join":
						// Evaluated when every part is known (parameters), else kept.
						args, _ := arg.([]any)
						if len(args) == 2 {
							parts, err := eval(args[1])
							if err != nil {
								return nil, err
							}
							if strs, ok := tplStrings(parts); ok {
								return strings.Join(strs, fmt.Sprint(args[0])), nil
							}
						}
					case "Fn::Equals", "Fn::Not", "Fn::And", "Fn::Or":
						args, _ := arg.([]any)
						var vals []any
						for _, a := range args {
							e, err := eval(a)
							if err != nil {
								return nil, err
							}
							vals = append(vals, e)
						}
						return evalTemplateCondFunc(fn, vals)
					}
				}
			}
			out := map[string]any{}
			for k, e := range v {
				r, err := eval(e)
				if err != nil {
					return nil, err
				}
				if _, gone := r.(tplNoValue); !gone {
					out[k] = r
				}
			}
			return out, nil
		case []any:
			out := []any{}
			for _, e := range v {
				r, err := eval(e)
				if err != nil {
					return nil, err
				}
				if _, gone := r.(tplNoValue); !gone {
					out = append(out, r)
				}
			}
			return out, nil
		default:
			return v, nil
		}
	}

	out := map[string]any{}
	for key, section := range tpl {
		switch key {
		case "Resources", "Outputs":
			kept := map[string]any{}
			for id, def := range tplMap(section) {
				if c, ok := tplMap(def)["Condition"].(string); ok {
					b, err := evalCond(c)
					if err != nil {
						return nil, fmt.Errorf("%s %s: %w", key, id, err)
					}
					if !b {
						continue
					}
				}
				r, err := eval(def)
				if err != nil {
					return nil, fmt.Errorf("%s %s: %w", key, id, err)
				}
				kept[id] = r
			}
			out[key] = kept
		default:
			out[key] = section
		}
	}
	return out, nil
}

func evalTemplateCondFunc(fn string, vals []any) (any, error) {
	switch fn {
	case "Fn::Equals":
		if len(vals) != 2 {
			return nil, fmt.Errorf("Fn::Equals needs 2 arguments: %v", vals)
		}
		// CloudFormation compares parameter values as strings.
		return fmt.Sprint(vals[0]) == fmt.Sprint(vals[1]), nil
	case "Fn::Not":
		if len(vals) != 1 {
			return nil, fmt.Errorf("Fn::Not needs 1 argument: %v", vals)
		}
		b, ok := vals[0].(bool)
		if !ok {
			return nil, fmt.Errorf("Fn::Not of %v", vals[0])
		}
		return !b, nil
	default: // Fn::And, Fn::Or
		result := fn == "Fn::And"
		for _, v := range vals {
			b, ok := v.(bool)
			if !ok {
				return nil, fmt.Errorf("%s of %v", fn, v)
			}
			if fn == "Fn::And" {
				result = result && b
			} else {
				result = result || b
			}
		}
		return result, nil
	}
}

// checkTemplateParam applies a parameter declaration's constraints to v.
func checkTemplateParam(decl map[string]any, v any) error {
	if decl["Type"] == "CommaDelimitedList" {
		// CloudFormation applies AllowedPattern to each value of the list.
		one := maps.Clone(decl)
		one["Type"] = "String"
		for _, e := range strings.Split(fmt.Sprint(v), ",") {
			if err := checkTemplateParam(one, e); err != nil {
				return fmt.Errorf("value %q: %w", e, err)
			}
		}
		return nil
	}
	s := fmt.Sprint(v)
	if allowed, ok := decl["AllowedValues"].([]any); ok {
		if !slices.ContainsFunc(allowed, func(a any) bool { return fmt.Sprint(a) == s }) {
			return fmt.Errorf("not in AllowedValues %v", allowed)
		}
	}
	if pat, ok := decl["AllowedPattern"].(string); ok {
		if !regexp.MustCompile(`^(?:` + pat + `)$`).MatchString(s) {
			return fmt.Errorf("does not match AllowedPattern %s", pat)
		}
	}
	if n, ok := decl["MaxLength"].(float64); ok && float64(len(s)) > n {
		return fmt.Errorf("longer than MaxLength %v", n)
	}
	if decl["Type"] == "Number" {
		n, ok := v.(float64)
		if !ok {
			return fmt.Errorf("Number parameter given %T", v)
		}
		if lo, ok := decl["MinValue"].(float64); ok && n < lo {
			return fmt.Errorf("below MinValue %v", lo)
		}
		if hi, ok := decl["MaxValue"].(float64); ok && n > hi {
			return fmt.Errorf("above MaxValue %v", hi)
		}
	}
	return nil
}

// errRuleFailed marks a parameter set that one of the template's Rules refuses.
var errRuleFailed = errors.New("refused by the template's Rules")

// failedRules evaluates the template's Rules as CloudFormation does before it creates anything:
// for each rule whose RuleCondition holds (or that has none), every Assertion that does not hold
// gives its AssertDescription. It knows the rule functions the template uses: Ref to a parameter,
// Fn::Equals, Fn::Not, Fn::And, Fn::Or and Fn::EachMemberEquals.
func failedRules(tpl, params map[string]any) []string {
	var eval func(v any) any
	eval = func(v any) any {
		m := tplMap(v)
		if len(m) != 1 {
			return v
		}
		for fn, arg := range m {
			args, _ := arg.([]any)
			switch fn {
			case "Ref":
				return params[arg.(string)]
			case "Fn::Equals":
				return fmt.Sprint(eval(args[0])) == fmt.Sprint(eval(args[1]))
			case "Fn::Not":
				return !eval(args[0]).(bool)
			case "Fn::And", "Fn::Or":
				and := fn == "Fn::And"
				for _, a := range args {
					if eval(a).(bool) != and {
						return !and
					}
				}
				return and
			case "Fn::EachMemberEquals":
				list, _ := eval(args[0]).([]any)
				for _, e := range list {
					if fmt.Sprint(e) != fmt.Sprint(eval(args[1])) {
						return false
					}
				}
				return true
			}
			panic("rule function " + fn + " is not known to failedRules")
		}
		return v
	}
	var msgs []string
	for _, name := range slices.Sorted(maps.Keys(tplMap(tpl["Rules"]))) {
		rule := tplMap(tplMap(tpl["Rules"])[name])
		if c, ok := rule["RuleCondition"]; ok && !eval(c).(bool) {
			continue
		}
		for _, a := range rule["Assertions"].([]any) {
			if !eval(tplMap(a)["Assert"]).(bool) {
				msgs = append(msgs, name+": "+tplMap(a)["AssertDescription"].(string))
			}
		}
	}
	return msgs
}

// packageTemplate does to tpl what `aws cloudformation package` does to the
// layers: a Content that is a local path becomes an S3 location.
func packageTemplate(tpl map[string]any) map[string]any {
	out := tplCopy(tpl).(map[string]any)
	for _, def := range tplMap(out["Resources"]) {
		r := tplMap(def)
		if r["Type"] == "AWS::Lambda::LayerVersion" {
			if _, ok := tplMap(r["Properties"])["Content"].(string); ok {
				tplMap(r["Properties"])["Content"] = map[string]any{"S3Bucket": "example-bucket", "S3Key": "0123456789abcdef0123456789abcdef"}
			}
		}
	}
	return out
}

func tplCopy(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = tplCopy(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = tplCopy(e)
		}
		return out
	default:
		return v
	}
}

func tplMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// path walks nested maps by key.
func tplPath(v any, keys ...string) any {
	for _, k := range keys {
		v = tplMap(v)[k]
	}
	return v
}

// tplResourcesOfType returns the logical IDs of tpl's resources of type typ.
func tplResourcesOfType(tpl map[string]any, typ string) []string {
	var ids []string
	for id, def := range tplMap(tpl["Resources"]) {
		if tplMap(def)["Type"] == typ {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

// tplOneOfType returns the logical ID of the only resource of type typ.
func tplOneOfType(t *testing.T, tpl map[string]any, typ string) string {
	t.Helper()
	ids := tplResourcesOfType(tpl, typ)
	if len(ids) != 1 {
		t.Fatalf("resources of type %s: got %q, want exactly one", typ, ids)
	}
	return ids[0]
}

func tplRef(id string) map[string]any { return map[string]any{"Ref": id} }

func tplGetAtt(id, attr string) map[string]any {
	return map[string]any{"Fn::GetAtt": []any{id, attr}}
}

// tplStrings reads a policy field that may be a string or a list of strings.
func tplStrings(v any) ([]string, bool) {
	switch v := v.(type) {
	case string:
		return []string{v}, true
	case []any:
		var out []string
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	}
	return nil, false
}

// forEachRenderedTemplate runs f for every parameter set on the rendered template.
func forEachRenderedTemplate(t *testing.T, f func(t *testing.T, params map[string]any, tpl map[string]any)) {
	raw := readTemplate(t)
	for _, tc := range templateCases {
		t.Run(tc.name, func(t *testing.T) {
			tpl, err := renderTemplate(raw, tc.params)
			if err != nil {
				t.Fatalf("render with %v: %v", tc.params, err)
			}
			params := map[string]any{}
			for name, d := range tplMap(raw["Parameters"]) {
				params[name] = tplMap(d)["Default"]
			}
			maps.Copy(params, tc.params)
			f(t, params, tpl)
		})
	}
}

// goformationUnknown lists resource types goformation v7.14.9 does not know (its ParseJSON fails
// with "json: Unmarshal(nil)" on them), with their properties from the CloudFormation resource
// reference: parseGoformation checks those properties itself and hands goformation the rest.
var goformationUnknown = map[string]struct{ required, optional []string }{
	// https://docs.aws.amazon.com/AWSCloudFormation/latest/TemplateReference/aws-resource-kinesis-resourcepolicy.html
	"AWS::Kinesis::ResourcePolicy": {required: []string{"ResourceArn", "ResourcePolicy"}},
}

// parseGoformation parses the rendered, packaged template with goformation.
func parseGoformation(t *testing.T, tpl map[string]any) *cloudformation.Template {
	t.Helper()
	pkg := packageTemplate(tpl)
	for id, def := range tplMap(pkg["Resources"]) {
		known, ok := goformationUnknown[fmt.Sprint(tplMap(def)["Type"])]
		if !ok {
			continue
		}
		props := tplMap(tplMap(def)["Properties"])
		for _, p := range known.required {
			if props[p] == nil {
				t.Errorf("%s: required property %s missing", id, p)
			}
		}
		for p := range props {
			if !slices.Contains(known.required, p) && !slices.Contains(known.optional, p) {
				t.Errorf("%s: %s is not a property of %s", id, p, tplMap(def)["Type"])
			}
		}
		delete(tplMap(pkg["Resources"]), id)
	}
	data, err := json.Marshal(pkg)
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := goformation.ParseJSON(data)
	if err != nil {
		t.Fatalf("goformation: %v", err)
	}
	return parsed
}

// TestTemplateGoformation parses every rendered, packaged variant with
// goformation, which knows the current resource specification and rejects
// unknown properties and wrong types, and checks the typed values.
func TestTemplateGoformation(t *testing.T) {
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		parsed := parseGoformation(t, tpl)

		streams := parsed.GetAllKinesisStreamResources()
		if wantStreams := map[bool]int{true: 1}[params["StreamArn"] == ""]; len(streams) != wantStreams {
			t.Fatalf("streams: got %d, want %d (none on the writer side)", len(streams), wantStreams)
		}
		for _, s := range streams {
			if s.StreamEncryption == nil {
				t.Fatal("stream has no StreamEncryption")
			}
			wantKey := "alias/aws/kinesis"
			switch {
			case params["KmsKeyArn"] != "":
				wantKey = templateKeyArn
			case params["CreateKmsKey"] == "true":
				wantKey = "" // the created key's Arn: goformation empties GetAtts (TestTemplateGrants follows it)
			}
			if s.StreamEncryption.EncryptionType != "KMS" || s.StreamEncryption.KeyId != wantKey {
				t.Errorf("stream encryption: got %s with %q, want KMS with %q", s.StreamEncryption.EncryptionType, s.StreamEncryption.KeyId, wantKey)
			}
			if s.StreamModeDetails == nil || s.StreamModeDetails.StreamMode != params["StreamMode"] {
				t.Errorf("stream mode: got %+v, want %v", s.StreamModeDetails, params["StreamMode"])
			}
			// On demand, a shard count is an error in CloudFormation.
			switch {
			case params["StreamMode"] == "ON_DEMAND" && s.ShardCount != nil:
				t.Errorf("ON_DEMAND stream has ShardCount %d", *s.ShardCount)
			case params["StreamMode"] == "PROVISIONED" && (s.ShardCount == nil || float64(*s.ShardCount) != params["ShardCount"]):
				t.Errorf("PROVISIONED stream ShardCount: got %v, want %v", s.ShardCount, params["ShardCount"])
			}
			if s.RetentionPeriodHours == nil || float64(*s.RetentionPeriodHours) != params["RetentionHours"] {
				t.Errorf("retention: got %v, want %v hours", s.RetentionPeriodHours, params["RetentionHours"])
			}
			if name := params["StreamName"]; (name == "") != (s.Name == nil) || (s.Name != nil && *s.Name != name) {
				t.Errorf("stream Name: got %v, want %q (empty: generated)", s.Name, name)
			}
		}

		layers := parsed.GetAllLambdaLayerVersionResources()
		var arches []string
		for id, l := range layers {
			if len(l.CompatibleArchitectures) != 1 {
				t.Errorf("layer %s: CompatibleArchitectures %q, want exactly one (one zip per architecture)", id, l.CompatibleArchitectures)
				continue
			}
			arches = append(arches, l.CompatibleArchitectures[0])
			// An external extension is a static binary: any runtime works, so
			// the layer must not narrow the console's list of runtimes.
			if len(l.CompatibleRuntimes) != 0 {
				t.Errorf("layer %s: CompatibleRuntimes %q, want none (runtime-agnostic)", id, l.CompatibleRuntimes)
			}
			if l.Content == nil || l.Content.S3Bucket == "" || l.Content.S3Key == "" {
				t.Errorf("layer %s: packaged Content %+v lacks S3Bucket/S3Key", id, l.Content)
			}
		}
		slices.Sort(arches)
		if !slices.Equal(arches, []string{"arm64", "x86_64"}) {
			t.Errorf("layer architectures: got %q, want [arm64 x86_64]", arches)
		}

		if got := len(parsed.GetAllIAMManagedPolicyResources()); got != 1 {
			t.Errorf("managed policies: got %d, want 1", got)
		}
		fns := parsed.GetAllLambdaFunctionResources()
		wantDemo := params["CreateDemoFunction"] == "true"
		if (len(fns) == 1) != wantDemo || len(fns) > 1 {
			t.Fatalf("functions: got %d, want the demo only when CreateDemoFunction=true (%v)", len(fns), params["CreateDemoFunction"])
		}
		for id, fn := range fns {
			if !slices.Equal(fn.Architectures, []string{"x86_64"}) {
				t.Errorf("%s Architectures: got %q, want [x86_64] (it uses the x86_64 layer)", id, fn.Architectures)
			}
			wantVars := []string{"KINESIS_TELEMETRY_STREAM"}
			if params["WriterRoleArn"] != "" {
				wantVars = append(wantVars, "KINESIS_TELEMETRY_ROLE_ARN")
				if params["RoleExternalId"] != "" {
					wantVars = append(wantVars, "KINESIS_TELEMETRY_ROLE_EXTERNAL_ID")
				}
			}
			if params["CreateAlarms"] == "true" || params["CreateDashboard"] == "true" {
				wantVars = append(wantVars, "KINESIS_TELEMETRY_METRICS", "KINESIS_TELEMETRY_METRICS_NAMESPACE") // what they watch
			}
			slices.Sort(wantVars)
			if fn.Environment == nil || !slices.Equal(slices.Sorted(maps.Keys(fn.Environment.Variables)), wantVars) {
				t.Errorf("%s environment: got %+v, want %q", id, fn.Environment, wantVars)
			}
			if fn.Code == nil || fn.Code.ZipFile == nil {
				t.Fatalf("%s has no inline code", id)
			}
			module, handler, _ := strings.Cut(*fn.Handler, ".")
			if module != "index" || !strings.Contains(*fn.Code.ZipFile, "\ndef "+handler+"(event, context):") {
				t.Errorf("%s: Handler %q does not name a function of the inline index module", id, *fn.Handler)
			}
		}
		groups := parsed.GetAllLogsLogGroupResources()
		if len(groups) != len(fns) {
			t.Errorf("log groups: got %d, want one per demo function (%d)", len(groups), len(fns))
		}
		for id, g := range groups {
			if g.RetentionInDays == nil || float64(*g.RetentionInDays) != params["DemoLogRetentionDays"] {
				t.Errorf("log group %s retention: got %v, want %v days", id, g.RetentionInDays, params["DemoLogRetentionDays"])
			}
		}
	})
}

// tplGrant is one action a policy statement allows (or denies), to whom, on what, under which
// condition; principal, resources and condition are canonical JSON.
type tplGrant struct {
	Doc, Effect, Principal, Action, Resources, Condition string
}

func (g tplGrant) String() string {
	return fmt.Sprintf("%s: %s %s to %s on %s if %s", g.Doc, g.Effect, g.Action, g.Principal, g.Resources, g.Condition)
}

// tplCanon is v as canonical JSON ("" for nil); a list of resources is sorted.
func tplCanon(v any) string {
	if v == nil {
		return ""
	}
	if list, ok := v.([]any); ok {
		var items []string
		for _, e := range list {
			items = append(items, tplCanon(e))
		}
		slices.Sort(items)
		return "[" + strings.Join(items, ",") + "]"
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// tplGrants lists what a policy document's statements grant, one entry per action.
func tplGrants(t *testing.T, doc string, policy any) []tplGrant {
	t.Helper()
	if v := tplMap(policy)["Version"]; v != "2012-10-17" {
		t.Errorf("%s: Version %v, want 2012-10-17", doc, v)
	}
	var out []tplGrant
	statements, _ := tplMap(policy)["Statement"].([]any)
	for i, st := range statements {
		st := tplMap(st)
		for k := range st {
			if !slices.Contains([]string{"Sid", "Effect", "Principal", "Action", "Resource", "Condition"}, k) {
				t.Errorf("%s statement %d has %s (NotAction, NotResource or NotPrincipal would grant more than they name)", doc, i, k)
			}
		}
		actions, ok := tplStrings(st["Action"])
		if !ok {
			t.Errorf("%s statement %d Action: %v", doc, i, st["Action"])
		}
		res := st["Resource"]
		if _, ok := res.([]any); !ok && res != nil {
			res = []any{res}
		}
		for _, a := range actions {
			out = append(out, tplGrant{doc, fmt.Sprint(st["Effect"]), tplCanon(st["Principal"]), a, tplCanon(res), tplCanon(st["Condition"])})
		}
	}
	return out
}

// TestTemplateGrants reads every policy in every rendered variant (managed and inline policies,
// trust policies, the stream's resource policy, the key policy, the bucket policy) and checks
// that together they grant exactly what the extension and the archive need, to exactly the
// principals the parameters name, on exactly the resources of the template or the parameters:
//   - the function (managed policy): kinesis:PutRecords on the stream (the only call the
//     extension makes: it builds PutRecords itself, and calls no DescribeStream or ListShards),
//     kms:GenerateDataKey on a customer managed key; or, writing through a role, only
//     sts:AssumeRole on that role;
//   - writers in other accounts: kinesis:PutRecords on the stream (resource policy) and
//     kms:GenerateDataKey through Kinesis only (key policy), or sts:AssumeRole with the
//     external id (the writer role's trust policy);
//   - the archive's Firehose: the four read actions Firehose documents for a Kinesis source on
//     the stream, kms:Decrypt through Kinesis on a customer key, and the six S3 actions it
//     documents on the bucket; the bucket denies plain HTTP;
//   - the created key's policy also lets its own account administer it (kms:* to the account
//     root, the statement AWS puts in every default key policy): without it nobody could ever
//     change or delete the key.
func TestTemplateGrants(t *testing.T) {
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		central := params["StreamArn"] == ""
		streamArn := any(params["StreamArn"])
		if central {
			streamArn = tplGetAtt(tplOneOfType(t, tpl, "AWS::Kinesis::Stream"), "Arn")
		}
		createKey := central && params["CreateKmsKey"] == "true"
		keyArn := any(params["KmsKeyArn"])
		if createKey {
			keyArn = tplGetAtt("StreamKey", "Arn")
		}
		hasKey := params["KmsKeyArn"] != "" || createKey
		var accounts []any
		for _, a := range strings.Split(fmt.Sprint(params["WriterAccounts"]), ",") {
			if a != "" {
				accounts = append(accounts, a)
			}
		}
		org := fmt.Sprint(params["WriterOrgId"])
		role := central && params["CreateWriterRole"] == "true"
		assumes := !central && params["WriterRoleArn"] != ""
		archive := central && params["ArchiveToS3"] == "true"

		var want []tplGrant
		grant := func(doc, effect string, principal any, actions []string, resources []any, cond any) {
			res := any(resources)
			if resources == nil {
				res = nil // a trust policy names no resource
			}
			for _, a := range actions {
				want = append(want, tplGrant{doc, effect, tplCanon(principal), a, tplCanon(res), tplCanon(cond)})
			}
		}
		allow := func(doc string, principal any, actions []string, resources []any, cond any) {
			grant(doc, "Allow", principal, actions, resources, cond)
		}
		one := func(s string) []string { return []string{s} }
		viaKinesis := map[string]any{"StringEquals": map[string]any{"kms:ViaService": map[string]any{"Fn::Sub": "kinesis.${AWS::Region}.${AWS::URLSuffix}"}}}
		writers := map[string]any{"AWS": accounts}
		anyone := map[string]any{"AWS": "*"}
		inOrg := map[string]any{"StringEquals": map[string]any{"aws:PrincipalOrgID": org}}

		const fnPolicy = "TelemetryWriterPolicy"
		if assumes {
			allow(fnPolicy, nil, one("sts:AssumeRole"), []any{params["WriterRoleArn"]}, nil)
		} else {
			allow(fnPolicy, nil, one("kinesis:PutRecords"), []any{streamArn}, nil)
			if hasKey {
				allow(fnPolicy, nil, one("kms:GenerateDataKey"), []any{keyArn}, nil)
			}
		}
		if central && !role {
			if len(accounts) > 0 {
				allow("StreamResourcePolicy", writers, one("kinesis:PutRecords"), []any{streamArn}, nil)
			}
			if org != "" {
				allow("StreamResourcePolicy", anyone, one("kinesis:PutRecords"), []any{streamArn}, inOrg)
			}
		}
		if createKey {
			allow("StreamKey", map[string]any{"AWS": map[string]any{"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}}, one("kms:*"), []any{"*"}, nil)
			if !role && len(accounts) > 0 {
				allow("StreamKey", writers, one("kms:GenerateDataKey"), []any{"*"}, viaKinesis)
			}
			if !role && org != "" {
				allow("StreamKey", anyone, one("kms:GenerateDataKey"), []any{"*"}, map[string]any{"StringEquals": map[string]any{
					"kms:ViaService": map[string]any{"Fn::Sub": "kinesis.${AWS::Region}.${AWS::URLSuffix}"}, "aws:PrincipalOrgID": org}})
			}
		}
		if role {
			externalID := map[string]any{"sts:ExternalId": params["RoleExternalId"]}
			if len(accounts) > 0 {
				allow("WriterRole trust", writers, one("sts:AssumeRole"), nil, map[string]any{"StringEquals": externalID})
			}
			if org != "" {
				allow("WriterRole trust", anyone, one("sts:AssumeRole"), nil, map[string]any{"StringEquals": map[string]any{
					"sts:ExternalId": params["RoleExternalId"], "aws:PrincipalOrgID": org}})
			}
		}
		if params["CreateDemoFunction"] == "true" {
			allow("DemoRole trust", map[string]any{"Service": "lambda.amazonaws.com"}, one("sts:AssumeRole"), nil, nil)
		}
		if archive {
			bucket := []any{tplGetAtt("ArchiveBucket", "Arn"), map[string]any{"Fn::Sub": "${ArchiveBucket.Arn}/*"}}
			allow("ArchiveRole trust", map[string]any{"Service": "firehose.amazonaws.com"}, one("sts:AssumeRole"), nil,
				map[string]any{"StringEquals": map[string]any{"sts:ExternalId": tplRef("AWS::AccountId")}})
			allow("ArchiveRole archive", nil, []string{"kinesis:DescribeStream", "kinesis:GetShardIterator", "kinesis:GetRecords", "kinesis:ListShards"}, []any{streamArn}, nil)
			if hasKey {
				allow("ArchiveRole archive", nil, one("kms:Decrypt"), []any{keyArn}, viaKinesis)
			}
			allow("ArchiveRole archive", nil, []string{"s3:AbortMultipartUpload", "s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket", "s3:ListBucketMultipartUploads", "s3:PutObject"}, bucket, nil)
			grant("ArchiveBucketPolicy", "Deny", "*", one("s3:*"), bucket, map[string]any{"Bool": map[string]any{"aws:SecureTransport": "false"}})
		}

		// What the template grants, read from every resource that can carry a policy.
		var got []tplGrant
		managed := map[string][]any{ // role -> the managed policies it must hold
			"DemoRole":   {tplRef(fnPolicy), map[string]any{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"}},
			"WriterRole": {tplRef(fnPolicy)},
		}
		noPolicy := []string{"AWS::Kinesis::Stream", "AWS::Lambda::LayerVersion", "AWS::Lambda::Function", "AWS::Logs::LogGroup", "AWS::S3::Bucket", "AWS::KinesisFirehose::DeliveryStream",
			// Operating (template_ops_test.go): no topic policy (alarms of this account publish without one).
			"AWS::CloudWatch::Alarm", "AWS::CloudWatch::Dashboard", "AWS::SNS::Topic", "AWS::Glue::Database", "AWS::Glue::Table", "AWS::Athena::NamedQuery"}
		for _, id := range slices.Sorted(maps.Keys(tplMap(tpl["Resources"]))) {
			def := tplMap(tplPath(tpl, "Resources", id))
			props := tplMap(def["Properties"])
			switch typ := def["Type"]; typ {
			case "AWS::IAM::ManagedPolicy":
				for k := range props {
					// Attaching it to roles, users or groups here would grant it to
					// principals the user did not pick.
					if k != "PolicyDocument" && k != "Description" {
						t.Errorf("%s has property %s, want only PolicyDocument and Description", id, k)
					}
				}
				got = append(got, tplGrants(t, id, props["PolicyDocument"])...)
			case "AWS::IAM::Role":
				got = append(got, tplGrants(t, id+" trust", props["AssumeRolePolicyDocument"])...)
				for _, p := range tplSlice(props["Policies"]) {
					got = append(got, tplGrants(t, id+" "+fmt.Sprint(tplMap(p)["PolicyName"]), tplMap(p)["PolicyDocument"])...)
				}
				if !reflect.DeepEqual(tplSlice(props["ManagedPolicyArns"]), managed[id]) {
					t.Errorf("%s ManagedPolicyArns: got %v, want %v", id, props["ManagedPolicyArns"], managed[id])
				}
			case "AWS::Kinesis::ResourcePolicy":
				if !reflect.DeepEqual(props["ResourceArn"], streamArn) {
					t.Errorf("%s is on %v, want the stream %v", id, props["ResourceArn"], streamArn)
				}
				got = append(got, tplGrants(t, id, props["ResourcePolicy"])...)
			case "AWS::KMS::Key":
				got = append(got, tplGrants(t, id, props["KeyPolicy"])...)
			case "AWS::S3::BucketPolicy":
				if !reflect.DeepEqual(props["Bucket"], tplRef("ArchiveBucket")) {
					t.Errorf("%s is on %v, want the archive bucket", id, props["Bucket"])
				}
				got = append(got, tplGrants(t, id, props["PolicyDocument"])...)
			default:
				if !slices.Contains(noPolicy, fmt.Sprint(typ)) {
					t.Errorf("%s: type %s is not known to this test; say which policies it carries", id, typ)
				}
			}
		}
		sortGrants := func(g []tplGrant) []string {
			var out []string
			for _, e := range g {
				out = append(out, e.String())
			}
			slices.Sort(out)
			return out
		}
		gotS, wantS := sortGrants(got), sortGrants(want)
		for _, g := range gotS {
			if !slices.Contains(wantS, g) {
				t.Errorf("grants more than needed: %s", g)
			}
		}
		for _, w := range wantS {
			if !slices.Contains(gotS, w) {
				t.Errorf("does not grant: %s", w)
			}
		}
	})
}

func tplSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

// TestTemplateDemoFunction checks how the demo function is wired: its
// stream variable names the stream this template creates, it carries the
// x86_64 layer, its role holds the managed policy and basic execution, and
// it logs into the log group with retention.
func TestTemplateDemoFunction(t *testing.T) {
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		fns := tplResourcesOfType(tpl, "AWS::Lambda::Function")
		if params["CreateDemoFunction"] != "true" {
			if len(fns) != 0 || tplPath(tpl, "Resources", "DemoRole") != nil || len(tplResourcesOfType(tpl, "AWS::Logs::LogGroup")) != 0 {
				t.Errorf("CreateDemoFunction=false still creates %q and a role or log group", fns)
			}
			return
		}
		fn := tplOneOfType(t, tpl, "AWS::Lambda::Function")
		props := tplMap(tplPath(tpl, "Resources", fn, "Properties"))

		streamVar := tplPath(props, "Environment", "Variables", "KINESIS_TELEMETRY_STREAM")
		target, _ := tplMap(streamVar)["Ref"].(string)
		if att, ok := tplMap(streamVar)["Fn::GetAtt"].([]any); ok && len(att) == 2 && att[1] == "Arn" {
			target, _ = att[0].(string)
		}
		switch {
		case params["StreamArn"] != "":
			if streamVar != params["StreamArn"] {
				t.Errorf("writer side KINESIS_TELEMETRY_STREAM: got %v, want the StreamArn parameter %v", streamVar, params["StreamArn"])
			}
		case tplPath(tpl, "Resources", target, "Type") != "AWS::Kinesis::Stream":
			t.Errorf("KINESIS_TELEMETRY_STREAM: got %v, want a Ref or GetAtt to a stream this template creates", streamVar)
		}
		for name, want := range map[string]any{"KINESIS_TELEMETRY_ROLE_ARN": params["WriterRoleArn"], "KINESIS_TELEMETRY_ROLE_EXTERNAL_ID": params["RoleExternalId"]} {
			if params["WriterRoleArn"] == "" {
				want = nil // writes with its own role
			}
			if want == "" {
				want = nil
			}
			if got := tplPath(props, "Environment", "Variables", name); got != want {
				t.Errorf("%s: got %v, want %v", name, got, want)
			}
		}

		var x86Layer string
		for _, id := range tplResourcesOfType(tpl, "AWS::Lambda::LayerVersion") {
			if reflect.DeepEqual(tplPath(tpl, "Resources", id, "Properties", "CompatibleArchitectures"), []any{"x86_64"}) {
				x86Layer = id
			}
		}
		if !reflect.DeepEqual(props["Layers"], []any{tplRef(x86Layer)}) {
			t.Errorf("Layers: got %v, want [Ref %s]", props["Layers"], x86Layer)
		}

		roleID, _ := tplMap(props["Role"])["Fn::GetAtt"].([]any)
		role := ""
		if len(roleID) == 2 && roleID[1] == "Arn" {
			role, _ = roleID[0].(string)
		}
		if tplPath(tpl, "Resources", role, "Type") != "AWS::IAM::Role" {
			t.Fatalf("Role: got %v, want GetAtt of a role in this template", props["Role"])
		}
		roleProps := tplMap(tplPath(tpl, "Resources", role, "Properties"))
		wantPolicies := []any{
			tplRef(tplOneOfType(t, tpl, "AWS::IAM::ManagedPolicy")),
			map[string]any{"Fn::Sub": "arn:${AWS::Partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"},
		}
		if !reflect.DeepEqual(roleProps["ManagedPolicyArns"], wantPolicies) {
			t.Errorf("role ManagedPolicyArns: got %v, want %v", roleProps["ManagedPolicyArns"], wantPolicies)
		}
		if _, ok := roleProps["Policies"]; ok {
			t.Error("role has inline Policies: everything it may do should be in the two managed policies")
		}
		principal := tplPath(roleProps, "AssumeRolePolicyDocument")
		if b, _ := json.Marshal(principal); !strings.Contains(string(b), `"Service":"lambda.amazonaws.com"`) {
			t.Errorf("role trust policy does not name lambda.amazonaws.com: %s", b)
		}

		group, _ := tplMap(tplPath(props, "LoggingConfig", "LogGroup"))["Ref"].(string)
		if tplPath(tpl, "Resources", group, "Type") != "AWS::Logs::LogGroup" {
			t.Fatalf("LoggingConfig.LogGroup: got %v, want a Ref to the template's log group", tplPath(props, "LoggingConfig"))
		}
		name := tplPath(tpl, "Resources", group, "Properties", "LogGroupName")
		if sub, _ := tplMap(name)["Fn::Sub"].(string); !strings.HasPrefix(sub, "/aws/lambda/") {
			t.Errorf("log group name: got %v, want /aws/lambda/...", name)
		}
		if tplPath(tpl, "Resources", group, "Properties", "RetentionInDays") == nil {
			t.Error("log group has no RetentionInDays: logs would be kept forever")
		}
	})
}

// TestTemplateLayerContent checks that each layer's Content is the local
// path of the zip build.sh writes for its architecture, relative to the
// template, so that `aws cloudformation package` uploads it: package
// rewrites only a Content that is a plain string (a Ref or Fn::If is left
// as is), resolving it against the template's folder.
func TestTemplateLayerContent(t *testing.T) {
	tpl := readTemplate(t)
	layers := tplResourcesOfType(tpl, "AWS::Lambda::LayerVersion")
	if len(layers) != len(layerArches) {
		t.Fatalf("layers: got %q, want one per architecture (%d)", layers, len(layerArches))
	}
	seen := map[string]bool{}
	for _, id := range layers {
		props := tplMap(tplPath(tpl, "Resources", id, "Properties"))
		arches, _ := tplStrings(props["CompatibleArchitectures"])
		if len(arches) != 1 {
			t.Errorf("%s CompatibleArchitectures: got %v, want exactly one", id, props["CompatibleArchitectures"])
			continue
		}
		want := filepath.Join("dist", layerZipName(arches[0]))
		if props["Content"] != want {
			t.Errorf("%s Content: got %v, want the local path %q", id, props["Content"], want)
		}
		seen[arches[0]] = true
		if tplPath(tpl, "Resources", id, "UpdateReplacePolicy") != "Retain" {
			// Functions outside the stack keep the old version ARN; deleting
			// it would break their next update-function-configuration.
			t.Errorf("%s: UpdateReplacePolicy got %v, want Retain", id, tplPath(tpl, "Resources", id, "UpdateReplacePolicy"))
		}
	}
	for _, a := range layerArches {
		if !seen[a.name] {
			t.Errorf("no layer for %s", a.name)
		}
	}
}

// TestTemplateReferences checks that every Ref, Fn::GetAtt, Fn::Sub
// variable and condition name points at something that exists, in the raw
// template and in every rendered variant (where a reference to a resource
// that a false condition removed would fail the deployment), and that every
// parameter is used.
func TestTemplateReferences(t *testing.T) {
	raw := readTemplate(t)
	check := func(t *testing.T, tpl map[string]any) map[string]bool {
		known := map[string]bool{}
		for _, p := range cfnPseudoParams {
			known[p] = true
		}
		for name := range tplMap(tpl["Parameters"]) {
			known[name] = true
		}
		resources := tplMap(tpl["Resources"])
		for id := range resources {
			known[id] = true
		}
		used := map[string]bool{}
		var walk func(where string, v any)
		walk = func(where string, v any) {
			switch v := v.(type) {
			case []any:
				for i, e := range v {
					walk(fmt.Sprintf("%s[%d]", where, i), e)
				}
			case map[string]any:
				for k, e := range v {
					switch k {
					case "Ref":
						name, _ := e.(string)
						used[name] = true
						if !known[name] {
							t.Errorf("%s: Ref to unknown %q", where, name)
						}
					case "Fn::GetAtt":
						parts, _ := tplStrings(e)
						if len(parts) == 1 {
							parts = strings.SplitN(parts[0], ".", 2)
						}
						if len(parts) != 2 || resources[parts[0]] == nil {
							t.Errorf("%s: Fn::GetAtt of unknown resource %v", where, e)
						}
					case "Fn::Sub":
						s, _ := e.(string)
						if list, ok := e.([]any); ok {
							t.Errorf("%s: Fn::Sub with a variable map %v; this check does not follow those", where, list)
						}
						for _, m := range regexp.MustCompile(`\$\{([^!}][^}]*)\}`).FindAllStringSubmatch(s, -1) {
							name, _, _ := strings.Cut(m[1], ".")
							used[name] = true
							if !known[name] {
								t.Errorf("%s: Fn::Sub variable ${%s} is unknown", where, m[1])
							}
						}
					case "Fn::If", "Condition":
						name, _ := e.(string)
						if args, ok := e.([]any); ok && len(args) > 0 {
							name, _ = args[0].(string)
						}
						if _, ok := e.(map[string]any); ok && k == "Condition" {
							break // an IAM policy statement's Condition block
						}
						if _, ok := tplMap(tpl["Conditions"])[name]; !ok {
							t.Errorf("%s: condition %q does not exist", where, name)
						}
					}
					walk(where+"."+k, e)
				}
			}
		}
		walk("Resources", tpl["Resources"])
		walk("Outputs", tpl["Outputs"])
		walk("Conditions", tpl["Conditions"])
		return used
	}

	used := check(t, raw)
	for name := range tplMap(raw["Parameters"]) {
		if !used[name] {
			t.Errorf("parameter %s is never used", name)
		}
	}
	for _, tc := range templateCases {
		t.Run(tc.name, func(t *testing.T) {
			tpl, err := renderTemplate(raw, tc.params)
			if err != nil {
				t.Fatal(err)
			}
			check(t, tpl)
		})
	}
}

// TestTemplateOutputs checks that the outputs give a user everything needed
// to add the extension to an existing function, exported under the stack's
// name.
func TestTemplateOutputs(t *testing.T) {
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		var x86, arm string
		for _, id := range tplResourcesOfType(tpl, "AWS::Lambda::LayerVersion") {
			switch a, _ := tplStrings(tplPath(tpl, "Resources", id, "Properties", "CompatibleArchitectures")); {
			case slices.Equal(a, []string{"x86_64"}):
				x86 = id
			case slices.Equal(a, []string{"arm64"}):
				arm = id
			}
		}
		want := map[string]any{
			"LayerVersionArnX86":   tplRef(x86),
			"LayerVersionArnArm64": tplRef(arm),
			"StreamArn":            params["StreamArn"],
			"PolicyArn":            tplRef(tplOneOfType(t, tpl, "AWS::IAM::ManagedPolicy")),
		}
		if params["StreamArn"] == "" { // central side
			stream := tplOneOfType(t, tpl, "AWS::Kinesis::Stream")
			want["StreamName"] = tplRef(stream)
			want["StreamArn"] = tplGetAtt(stream, "Arn")
			switch {
			case params["CreateKmsKey"] == "true":
				want["KmsKeyArn"] = tplGetAtt(tplOneOfType(t, tpl, "AWS::KMS::Key"), "Arn")
			case params["KmsKeyArn"] != "":
				want["KmsKeyArn"] = params["KmsKeyArn"]
			}
			if params["CreateWriterRole"] == "true" {
				want["WriterRoleArn"] = tplGetAtt("WriterRole", "Arn")
			}
			if params["ArchiveToS3"] == "true" {
				want["ArchiveBucketName"] = tplRef(tplOneOfType(t, tpl, "AWS::S3::Bucket"))
				want["ArchiveDeliveryStreamName"] = tplRef(tplOneOfType(t, tpl, "AWS::KinesisFirehose::DeliveryStream"))
				if f := params["ArchiveRecordFormat"]; f == "event" || f == "ndjson" { // JSON lines: queryable (archive_test.go)
					want["ArchiveDatabaseName"] = tplRef(tplOneOfType(t, tpl, "AWS::Glue::Database"))
				}
			}
		}
		outputs := tplMap(tpl["Outputs"])
		for name := range outputs {
			if _, ok := want[name]; !ok && name != "DemoFunctionName" && name != "AlarmTopicArn" && name != "DashboardName" { // the last two: template_ops_test.go
				t.Errorf("output %s: not expected in this variant", name)
			}
		}
		exports := map[string]bool{}
		for name, value := range want {
			out := tplMap(outputs[name])
			if out == nil {
				t.Errorf("output %s missing", name)
				continue
			}
			if !reflect.DeepEqual(out["Value"], value) {
				t.Errorf("output %s: got %v, want %v", name, out["Value"], value)
			}
			export, _ := tplPath(out, "Export", "Name", "Fn::Sub").(string)
			if !strings.HasPrefix(export, "${AWS::StackName}-") || exports[export] {
				t.Errorf("output %s export name: got %v, want a unique ${AWS::StackName}-... name", name, tplPath(out, "Export", "Name"))
			}
			exports[export] = true
			if !regexp.MustCompile(`^[A-Za-z0-9:-]+$`).MatchString(strings.TrimPrefix(export, "${AWS::StackName}")) {
				t.Errorf("output %s export name %q: only letters, digits, ':' and '-' are allowed", name, export)
			}
		}
	})
}

// cfnLintWrong lists what cfn-lint 1.9.7 reports about template.json
// although CloudFormation accepts it: its resource specification (2019)
// predates these properties and resource types, it still requires ShardCount,
// which on-demand streams (2021) must not have, and a Processor's Parameters,
// which AppendDelimiterToRecord (2021) does without; and it takes a
// CommaDelimitedList whose default is empty for a typo. Each entry must be
// reported at least once, so that the list stays exact.
var cfnLintWrong = []cfnLintMessage{
	{"Resources > TelemetryStream > Properties > StreamModeDetails", "StreamModeDetails is not a valid property of AWS::Kinesis::Stream"},
	{"Resources > TelemetryStream > Properties", "Required property ShardCount missing for type AWS::Kinesis::Stream"},
	{"Resources > ExtensionLayerX86 > Properties > CompatibleArchitectures", "CompatibleArchitectures is not a valid property of AWS::Lambda::LayerVersion"},
	{"Resources > ExtensionLayerArm64 > Properties > CompatibleArchitectures", "CompatibleArchitectures is not a valid property of AWS::Lambda::LayerVersion"},
	{"Resources > DemoFunction > Properties > Architectures", "Architectures is not a valid property of AWS::Lambda::Function"},
	{"Resources > DemoFunction > Properties > LoggingConfig", "LoggingConfig is not a valid property of AWS::Lambda::Function"},
	{"Resources > StreamResourcePolicy", "Resource StreamResourcePolicy has an invalid Type of AWS::Kinesis::ResourcePolicy."},
	{"Resources > ArchiveDeliveryStream > Properties > ExtendedS3DestinationConfiguration > ErrorOutputPrefix", "ErrorOutputPrefix is not a valid property of AWS::KinesisFirehose::DeliveryStream.ExtendedS3DestinationConfiguration"},
	{"Resources > ArchiveDeliveryStream > Properties > ExtendedS3DestinationConfiguration > DynamicPartitioningConfiguration", "DynamicPartitioningConfiguration is not a valid property of AWS::KinesisFirehose::DeliveryStream.ExtendedS3DestinationConfiguration"},
	{"Resources > ArchiveDeliveryStream > Properties > ExtendedS3DestinationConfiguration > ProcessingConfiguration > Processors > 0", "Required property Parameters missing for type AWS::KinesisFirehose::DeliveryStream.Processor"},
	{"Resources > ArchiveDeliveryStream > Properties > ExtendedS3DestinationConfiguration > ProcessingConfiguration > Processors > 2", "Required property Parameters missing for type AWS::KinesisFirehose::DeliveryStream.Processor"},
	{"Parameters > WriterAccounts", "Parameter WriterAccounts contains a CommaDelimitedList where the number of commas appears to be equal or greater than the list of items."},
}

type cfnLintMessage struct {
	Resource string `json:"resource"`
	Message  string `json:"message"`
}

// cfnLintTemplates are what cfn-lint checks: every rendered variant of templateCases, with its
// conditions resolved and removed, and without its Rules. cfn-lint 1.9.7 cannot check the raw
// template: it does not evaluate Fn::And or Fn::Or in Conditions, then takes the resources they
// guard as absent and reports every Ref in them as "not supported here"; and it does not know
// the Rules section (it reports each rule function as "not supported here"). The Rules are
// evaluated by renderTemplate (failedRules) and tested by TestTemplateRules.
func cfnLintTemplates(t *testing.T) map[string]map[string]any {
	raw := readTemplate(t)
	out := map[string]map[string]any{}
	for _, tc := range templateCases {
		tpl, err := renderTemplate(raw, tc.params)
		if err != nil {
			t.Fatal(err)
		}
		delete(tpl, "Conditions")
		delete(tpl, "Rules")
		for _, section := range []string{"Resources", "Outputs"} {
			for _, def := range tplMap(tpl[section]) {
				delete(tplMap(def), "Condition")
			}
		}
		out[tc.name] = packageTemplate(tpl)
	}
	return out
}

// cfnLintScript runs cfn-lint's validator through its JavaScript API, which
// gives structured results (the CLI, node_modules/.bin/cfn-lint validate,
// prints the same findings as colored text), on each file of a list in one
// node process (loading cfn-lint takes about two seconds).
const cfnLintScript = `
const [lintDir, files, out] = process.argv.slice(2);
const lint = require(lintDir);
const results = JSON.parse(files).map(file => lint.validateFile(file, {parameters: {}}));
require('fs').writeFileSync(out, JSON.stringify(results));
`

// TestTemplateCfnLint runs the npm cfn-lint validator on every packaged,
// rendered variant and fails on every finding except those in cfnLintWrong.
func TestTemplateCfnLint(t *testing.T) {
	lintDir, err := filepath.Abs(filepath.Join("node_modules", "cfn-lint"))
	if err != nil {
		t.Fatal(err)
	}
	requireNodeTool(t, lintDir)

	dir := t.TempDir()
	script := filepath.Join(dir, "lint.js")
	if err := os.WriteFile(script, []byte(cfnLintScript), 0o644); err != nil {
		t.Fatal(err)
	}
	templates := cfnLintTemplates(t)
	names := slices.Sorted(maps.Keys(templates))
	var files []string
	for i, name := range names {
		data, err := json.MarshalIndent(templates[name], "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, filepath.Join(dir, fmt.Sprintf("packaged-%d.json", i)))
		if err := os.WriteFile(files[i], data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	list, _ := json.Marshal(files)
	out := filepath.Join(dir, "results.json")
	if msg, err := exec.Command("node", script, lintDir, string(list), out).CombinedOutput(); err != nil {
		t.Fatalf("cfn-lint: %v\n%s", err, msg)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var results []struct {
		Errors map[string][]cfnLintMessage `json:"errors"`
	}
	if err := json.Unmarshal(raw, &results); err != nil || len(results) != len(names) {
		t.Fatalf("cfn-lint results: %v (%d for %d templates)\n%s", err, len(results), len(names), raw)
	}

	seen := map[cfnLintMessage]bool{}
	for i, name := range names {
		t.Run(name, func(t *testing.T) {
			for level, msgs := range results[i].Errors {
				for _, m := range msgs {
					switch {
					case level == "info":
						t.Logf("cfn-lint info: %s: %s", m.Resource, m.Message)
					case slices.Contains(cfnLintWrong, m):
						seen[m] = true
					default:
						t.Errorf("cfn-lint %s: %s: %s", level, m.Resource, m.Message)
					}
				}
			}
		})
	}
	for _, m := range cfnLintWrong {
		if !seen[m] {
			t.Errorf("cfn-lint no longer reports %q at %s: remove it from cfnLintWrong", m.Message, m.Resource)
		}
	}
}

// requireNodeTool skips the test when the npm package at dir (or node) is
// missing, or fails it under TEST_REQUIRE_PEERS=1, where nothing may be
// skipped; `npm ci` (run by ./build.sh test) installs it.
func requireNodeTool(t *testing.T, dir string) {
	t.Helper()
	missing := ""
	if _, err := exec.LookPath("node"); err != nil {
		missing = "node is not on PATH"
	} else if _, err := os.Stat(filepath.Join(dir, "package.json")); err != nil {
		missing = fmt.Sprintf("%s is not installed (run npm ci)", dir)
	}
	if missing == "" {
		return
	}
	if os.Getenv("TEST_REQUIRE_PEERS") == "1" {
		t.Fatalf("%s, and TEST_REQUIRE_PEERS=1", missing)
	}
	t.Skipf("%s; set TEST_REQUIRE_PEERS=1 to make this a failure", missing)
}

// TestTemplateRules: the combinations that cannot work are refused before anything is created,
// each by the rule that names the fix; every templateCases variant passes all rules.
func TestTemplateRules(t *testing.T) {
	raw := readTemplate(t)
	for _, tt := range []struct {
		name   string
		params map[string]any
		rule   string
	}{
		{"writer accounts with the AWS managed key", map[string]any{"WriterAccounts": templateWriterAccounts}, "OtherAccountsNeedACustomerManagedKey"},
		{"organization with the AWS managed key", map[string]any{"WriterOrgId": templateOrgID}, "OtherAccountsNeedACustomerManagedKey"},
		{"a created and a given key", map[string]any{"CreateKmsKey": "true", "KmsKeyArn": templateKeyArn}, "OneKey"},
		{"writer role without writers", map[string]any{"CreateWriterRole": "true", "RoleExternalId": templateExternalID}, "WriterRoleNeedsWritersAndExternalId"},
		{"writer role without external id", map[string]any{"CreateWriterRole": "true", "WriterAccounts": "111111111111"}, "WriterRoleNeedsWritersAndExternalId"},
		{"another account's stream with the AWS managed key", map[string]any{"StreamArn": templateStreamArn}, "WriterSideNeedsTheStreamKey"},
		{"writer side with an archive", map[string]any{"StreamArn": templateStreamArn, "KmsKeyArn": templateKeyArn, "ArchiveToS3": "true"}, "WriterSideCreatesNoCentralResources"},
		{"writer side with writers", map[string]any{"StreamArn": templateStreamArn, "KmsKeyArn": templateKeyArn, "WriterAccounts": "111111111111"}, "WriterSideCreatesNoCentralResources"},
		{"writer side creating a key", map[string]any{"StreamArn": templateStreamArn, "WriterRoleArn": templateRoleArn, "CreateKmsKey": "true"}, "WriterSideCreatesNoCentralResources"},
		{"a role to assume without the stream", map[string]any{"WriterRoleArn": templateRoleArn}, "WriterRoleArnNeedsStreamArn"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderTemplate(raw, tt.params)
			if !errors.Is(err, errRuleFailed) || !strings.Contains(err.Error(), tt.rule+": ") {
				t.Fatalf("got %v, want refused by rule %s", err, tt.rule)
			}
			if strings.Contains(tt.rule, "Key") && !strings.Contains(err.Error(), "AWS managed key") && tt.rule != "OneKey" {
				t.Errorf("the refusal does not say the AWS managed key cannot be used across accounts: %v", err)
			}
		})
	}
}

// TestTemplateArchive checks the optional S3 archive in each record format, typed by
// goformation: a Firehose delivery stream reading this stack's stream with its own role, into a
// private, encrypted bucket that outlives the stack, with the processors the format needs.
func TestTemplateArchive(t *testing.T) {
	wantProcessors := map[string]string{ // type(parameter=value,...) in order
		"event":      "AppendDelimiterToRecord()",
		"ndjson":     "RecordDeAggregation(SubRecordType=JSON) MetadataExtraction(MetadataExtractionQuery={type: .event.type},JsonParsingEngine=JQ-1.6) AppendDelimiterToRecord()",
		"kpl":        "",
		"cloudwatch": "Decompression(CompressionFormat=GZIP) CloudWatchLogProcessing(DataMessageExtraction=true)",
	}
	seen := map[string]bool{}
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		parsed := parseGoformation(t, tpl)
		streams := parsed.GetAllKinesisFirehoseDeliveryStreamResources()
		buckets := parsed.GetAllS3BucketResources()
		if params["ArchiveToS3"] != "true" {
			if len(streams)+len(buckets)+len(parsed.GetAllS3BucketPolicyResources()) != 0 {
				t.Errorf("ArchiveToS3=false still creates %d delivery streams and %d buckets", len(streams), len(buckets))
			}
			return
		}
		format := fmt.Sprint(params["ArchiveRecordFormat"])
		seen[format] = true
		if len(streams) != 1 || len(buckets) != 1 {
			t.Fatalf("got %d delivery streams and %d buckets, want one each", len(streams), len(buckets))
		}
		for _, b := range buckets {
			enc := b.BucketEncryption
			if enc == nil || len(enc.ServerSideEncryptionConfiguration) != 1 || enc.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault == nil {
				t.Fatalf("bucket encryption: %+v", enc)
			}
			if a := enc.ServerSideEncryptionConfiguration[0].ServerSideEncryptionByDefault.SSEAlgorithm; a != "AES256" {
				t.Errorf("bucket encryption %s, want AES256", a)
			}
			pab := b.PublicAccessBlockConfiguration
			if pab == nil || !aws.ToBool(pab.BlockPublicAcls) || !aws.ToBool(pab.BlockPublicPolicy) || !aws.ToBool(pab.IgnorePublicAcls) || !aws.ToBool(pab.RestrictPublicBuckets) {
				t.Errorf("bucket is not private: PublicAccessBlockConfiguration %+v", pab)
			}
		}
		if r := tplMap(tplPath(tpl, "Resources", "ArchiveBucket")); r["DeletionPolicy"] != "Retain" || r["UpdateReplacePolicy"] != "Retain" {
			t.Errorf("archive bucket DeletionPolicy %v, UpdateReplacePolicy %v: want Retain, so that deleting the stack keeps the archive", r["DeletionPolicy"], r["UpdateReplacePolicy"])
		}
		for _, ds := range streams {
			if aws.ToString(ds.DeliveryStreamType) != "KinesisStreamAsSource" || ds.KinesisStreamSourceConfiguration == nil {
				t.Fatalf("delivery stream type %v, source %+v: want KinesisStreamAsSource", ds.DeliveryStreamType, ds.KinesisStreamSourceConfiguration)
			}
			dest := ds.ExtendedS3DestinationConfiguration
			if dest == nil {
				t.Fatal("no ExtendedS3DestinationConfiguration")
			}
			var got []string
			if pc := dest.ProcessingConfiguration; pc != nil && aws.ToBool(pc.Enabled) {
				for _, p := range pc.Processors {
					var ps []string
					for _, pp := range p.Parameters {
						ps = append(ps, pp.ParameterName+"="+pp.ParameterValue)
					}
					got = append(got, p.Type+"("+strings.Join(ps, ",")+")")
				}
			}
			if g := strings.Join(got, " "); g != wantProcessors[format] {
				t.Errorf("%s processors: got %q, want %q", format, g, wantProcessors[format])
			}
			// AWS documents multi-record JSON de-aggregation as part of dynamic partitioning
			// (Firehose guide, "Apply dynamic partitioning to aggregated data"), which
			// needs a partition key in the prefix and buffers of at least 64 MiB.
			dynamic := dest.DynamicPartitioningConfiguration != nil && aws.ToBool(dest.DynamicPartitioningConfiguration.Enabled)
			if dynamic != (format == "ndjson") {
				t.Errorf("%s: dynamic partitioning %v", format, dynamic)
			}
			if dynamic && (!strings.Contains(aws.ToString(dest.Prefix), "!{partitionKeyFromQuery:type}") || dest.BufferingHints == nil || aws.ToInt(dest.BufferingHints.SizeInMBs) < 64) {
				t.Errorf("dynamic partitioning needs the partition key in the prefix and 64 MiB buffers: prefix %q, hints %+v", aws.ToString(dest.Prefix), dest.BufferingHints)
			}
			if !strings.Contains(aws.ToString(dest.ErrorOutputPrefix), "!{firehose:error-output-type}") {
				t.Errorf("ErrorOutputPrefix %q lacks !{firehose:error-output-type}", aws.ToString(dest.ErrorOutputPrefix))
			}
		}
		// The references goformation empties: the source is this stack's stream, read and
		// written with the archive role.
		src := tplPath(tpl, "Resources", "ArchiveDeliveryStream", "Properties", "KinesisStreamSourceConfiguration")
		role := tplGetAtt(tplOneOfRole(t, tpl, "firehose.amazonaws.com"), "Arn")
		if !reflect.DeepEqual(src, map[string]any{"KinesisStreamARN": tplGetAtt("TelemetryStream", "Arn"), "RoleARN": role}) {
			t.Errorf("source: got %v", src)
		}
		dest := tplMap(tplPath(tpl, "Resources", "ArchiveDeliveryStream", "Properties", "ExtendedS3DestinationConfiguration"))
		if !reflect.DeepEqual(dest["BucketARN"], tplGetAtt("ArchiveBucket", "Arn")) || !reflect.DeepEqual(dest["RoleARN"], role) {
			t.Errorf("destination bucket %v, role %v", dest["BucketARN"], dest["RoleARN"])
		}
	})
	for format := range wantProcessors {
		if !seen[format] {
			t.Errorf("no templateCases variant archives format %s", format)
		}
	}
}

// tplOneOfRole returns the logical ID of the only role that service may assume.
func tplOneOfRole(t *testing.T, tpl map[string]any, service string) string {
	t.Helper()
	var ids []string
	for _, id := range tplResourcesOfType(tpl, "AWS::IAM::Role") {
		b, _ := json.Marshal(tplPath(tpl, "Resources", id, "Properties", "AssumeRolePolicyDocument"))
		if strings.Contains(string(b), `"Service":"`+service+`"`) {
			ids = append(ids, id)
		}
	}
	if len(ids) != 1 {
		t.Fatalf("roles for %s: got %q, want one", service, ids)
	}
	return ids[0]
}

// TestTemplateArchivePartitionKey: the ndjson archive's partition key query (jq, a plain path
// here) finds the event type in the envelopes the extension writes, so that no record lands in
// the error prefix for want of a key.
func TestTemplateArchivePartitionKey(t *testing.T) {
	tpl, err := renderTemplate(readTemplate(t), map[string]any{"ArchiveToS3": "true", "ArchiveRecordFormat": "ndjson"})
	if err != nil {
		t.Fatal(err)
	}
	var query string
	for _, p := range tplSlice(tplPath(tpl, "Resources", "ArchiveDeliveryStream", "Properties", "ExtendedS3DestinationConfiguration", "ProcessingConfiguration", "Processors")) {
		for _, pp := range tplSlice(tplMap(p)["Parameters"]) {
			if tplMap(pp)["ParameterName"] == "MetadataExtractionQuery" {
				query = fmt.Sprint(tplMap(pp)["ParameterValue"])
			}
		}
	}
	m := regexp.MustCompile(`^\{type: ((?:\.[a-zA-Z]+)+)\}$`).FindStringSubmatch(query)
	if m == nil {
		t.Fatalf("MetadataExtractionQuery %q: not the {type: .a.b} shape this test evaluates", query)
	}
	path := strings.Split(strings.TrimPrefix(m[1], "."), ".")
	meta := testMeta(config{PartitionKey: "request"})
	for _, e := range []event{platformEvent("platform.start", "r1"), logEvent("a text line")} {
		var v any
		if err := json.Unmarshal(meta.appendData(nil, &e, len(meta.partitionKey(&e))), &v); err != nil {
			t.Fatal(err)
		}
		for _, k := range path {
			v = tplMap(v)[k]
		}
		if s, ok := v.(string); !ok || s != string(e.typ) {
			t.Errorf("%s on the envelope of a %s event: got %v, want its type", m[1], e.typ, v)
		}
	}
}
