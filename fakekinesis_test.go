package main

// fakeKinesis: an in-process Kinesis that answers PutRecords from a script (a func of the call
// number and request) and keeps what it answered as stored. It models the PutRecords wire format
// (JSON 1.1, base64 Data, per-entry ErrorCode) and nothing else: no shards, no sequence numbers,
// no limits. Tests that need a real Kinesis use the emulators in peers_test.go.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeKinesis is an httptest server that answers PutRecords from a script.
type fakeKinesis struct {
	*httptest.Server
	mu      sync.Mutex
	answer  func(call int, req putRecordsRequest) (status int, body string)
	calls   []putRecordsRequest
	headers []http.Header
	stored  []storedEntry // entries answered as successful, in the order Kinesis stored them

	inFlight atomic.Int32 // calls being answered
}

type storedEntry struct {
	data []byte
	key  string
	at   time.Time
}

type putRecordsRequest struct {
	StreamName string
	StreamARN  string
	Records    []struct{ Data, PartitionKey, ExplicitHashKey string }
}

func newFakeKinesis(t testing.TB, answer func(call int, req putRecordsRequest) (int, string)) *fakeKinesis {
	f := &fakeKinesis{answer: answer}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var req putRecordsRequest
		if err := json.Unmarshal(body, &req); err != nil {
			t.Errorf("request body is not JSON: %v", err)
		}
		f.mu.Lock()
		call := len(f.calls)
		f.calls = append(f.calls, req)
		f.headers = append(f.headers, r.Header.Clone())
		f.mu.Unlock()
		// In flight until answered, or until the client gives up (closes the connection).
		f.inFlight.Add(1)
		var once sync.Once
		done := func() { once.Do(func() { f.inFlight.Add(-1) }) }
		defer done()
		stop := context.AfterFunc(r.Context(), done)
		defer stop()
		status, out := f.answer(call, req)
		if status == http.StatusOK {
			var answer struct{ Records []putResult }
			json.Unmarshal([]byte(out), &answer)
			f.mu.Lock()
			for i, r := range answer.Records {
				if r.ErrorCode == "" && i < len(req.Records) {
					d, _ := base64.StdEncoding.DecodeString(req.Records[i].Data)
					f.stored = append(f.stored, storedEntry{d, req.Records[i].PartitionKey, time.Now()})
				}
			}
			f.mu.Unlock()
		}
		w.WriteHeader(status)
		io.WriteString(w, out)
	}))
	t.Cleanup(f.Close)
	return f
}

// received returns the PutRecords requests seen so far.
func (f *fakeKinesis) received() []putRecordsRequest { return snapshot(&f.mu, &f.calls) }

// snapshot copies what a fake has recorded in *s so far, under the lock its handlers append with.
func snapshot[T any](mu *sync.Mutex, s *[]T) []T {
	mu.Lock()
	defer mu.Unlock()
	return append([]T(nil), *s...)
}

// allOK answers every record with success.
func allOK(_ int, req putRecordsRequest) (int, string) {
	var rs []string
	for i := range req.Records {
		rs = append(rs, fmt.Sprintf(`{"SequenceNumber":"%d","ShardId":"shardId-000000000000","ErrorCode":null}`, i))
	}
	return 200, `{"FailedRecordCount":0,"Records":[` + strings.Join(rs, ",") + `]}`
}

// callsData returns the records a fake Kinesis stored (answered as successful).
func (f *fakeKinesis) callsData() (data [][]byte, keys []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.stored {
		data, keys = append(data, s.data), append(keys, s.key)
	}
	return data, keys
}

// decoded returns the records the fake stored, decoded.
func (f *fakeKinesis) decoded(t testing.TB) (events []shipped, counts []countsRecord) {
	t.Helper()
	data, keys := f.callsData()
	return decodeShipped(t, data, keys)
}
