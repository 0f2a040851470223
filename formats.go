package main

// Events packed into records in the chosen format (pack), and the formats other tools read
// natively: KPL aggregated records (kpl) and CloudWatch Logs subscription records (cloudwatch),
// built from the envelope (records.go). Pure functions from buffered events to record data,
// fuzzed by FuzzRecordBuilding; decoded in formats_test.go by protowire, aws-lambda-go and npm
// aws-kinesis-agg.

import (
	"bytes"
	"cmp"
	"compress/gzip"
	"crypto/md5"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math/bits"
	"strconv"
	"time"
)

// pack turns events into records: one per event, or with KINESIS_TELEMETRY_RECORD_FORMAT
// ndjson, consecutive events of one partition key up to the aggregate size. The kpl and cloudwatch
// formats are built whole here, so that their exact size is known for the call.
func (m *recordMeta) pack(evs []event, limit int, zw **gzip.Writer) []pendingRecord {
	switch m.format {
	case formatKPL:
		return m.packKPL(evs, limit)
	case formatCloudWatch:
		return m.packCloudWatch(evs, limit, zw)
	}
	recs := make([]pendingRecord, 0, min(len(evs), maxRecordsPerCall))
	for i := 0; i < len(evs); {
		e := &evs[i]
		key := m.partitionKey(e)
		size := m.dataSize(e, len(key))
		j := i + 1
		if m.format == formatNDJSON {
			size++ // newline
			for j < len(evs) && j-i < maxNDJSONLines && m.sameRecord(e, &evs[j]) {
				next := m.dataSize(&evs[j], len(key)) + 1
				if size+next > limit {
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

// --- KPL aggregated records ---
//
// The layout of awslabs/amazon-kinesis-producer aggregation-format.md: the magic bytes, a protobuf
// AggregatedRecord, the MD5 of the protobuf bytes.
//
//	message AggregatedRecord { repeated string partition_key_table = 1;
//	                           repeated string explicit_hash_key_table = 2; repeated Record records = 3; }
//	message Record { required uint64 partition_key_index = 1; optional uint64 explicit_hash_key_index = 2;
//	                 required bytes data = 3; repeated Tag tags = 4; }
//
// Encoded by hand: three field tags and varints do not need a protobuf runtime in the binary.

var kplMagic = []byte{0xF3, 0x89, 0x9A, 0xC2}

const (
	pbKeyTable     = 1<<3 | 2 // AggregatedRecord.partition_key_table, length-delimited
	pbRecords      = 3<<3 | 2 // AggregatedRecord.records, length-delimited
	pbKeyIndex     = 1<<3 | 0 // Record.partition_key_index, varint
	pbData         = 3<<3 | 2 // Record.data, length-delimited
	kplFixed       = 4 + md5.Size
	kplFramingSlop = 2 * (1 + binary.MaxVarintLen32) // tag and length of a key entry and of a record
)

// packKPL aggregates consecutive events that may share a record (sameRecord) into KPL records of
// at most limit bytes; an event too large alone gets a record of its own within the Kinesis limit,
// its envelope truncated as in every format. Each user record is the event's envelope.
func (m *recordMeta) packKPL(evs []event, limit int) []pendingRecord {
	var recs []pendingRecord
	var keys, body []byte
	index := map[string]uint64{}
	for i := 0; i < len(evs); {
		key := m.partitionKey(&evs[i])
		keys, body = keys[:0], body[:0]
		clear(index)
		j := i
		for ; j < len(evs); j++ {
			e := &evs[j]
			if j > i && !m.sameRecord(&evs[i], e) {
				break
			}
			k := m.partitionKey(e)
			idx, known := index[k]
			keyEntry := 0
			if !known {
				idx = uint64(len(index))
				keyEntry = 1 + uvarintLen(uint64(len(k))) + len(k)
			}
			// Alone, the record must fit Kinesis: the envelope's limit leaves room for the framing.
			within := maxRecordBytes - len(key) - kplFixed - kplFramingSlop - 2*uvarintLen(uint64(len(k))) - len(k) - binary.MaxVarintLen64
			size := m.dataSizeWithin(e, within)
			inner := 1 + uvarintLen(idx) + 1 + uvarintLen(uint64(size)) + size
			entry := 1 + uvarintLen(uint64(inner)) + inner
			if j > i && kplFixed+len(keys)+keyEntry+len(body)+entry > limit {
				break
			}
			if !known {
				index[k] = idx
				keys = append(keys, pbKeyTable)
				keys = binary.AppendUvarint(keys, uint64(len(k)))
				keys = append(keys, k...)
			}
			body = append(body, pbRecords)
			body = binary.AppendUvarint(body, uint64(inner))
			body = append(body, pbKeyIndex)
			body = binary.AppendUvarint(body, idx)
			body = append(body, pbData)
			body = binary.AppendUvarint(body, uint64(size))
			body = m.appendDataWithin(body, e, within)
		}
		out := make([]byte, 0, kplFixed+len(keys)+len(body))
		out = append(out, kplMagic...)
		out = append(out, keys...)
		out = append(out, body...)
		sum := md5.Sum(out[len(kplMagic):])
		out = append(out, sum[:]...)
		recs = append(recs, pendingRecord{events: evs[i:j:j], key: key, size: len(out), data: out})
		i = j
	}
	return recs
}

func uvarintLen(v uint64) int { return (bits.Len64(v|1) + 6) / 7 }

// --- CloudWatch Logs subscription records ---

// CloudWatch Logs limits a subscription message inherits from PutLogEvents, "Amazon CloudWatch
// Logs API Reference, PutLogEvents": at most 10,000 events and 1,048,576 bytes, counted as the
// events' UTF-8 messages plus 26 bytes each, and at most 256 KB per event.
// https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutLogEvents.html
const (
	cwMaxEvents     = 10000
	cwMaxBatchBytes = 1048576
	cwEventOverhead = 26
	cwMaxMessage    = 256*1024 - cwEventOverhead
	gzipSlop        = 1024 // gzip's header and trailer, and deflate's stored-block framing at worst
)

// packCloudWatch groups consecutive events, in order, into gzipped DATA_MESSAGE records keyed
// by the log stream, each at most limit bytes before compression (and so after it) and within
// CloudWatch's batch limits. A message longer than CloudWatch allows is cut, as Lambda's would be.
func (m *recordMeta) packCloudWatch(evs []event, limit int, zw **gzip.Writer) []pendingRecord {
	var recs []pendingRecord
	var js []byte
	var scratch bytes.Buffer // compacted JSON log lines
	for i := 0; i < len(evs); {
		key := m.partitionKey(&evs[i]) // the log stream, the same for every event
		js = m.cloudWatch.appendHead(js[:0])
		room := maxRecordBytes - len(key) - gzipSlop - len(js)
		j, batch := i, 0
		for ; j < len(evs) && j-i < cwMaxEvents; j++ {
			mark := len(js)
			if j > i {
				js = append(js, ',')
			}
			var n int
			js, n = m.appendLogEvent(js, &evs[j], room, &scratch)
			if j > i && (len(js)+2 > limit || batch+n+cwEventOverhead > cwMaxBatchBytes) {
				js = js[:mark]
				break
			}
			batch += n + cwEventOverhead
		}
		js = append(js, "]}"...)
		data := gzipBytes(js, zw)
		recs = append(recs, pendingRecord{events: evs[i:j:j], key: key, size: len(data), data: data})
		i = j
	}
	return recs
}

// appendHead writes a DATA_MESSAGE up to its first log event, keys in CloudWatch's order.
func (c *cloudWatchNames) appendHead(dst []byte) []byte {
	dst = append(dst, `{"messageType":"DATA_MESSAGE","owner":`...)
	dst = appendJSONString(dst, c.owner)
	dst = append(dst, `,"logGroup":`...)
	dst = appendJSONString(dst, c.group)
	dst = append(dst, `,"logStream":`...)
	dst = appendJSONString(dst, c.stream)
	dst = append(dst, `,"subscriptionFilters":[`...)
	dst = appendJSONString(dst, c.filter)
	return append(dst, `],"logEvents":[`...)
}

func gzipBytes(b []byte, zw **gzip.Writer) []byte {
	var out bytes.Buffer
	out.Grow(len(b)/4 + 64)
	if *zw == nil {
		// BestSpeed: the extension runs inside the function's time; see README "Cheaper records".
		*zw, _ = gzip.NewWriterLevel(&out, gzip.BestSpeed)
	} else {
		(*zw).Reset(&out)
	}
	_, _ = (*zw).Write(b) // writes to a bytes.Buffer do not fail
	_ = (*zw).Close()
	return out.Bytes()
}

// appendLogEvent writes {"id","timestamp","message"} for e, the message escaped into at most room
// bytes, and returns the message's UTF-8 length.
func (m *recordMeta) appendLogEvent(dst []byte, e *event, room int, scratch *bytes.Buffer) ([]byte, int) {
	timeTok, record := eventParts(e.raw)
	ms := e.arrived.UnixMilli()
	if t, err := time.Parse(time.RFC3339Nano, unquote(timeTok)); err == nil && timeTok != nil {
		ms = t.UnixMilli()
	}
	dst = append(dst, `{"id":"`...)
	dst = appendCloudWatchID(dst, ms, e.idPrefix, e.seq)
	dst = append(dst, `","timestamp":`...)
	dst = strconv.AppendInt(dst, ms, 10)
	dst = append(dst, `,"message":`...)
	msg := m.cloudWatch.message(e, record, scratch)
	if len(msg) > cwMaxMessage {
		msg = msg[:utf8Prefix(msg, cwMaxMessage)]
	}
	room -= len(`{"id":"","timestamp":,"message":""}`) + cwIDDigits + 20
	keep := fitEscaped(msg, room)
	dst = appendJSONBytes(dst, msg[:keep])
	return append(dst, '}'), keep
}

// message is what Lambda writes to CloudWatch Logs for the event, in the function's log format.
//   - function and extension lines: the line as printed; a JSON log line as compact JSON text.
//   - JSON format: platform events as delivered, {"time","type","record"}.
//   - Text format: Lambda's INIT_START, START, END and REPORT lines; other platform events as JSON.
//   - the counts record: its counts JSON.
func (c *cloudWatchNames) message(e *event, record []byte, scratch *bytes.Buffer) []byte {
	switch {
	case e.typ == countsType:
		return record
	case isLogType(e.typ) && e.text:
		var s string
		if bytes.IndexByte(record, '\\') < 0 && len(record) >= 2 {
			return record[1 : len(record)-1]
		}
		_ = json.Unmarshal(record, &s)
		return []byte(s)
	case isLogType(e.typ):
		scratch.Reset()
		if json.Compact(scratch, record) == nil {
			return scratch.Bytes()
		}
		return record
	case c.format == logText:
		if line := textLine(e.typ, record); line != nil {
			return line
		}
	}
	return e.raw
}

// platformRecord holds the fields of the platform events that Lambda prints as text lines.
type platformRecord struct {
	RequestID         string `json:"requestId"`
	Version           string `json:"version"`
	RuntimeVersion    string `json:"runtimeVersion"`
	RuntimeVersionArn string `json:"runtimeVersionArn"`
	Metrics           struct {
		DurationMs              float64  `json:"durationMs"`
		BilledDurationMs        float64  `json:"billedDurationMs"`
		MemorySizeMB            float64  `json:"memorySizeMB"`
		MaxMemoryUsedMB         float64  `json:"maxMemoryUsedMB"`
		InitDurationMs          *float64 `json:"initDurationMs"`
		RestoreDurationMs       *float64 `json:"restoreDurationMs"`
		BilledRestoreDurationMs *float64 `json:"billedRestoreDurationMs"`
	} `json:"metrics"`
	Tracing *struct {
		SpanID string `json:"spanId"`
		Value  string `json:"value"`
	} `json:"tracing"`
}

// textLine is the line Lambda writes in the Text log format for a platform event, or nil for the
// events it does not print. Sources:
//   - INIT_START: AWS, "Identifying Lambda runtime version changes",
//     https://docs.aws.amazon.com/lambda/latest/dg/runtime-management-identify.html, example line
//     "INIT_START Runtime Version: python:3.13.v14	Runtime Version ARN: arn:aws:lambda:eu-south-1::runtime:…".
//   - START and END: AWS, "Log and monitor Node.js Lambda functions", example log format,
//     https://docs.aws.amazon.com/lambda/latest/dg/nodejs-logging.html:
//     "START RequestId: c793869b-ee49-115b-a5b6-4fd21e8dedac Version: $LATEST", "END RequestId: …".
//   - REPORT and the X-Ray line: the fields and their order as AWS lists them in "Log and monitor
//     C# Lambda functions" (REPORT line data fields: RequestId, Duration, Billed Duration, Memory
//     Size, Max Memory Used, Init Duration, XRAY TraceId, SegmentId, Sampled),
//     https://docs.aws.amazon.com/lambda/latest/dg/csharp-logging.html, tab-separated as in the
//     same page's example; the values of the golden test are a real REPORT line published by
//     Baselime (docs.baselime.io, "Discovered Keys"): "REPORT RequestId: 8fc6f963-…	Duration: 201.67 ms
//     Billed Duration: 202 ms	Memory Size: 2048 MB	Max Memory Used: 81 MB	Init Duration: 480.25 ms
//     XRAY TraceId: 1-61c86fa4-59b3c6d959653c527fd10966	SegmentId: 107ea78a5750a811	Sampled: true",
//     the X-Ray part on a line of its own.
func textLine(typ eventType, record []byte) []byte {
	var r platformRecord
	switch typ {
	case typePlatformInitStart, typePlatformStart, typePlatformRuntimeDone, typePlatformReport:
		if json.Unmarshal(record, &r) != nil {
			return nil
		}
	default:
		return nil
	}
	var b []byte
	switch typ {
	case typePlatformInitStart:
		b = append(b, "INIT_START"...)
		if r.RuntimeVersion != "" {
			b = append(b, " Runtime Version: "...)
			b = append(b, r.RuntimeVersion...)
		}
		if r.RuntimeVersionArn != "" {
			b = append(b, "\tRuntime Version ARN: "...)
			b = append(b, r.RuntimeVersionArn...)
		}
	case typePlatformStart:
		b = fmt.Appendf(b, "START RequestId: %s Version: %s", r.RequestID, cmp.Or(r.Version, "$LATEST"))
	case typePlatformRuntimeDone:
		b = fmt.Appendf(b, "END RequestId: %s", r.RequestID)
	case typePlatformReport:
		mt := &r.Metrics
		b = fmt.Appendf(b, "REPORT RequestId: %s\tDuration: %.2f ms\tBilled Duration: %.0f ms\tMemory Size: %.0f MB\tMax Memory Used: %.0f MB",
			r.RequestID, mt.DurationMs, mt.BilledDurationMs, mt.MemorySizeMB, mt.MaxMemoryUsedMB)
		if mt.InitDurationMs != nil {
			b = fmt.Appendf(b, "\tInit Duration: %.2f ms", *mt.InitDurationMs)
		}
		if mt.RestoreDurationMs != nil {
			b = fmt.Appendf(b, "\tRestore Duration: %.2f ms", *mt.RestoreDurationMs)
		}
		if mt.BilledRestoreDurationMs != nil {
			b = fmt.Appendf(b, "\tBilled Restore Duration: %.0f ms", *mt.BilledRestoreDurationMs)
		}
		if r.Tracing != nil && r.Tracing.Value != "" {
			h := parseTraceHeader(r.Tracing.Value)
			b = fmt.Appendf(b, "\nXRAY TraceId: %s\tSegmentId: %s\tSampled: %t", h.Root, cmp.Or(r.Tracing.SpanID, h.Parent), h.Sampled)
		}
	}
	return b
}

// cwIDDigits is the length of a CloudWatch Logs event id.
const cwIDDigits = 56

// appendCloudWatchID writes a 56-digit decimal event id built as CloudWatch builds its own: the
// timestamp in milliseconds shifted left by 144 bits (AWS's documented example id
// 31953106606966983378809025079804211143289615424298221568 is 1432826855000<<144 plus less), here
// plus an 80-bit hash of the event id's prefix (its environment) and its 64-bit sequence number.
// So ids sort by time, are unique per event and are the same on every retry.
func appendCloudWatchID(dst []byte, ms int64, prefix string, seq uint64) []byte {
	h := fnv.New128a()
	h.Write([]byte(prefix))
	var sum [16]byte
	h.Sum(sum[:0])
	hash80hi := uint64(binary.BigEndian.Uint16(sum[0:2]))
	hash80lo := binary.BigEndian.Uint64(sum[2:10])
	// The 192-bit value ms<<144 | hash80<<64 | seq as three 64-bit words, most significant first.
	w := [3]uint64{uint64(ms)<<16 | hash80hi, hash80lo, seq}
	var digits [60]byte
	pos := len(digits)
	// Three divisions by 10^19 give the low 57 digits; the id is the low 56, which hold the whole
	// value until timestamps reach 10^56>>144 ms (the year 2111).
	for range 3 {
		var rem uint64
		for k := range w {
			w[k], rem = bits.Div64(rem, w[k], 1e19)
		}
		for d := 0; d < 19; d++ {
			pos--
			digits[pos] = byte('0' + rem%10)
			rem /= 10
		}
	}
	return append(dst, digits[len(digits)-cwIDDigits:]...)
}
