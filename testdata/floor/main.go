// Command floor is the smallest useful Lambda telemetry extension: it registers, opens a listener,
// subscribes to the Telemetry API and waits in /event/next, discarding whatever is posted. It has
// no configuration, buffering or Kinesis code. BenchmarkColdStart and BenchmarkMemory
// (coldstart_test.go) run it beside the real extension as the floor that no Go extension can
// beat, so that their figures say what the extension's own code costs.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run() error {
	runtimeAPI := os.Getenv("AWS_LAMBDA_RUNTIME_API")
	if runtimeAPI == "" {
		return fmt.Errorf("AWS_LAMBDA_RUNTIME_API is not set")
	}
	port := os.Getenv("KINESIS_TELEMETRY_PORT")
	if port == "" {
		port = "4243"
	}
	base := "http://" + runtimeAPI + "/2020-01-01/extension"

	resp, err := call(http.MethodPost, base+"/register", `{"events":["INVOKE","SHUTDOWN"]}`,
		"Lambda-Extension-Name", filepath.Base(os.Args[0]))
	if err != nil {
		return fmt.Errorf("register: %w", err)
	}
	id := resp.Header.Get("Lambda-Extension-Identifier")

	// The listener must be up before subscribing: Lambda posts as soon as it accepts. Like any
	// correct extension, it listens where sandbox.localdomain resolves (the destination it
	// subscribes with), or on 127.0.0.1 where the name does not resolve (here).
	host := "127.0.0.1"
	if addrs, err := net.LookupHost("sandbox.localdomain"); err == nil && len(addrs) > 0 {
		host = addrs[0]
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, port))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	}))

	sub := `{"schemaVersion":"2022-12-13","destination":{"protocol":"HTTP","URI":"http://sandbox.localdomain:` + port +
		`"},"types":["platform","function"],"buffering":{"maxItems":1000,"maxBytes":262144,"timeoutMs":25}}`
	if _, err := call(http.MethodPut, "http://"+runtimeAPI+"/2022-07-01/telemetry", sub, "Lambda-Extension-Identifier", id); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}

	for {
		resp, err := call(http.MethodGet, base+"/event/next", "", "Lambda-Extension-Identifier", id)
		if err != nil {
			return fmt.Errorf("next: %w", err)
		}
		var ev struct{ EventType string }
		if err := json.Unmarshal(resp.body, &ev); err != nil {
			return fmt.Errorf("next: decode: %w", err)
		}
		if ev.EventType == "SHUTDOWN" {
			return nil
		}
	}
}

type answer struct {
	Header http.Header
	body   []byte
}

// call sends one request with one header and fails on any status but 200.
func call(method, url, body, key, value string) (answer, error) {
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set(key, value)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return answer{}, err
	}
	if resp.StatusCode != http.StatusOK {
		return answer{}, fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return answer{resp.Header, b}, nil
}
