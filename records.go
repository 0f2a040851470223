package main

// Records: what lands in the stream, within Kinesis's limits. The formats' vocabulary, the
// envelope every event is wrapped in (recordMeta: ids, the function's names, truncation to the
// record limit, partition keys) and the event and ndjson formats. The formats other tools read
// natively, kpl and cloudwatch, are formats.go's. Pure functions from buffered events to record
// data, fuzzed by FuzzRecordBuilding; sending is the shipper's and the client's.

import (
	"encoding/json"
	"hash/fnv"
	"strconv"
)

// PutRecords limits. Sizes count record data plus partition key, before base64.
const (
	maxRecordsPerCall = 500
	maxCallBytes      = 5 << 20
	maxRecordBytes    = 1 << 20
)

// recordFormat is KINESIS_TELEMETRY_RECORD_FORMAT.
type recordFormat string

const (
	formatEvent      recordFormat = "event"      // one envelope per record
	formatNDJSON     recordFormat = "ndjson"     // envelopes, one per line, many per record
	formatKPL        recordFormat = "kpl"        // KPL aggregated records of envelopes
	formatCloudWatch recordFormat = "cloudwatch" // CloudWatch Logs subscription records
)

// recordFormatNames are the allowed values, the default first.
var recordFormatNames = []string{string(formatEvent), string(formatNDJSON), string(formatKPL), string(formatCloudWatch)}

// aggregated reports whether a record holds many events.
func (f recordFormat) aggregated() bool { return f != formatEvent }

// eventsPerCall is the most events one call can carry in format f.
func (f recordFormat) eventsPerCall() int {
	if f.aggregated() {
		return 50 * maxRecordsPerCall
	}
	return maxRecordsPerCall
}

// partitionMode is KINESIS_TELEMETRY_PARTITION_KEY.
type partitionMode string

const (
	partitionRequest  partitionMode = "request"
	partitionFunction partitionMode = "function"
	partitionRandom   partitionMode = "random"
)

// textRecord is KINESIS_TELEMETRY_TEXT_RECORD: a text line's record as Lambda sends it (a string)
// or as {"message": …}, so that event.record is an object in every event.
type textRecord string

const (
	textAsString textRecord = "string"
	textAsObject textRecord = "object"
)

// logFormat is the function's AWS_LAMBDA_LOG_FORMAT.
type logFormat string

const (
	logText logFormat = "Text"
	logJSON logFormat = "JSON"
)

// pendingRecord is one Kinesis record being sent: one event, or several (ndjson).
type pendingRecord struct {
	events []event
	key    string
	size   int    // data bytes, after any truncation
	data   []byte // the data when built at packing (kpl, cloudwatch); else encodeBody builds it
	// hashKey, when set, is the ExplicitHashKey (decimal) that routes the record instead of its
	// key's MD5: the shutdown's last counts record, sent round a shard that refuses it (shardPacers.copyRoutes).
	hashKey string
}

// maxNDJSONLines is the most lines an ndjson record holds: Firehose's JSON record
// de-aggregation splits at most 500 records out of one Kinesis record.
const maxNDJSONLines = 500

// fitCall returns how many records, from the first, fit in one PutRecords call.
func fitCall(recs []pendingRecord) int {
	total := 0
	for i, r := range recs {
		total += r.size + len(r.key)
		if i == maxRecordsPerCall || (i > 0 && total > maxCallBytes) {
			return i
		}
	}
	return len(recs)
}

func eventsOf(recs []pendingRecord) []event {
	if len(recs) == 0 {
		return nil
	}
	if len(recs) == 1 {
		return recs[0].events
	}
	var out []event
	for _, r := range recs {
		out = append(out, r.events...)
	}
	return out
}

// recordMeta is what every record says about where it comes from, and how records are keyed.
type recordMeta struct {
	fields    []byte // `"function":…,"version":…,"account":…,"region":…`, encoded once
	fn        functionID
	region    string
	envID     string
	function  string
	partition partitionMode

	format     recordFormat
	textObject bool // KINESIS_TELEMETRY_TEXT_RECORD=object: text lines' record becomes {"message":…}
	cloudWatch cloudWatchNames
}

func newRecordMeta(fn functionID, rs recordSettings, region, envID string) recordMeta {
	m := recordMeta{
		fn: fn, envID: envID, function: fn.Name, partition: rs.Partition,
		format: rs.Format, textObject: rs.Text == textAsObject,
		cloudWatch: cloudWatchNames{
			owner: fn.Account, group: rs.LogGroup, stream: rs.LogStream,
			filter: rs.SubscriptionFilter, format: rs.LogFormat,
		},
	}
	if m.cloudWatch.owner == "" {
		// Without the accountId feature of register, the stream's account is the best owner.
		m.cloudWatch.owner = rs.StreamAccount
	}
	m.setRegion(region)
	return m
}

// functionID is the function the records come from, as Lambda's register answer names it.
type functionID struct{ Name, Version, Account string }

// recordSettings are the settings records are built by (config.go parses them).
type recordSettings struct {
	Format                                  recordFormat
	Partition                               partitionMode
	Text                                    textRecord
	LogFormat                               logFormat
	LogGroup, LogStream, SubscriptionFilter string // the log the cloudwatch format mirrors
	StreamAccount                           string // the stream's account, when its ARN names one
}

// setRegion encodes the fields every record carries.
func (m *recordMeta) setRegion(region string) {
	b := []byte(`"function":`)
	b = appendJSONString(b, m.fn.Name)
	b = append(b, `,"version":`...)
	b = appendJSONString(b, m.fn.Version)
	b = append(b, `,"account":`...)
	b = appendJSONString(b, m.fn.Account)
	b = append(b, `,"region":`...)
	b = appendJSONString(b, region)
	m.fields, m.region = b, region
}

// partitionKey keeps one invocation's events on one shard, in order ("request"), all of one
// function's ("function"), or spreads them evenly ("random", derived from the event id so that a
// retry goes to the same shard).
func (m *recordMeta) partitionKey(e *event) string {
	if m.format == formatCloudWatch && m.cloudWatch.stream != "" {
		// CloudWatch's ByLogStream distribution: one environment's events stay in order.
		return truncate(m.cloudWatch.stream, maxKeyBytes)
	}
	switch m.partition {
	case partitionFunction:
		if m.function != "" {
			return truncate(m.function, maxKeyBytes)
		}
	case partitionRandom:
		h := fnv.New64a()
		h.Write([]byte(e.idPrefix))
		h.Write(strconv.AppendUint(nil, e.seq, 10))
		return strconv.FormatUint(h.Sum64(), 16)
	default:
		if e.requestID != "" {
			return truncate(e.requestID, maxKeyBytes)
		}
	}
	return m.envID
}

// maxKeyBytes is Kinesis's limit on a partition key. maxFieldBytes bounds each of the envelope's
// fields taken from events (requestId, traceId, tenantId, and a truncated event's time and type):
// Lambda's own are far shorter, but a function's JSON log line can carry any "requestId", and an
// envelope must fit its record whatever an event holds.
const maxKeyBytes, maxFieldBytes = 256, 256

// truncate cuts s to at most n bytes at a character boundary.
func truncate(s string, n int) string { return s[:utf8Prefix(s, n)] }

// sameRecord reports whether b may share an aggregated record with a.
func (m *recordMeta) sameRecord(a, b *event) bool {
	return m.partition == partitionRandom || m.partitionKey(a) == m.partitionKey(b)
}

// dataSize is the length of the record data appendData writes for e.
func (m *recordMeta) dataSize(e *event, keyLen int) int {
	return m.dataSizeWithin(e, maxRecordBytes-keyLen)
}

// dataSizeWithin is the length of the record data appendDataWithin writes for e.
func (m *recordMeta) dataSizeWithin(e *event, limit int) int {
	n := m.envelopeSize(e)
	if n > limit {
		return len(m.appendTruncated(nil, e, limit))
	}
	return n
}

func (m *recordMeta) envelopeSize(e *event) int {
	const fixed = len(`{"id":"-",,"requestId":,"event":}`)
	n := fixed + len(e.idPrefix) + digits(e.seq) + len(m.fields) + jsonStringLen(truncate(e.requestID, maxFieldBytes)) + len(e.raw)
	if e.traceID != "" {
		n += len(`,"traceId":`) + jsonStringLen(truncate(e.traceID, maxFieldBytes))
	}
	if e.tenantID != "" {
		n += len(`,"tenantId":`) + jsonStringLen(truncate(e.tenantID, maxFieldBytes))
	}
	if m.wrapsText(e) {
		n += len(textWrapOpen) + len(textWrapClose)
	}
	return n
}

// wrapsText reports whether e's record, a text line, is written as {"message":"…"}, so that
// event.record has one JSON type in every document (OpenSearch maps a field by the first one).
func (m *recordMeta) wrapsText(e *event) bool { return m.textObject && e.text }

const textWrapOpen, textWrapClose = `{"message":`, `}`

// appendData appends the record data for one event: the envelope with the event as received, or,
// for an event too large for a record, the envelope with the event's record cut to fit and
// "truncatedBytes" saying how many bytes were cut.
func (m *recordMeta) appendData(dst []byte, e *event, keyLen int) []byte {
	return m.appendDataWithin(dst, e, maxRecordBytes-keyLen)
}

// appendDataWithin is appendData for data of at most limit bytes.
func (m *recordMeta) appendDataWithin(dst []byte, e *event, limit int) []byte {
	if m.envelopeSize(e) > limit {
		return m.appendTruncated(dst, e, limit)
	}
	if m.wrapsText(e) {
		if start, end := recordSpan(e.raw); start >= 0 {
			dst = m.appendEnvelopeHead(dst, e, -1)
			dst = append(dst, e.raw[:start]...)
			dst = append(dst, textWrapOpen...)
			dst = append(dst, e.raw[start:end]...)
			dst = append(dst, textWrapClose...)
			dst = append(dst, e.raw[end:]...)
			return append(dst, '}')
		}
	}
	return m.appendEnvelope(dst, e, e.raw, -1)
}

func (m *recordMeta) appendEnvelope(dst []byte, e *event, raw []byte, truncated int) []byte {
	dst = m.appendEnvelopeHead(dst, e, truncated)
	dst = append(dst, raw...)
	return append(dst, '}')
}

// appendEnvelopeHead writes the envelope up to its event: {"id":…,…,"event":
func (m *recordMeta) appendEnvelopeHead(dst []byte, e *event, truncated int) []byte {
	dst = append(dst, `{"id":"`...)
	dst = append(dst, e.idPrefix...)
	dst = append(dst, '-')
	dst = strconv.AppendUint(dst, e.seq, 10)
	dst = append(dst, `",`...)
	dst = append(dst, m.fields...)
	dst = append(dst, `,"requestId":`...)
	dst = appendJSONString(dst, truncate(e.requestID, maxFieldBytes))
	if e.traceID != "" {
		dst = append(dst, `,"traceId":`...)
		dst = appendJSONString(dst, truncate(e.traceID, maxFieldBytes))
	}
	if e.tenantID != "" {
		dst = append(dst, `,"tenantId":`...)
		dst = appendJSONString(dst, truncate(e.tenantID, maxFieldBytes))
	}
	if truncated >= 0 {
		dst = append(dst, `,"truncatedBytes":`...)
		dst = strconv.AppendInt(dst, int64(truncated), 10)
	}
	return append(dst, `,"event":`...)
}

// appendTruncated writes the event with its record replaced by a string holding the record's
// text (the log line, or the JSON of an object record) cut at a character boundary to fit limit.
func (m *recordMeta) appendTruncated(dst []byte, e *event, limit int) []byte {
	var ev struct {
		Time   json.RawMessage `json:"time"`
		Type   json.RawMessage `json:"type"`
		Record json.RawMessage `json:"record"`
	}
	_ = json.Unmarshal(e.raw, &ev)
	text := []byte(ev.Record)
	if e.text {
		var s string
		if json.Unmarshal(ev.Record, &s) == nil {
			text = []byte(s)
		}
	}
	build := func(keep int) []byte {
		var inner []byte
		inner = append(inner, `{"time":`...)
		inner = appendBoundedValue(inner, ev.Time)
		inner = append(inner, `,"type":`...)
		inner = appendBoundedValue(inner, ev.Type)
		inner = append(inner, `,"record":`...)
		if m.textObject {
			inner = append(inner, textWrapOpen...)
		}
		inner = appendJSONBytes(inner, text[:keep])
		if m.textObject {
			inner = append(inner, textWrapClose...)
		}
		inner = append(inner, '}')
		return inner
	}
	// Escaping can make the text longer than its bytes: with the room the envelope leaves (its
	// length with no text and the largest possible count of cut bytes), keep whole characters,
	// in one pass, while their escaped form fits.
	keep := fitEscaped(text, limit-len(m.appendEnvelope(nil, e, build(0), len(text))))
	return m.appendEnvelope(dst, e, build(keep), len(text)-keep)
}

// appendBoundedValue writes a truncated event's time or type: as it was when it is at most
// maxFieldBytes long (always, from Lambda), else as a string of its start, so that no field can
// keep the envelope over its limit.
func appendBoundedValue(dst, v []byte) []byte {
	switch {
	case len(v) == 0:
		return append(dst, "null"...)
	case len(v) <= maxFieldBytes:
		return append(dst, v...)
	}
	return appendJSONBytes(dst, v[:fitEscaped(v, maxFieldBytes-2)])
}

func digits(n uint64) int {
	d := 1
	for n >= 10 {
		n /= 10
		d++
	}
	return d
}

// appendRecordData appends the data of an event or ndjson record: its events' envelopes, each
// followed by a newline when lines is set (ndjson).
func (m *recordMeta) appendRecordData(dst []byte, r *pendingRecord, lines bool) []byte {
	for k := range r.events {
		dst = m.appendData(dst, &r.events[k], len(r.key))
		if lines {
			dst = append(dst, '\n')
		}
	}
	return dst
}

// cloudWatchNames are the fields of a DATA_MESSAGE that say which log it mirrors.
type cloudWatchNames struct {
	owner, group, stream, filter string
	format                       logFormat
}

// eventParts returns the raw "time" and "record" values of an event scanBatch has validated.
func eventParts(raw []byte) (timeTok, record []byte) {
	s := scanner{data: raw}
	_ = s.members(func(key []byte) error {
		start := s.pos
		err := s.value()
		switch string(key) {
		case `"time"`:
			timeTok = raw[start:s.pos]
		case `"record"`:
			record = raw[start:s.pos]
		}
		return err
	})
	return timeTok, record
}

// recordSpan returns where the event's "record" value starts and ends in raw, or -1, -1.
func recordSpan(raw []byte) (start, end int) {
	start, end = -1, -1
	s := scanner{data: raw}
	_ = s.members(func(key []byte) error {
		from := s.pos
		err := s.value()
		if string(key) == `"record"` {
			start, end = from, s.pos
		}
		return err
	})
	return start, end
}

// callSize is an event's share of a call, for taking events from the buffer.
func (m *recordMeta) callSize(e *event) int {
	key := m.partitionKey(e)
	return m.dataSize(e, len(key)) + len(key) + 1
}
