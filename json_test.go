package main

// Unit tests of json.go: the batch scanner (checked against encoding/json by FuzzScanBatch), JSON
// string encoding, and the one UTF-8 cutter.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"
)

// scanned is what scanBatch reports for one element, as strings for easy comparison.
type scanned struct {
	raw, typ, requestID, level string
	object, text, badUTF8      bool
}

func scanAll(t *testing.T, body string) ([]scanned, error) {
	t.Helper()
	var out []scanned
	err := scanBatch([]byte(body), func(f eventFields) {
		out = append(out, scanned{
			raw: string(f.raw), typ: unquote(f.typ), requestID: unquote(f.requestID), level: unquote(f.level),
			object: f.object, text: f.recordText, badUTF8: f.badUTF8,
		})
	})
	return out, err
}

func TestScanBatch(t *testing.T) {
	tests := []struct {
		name string
		body string
		want []scanned
	}{
		{"empty array", ` [ ] `, nil},
		{"platform event", `[{"time":"2024-01-01T00:00:00.000Z","type":"platform.start","record":{"requestId":"r1","version":"$LATEST"}}]`,
			[]scanned{{raw: `{"time":"2024-01-01T00:00:00.000Z","type":"platform.start","record":{"requestId":"r1","version":"$LATEST"}}`, typ: "platform.start", requestID: "r1", object: true}}},
		{"text log line", `[{"time":"t","type":"function","record":"hello \"world\"\n"}]`,
			[]scanned{{raw: `{"time":"t","type":"function","record":"hello \"world\"\n"}`, typ: "function", object: true, text: true}}},
		{"json log line", `[{"type":"function","record":{"timestamp":"t","level":"WARN","requestId":"r\u0032","message":"m","nested":{"requestId":"no"}}}]`,
			[]scanned{{raw: `{"type":"function","record":{"timestamp":"t","level":"WARN","requestId":"r\u0032","message":"m","nested":{"requestId":"no"}}}`, typ: "function", requestID: "r2", level: "WARN", object: true}}},
		{"record before type, extra members kept", ` [ {"record" : {"requestId":"a"} , "future":[1,2.5e3,true,null,{}], "type":"platform.newThing"} ] `,
			[]scanned{{raw: `{"record" : {"requestId":"a"} , "future":[1,2.5e3,true,null,{}], "type":"platform.newThing"}`, typ: "platform.newThing", requestID: "a", object: true}}},
		{"elements of the wrong shape", `[1,"x",{"type":7},{"record":"r"}]`,
			[]scanned{{raw: `1`}, {raw: `"x"`}, {raw: `{"type":7}`, object: true}, {raw: `{"record":"r"}`, object: true, text: true}}},
		{"invalid UTF-8 is flagged", "[{\"type\":\"function\",\"record\":\"a\xffb\"}]",
			[]scanned{{raw: "{\"type\":\"function\",\"record\":\"a\xffb\"}", typ: "function", object: true, text: true, badUTF8: true}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := scanAll(t, tt.body)
			if err != nil {
				t.Fatalf("scanBatch: %v", err)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestScanBatchRejects(t *testing.T) {
	for _, body := range []string{
		``, `{}`, `"x"`, `[`, `[{"type":"function"}`, `[{"type":"function",}]`, `[1,]`, `[1 2]`,
		`[{"a" 1}]`, `[{"a":}]`, `[tru]`, `[01]`, `[1.]`, `[1e]`, `[-]`, `["a\x01"]`, `["\q"]`, `["\u12G4"]`,
		`[] []`, `["unterminated]`, `[{"type":"x","record":{"requestId":"r"]`, `[[[[[[`,
	} {
		if _, err := scanAll(t, body); err == nil {
			t.Errorf("scanBatch(%q) accepted invalid input", body)
		} else if json.Valid([]byte(body)) && strings.HasPrefix(strings.TrimSpace(body), "[") {
			t.Errorf("scanBatch(%q) rejected valid JSON: %v", body, err)
		}
	}
}

func TestScanBatchDeepNesting(t *testing.T) {
	// Far deeper than encoding/json's limit: the scanner must neither recurse nor give up.
	depth := 200000
	body := `[{"type":"function","record":{"deep":` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `}}]`
	got, err := scanAll(t, body)
	if err != nil {
		t.Fatalf("scanBatch: %v", err)
	}
	if len(got) != 1 || got[0].typ != "function" {
		t.Fatalf("got %d events, want 1 function event", len(got))
	}
}

// FuzzScanBatch checks the scanner against encoding/json: it accepts exactly the JSON arrays that
// encoding/json accepts, and finds the same type, record.requestId and record.level.
func FuzzScanBatch(f *testing.F) {
	for _, s := range []string{
		`[]`, `[{"time":"2024-01-01T00:00:00.000Z","type":"platform.start","record":{"requestId":"r1"}}]`,
		`[{"type":"function","record":{"level":"INFO","requestId":"r","message":"m\u00e9"}}, {"type":"function","record":"text"}]`,
		`[1,{"type":7},{"record":{"requestId":1}}]`, `[{"type":"a","type":"b"}]`, `[[{"type":"x"}]]`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		var got []eventFields
		err := scanBatch(body, func(f eventFields) { got = append(got, f) })
		var elems []json.RawMessage
		jerr := json.Unmarshal(body, &elems)
		if (err == nil) != (jerr == nil) {
			// encoding/json rejects a top-level non-array through Unmarshal too, so both agree
			// on what a batch is; only a depth beyond encoding/json's limit may differ.
			if !(err == nil && strings.Contains(jerr.Error(), "nested too deeply")) {
				t.Fatalf("scanBatch err=%v, encoding/json err=%v for %q", err, jerr, body)
			}
			return
		}
		if err != nil {
			return
		}
		if len(got) != len(elems) {
			t.Fatalf("got %d elements, encoding/json %d", len(got), len(elems))
		}
		for i, e := range elems {
			if !bytes.Equal(bytes.TrimSpace(e), got[i].raw) && !got[i].badUTF8 {
				t.Fatalf("element %d raw %q, want %q", i, got[i].raw, e)
			}
			var obj map[string]json.RawMessage
			if json.Unmarshal(e, &obj) != nil {
				if got[i].object {
					t.Fatalf("element %d reported as an object: %q", i, e)
				}
				continue
			}
			var typ string
			if json.Unmarshal(obj["type"], &typ) != nil {
				typ = ""
			}
			var rec map[string]json.RawMessage
			var rid, lvl string
			if json.Unmarshal(obj["record"], &rec) == nil {
				_ = json.Unmarshal(rec["requestId"], &rid)
				_ = json.Unmarshal(rec["level"], &lvl)
			}
			if got[i].badUTF8 {
				return // encoding/json replaces invalid UTF-8, so the strings differ by design
			}
			if unquote(got[i].typ) != typ || unquote(got[i].requestID) != rid || unquote(got[i].level) != lvl {
				t.Fatalf("element %d: got type %q requestId %q level %q, want %q %q %q",
					i, unquote(got[i].typ), unquote(got[i].requestID), unquote(got[i].level), typ, rid, lvl)
			}
		}
	})
}

func TestJSONStringEncoding(t *testing.T) {
	for _, s := range []string{"", "plain", "quote\" back\\ nl\n tab\t cr\r", "\x00\x1f\x7f", "é中😀", "bad\xffbyte", "<html>&"} {
		got := appendJSONString(nil, s)
		if len(got) != jsonStringLen(s) {
			t.Errorf("jsonStringLen(%q)=%d, encoded %d bytes", s, jsonStringLen(s), len(got))
		}
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Errorf("%q encoded as invalid JSON %s: %v", s, got, err)
		}
		want, _ := json.Marshal(s)
		var wantBack string
		json.Unmarshal(want, &wantBack)
		if back != wantBack {
			t.Errorf("%q round-trips as %q, want %q", s, back, wantBack)
		}
	}
}

// TestUTF8Prefix: the one UTF-8 cutter never cuts a character and keeps all it can; records.go's
// truncate is it, for strings.
func TestUTF8Prefix(t *testing.T) {
	for _, s := range []string{"", "plain ascii", "é", "naïve café", "日本語のテキスト", "😀a😀bc😀", "a\u0301b"} {
		for n := 0; n <= len(s)+1; n++ {
			k := utf8Prefix(s, n)
			switch {
			case k > n || k > len(s):
				t.Errorf("utf8Prefix(%q, %d) = %d: longer than allowed", s, n, k)
			case !utf8.ValidString(s[:k]) || (k < len(s) && !utf8.RuneStart(s[k])):
				t.Errorf("utf8Prefix(%q, %d) = %d: cuts a character", s, n, k)
			case k < len(s) && k+len(string([]rune(s[k:])[:1])) <= n:
				t.Errorf("utf8Prefix(%q, %d) = %d: the next character fits too", s, n, k)
			}
			if got := utf8Prefix([]byte(s), n); got != k {
				t.Errorf("utf8Prefix([]byte(%q), %d) = %d, the string form %d", s, n, got, k)
			}
			if got := truncate(s, n); got != s[:k] {
				t.Errorf("truncate(%q, %d) = %q, utf8Prefix keeps %q", s, n, got, s[:k])
			}
		}
	}
}
