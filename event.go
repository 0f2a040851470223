package main

// The event as it waits in the buffer: its type and the vocabulary of types the extension acts on,
// how a scanned batch element becomes one, and the levels of JSON log lines.

import (
	"bytes"
	"crypto/rand"
	"encoding/base32"
	"strings"
	"time"
)

// event is one Telemetry API event as it waits in the buffer.
type event struct {
	raw       []byte // the event exactly as received (invalid UTF-8 replaced)
	typ       eventType
	requestID string // the event's own, or the invocation it was printed in
	level     int8   // index into logLevels for JSON log lines, levelUnknown when unknown
	text      bool   // record is a string (a text log line)
	idPrefix  string // with seq, the event's id
	seq       uint64
	arrived   time.Time
	traceID   string // Root of the invocation's X-Amzn-Trace-Id, from its platform.start
	tenantID  string // the invocation's tenant (functions with tenant isolation)

	// What the sender learnt about the event: tried, it was in a call that did not store it
	// (a re-send is a retry); inDoubt, it was in a call of unknown outcome (a re-send may
	// be a duplicate, and if it is never confirmed its fate is unknown, not dropped).
	tried, inDoubt bool
}

// eventType is a Telemetry API event's type. Lambda adds types over time: any name is valid and
// shipped as it is; these are the ones the extension acts on.
type eventType string

const (
	typeFunction            eventType = "function"
	typeExtension           eventType = "extension"
	typePlatformInitStart   eventType = "platform.initStart"
	typePlatformStart       eventType = "platform.start"
	typePlatformRuntimeDone eventType = "platform.runtimeDone"
	typePlatformReport      eventType = "platform.report"
	typePlatformRestore     eventType = "platform.restoreStart"
	typePlatformLogsDropped eventType = "platform.logsDropped"
)

// isPlatform reports whether the event is a platform event, which are never dropped to make room.
func (e *event) isPlatform() bool { return !isLogType(e.typ) }

func isLogType(t eventType) bool { return t == typeFunction || t == typeExtension }

// size is what the event costs the buffer: its bytes plus bookkeeping.
func (e *event) size() int { return len(e.raw) + 128 }

// newEvent makes the buffered event of a scanned one. Log lines keep f.raw's memory; other
// events get their own copy.
func newEvent(f eventFields) event {
	typ := internType(unquote(f.typ))
	raw := f.raw[:len(f.raw):len(f.raw)]
	switch {
	case f.badUTF8:
		raw = bytes.ToValidUTF8(raw, []byte("\uFFFD"))
	case !isLogType(typ):
		raw = bytes.Clone(raw)
	}
	e := event{raw: raw, typ: typ, level: levelUnknown, text: f.recordText}
	if f.requestID != nil {
		e.requestID = unquote(f.requestID)
	}
	if f.level != nil {
		e.level = int8(lineLevel(unquote(f.level)))
	}
	if !isLogType(typ) {
		// Only Lambda's own records: a JSON log line's "tenantId" or "tracing" is the user's.
		e.traceID = parseTraceHeader(unquote(f.traceValue)).Root
		e.tenantID = unquote(f.tenantID)
	}
	return e
}

// traceHeader is an X-Amzn-Trace-Id value ("Root=1-…;Parent=…;Sampled=1") split into its parts.
type traceHeader struct {
	Root, Parent string
	Sampled      bool
}

// parseTraceHeader splits an X-Amzn-Trace-Id value; a part without "=" is passed over, and where
// a key repeats, the first one counts.
func parseTraceHeader(v string) traceHeader {
	var h traceHeader
	var seen [3]bool
	for part := range strings.SplitSeq(v, ";") {
		k, val, ok := strings.Cut(strings.TrimSpace(part), "=")
		switch {
		case !ok:
		case k == "Root" && !seen[0]:
			h.Root, seen[0] = val, true
		case k == "Parent" && !seen[1]:
			h.Parent, seen[1] = val, true
		case k == "Sampled" && !seen[2]:
			h.Sampled, seen[2] = val == "1", true
		}
	}
	return h
}

// internType avoids an allocation per event for the common types.
func internType(t string) eventType {
	switch eventType(t) {
	case typeFunction:
		return typeFunction
	case typeExtension:
		return typeExtension
	case typePlatformStart:
		return typePlatformStart
	case typePlatformRuntimeDone:
		return typePlatformRuntimeDone
	case typePlatformReport:
		return typePlatformReport
	}
	return eventType(t)
}

// The levels of JSON-format function logs, in order: a level is its index in logLevels
// (KINESIS_TELEMETRY_MIN_LEVEL, and the level a log line states), levelUnknown when a line states
// none of them.
const (
	levelUnknown = iota - 1
	levelTrace
	levelDebug
	levelInfo
	levelWarn
	levelError
	levelFatal
)

var logLevels = []string{
	levelTrace: "TRACE", levelDebug: "DEBUG", levelInfo: "INFO",
	levelWarn: "WARN", levelError: "ERROR", levelFatal: "FATAL",
}

// parseLevel returns the level a name of logLevels stands for, in any case, or levelUnknown.
func parseLevel(s string) int {
	for i, l := range logLevels {
		if strings.EqualFold(s, l) {
			return i
		}
	}
	return levelUnknown
}

// lineLevel is the level a log line states: a name of logLevels, or a common spelling that is
// not one of them.
func lineLevel(s string) int {
	if i := parseLevel(s); i != levelUnknown {
		return i
	}
	switch strings.ToUpper(s) {
	case "WARNING":
		return levelWarn
	case "CRITICAL":
		return levelFatal
	}
	return levelUnknown
}

// newIDPrefix returns a random prefix for event ids: ids are <prefix>-<sequence>, unique across
// environments, extension restarts and SnapStart clones.
func newIDPrefix() string {
	var b [10]byte
	_, _ = rand.Read(b[:])
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b[:]))
}
