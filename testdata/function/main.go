// Command function is the Lambda handler the RIE tests invoke. It is built
// from the module's own aws-lambda-go dependency so the runtime side of the
// emulator is a real Runtime API client, not a fake.
//
// For an event {"n":N,"extra":K} it prints, to stdout, exactly:
//
//	line N text
//	{"level":"INFO","msg":"line N json"}
//
// followed by K lines "line N extra I" (0 <= I < K), and answers
// {"n":N,"requestId":"<the invocation's request id>"} so that a test knows
// which request printed which lines without trusting the emulator's order.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/aws/aws-lambda-go/lambda"
	"github.com/aws/aws-lambda-go/lambdacontext"
)

type event struct {
	N     int `json:"n"`
	Extra int `json:"extra"`
}

type answer struct {
	N         int    `json:"n"`
	RequestID string `json:"requestId"`
}

func handle(ctx context.Context, e event) (answer, error) {
	lc, _ := lambdacontext.FromContext(ctx)
	// One Fprintf per line: the emulator reads the pipe line by line, and a
	// single write per line keeps the lines whole even if the pipe is busy.
	fmt.Fprintf(os.Stdout, "line %d text\n", e.N)
	fmt.Fprintf(os.Stdout, "{\"level\":\"INFO\",\"msg\":\"line %d json\"}\n", e.N)
	for i := 0; i < e.Extra; i++ {
		fmt.Fprintf(os.Stdout, "line %d extra %d\n", e.N, i)
	}
	var id string
	if lc != nil {
		id = lc.AwsRequestID
	}
	return answer{N: e.N, RequestID: id}, nil
}

func main() {
	lambda.Start(handle)
}
