package main

// The filter that applies the user's controls (exclusion, level, sampling, redaction) before
// anything is buffered, and the redaction of a record's strings.

import (
	"bytes"
	"encoding/json"
	"hash/fnv"
	"io"
	"regexp"
	"strconv"
)

// filter applies the user's controls to each event before it is buffered: exclusion by type,
// a minimum level for JSON log lines, per-invocation sampling of function logs, redaction. It also
// keeps the extension's own log lines out of the stream when the extension type is subscribed.
type filter struct {
	exclude  map[string]bool
	minLevel int
	sample   float64
	redact   []*regexp.Regexp
}

// ownLogMarker is how the extension's own lines look inside an extension event's record; its
// EMF lines carry emfMarker (emf.go).
var ownLogMarker = []byte(`"` + logPrefix)

// The filter runs in two steps around the buffer's lock. screen needs only the event, so it runs
// before the lock and does the costly part there: redaction re-encodes JSON, and under the lock it
// would hold up take, putBack and the answer to Lambda. sampledOut needs the invocation a log line
// belongs to, which the buffer knows, so it runs under the lock.

// screen reports whether e passes the controls that need only the event (the extension's own
// lines, excluded types, the minimum level), counting why not, and redacts e.raw when it passes.
func (f *filter) screen(e *event, st *stats) bool {
	switch {
	case e.typ == typeExtension && (bytes.Contains(e.raw, ownLogMarker) || bytes.Contains(e.raw, emfMarker)):
		st.filteredOwn.Add(1)
		return false
	case f.exclude[string(e.typ)]:
		st.filteredExcluded.Add(1)
		return false
	case isLogType(e.typ) && e.level >= 0 && int(e.level) < f.minLevel:
		st.filteredLevel.Add(1)
		return false
	}
	if len(f.redact) > 0 && isLogType(e.typ) {
		e.raw = redactRecord(e.raw, f.redact)
	}
	return true
}

// sampledOut reports whether sampling drops e, once e's invocation is known, counting it.
// Error lines and worse survive sampling.
func (f *filter) sampledOut(e *event, st *stats) bool {
	if e.typ == typeFunction && f.sample < 1 && e.level < levelError && !sampled(e.requestID, f.sample) {
		st.filteredSampled.Add(1)
		return true
	}
	return false
}

// sampled decides per invocation, so that an invocation's log lines are kept or dropped whole.
// Lines printed outside any invocation (init) are always kept.
func sampled(requestID string, fraction float64) bool {
	if requestID == "" {
		return true
	}
	h := fnv.New64a()
	h.Write([]byte(requestID))
	return float64(h.Sum64()>>11)/(1<<53) < fraction
}

const redacted = "[REDACTED]"

// redactRecord replaces matches in every string value of the event's record (log line text, or
// the string fields of a JSON log line). Events whose text cannot match are returned unchanged,
// byte for byte; a changed event is re-encoded with its members in their original order.
func redactRecord(raw []byte, res []*regexp.Regexp) []byte {
	if bytes.IndexByte(raw, '\\') < 0 {
		// Without escapes the raw text is the decoded text: no match here, no match anywhere.
		hit := false
		for _, re := range res {
			if re.Match(raw) {
				hit = true
				break
			}
		}
		if !hit {
			return raw
		}
	}
	out, changed, err := rewriteRecordStrings(raw, func(s string) string {
		for _, re := range res {
			s = re.ReplaceAllLiteralString(s, redacted)
		}
		return s
	})
	if err != nil || !changed {
		return raw
	}
	return out
}

// rewriteRecordStrings re-encodes a JSON event token by token, passing every string value inside
// its "record" member through fn. Numbers keep their text; member order is kept.
func rewriteRecordStrings(raw []byte, fn func(string) string) ([]byte, bool, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	type frame struct {
		object, inRecord bool
		n                int // tokens written in this container
	}
	var stack []frame
	var out []byte
	changed := false
	key := "" // the last top-level key
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return out, changed, nil
		}
		if err != nil {
			return nil, false, err
		}
		if d, ok := tok.(json.Delim); ok && (d == '}' || d == ']') {
			stack = stack[:len(stack)-1]
			out = append(out, byte(d))
			continue
		}
		isKey, inRecord := false, false
		if len(stack) > 0 {
			top := &stack[len(stack)-1]
			switch {
			case top.n > 0 && top.object && top.n%2 == 1:
				out = append(out, ':')
			case top.n > 0:
				out = append(out, ',')
			}
			isKey = top.object && top.n%2 == 0
			inRecord = top.inRecord || (len(stack) == 1 && !isKey && key == "record")
			top.n++
		}
		switch t := tok.(type) {
		case json.Delim: // { or [
			stack = append(stack, frame{object: t == '{', inRecord: inRecord})
			out = append(out, byte(t))
		case string:
			switch {
			case isKey && len(stack) == 1:
				key = t
			case !isKey && inRecord:
				if r := fn(t); r != t {
					t, changed = r, true
				}
			}
			out = appendJSONString(out, t)
		case json.Number:
			out = append(out, t...)
		case bool:
			out = strconv.AppendBool(out, t)
		case nil:
			out = append(out, "null"...)
		}
	}
}
