// Command kinesis-telemetry-extension is an AWS Lambda external extension that subscribes to the
// Lambda Telemetry API and ships every platform event and function log line into an Amazon
// Kinesis data stream.
//
// This file holds main and run: the wiring (register, start, the event loop) and what happens
// when the configuration or the start fails. The README's layout section gives every file of
// the package one line; the parts wired here are the configuration (config.go), the Extensions
// API and the event loop (lifecycle.go), which starts the rest.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	os.Exit(run(os.Getenv, os.Stderr))
}

// run is main without the process: it returns the exit code. It never panics out: a panic is
// reported to Lambda as an exit error, because an extension that dies during an invocation fails
// that invocation.
func run(getenv func(string) string, stderr io.Writer) (code int) {
	logs := newLogger(stderr)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	runtimeAPI := getenv("AWS_LAMBDA_RUNTIME_API")
	if runtimeAPI == "" {
		logs.printf("AWS_LAMBDA_RUNTIME_API is not set: this program runs as a Lambda extension, in /opt/extensions of a function's layer")
		return 1
	}
	cfg, cfgErr := parseConfig(getenv)
	limitMemory(getenv, cfg.MaxBufferBytes)
	limitProcs(getenv)

	// Resolving sandbox.localdomain may wait on DNS; do it while the register call is in flight.
	listenHost := make(chan string, 1)
	go func() { listenHost <- resolveListenHost(ctx) }()

	api := newExtensionsClient(runtimeAPI)
	events := []lifecycleType{eventInvoke, eventShutdown}
	if cfg.Managed {
		// Lambda Managed Instances let extensions register for SHUTDOWN only.
		events = []lifecycleType{eventShutdown}
	}
	name := filepath.Base(os.Args[0])
	reg, err := api.register(ctx, name, events)
	if err != nil {
		logs.printf("register with the Extensions API: %v", err)
		return 1
	}

	ext := &agent{cfg: cfg, api: api, logs: logs, reg: reg}
	defer func() {
		if p := recover(); p != nil {
			logs.printf("internal error: %v", p)
			_ = api.exitError(context.Background(), "Extension.Crash", fmt.Errorf("internal error: %v", p))
			code = 1
		}
	}()

	if cfgErr != nil {
		return ext.cannotShip(ctx, "configuration", "Extension.ConfigInvalid", cfgErr, " until the configuration is fixed")
	}
	if err := ext.start(ctx, <-listenHost); err != nil {
		return ext.cannotShip(ctx, "start", "Extension.StartFailed", err, "")
	}
	return ext.eventLoop(ctx)
}
