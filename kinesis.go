package main

// The Kinesis side: records built from buffered events, PutRecords request bodies within the
// service's limits, SigV4 signing, the call itself with the classification of its answer, and the
// shipper that retries only what failed.

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"
	"unsafe"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
)

// PutRecords limits. Sizes count record data plus partition key, before base64.
const (
	maxRecordsPerCall = 500
	maxCallBytes      = 5 << 20
	maxRecordBytes    = 1 << 20
)

// shipper moves events from the buffer into Kinesis. One ship round runs at a time; every event
// it takes from the buffer ends delivered, dropped and counted, or back at the buffer's front.
type shipper struct {
	cfg   config
	buf   *buffer
	stats *stats
	logs  *logger
	meta  recordMeta

	mu       sync.Mutex // one round at a time; guards the fields below
	client   *kinesisClient
	body     []byte       // reused request body
	scratch  []byte       // reused record data
	gz       *gzip.Writer // reused by cloudwatch records
	lastSent time.Time
	countsAt time.Time
	sending  atomic.Bool // a PutRecords call is on the wire (read without mu)
	countsOf lossMarks

	// newClient builds the Kinesis client on first use, so that loading the AWS configuration
	// stays off the start-up path. Tests replace it.
	newClient func(ctx context.Context) (*kinesisClient, error)
}

func newShipper(cfg config, buf *buffer, st *stats, logs *logger, meta recordMeta) *shipper {
	s := &shipper{cfg: cfg, buf: buf, stats: st, logs: logs, meta: meta}
	s.newClient = func(ctx context.Context) (*kinesisClient, error) {
		return loadKinesisClient(ctx, cfg, &s.meta, st, logs)
	}
	return s
}

// ship sends the events buffered before the mark until none is left or ctx ends. Events not
// confirmed by Kinesis when ctx ends go back to the front of the buffer.
func (s *shipper) ship(ctx context.Context, before uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n, _ := s.buf.state(); n == 0 {
		return nil
	}
	if s.client == nil {
		c, err := s.newClient(ctx)
		if err != nil {
			// Without a region or configuration nothing can ever be sent: keep the events while
			// the buffer has room (the cap drops and counts the oldest), and say so once.
			s.logs.once("client", "kinesis: %v; telemetry is buffered and dropped when the buffer is full", err)
			return nil
		}
		s.client = c
	}
	defer s.stats.noteFlush(time.Now(), s.stats.flushCounters())
	for ctx.Err() == nil {
		evs := s.buf.take(before, s.eventsPerCall(), maxCallBytes, s.recordSize)
		if len(evs) == 0 {
			return nil
		}
		recs := s.packRecords(evs)
		if n := fitCall(recs); n < len(recs) {
			s.buf.putBack(eventsOf(recs[n:]))
			recs = recs[:n]
		}
		if err := s.deliver(ctx, recs); err != nil {
			return err
		}
	}
	return ctx.Err()
}

func (s *shipper) eventsPerCall() int {
	if s.cfg.RecordFormat.aggregated() {
		return 50 * maxRecordsPerCall
	}
	return maxRecordsPerCall
}

// deliver sends recs with PutRecords, re-sending only the entries that failed with a retryable
// error, with full-jitter backoff, until all are delivered or dropped, or ctx ends.
func (s *shipper) deliver(ctx context.Context, recs []pendingRecord) error {
	for attempt := 0; ; attempt++ {
		s.body = s.encodeBody(s.body[:0], recs)
		s.stats.calls.Add(1)
		s.stats.bytesSent.Add(uint64(len(s.body)))
		if attempt > 0 {
			s.stats.retries.Add(1)
		}
		s.sending.Store(true)
		results, err := s.client.putRecords(ctx, s.body, len(recs))
		s.sending.Store(false)
		s.lastSent = time.Now()
		var retry []pendingRecord
		switch {
		case err != nil && ctx.Err() != nil:
			// The call was cut short by the flush deadline: Kinesis may or may not have stored
			// the records. Sending them again later risks a duplicate (same id); dropping them
			// would risk a loss.
			s.stats.unconfirmed.Add(telemetryEvents(eventsOf(recs)))
			s.buf.putBack(eventsOf(recs))
			return ctx.Err()
		case err != nil && !isRetryable(err):
			s.drop(recs, err)
			return nil
		case err != nil:
			s.logs.once("retry:"+errorCode(err), "kinesis: PutRecords failed, retrying: %v", err)
			if errorCode(err) == "ProvisionedThroughputExceededException" {
				s.stats.throttles.Add(1)
			}
			if errorCode(err) == "ExpiredTokenException" {
				s.client.invalidateCredentials()
			}
			retry = recs
		default:
			for i, r := range results {
				switch {
				case r.ErrorCode == "":
					s.delivered(recs[i])
				case isRetryableCode(r.ErrorCode, 0):
					if r.ErrorCode == "ProvisionedThroughputExceededException" {
						s.stats.throttles.Add(1)
					}
					retry = append(retry, recs[i])
				default:
					s.drop(recs[i:i+1], &apiError{Code: r.ErrorCode, Message: r.ErrorMessage})
				}
			}
		}
		if len(retry) == 0 {
			return nil
		}
		recs = retry
		wait := backoff(attempt)
		if deadline, ok := ctx.Deadline(); ok {
			// Leave time for another attempt before the deadline rather than sleep through it.
			wait = min(wait, time.Until(deadline)/2)
		}
		if !sleepCtx(ctx, wait) {
			s.buf.putBack(eventsOf(recs))
			return ctx.Err()
		}
	}
}

// backoff is "full jitter": a random wait up to an exponentially growing cap.
func backoff(attempt int) time.Duration {
	const base, ceiling = 50 * time.Millisecond, 2 * time.Second
	limit := ceiling
	if attempt < 6 {
		limit = min(ceiling, base<<attempt)
	}
	return time.Duration(rand.Int64N(int64(limit) + 1))
}

// sleepCtx waits for d and reports false if ctx ended first. The timer lives only while the
// extension is awake: no send, and so no backoff, spans an /event/next.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (s *shipper) delivered(r pendingRecord) {
	s.stats.delivered.Add(telemetryEvents(r.events))
	s.stats.records.Add(1)
	s.buf.release(r.events)
}

// drop forgets records Kinesis will never accept, counts them under the error's code and says why
// once per code.
func (s *shipper) drop(recs []pendingRecord, err error) {
	code := errorCode(err)
	var n uint64
	for _, r := range recs {
		n += telemetryEvents(r.events)
		s.buf.release(r.events)
	}
	s.stats.dropRejected(code, n)
	s.logs.once("drop:"+code, "kinesis: PutRecords rejected %d events, which are dropped and counted: %v%s", n, err, hint(code, s.cfg, s.meta.region))
}

// dropRemaining empties the buffer at shutdown, counting what could not be sent in time.
func (s *shipper) dropRemaining(st *stats) {
	for {
		evs := s.buf.take(everything, 1<<20, 1<<62, func(*event) int { return 0 })
		if len(evs) == 0 {
			return
		}
		s.buf.release(evs)
		st.droppedShutdown.Add(telemetryEvents(evs))
	}
}

// telemetryEvents counts the events that came from Lambda, leaving out the extension's own
// counts records, so that received = delivered + dropped + filtered holds.
func telemetryEvents(evs []event) uint64 {
	var n uint64
	for i := range evs {
		if evs[i].typ != countsType {
			n++
		}
	}
	return n
}

// hint tells the reader of a log line what to do about a permanent error.
func hint(code string, cfg config, region string) string {
	stream := cfg.Stream
	switch {
	case code == "AccessDeniedException":
		return fmt.Sprintf(" (the function's role needs kinesis:PutRecords on stream %s: attach the managed policy from template.json)", stream)
	case code == "ResourceNotFoundException":
		return fmt.Sprintf(" (check KINESIS_TELEMETRY_STREAM=%s: the stream must exist in region %s)", stream, region)
	case strings.HasPrefix(code, "KMS"):
		return " (the stream's KMS key refused the request: the role needs kms:GenerateDataKey on a customer managed key, and the key must be enabled)"
	case code == "UnrecognizedClientException" || code == "InvalidSignatureException":
		return " (the AWS credentials were rejected)"
	}
	return ""
}

// pendingRecord is one Kinesis record being sent: one event, or several (ndjson).
type pendingRecord struct {
	events []event
	key    string
	size   int    // data bytes, after any truncation
	data   []byte // the data when built at packing (kpl, cloudwatch); else encodeBody builds it
}

// maxNDJSONLines is the most lines an ndjson record holds: Firehose's JSON record
// de-aggregation splits at most 500 records out of one Kinesis record.
const maxNDJSONLines = 500

// packRecords turns events into records: one per event, or with KINESIS_TELEMETRY_RECORD_FORMAT
// ndjson, consecutive events of one partition key up to the aggregate size. The kpl and cloudwatch
// formats are built here, whole (records.go), so that their exact size is known for the call.
func (s *shipper) packRecords(evs []event) []pendingRecord {
	switch s.cfg.RecordFormat {
	case formatKPL:
		return s.meta.packKPL(evs, s.cfg.RecordBytes)
	case formatCloudWatch:
		return s.meta.packCloudWatch(evs, s.cfg.RecordBytes, &s.gz)
	}
	recs := make([]pendingRecord, 0, min(len(evs), maxRecordsPerCall))
	for i := 0; i < len(evs); {
		e := &evs[i]
		key := s.meta.partitionKey(e)
		size := s.meta.dataSize(e, len(key))
		j := i + 1
		if s.cfg.RecordFormat == "ndjson" {
			size++ // newline
			for j < len(evs) && j-i < maxNDJSONLines && s.meta.sameRecord(e, &evs[j]) {
				next := s.meta.dataSize(&evs[j], len(key)) + 1
				if size+next > s.cfg.RecordBytes {
					break
				}
				size += next
				j++
			}
		}
		recs = append(recs, pendingRecord{events: evs[i:j:j], key: key, size: size})
		i = j
	}
	return recs
}

// recordSize is an event's share of a call, for taking events from the buffer.
func (s *shipper) recordSize(e *event) int {
	key := s.meta.partitionKey(e)
	return s.meta.dataSize(e, len(key)) + len(key) + 1
}

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

// encodeBody appends the PutRecords JSON request for recs to dst.
func (s *shipper) encodeBody(dst []byte, recs []pendingRecord) []byte {
	if s.cfg.Stream.ARN != "" {
		dst = append(dst, `{"StreamARN":`...)
		dst = appendJSONString(dst, s.cfg.Stream.ARN)
	} else {
		dst = append(dst, `{"StreamName":`...)
		dst = appendJSONString(dst, s.cfg.Stream.Name)
	}
	dst = append(dst, `,"Records":[`...)
	for i, r := range recs {
		if i > 0 {
			dst = append(dst, ',')
		}
		if r.data != nil {
			dst = append(dst, `{"Data":"`...)
			dst = appendBase64(dst, r.data)
			dst = append(dst, `","PartitionKey":`...)
			dst = appendJSONString(dst, r.key)
			dst = append(dst, '}')
			continue
		}
		s.scratch = s.scratch[:0]
		for k := range r.events {
			s.scratch = s.meta.appendData(s.scratch, &r.events[k], len(r.key))
			if s.cfg.RecordFormat == "ndjson" {
				s.scratch = append(s.scratch, '\n')
			}
		}
		dst = append(dst, `{"Data":"`...)
		dst = appendBase64(dst, s.scratch)
		dst = append(dst, `","PartitionKey":`...)
		dst = appendJSONString(dst, r.key)
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}

// appendBase64 appends the standard base64 encoding of src, as base64.StdEncoding.AppendEncode
// does, about twice as fast: twelve bytes at a time, two output characters per table lookup.
// Record data is most of what the extension handles, so this is its hottest loop.
func appendBase64(dst, src []byte) []byte {
	n := base64.StdEncoding.EncodedLen(len(src))
	dst = slices.Grow(dst, n)
	out := dst[len(dst) : len(dst)+n]
	i, o := 0, 0
	for ; i+12 <= len(src); i, o = i+12, o+16 {
		in, w := src[i:i+12:i+12], out[o:o+16:o+16]
		hi := uint64(binary.BigEndian.Uint32(in[0:]))<<32 | uint64(binary.BigEndian.Uint32(in[4:])) // bytes 0-7
		lo := hi<<32 | uint64(binary.BigEndian.Uint32(in[8:]))                                      // bytes 4-11
		binary.LittleEndian.PutUint64(w[0:], uint64(base64Pairs[hi>>52&0xfff])|uint64(base64Pairs[hi>>40&0xfff])<<16|
			uint64(base64Pairs[hi>>28&0xfff])<<32|uint64(base64Pairs[hi>>16&0xfff])<<48)
		binary.LittleEndian.PutUint64(w[8:], uint64(base64Pairs[lo>>36&0xfff])|uint64(base64Pairs[lo>>24&0xfff])<<16|
			uint64(base64Pairs[lo>>12&0xfff])<<32|uint64(base64Pairs[lo&0xfff])<<48)
	}
	base64.StdEncoding.Encode(out[o:], src[i:])
	return dst[:len(dst)+n]
}

// base64Pairs maps twelve bits to their two base64 characters, first character in the low byte.
var base64Pairs = func() (t [4096]uint16) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := range t {
		t[i] = uint16(alphabet[i>>6]) | uint16(alphabet[i&63])<<8
	}
	return t
}()

// recordMeta is what every record says about where it comes from, and how records are keyed.
type recordMeta struct {
	fields    []byte // `"function":…,"version":…,"account":…,"region":…`, encoded once
	reg       registration
	region    string
	envID     string
	function  string
	partition partitionMode

	format     recordFormat
	textObject bool // KINESIS_TELEMETRY_TEXT_RECORD=object: text lines' record becomes {"message":…}
	logs       cloudWatchNames
}

func newRecordMeta(reg registration, cfg config, region, envID string) recordMeta {
	m := recordMeta{
		reg: reg, envID: envID, function: reg.FunctionName, partition: cfg.PartitionKey,
		format: cfg.RecordFormat, textObject: cfg.TextRecord == textAsObject,
		logs: cloudWatchNames{
			owner: reg.AccountID, group: cfg.LogGroup, stream: cfg.LogStream,
			filter: cfg.SubscriptionFilter, format: cfg.LogFormat,
		},
	}
	if m.logs.owner == "" {
		// Without the accountId feature of register, the stream's account is the best owner.
		m.logs.owner = cfg.Stream.Account
	}
	m.setRegion(region)
	return m
}

// setRegion encodes the fields every record carries.
func (m *recordMeta) setRegion(region string) {
	reg := m.reg
	b := []byte(`"function":`)
	b = appendJSONString(b, reg.FunctionName)
	b = append(b, `,"version":`...)
	b = appendJSONString(b, reg.FunctionVersion)
	b = append(b, `,"account":`...)
	b = appendJSONString(b, reg.AccountID)
	b = append(b, `,"region":`...)
	b = appendJSONString(b, region)
	m.fields, m.region = b, region
}

// partitionKey keeps one invocation's events on one shard, in order ("request"), all of one
// function's ("function"), or spreads them evenly ("random", derived from the event id so that a
// retry goes to the same shard).
func (m *recordMeta) partitionKey(e *event) string {
	if m.format == formatCloudWatch && m.logs.stream != "" {
		// CloudWatch's ByLogStream distribution: one environment's events stay in order.
		return truncateKey(m.logs.stream)
	}
	switch m.partition {
	case partitionFunction:
		if m.function != "" {
			return truncateKey(m.function)
		}
	case partitionRandom:
		h := fnv.New64a()
		h.Write([]byte(e.idPrefix))
		h.Write(strconv.AppendUint(nil, e.seq, 10))
		return strconv.FormatUint(h.Sum64(), 16)
	default:
		if e.requestID != "" {
			return truncateKey(e.requestID)
		}
	}
	return m.envID
}

func truncateKey(k string) string {
	if len(k) <= 256 {
		return k
	}
	for n := 256; n > 0; n-- {
		if utf8.RuneStart(k[n]) {
			return k[:n]
		}
	}
	return k[:256]
}

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
	n := fixed + len(e.idPrefix) + digits(e.seq) + len(m.fields) + jsonStringLen(e.requestID) + len(e.raw)
	if e.traceID != "" {
		n += len(`,"traceId":`) + jsonStringLen(e.traceID)
	}
	if e.tenantID != "" {
		n += len(`,"tenantId":`) + jsonStringLen(e.tenantID)
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
	dst = appendJSONString(dst, e.requestID)
	if e.traceID != "" {
		dst = append(dst, `,"traceId":`...)
		dst = appendJSONString(dst, e.traceID)
	}
	if e.tenantID != "" {
		dst = append(dst, `,"tenantId":`...)
		dst = appendJSONString(dst, e.tenantID)
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
		inner = append(inner, orNull(ev.Time)...)
		inner = append(inner, `,"type":`...)
		inner = append(inner, orNull(ev.Type)...)
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

// fitEscaped returns how many bytes of text, in whole characters, fit in room bytes once escaped
// inside a JSON string.
func fitEscaped(text []byte, room int) int {
	if len(text) <= room/6 {
		return len(text) // no byte escapes to more than six
	}
	keep := 0
	for keep < len(text) {
		size, escaped := escapedRune(text[keep:])
		if escaped > room {
			break
		}
		room -= escaped
		keep += size
	}
	return keep
}

// jsonEscaped is the one table of JSON string escaping, as appendJSONString writes it: for each
// ASCII byte, its length inside a JSON string (1 as is; 2 for \" \\ \n \r \t; 6 for \u00XX).
// escapedRune, appendJSONString and jsonStringLen all read it; FuzzRecordBuilding checks that
// predicted sizes match what is written.
var jsonEscaped = func() (t [utf8.RuneSelf]uint8) {
	for c := range t {
		switch {
		case plainByte[c]:
			t[c] = 1
		case c == '"' || c == '\\' || c == '\n' || c == '\r' || c == '\t':
			t[c] = 2
		default:
			t[c] = 6
		}
	}
	return t
}()

// escapedRune returns the length of the first character of b and of its form inside a JSON string
// as appendJSONString writes it.
func escapedRune(b []byte) (size, escaped int) {
	if c := b[0]; c < utf8.RuneSelf {
		return 1, int(jsonEscaped[c])
	}
	r, size := utf8.DecodeRune(b)
	if r == utf8.RuneError && size == 1 {
		return 1, 3 // becomes U+FFFD
	}
	return size, size
}

func orNull(b []byte) []byte {
	if len(b) == 0 {
		return []byte("null")
	}
	return b
}

func digits(n uint64) int {
	d := 1
	for n >= 10 {
		n /= 10
		d++
	}
	return d
}

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, as in encoding/json.
// The string's bytes are only read (unsafe.Slice, no copy): one escaping loop serves strings and
// byte slices.
func appendJSONString(dst []byte, s string) []byte {
	return appendJSONBytes(dst, unsafe.Slice(unsafe.StringData(s), len(s)))
}

// appendJSONBytes appends b as a JSON string, escaped by the jsonEscaped table.
func appendJSONBytes(dst, b []byte) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(b); {
		c := b[i]
		if c < utf8.RuneSelf {
			if jsonEscaped[c] == 1 {
				i++
				continue
			}
			dst = append(dst, b[start:i]...)
			switch jsonEscaped[c] {
			case 2:
				dst = append(dst, '\\', shortEscape[c])
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigit[c>>4], hexDigit[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, n := utf8.DecodeRune(b[i:])
		if r == utf8.RuneError && n == 1 {
			dst = append(dst, b[start:i]...)
			dst = append(dst, "\ufffd"...)
			i++
			start = i
			continue
		}
		i += n
	}
	dst = append(dst, b[start:]...)
	return append(dst, '"')
}

// shortEscape is the letter after the backslash of the two-byte escapes.
var shortEscape = [utf8.RuneSelf]byte{'"': '"', '\\': '\\', '\n': 'n', '\r': 'r', '\t': 't'}

const hexDigit = "0123456789abcdef"

// jsonStringLen is len(appendJSONString(nil, s)).
func jsonStringLen(s string) int {
	b := unsafe.Slice(unsafe.StringData(s), len(s))
	n := 2
	for i := 0; i < len(b); {
		size, escaped := escapedRune(b[i:])
		n += escaped
		i += size
	}
	return n
}

// kinesisClient sends signed PutRecords requests to one stream's endpoint.
type kinesisClient struct {
	url       string
	region    string // signing region
	creds     aws.CredentialsProvider
	signer    *v4.Signer
	http      *http.Client
	transport *http.Transport
	timeout   time.Duration
	lastDone  time.Time
}

// staleAfter is how long a pooled connection may sit unused before it is no longer trusted. After
// a freeze the server or a NAT may have forgotten it; a request on it would wait for a timeout.
const staleAfter = 15 * time.Second

// loadKinesisClient reads the region and credentials from the AWS SDK's default chain (Lambda's
// environment variables, or the container credentials endpoint of SnapStart and managed
// instances) and builds the client. With KINESIS_TELEMETRY_ROLE_ARN the calls are signed with
// that role's credentials instead (credentials.go); the role is first assumed at the first
// PutRecords, not here. The envelope's region is set here too.
func loadKinesisClient(ctx context.Context, cfg config, meta *recordMeta, st *stats, logs *logger) (*kinesisClient, error) {
	awsCfg, err := awsconfig.LoadDefaultConfig(ctx)
	if err != nil {
		return nil, fmt.Errorf("load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("no AWS region: set AWS_REGION (Lambda sets it for every function)")
	}
	if meta.region == "" {
		meta.setRegion(awsCfg.Region)
	}
	creds := awsCfg.Credentials
	if cfg.Role.ARN != "" {
		creds = newRoleCredentials(awsCfg, cfg.Role, meta.function, &st.assumeRole, logs)
	}
	endpoint, region := cfg.kinesisEndpoint(awsCfg.Region)
	return newKinesisClient(endpoint, region, creds, cfg.RequestTimeout), nil
}

func newKinesisClient(endpoint, region string, creds aws.CredentialsProvider, timeout time.Duration) *kinesisClient {
	t := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 15 * time.Second}).DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConnsPerHost:   4,
		IdleConnTimeout:       staleAfter,
		TLSHandshakeTimeout:   2 * time.Second,
		ExpectContinueTimeout: time.Second,
	}
	return &kinesisClient{
		url: endpoint + "/", region: region, creds: creds, signer: v4.NewSigner(),
		http: &http.Client{Transport: t}, transport: t, timeout: timeout,
	}
}

// putResult is one entry of a PutRecords answer.
type putResult struct {
	SequenceNumber string
	ShardID        string `json:"ShardId"`
	ErrorCode      string // null in kinesis-mock's answers, which decodes as ""
	ErrorMessage   string
}

// apiError is a whole-call error answer from Kinesis.
type apiError struct {
	Status  int
	Code    string
	Message string
}

func (e *apiError) Error() string {
	if e.Status == 0 {
		return e.Code + ": " + e.Message
	}
	return fmt.Sprintf("HTTP %d %s: %s", e.Status, e.Code, e.Message)
}

// putRecords signs and sends one PutRecords request holding n records and returns the per-record
// results. This is the only place that knows HTTP status codes and Kinesis error shapes.
func (k *kinesisClient) putRecords(ctx context.Context, body []byte, n int) ([]putResult, error) {
	if !k.lastDone.IsZero() && time.Since(k.lastDone) > staleAfter {
		k.transport.CloseIdleConnections()
	}
	ctx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, k.url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/x-amz-json-1.1")
	req.Header.Set("X-Amz-Target", "Kinesis_20131202.PutRecords")
	creds, err := k.creds.Retrieve(ctx)
	if ce := (*credentialsError)(nil); errors.As(err, &ce) {
		return nil, ce // nothing was sent; retried like throttling, STS is asked again only after a wait
	}
	if err != nil {
		return nil, &networkError{fmt.Errorf("get AWS credentials: %w", err)}
	}
	sum := sha256.Sum256(body)
	if err := k.signer.SignHTTP(ctx, creds, req, hex.EncodeToString(sum[:]), "kinesis", k.region, time.Now()); err != nil {
		return nil, fmt.Errorf("sign request: %w", err)
	}
	resp, err := k.http.Do(req)
	if err != nil {
		return nil, &networkError{err}
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	k.lastDone = time.Now()
	if err != nil {
		return nil, &networkError{fmt.Errorf("read answer: %w", err)}
	}
	if resp.StatusCode != http.StatusOK {
		return nil, decodeAPIError(resp, answer)
	}
	var out struct {
		FailedRecordCount int
		Records           []putResult
	}
	if err := json.Unmarshal(answer, &out); err != nil {
		return nil, &networkError{fmt.Errorf("decode answer: %w", err)}
	}
	if len(out.Records) != n {
		return nil, &networkError{fmt.Errorf("answer has %d results for %d records", len(out.Records), n)}
	}
	return out.Records, nil
}

func (k *kinesisClient) invalidateCredentials() {
	if c, ok := k.creds.(*aws.CredentialsCache); ok {
		c.Invalidate()
	}
}

func decodeAPIError(resp *http.Response, body []byte) *apiError {
	var e struct {
		Type     string `json:"__type"`
		Message  string `json:"message"`
		Message2 string `json:"Message"`
	}
	_ = json.Unmarshal(body, &e)
	code := e.Type
	if code == "" {
		code, _, _ = strings.Cut(resp.Header.Get("X-Amzn-ErrorType"), ":")
	}
	if i := strings.LastIndexByte(code, '#'); i >= 0 {
		code = code[i+1:]
	}
	if code == "" {
		code = "HTTP" + strconv.Itoa(resp.StatusCode)
	}
	msg := e.Message + e.Message2
	if len(msg) > 300 {
		msg = msg[:300] + "…"
	}
	return &apiError{Status: resp.StatusCode, Code: code, Message: msg}
}

// networkError marks failures where Kinesis gave no answer: always worth retrying.
type networkError struct{ err error }

func (e *networkError) Error() string { return e.err.Error() }
func (e *networkError) Unwrap() error { return e.err }

func isRetryable(err error) bool {
	var ae *apiError
	if errors.As(err, &ae) {
		return isRetryableCode(ae.Code, ae.Status)
	}
	return true
}

// isRetryableCode tells throttling and transient faults, worth another attempt, from errors that
// can never succeed (validation, access denied, not found, disabled keys).
func isRetryableCode(code string, status int) bool {
	switch code {
	case "ProvisionedThroughputExceededException", "InternalFailure", "InternalFailureException",
		"ServiceUnavailable", "ServiceUnavailableException", "ThrottlingException", "Throttling",
		"LimitExceededException", "KMSThrottlingException", "RequestTimeout", "RequestTimeoutException",
		"ResourceInUseException", "ExpiredTokenException", "RequestExpired", "SlowDown":
		return true
	}
	return status >= 500 || status == http.StatusTooManyRequests
}

func errorCode(err error) string {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Code
	}
	var ne *networkError
	if errors.As(err, &ne) {
		return "NetworkError"
	}
	var ce *credentialsError
	if errors.As(err, &ce) {
		return "AssumeRole." + ce.Code
	}
	return "Error"
}

// stats are the extension's own counters, shipped as the counts record.
type stats struct {
	start time.Time

	received, delivered, records                     atomic.Uint64
	droppedFull, droppedShutdown                     atomic.Uint64
	badBatches, badEvents                            atomic.Uint64
	lambdaDroppedRecords, lambdaDroppedBytes         atomic.Uint64
	calls, retries, throttles, bytesSent             atomic.Uint64
	unconfirmed                                      atomic.Uint64 // events of calls cut short: maybe stored, sent again
	filteredExcluded, filteredLevel, filteredSampled atomic.Uint64
	filteredOwn                                      atomic.Uint64
	invocations, postRuntimeCount, postRuntimeMicros atomic.Uint64
	postRuntimeMaxMicros, postRuntimeLastMicros      atomic.Uint64
	mu                                               sync.Mutex
	rejected                                         map[string]uint64 // dropped by error code
	assumeRole                                       codeCounts        // failed AssumeRole calls by error code (credentials.go)
	lastFlush                                        flushCounters     // what the last ship round did
}

// flushCounters describe one ship round (or, as a snapshot, the totals before it).
type flushCounters struct {
	Events, Records, Bytes, Calls, Retries, Throttles, Dropped uint64
	Ms                                                         float64
}

func (s *stats) flushCounters() flushCounters {
	m := s.marks()
	return flushCounters{
		Events: s.delivered.Load(), Records: s.records.Load(), Bytes: s.bytesSent.Load(), Calls: s.calls.Load(),
		Retries: s.retries.Load(), Throttles: s.throttles.Load(), Dropped: m.full + m.rejected + m.shutdown,
	}
}

// noteFlush records what a ship round that started at start with the totals before did.
func (s *stats) noteFlush(start time.Time, before flushCounters) {
	after := s.flushCounters()
	f := flushCounters{
		Events: after.Events - before.Events, Records: after.Records - before.Records, Bytes: after.Bytes - before.Bytes,
		Calls: after.Calls - before.Calls, Retries: after.Retries - before.Retries, Throttles: after.Throttles - before.Throttles,
		Dropped: after.Dropped - before.Dropped, Ms: float64(time.Since(start).Microseconds()) / 1000,
	}
	s.mu.Lock()
	s.lastFlush = f
	s.mu.Unlock()
}

func newStats() *stats { return &stats{start: time.Now(), rejected: map[string]uint64{}} }

func (s *stats) dropRejected(code string, n uint64) {
	s.mu.Lock()
	s.rejected[code] += n
	s.mu.Unlock()
}

func (s *stats) addPostRuntime(d time.Duration) {
	us := uint64(max(d, 0) / time.Microsecond)
	s.postRuntimeCount.Add(1)
	s.postRuntimeMicros.Add(us)
	s.postRuntimeLastMicros.Store(us)
	for {
		old := s.postRuntimeMaxMicros.Load()
		if us <= old || s.postRuntimeMaxMicros.CompareAndSwap(old, us) {
			return
		}
	}
}

// lambdaDropped counts a platform.logsDropped event: telemetry Lambda dropped before it reached
// the extension.
func (s *stats) lambdaDropped(raw []byte) {
	var ev struct {
		Record struct {
			DroppedRecords uint64 `json:"droppedRecords"`
			DroppedBytes   uint64 `json:"droppedBytes"`
		} `json:"record"`
	}
	if json.Unmarshal(raw, &ev) == nil {
		s.lambdaDroppedRecords.Add(ev.Record.DroppedRecords)
		s.lambdaDroppedBytes.Add(ev.Record.DroppedBytes)
	}
}

// lossMarks are the counters whose change makes a counts record due at once.
type lossMarks struct{ full, rejected, shutdown, lambda, bad uint64 }

func (s *stats) marks() lossMarks {
	s.mu.Lock()
	var rejected uint64
	for _, n := range s.rejected {
		rejected += n
	}
	s.mu.Unlock()
	return lossMarks{s.droppedFull.Load(), rejected, s.droppedShutdown.Load(), s.lambdaDroppedRecords.Load(), s.badBatches.Load() + s.badEvents.Load()}
}

// countsEvery is how often a counts record is shipped while telemetry flows; any loss makes one
// due at the next flush.
const countsEvery = time.Minute

// countsType is the event type of the counts record.
const countsType = "kinesis-telemetry-extension.counts" // untyped: compared with eventType and with strings

// emitCountsIfDue buffers a counts record when something was lost since the last one, or when
// the last one is older than countsEvery and telemetry has flowed since.
func (s *shipper) emitCountsIfDue(now time.Time) {
	s.mu.Lock()
	due := s.stats.marks() != s.countsOf || (now.Sub(s.countsAt) >= countsEvery && s.stats.received.Load() > 0)
	s.mu.Unlock()
	if due {
		s.emitCounts(now)
	}
}

// emitCounts buffers a counts record. It goes to the platform queue: never dropped for room.
func (s *shipper) emitCounts(now time.Time) {
	s.mu.Lock()
	s.countsAt, s.countsOf = now, s.stats.marks()
	s.mu.Unlock()
	raw := []byte(`{"time":"` + now.UTC().Format("2006-01-02T15:04:05.000Z") + `","type":"` + countsType + `","record":`)
	raw = append(raw, s.stats.json(s.buf)...)
	raw = append(raw, '}')
	s.buf.addOwn(event{raw: raw, typ: countsType, level: -1})
}

// json renders the counters as the counts record's "record".
func (s *stats) json(buf *buffer) []byte {
	n, _ := buf.state()
	s.mu.Lock()
	lastFlush := s.lastFlush
	rejected := make(map[string]uint64, len(s.rejected))
	var rejectedTotal uint64
	for k, v := range s.rejected {
		rejected[k] = v
		rejectedTotal += v
	}
	s.mu.Unlock()
	count := s.postRuntimeCount.Load()
	ms := func(us uint64) float64 { return float64(us) / 1000 }
	mean := 0.0
	if count > 0 {
		mean = ms(s.postRuntimeMicros.Load()) / float64(count)
	}
	out, _ := json.Marshal(map[string]any{
		"since":     s.start.UTC().Format(time.RFC3339Nano),
		"received":  s.received.Load(),
		"delivered": s.delivered.Load(),
		"buffered":  n,
		"dropped": map[string]any{
			"total":      s.droppedFull.Load() + rejectedTotal + s.droppedShutdown.Load(),
			"bufferFull": s.droppedFull.Load(),
			"rejected":   rejected,
			"shutdown":   s.droppedShutdown.Load(),
		},
		"filtered": map[string]uint64{
			"excluded": s.filteredExcluded.Load(), "belowLevel": s.filteredLevel.Load(),
			"sampledOut": s.filteredSampled.Load(), "ownLogs": s.filteredOwn.Load(),
		},
		"malformed":     map[string]uint64{"batches": s.badBatches.Load(), "events": s.badEvents.Load()},
		"lambdaDropped": map[string]uint64{"records": s.lambdaDroppedRecords.Load(), "bytes": s.lambdaDroppedBytes.Load()},
		"kinesis": map[string]uint64{
			"calls": s.calls.Load(), "records": s.records.Load(), "bytes": s.bytesSent.Load(),
			"retries": s.retries.Load(), "throttles": s.throttles.Load(), "unconfirmed": s.unconfirmed.Load(),
		},
		"lastFlush": map[string]any{
			"events": lastFlush.Events, "records": lastFlush.Records, "bytes": lastFlush.Bytes, "calls": lastFlush.Calls,
			"retries": lastFlush.Retries, "throttles": lastFlush.Throttles, "dropped": lastFlush.Dropped, "ms": lastFlush.Ms,
		},
		"invocations":      s.invocations.Load(),
		"assumeRoleErrors": s.assumeRole.snapshot(),
		"postRuntimeMs": map[string]any{
			"count": count, "mean": mean, "max": ms(s.postRuntimeMaxMicros.Load()), "last": ms(s.postRuntimeLastMicros.Load()),
		},
	})
	return out
}

// summary is the one-line account logged at shutdown.
func (s *stats) summary() string {
	m := s.marks()
	return fmt.Sprintf("received %d, delivered %d, dropped %d (buffer full %d, rejected %d, shutdown %d), Lambda dropped %d, malformed %d, %d PutRecords calls, %d retries, %d events sent again after a call cut short",
		s.received.Load(), s.delivered.Load(), m.full+m.rejected+m.shutdown, m.full, m.rejected, m.shutdown, m.lambda, m.bad, s.calls.Load(), s.retries.Load(), s.unconfirmed.Load())
}
