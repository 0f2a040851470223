package main

import (
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// TestScanPutAnswer: scanPutAnswer reads what encoding/json reads from PutRecords answers as
// Kinesis, kinesalite and kinesis-mock write them, and refuses what encoding/json refuses.
func TestScanPutAnswer(t *testing.T) {
	var many []string
	for i := range 500 {
		many = append(many, fmt.Sprintf(`{"SequenceNumber":"49543463076548007577105092703039560359975228518395%06d","ShardId":"shardId-%012d"}`, i, i%4))
	}
	answers := []string{
		`{"FailedRecordCount":0,"Records":[` + strings.Join(many, ",") + `]}`,
		`{"FailedRecordCount":0,"Records":[{"SequenceNumber":"1","ShardId":"shardId-000000000000","ErrorCode":null,"ErrorMessage":null}],"EncryptionType":"NONE"}`,
		`{"FailedRecordCount":2,"Records":[{"ErrorCode":"ProvisionedThroughputExceededException","ErrorMessage":"Rate exceeded for shard shardId-000000000001 in stream s under account 123456789012."},` +
			`{"SequenceNumber":"2","ShardId":"shardId-000000000000"},{"ErrorCode":"InternalFailure","ErrorMessage":"a \"quoted\"\nmessage \u00e9"}]}`,
		` { "Records" : [ ] , "FailedRecordCount" : 0 } `,
		`{"Extra":{"nested":[1,{"Records":[{"ErrorCode":"x"}]}]},"Records":[{"Unknown":{"ErrorCode":"no"},"ErrorCode":"Yes"}]}`,
		`{"FailedRecordCount":0}`,
		`{"Records":null}`,
	}
	for _, a := range answers {
		var want struct{ Records []putResult }
		if err := json.Unmarshal([]byte(a), &want); err != nil {
			t.Fatalf("encoding/json: %v", err)
		}
		got, err := scanPutAnswer([]byte(a))
		if err != nil {
			t.Errorf("%.80s: %v", a, err)
			continue
		}
		if len(got) != len(want.Records) || (len(got) > 0 && !reflect.DeepEqual(got, want.Records)) {
			t.Errorf("%.80s:\ngot  %+v\nwant %+v", a, got, want.Records)
		}
	}
	for _, bad := range []string{``, `[]`, `{"Records":[{"ErrorCode":"x"}`, `{"Records":[{"ErrorCode":"x"}]} trailing`, `{"Records":[1 2]}`, `{"Records":[{"ErrorCode":"\x"}]}`} {
		if got, err := scanPutAnswer([]byte(bad)); err == nil {
			t.Errorf("%q: no error (got %+v)", bad, got)
		}
	}
}

// BenchmarkPutAnswer measures reading a 500-entry PutRecords answer, by scanPutAnswer and by
// encoding/json as the client did before. Run: go test -run '^$' -bench PutAnswer -benchmem .
func BenchmarkPutAnswer(b *testing.B) {
	var rs []string
	for i := range 500 {
		rs = append(rs, fmt.Sprintf(`{"SequenceNumber":"49543463076548007577105092703039560359975228518395%06d","ShardId":"shardId-000000000000"}`, i))
	}
	answer := []byte(`{"FailedRecordCount":0,"Records":[` + strings.Join(rs, ",") + `]}`)
	b.Run("scan", func(b *testing.B) {
		b.SetBytes(int64(len(answer)))
		b.ReportAllocs()
		for b.Loop() {
			if r, err := scanPutAnswer(answer); err != nil || len(r) != 500 {
				b.Fatal(err)
			}
		}
	})
	b.Run("encoding-json", func(b *testing.B) {
		b.SetBytes(int64(len(answer)))
		b.ReportAllocs()
		for b.Loop() {
			var out struct {
				FailedRecordCount int
				Records           []struct{ SequenceNumber, ShardId, ErrorCode, ErrorMessage string }
			}
			if err := json.Unmarshal(answer, &out); err != nil || len(out.Records) != 500 {
				b.Fatal(err)
			}
		}
	})
}
