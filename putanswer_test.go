package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
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
		var want struct {
			Records []struct{ ErrorCode, ErrorMessage, ShardId string }
		}
		if err := json.Unmarshal([]byte(a), &want); err != nil {
			t.Fatalf("encoding/json: %v", err)
		}
		got, err := scanPutAnswer([]byte(a))
		if err != nil {
			t.Errorf("%.80s: %v", a, err)
			continue
		}
		type result struct{ ErrorCode, ErrorMessage, ShardId string }
		gotAs := make([]result, len(got))
		for i, r := range got {
			gotAs[i] = result{r.ErrorCode, r.ErrorMessage, string(r.ShardID)}
		}
		wantAs := make([]result, len(want.Records))
		for i, r := range want.Records {
			wantAs[i] = result(r)
		}
		if len(got) != len(want.Records) || (len(got) > 0 && !reflect.DeepEqual(gotAs, wantAs)) {
			t.Errorf("%.80s:\ngot  %+v\nwant %+v", a, gotAs, wantAs)
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

// TestPutAnswerOnEmulators: the client reads the answers of the real emulators: one result per
// record, and on kinesis-mock a per-record failure (a record over 1 MiB) with its code.
func TestPutAnswerOnEmulators(t *testing.T) {
	for _, start := range []func(testing.TB) *kinesisPeer{
		func(t testing.TB) *kinesisPeer { return startKinesalite(t, streamSpec{"s", 2}) },
		func(t testing.TB) *kinesisPeer {
			return startKinesisMock(t, "eu-west-1", "123456789012", streamSpec{"s", 2})
		},
	} {
		p := start(t)
		t.Run(p.Name, func(t *testing.T) {
			creds := aws.NewCredentialsCache(credentials.NewStaticCredentialsProvider(p.Account, peerSecretKey, ""))
			c := newKinesisClient(p.Endpoint, p.Region, creds, 10*time.Second)
			sizes := []int{10, 20, 30}
			if p.Name == "kinesis-mock" {
				sizes = []int{10, 1<<20 + 1, 30} // kinesalite refuses the whole call instead
			}
			var recs []string
			for i, n := range sizes {
				data := base64.StdEncoding.EncodeToString([]byte(strings.Repeat("x", n)))
				recs = append(recs, fmt.Sprintf(`{"Data":%q,"PartitionKey":"k%d"}`, data, i))
			}
			body := []byte(`{"StreamName":"s","Records":[` + strings.Join(recs, ",") + `]}`)
			results, err := c.putRecords(context.Background(), body, len(sizes))
			if err != nil {
				t.Fatal(err)
			}
			for i, r := range results {
				want := ""
				if sizes[i] > 1<<20 {
					want = "InvalidArgumentException"
				}
				if r.ErrorCode != want || (want != "") != (r.ErrorMessage != "") {
					t.Errorf("record %d: %+v, want error code %q", i, r, want)
				}
			}
		})
	}
}
