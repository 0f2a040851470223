package main

// JSON, read and written by hand, in one place: the one-pass scanner that validates each telemetry
// batch Lambda posts and picks out the few fields the extension acts on (scanBatch), and the
// string encoding every record uses (appendJSONString and the one escaping table, jsonEscaped,
// from which sizes are predicted before anything is written). Both are pure (they build no values)
// and fuzzed (FuzzScanBatch against encoding/json, FuzzRecordBuilding); the listener and the record
// builders share them.

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"unicode/utf8"
	"unsafe"
)

// eventFields is what scanBatch finds in one element of a batch. Token fields hold the raw JSON
// string token (with quotes), or nil when absent or not a string.
type eventFields struct {
	raw        []byte
	object     bool // the element is a JSON object
	typ        []byte
	requestID  []byte // record.requestId
	level      []byte // record.level (JSON-format log lines)
	tenantID   []byte // record.tenantId
	traceValue []byte // record.tracing.value (X-Amzn-Trace-Id)
	recordText bool   // record is a string
	badUTF8    bool
}

// errSyntax is wrapped by every scanBatch error.
var errSyntax = errors.New("not valid JSON")

// scanBatch validates body as a JSON array and calls fn for each element, in one pass and
// without building values: a batch is parsed once and every event is kept byte for byte. Nesting
// is tracked with an explicit stack, so deeply nested records cannot exhaust the goroutine stack.
// Invalid UTF-8 inside strings is reported through badUTF8, not rejected.
func scanBatch(body []byte, fn func(eventFields)) error {
	s := scanner{data: body}
	s.ws()
	if !s.consume('[') {
		return s.fail("a telemetry batch must be a JSON array")
	}
	s.ws()
	if s.consume(']') {
		return s.end()
	}
	for {
		s.ws()
		start := s.pos
		var f eventFields
		var err error
		if s.peek() == '{' {
			f, err = s.eventObject()
		} else {
			err = s.value()
		}
		if err != nil {
			return err
		}
		f.raw = body[start:s.pos]
		f.badUTF8 = s.badUTF8
		s.badUTF8 = false
		fn(f)
		s.ws()
		if s.consume(']') {
			return s.end()
		}
		if !s.consume(',') {
			return s.fail("expected , or ] after an array element")
		}
	}
}

type scanner struct {
	data    []byte
	pos     int
	badUTF8 bool
	stack   []byte
}

func (s *scanner) fail(msg string) error {
	return fmt.Errorf("%w: %s at byte %d", errSyntax, msg, s.pos)
}

func (s *scanner) end() error {
	s.ws()
	if s.pos != len(s.data) {
		return s.fail("unexpected data after the array")
	}
	return nil
}

func (s *scanner) peek() byte {
	if s.pos < len(s.data) {
		return s.data[s.pos]
	}
	return 0
}

func (s *scanner) consume(c byte) bool {
	if s.peek() == c && s.pos < len(s.data) {
		s.pos++
		return true
	}
	return false
}

func (s *scanner) ws() {
	for s.pos < len(s.data) {
		switch s.data[s.pos] {
		case ' ', '\t', '\n', '\r':
			s.pos++
		default:
			return
		}
	}
}

// eventObject scans an object, noting its "type" and "record" members.
func (s *scanner) eventObject() (eventFields, error) {
	var f eventFields
	f.object = true
	err := s.members(func(key []byte) error {
		switch string(key) {
		case `"type"`:
			if s.peek() == '"' {
				start := s.pos
				if err := s.str(); err != nil {
					return err
				}
				f.typ = s.data[start:s.pos]
				return nil
			}
		case `"record"`:
			switch s.peek() {
			case '"':
				f.recordText = true
				f.requestID, f.level, f.tenantID, f.traceValue = nil, nil, nil, nil
			case '{':
				f.recordText = false
				f.requestID, f.level, f.tenantID, f.traceValue = nil, nil, nil, nil
				return s.members(func(key []byte) error {
					switch string(key) {
					case `"requestId"`:
						return s.strInto(&f.requestID)
					case `"level"`:
						return s.strInto(&f.level)
					case `"tenantId"`:
						return s.strInto(&f.tenantID)
					case `"tracing"`:
						if s.peek() == '{' {
							return s.members(func(key []byte) error {
								if string(key) == `"value"` {
									return s.strInto(&f.traceValue)
								}
								return s.value()
							})
						}
					}
					return s.value()
				})
			}
		}
		return s.value()
	})
	return f, err
}

// strInto scans the value at the position into *tok when it is a string, and skips it otherwise.
func (s *scanner) strInto(tok *[]byte) error {
	if s.peek() != '"' {
		return s.value()
	}
	start := s.pos
	if err := s.str(); err != nil {
		return err
	}
	*tok = s.data[start:s.pos]
	return nil
}

// members scans an object, calling member with each key with the position at its value; member
// must consume the value.
func (s *scanner) members(member func(key []byte) error) error {
	if !s.consume('{') {
		return s.fail("expected {")
	}
	s.ws()
	if s.consume('}') {
		return nil
	}
	for {
		s.ws()
		key, err := s.key()
		if err != nil {
			return err
		}
		s.ws()
		if err := member(key); err != nil {
			return err
		}
		s.ws()
		if s.consume('}') {
			return nil
		}
		if !s.consume(',') {
			return s.fail("expected , or } in an object")
		}
	}
}

// value scans any JSON value without recursion.
func (s *scanner) value() error {
	s.stack = s.stack[:0]
	for {
		// A value is expected here.
		s.ws()
		switch c := s.peek(); {
		case c == '{' || c == '[':
			s.pos++
			s.ws()
			if s.consume(c + 2) { // '}' and ']' follow their openers by two in ASCII
				break
			}
			s.stack = append(s.stack, c)
			if c == '{' {
				if _, err := s.key(); err != nil {
					return err
				}
			}
			continue
		case c == '"':
			if err := s.str(); err != nil {
				return err
			}
		case c == 't' || c == 'f' || c == 'n':
			if err := s.literal(literals[c]); err != nil {
				return err
			}
		case c == '-' || (c >= '0' && c <= '9'):
			if err := s.number(); err != nil {
				return err
			}
		default:
			return s.fail("expected a value")
		}
		// A value ended: close containers until one expects another element.
		for {
			if len(s.stack) == 0 {
				return nil
			}
			s.ws()
			top := s.stack[len(s.stack)-1]
			if s.consume(',') {
				if top == '{' {
					s.ws()
					if _, err := s.key(); err != nil {
						return err
					}
				}
				break
			}
			if (top == '{' && s.consume('}')) || (top == '[' && s.consume(']')) {
				s.stack = s.stack[:len(s.stack)-1]
				continue
			}
			return s.fail("expected , or a closing bracket")
		}
	}
}

// key scans `"key" :` inside an object.
func (s *scanner) key() ([]byte, error) {
	start := s.pos
	if s.peek() != '"' {
		return nil, s.fail("expected a string key")
	}
	if err := s.str(); err != nil {
		return nil, err
	}
	key := s.data[start:s.pos]
	s.ws()
	if !s.consume(':') {
		return nil, s.fail("expected :")
	}
	return key, nil
}

// literals maps the first byte of a JSON literal to the literal.
var literals = [256]string{'t': "true", 'f': "false", 'n': "null"}

func (s *scanner) literal(lit string) error {
	if !bytes.HasPrefix(s.data[s.pos:], []byte(lit)) {
		return s.fail("invalid literal")
	}
	s.pos += len(lit)
	return nil
}

func (s *scanner) number() error {
	d := s.data
	i := s.pos
	if i < len(d) && d[i] == '-' {
		i++
	}
	ok := false
	if i < len(d) && d[i] == '0' {
		i, ok = i+1, true // no leading zeros
	} else {
		i, ok = digitRun(d, i)
	}
	if ok && i < len(d) && d[i] == '.' {
		i, ok = digitRun(d, i+1)
	}
	if ok && i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		i, ok = digitRun(d, i)
	}
	s.pos = i
	if !ok {
		return s.fail("invalid number")
	}
	return nil
}

// digitRun returns the index past the decimal digits at i, and whether there is at least one.
func digitRun(d []byte, i int) (int, bool) {
	j := i
	for j < len(d) && '0' <= d[j] && d[j] <= '9' {
		j++
	}
	return j, j > i
}

// plainByte marks the bytes a string can hold as they are: printable ASCII but " and \.
var plainByte = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// str scans a string token, validating escapes and noting invalid UTF-8.
func (s *scanner) str() error {
	d := s.data
	i := s.pos + 1 // past the opening quote
	for {
		// Eight bytes at a time while none needs a closer look, then byte by byte.
		for i+8 <= len(d) && plainWord(binary.LittleEndian.Uint64(d[i:])) {
			i += 8
		}
		for i < len(d) && plainByte[d[i]] {
			i++
		}
		if i >= len(d) {
			s.pos = i
			return s.fail("unterminated string")
		}
		switch c := d[i]; {
		case c == '"':
			s.pos = i + 1
			return nil
		case c == '\\':
			if i+1 >= len(d) {
				s.pos = i
				return s.fail("unterminated escape")
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(d) || !isHex4(d[i+2:i+6]) {
					s.pos = i
					return s.fail(`invalid \u escape`)
				}
				i += 6
			default:
				s.pos = i
				return s.fail("invalid escape")
			}
		case c < 0x20:
			s.pos = i
			return s.fail("control character in string")
		default:
			r, n := utf8.DecodeRune(d[i:])
			if r == utf8.RuneError && n == 1 {
				s.badUTF8 = true
			}
			i += n
		}
	}
}

// plainWord reports whether all eight bytes of w are plain (see plainByte), with the usual
// bit tricks: a byte below 0x20, a quote, a backslash or a non-ASCII byte sets its high bit in
// the result.
func plainWord(w uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	quote, backslash := w^(ones*'"'), w^(ones*'\\')
	control := (w - ones*0x20) & ^w // a byte below 0x20
	quote = (quote - ones) & ^quote // a zero byte: a quote in w
	backslash = (backslash - ones) & ^backslash
	return (control|quote|backslash|w)&highs == 0
}

func isHex4(b []byte) bool {
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}

// unquote returns the value of a JSON string token that scanBatch has validated.
func unquote(tok []byte) string {
	if len(tok) < 2 {
		return ""
	}
	if bytes.IndexByte(tok, '\\') < 0 {
		return string(tok[1 : len(tok)-1])
	}
	var s string
	_ = json.Unmarshal(tok, &s)
	return s
}

// utf8Prefix is the length of the longest prefix of s of at most n bytes that ends at a character
// boundary: the one cutter of text, for strings and byte slices. (In invalid UTF-8 it looks back
// at most utf8.UTFMax-1 bytes for a boundary.)
func utf8Prefix[T ~string | ~[]byte](s T, n int) int {
	if len(s) <= n {
		return len(s)
	}
	i := n
	for i > 0 && i > n-utf8.UTFMax && !utf8.RuneStart(s[i]) {
		i--
	}
	return i
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
