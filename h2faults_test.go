package main

// Frame-level HTTP/2 faults, played on a connection the tlsFront hands over (hijackNext): a
// minimal HTTP/2 server written with golang.org/x/net/http2's Framer (test code only; the
// extension's binary does not link x/net, TestShippedBinaryHasNoXNet checks). It completes the
// TLS handshake (ALPN h2), the preface and SETTINGS, then answers the first request's stream with
// the fault and ends the connection. What it models: the signals a server sends about streams it
// did not process (RST_STREAM REFUSED_STREAM, GOAWAY with a last-stream-id below them) and an
// abrupt GOAWAY after the request was read. It never answers a request.

import (
	"crypto/tls"
	"io"
	"net"
	"time"

	"golang.org/x/net/http2"
)

// h2Fault is what the connection does to the first stream.
type h2Fault int

const (
	h2Refused        h2Fault = iota // RST_STREAM REFUSED_STREAM at its HEADERS, then GOAWAY above it
	h2GoAwayGraceful                // GOAWAY NO_ERROR with last-stream-id below it, at its HEADERS
	h2GoAwayAbrupt                  // the request read whole, then GOAWAY INTERNAL_ERROR including it, and close
)

func (f h2Fault) String() string {
	return [...]string{"RST_STREAM REFUSED_STREAM", "GOAWAY graceful", "GOAWAY abrupt"}[f]
}

// playH2Fault runs fault on conn, accepted by a front whose TLS configuration is cfg.
func playH2Fault(conn net.Conn, cfg *tls.Config, fault h2Fault) {
	tc := tls.Server(conn, cfg)
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if err := tc.Handshake(); err != nil || tc.ConnectionState().NegotiatedProtocol != "h2" {
		return
	}
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(tc, preface); err != nil || string(preface) != http2.ClientPreface {
		return
	}
	fr := http2.NewFramer(tc, tc)
	if fr.WriteSettings() != nil {
		return
	}
	for {
		frame, err := fr.ReadFrame()
		if err != nil {
			return
		}
		switch f := frame.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				fr.WriteSettingsAck()
			}
		case *http2.HeadersFrame:
			id := f.StreamID
			switch fault {
			case h2Refused:
				fr.WriteRSTStream(id, http2.ErrCodeRefusedStream)
				fr.WriteGoAway(id, http2.ErrCodeNo, nil) // streams after it go elsewhere
				drain(tc, fr)
				return
			case h2GoAwayGraceful:
				fr.WriteGoAway(max(id, 2)-2, http2.ErrCodeNo, nil) // the stream before it: 0 for the first
				drain(tc, fr)
				return
			}
			if f.StreamEnded() {
				abrupt(fr, id)
				return
			}
		case *http2.DataFrame:
			if fault == h2GoAwayAbrupt && f.StreamEnded() {
				abrupt(fr, f.StreamID)
				return
			}
		}
	}
}

// abrupt says the stream may have been processed, and closes.
func abrupt(fr *http2.Framer, id uint32) {
	fr.WriteGoAway(id, http2.ErrCodeInternal, []byte("going away"))
}

// drain reads what the client still sends for a moment, so that closing does not reset frames
// it wrote before seeing the GOAWAY.
func drain(conn net.Conn, fr *http2.Framer) {
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	for {
		if _, err := fr.ReadFrame(); err != nil {
			return
		}
	}
}
