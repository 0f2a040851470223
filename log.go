package main

// The extension's own log: lines to stderr, marked so that they never loop back into the stream.

import (
	"io"
	"log"
	"sync"
)

// logger writes the extension's own log lines to stderr, which Lambda sends to CloudWatch Logs.
// Every line starts with logPrefix so that, when the extension subscribes to its own log type,
// its lines can be recognised and never shipped back into the stream. Lines about a recurring
// problem are written once per key.
type logger struct {
	mu   sync.Mutex
	out  *log.Logger
	said map[string]bool
}

const logPrefix = "[kinesis-telemetry-extension] "

func newLogger(w io.Writer) *logger {
	return &logger{out: log.New(w, logPrefix, log.Lmsgprefix), said: map[string]bool{}}
}

func (l *logger) printf(format string, args ...any) {
	l.out.Printf(format, args...)
}

// once logs the line the first time key is seen.
func (l *logger) once(key, format string, args ...any) {
	l.mu.Lock()
	seen := l.said[key]
	l.said[key] = true
	l.mu.Unlock()
	if !seen {
		l.out.Printf(format, args...)
	}
}
