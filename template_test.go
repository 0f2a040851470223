package main

import (
	"encoding/json"
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

	"github.com/awslabs/goformation/v7"
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

// templateCases are the parameter sets every template test renders.
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

// TestTemplateGoformation parses every rendered, packaged variant with
// goformation, which knows the current resource specification and rejects
// unknown properties and wrong types, and checks the typed values.
func TestTemplateGoformation(t *testing.T) {
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		data, err := json.Marshal(packageTemplate(tpl))
		if err != nil {
			t.Fatal(err)
		}
		parsed, err := goformation.ParseJSON(data)
		if err != nil {
			t.Fatalf("goformation: %v", err)
		}

		streams := parsed.GetAllKinesisStreamResources()
		if len(streams) != 1 {
			t.Fatalf("streams: got %d, want 1", len(streams))
		}
		for _, s := range streams {
			if s.StreamEncryption == nil {
				t.Fatal("stream has no StreamEncryption")
			}
			wantKey := "alias/aws/kinesis"
			if params["KmsKeyArn"] != "" {
				wantKey = templateKeyArn
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
			if fn.Environment == nil || !slices.Equal(slices.Sorted(maps.Keys(fn.Environment.Variables)), []string{"KINESIS_TELEMETRY_STREAM"}) {
				t.Errorf("%s environment: got %+v, want KINESIS_TELEMETRY_STREAM", id, fn.Environment)
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

// TestTemplatePolicy checks the managed policy on the raw, rendered JSON
// (goformation does not type policy documents): exactly kinesis:PutRecords on
// this stack's stream, plus kms:GenerateDataKey on the customer key when one
// is given, and nothing else.
func TestTemplatePolicy(t *testing.T) {
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		stream := tplOneOfType(t, tpl, "AWS::Kinesis::Stream")
		policy := tplOneOfType(t, tpl, "AWS::IAM::ManagedPolicy")
		props := tplMap(tplPath(tpl, "Resources", policy, "Properties"))
		for k := range props {
			// Attaching it to roles, users or groups here would grant it to
			// principals the user did not pick.
			if k != "PolicyDocument" && k != "Description" {
				t.Errorf("policy has property %s, want only PolicyDocument and Description", k)
			}
		}
		doc := tplMap(props["PolicyDocument"])
		if doc["Version"] != "2012-10-17" {
			t.Errorf("policy Version: got %v, want 2012-10-17", doc["Version"])
		}
		type grant struct {
			action   string
			resource any
		}
		want := []grant{{"kinesis:PutRecords", tplGetAtt(stream, "Arn")}}
		if params["KmsKeyArn"] != "" {
			want = append(want, grant{"kms:GenerateDataKey", templateKeyArn})
		}
		statements, _ := doc["Statement"].([]any)
		var got []grant
		for i, s := range statements {
			st := tplMap(s)
			for k := range st {
				if k != "Sid" && k != "Effect" && k != "Action" && k != "Resource" {
					t.Errorf("statement %d has %s: want only Sid, Effect, Action, Resource", i, k)
				}
			}
			if st["Effect"] != "Allow" {
				t.Errorf("statement %d Effect: got %v, want Allow", i, st["Effect"])
			}
			actions, ok := tplStrings(st["Action"])
			if !ok || len(actions) != 1 {
				t.Errorf("statement %d Action: got %v, want exactly one action", i, st["Action"])
				continue
			}
			res := st["Resource"]
			if list, ok := res.([]any); ok && len(list) == 1 {
				res = list[0]
			}
			got = append(got, grant{actions[0], res})
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("policy grants:\n got %v\nwant %v", got, want)
		}
	})
}

// TestTemplateDemoFunction checks how the demo function is wired: its
// stream variable names the stream this template creates, it carries the
// x86_64 layer, its role holds the managed policy and basic execution, and
// it logs into the log group with retention.
func TestTemplateDemoFunction(t *testing.T) {
	forEachRenderedTemplate(t, func(t *testing.T, params map[string]any, tpl map[string]any) {
		fns := tplResourcesOfType(tpl, "AWS::Lambda::Function")
		if params["CreateDemoFunction"] != "true" {
			if len(fns)+len(tplResourcesOfType(tpl, "AWS::IAM::Role"))+len(tplResourcesOfType(tpl, "AWS::Logs::LogGroup")) != 0 {
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
		if tplPath(tpl, "Resources", target, "Type") != "AWS::Kinesis::Stream" {
			t.Errorf("KINESIS_TELEMETRY_STREAM: got %v, want a Ref or GetAtt to a stream this template creates", streamVar)
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
		stream := tplOneOfType(t, tpl, "AWS::Kinesis::Stream")
		want := map[string]any{
			"LayerVersionArnX86":   tplRef(x86),
			"LayerVersionArnArm64": tplRef(arm),
			"StreamName":           tplRef(stream),
			"StreamArn":            tplGetAtt(stream, "Arn"),
			"PolicyArn":            tplRef(tplOneOfType(t, tpl, "AWS::IAM::ManagedPolicy")),
		}
		outputs := tplMap(tpl["Outputs"])
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
// predates these properties, and it still requires ShardCount, which
// on-demand streams (2021) must not have. Each entry must be reported at
// least once, so that the list stays exact.
var cfnLintWrong = []cfnLintMessage{
	{"Resources > TelemetryStream > Properties > StreamModeDetails", "StreamModeDetails is not a valid property of AWS::Kinesis::Stream"},
	{"Resources > TelemetryStream > Properties", "Required property ShardCount missing for type AWS::Kinesis::Stream"},
	{"Resources > ExtensionLayerX86 > Properties > CompatibleArchitectures", "CompatibleArchitectures is not a valid property of AWS::Lambda::LayerVersion"},
	{"Resources > ExtensionLayerArm64 > Properties > CompatibleArchitectures", "CompatibleArchitectures is not a valid property of AWS::Lambda::LayerVersion"},
	{"Resources > DemoFunction > Properties > Architectures", "Architectures is not a valid property of AWS::Lambda::Function"},
	{"Resources > DemoFunction > Properties > LoggingConfig", "LoggingConfig is not a valid property of AWS::Lambda::Function"},
}

type cfnLintMessage struct {
	Resource string `json:"resource"`
	Message  string `json:"message"`
}

// cfnLintCases are the parameter sets cfn-lint checks. Both create the demo:
// cfn-lint 1.9.7 does not resolve intrinsic functions inside resources whose
// Condition is false and then reports every Ref in them as "not supported
// here"; the other tests cover CreateDemoFunction=false.
var cfnLintCases = []struct {
	name   string
	params map[string]string
}{
	{"defaults", nil},
	{"provisioned with customer key", map[string]string{
		"StreamName": "telemetry", "StreamMode": "PROVISIONED", "ShardCount": "3", "KmsKeyArn": templateKeyArn,
	}},
}

// cfnLintScript runs cfn-lint's validator through its JavaScript API, which
// gives structured results (the CLI, node_modules/.bin/cfn-lint validate,
// prints the same findings as colored text).
const cfnLintScript = `
const [lintDir, file, params, out] = process.argv.slice(2);
const result = require(lintDir).validateFile(file, {parameters: JSON.parse(params)});
require('fs').writeFileSync(out, JSON.stringify(result));
`

// TestTemplateCfnLint runs the npm cfn-lint validator on the packaged
// template and fails on every finding except those in cfnLintWrong.
func TestTemplateCfnLint(t *testing.T) {
	lintDir, err := filepath.Abs(filepath.Join("node_modules", "cfn-lint"))
	if err != nil {
		t.Fatal(err)
	}
	requireNodeTool(t, lintDir)

	dir := t.TempDir()
	data, err := json.MarshalIndent(packageTemplate(readTemplate(t)), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	packaged := filepath.Join(dir, "packaged.json")
	script := filepath.Join(dir, "lint.js")
	if err := os.WriteFile(packaged, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(script, []byte(cfnLintScript), 0o644); err != nil {
		t.Fatal(err)
	}

	seen := map[cfnLintMessage]bool{}
	for _, tc := range cfnLintCases {
		t.Run(tc.name, func(t *testing.T) {
			params := tc.params
			if params == nil {
				params = map[string]string{}
			}
			p, _ := json.Marshal(params)
			out := filepath.Join(dir, "result.json")
			cmd := exec.Command("node", script, lintDir, packaged, string(p), out)
			if msg, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("cfn-lint: %v\n%s", err, msg)
			}
			raw, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			var result struct {
				Errors map[string][]cfnLintMessage `json:"errors"`
			}
			if err := json.Unmarshal(raw, &result); err != nil {
				t.Fatalf("cfn-lint result: %v\n%s", err, raw)
			}
			for level, msgs := range result.Errors {
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
