// Command mkzip writes a Lambda layer zip holding one executable, byte for
// byte the same on every run: build.sh uses it so that building the layer
// needs nothing but Go.
//
// The entry gets a fixed modification time and mode 0755 whatever the file on
// disk says (umask, build time and time zone must not leak into the zip), and
// is compressed with the standard library's deflate at a fixed level, whose
// output depends only on the input and the Go version.
//
// It lives under testdata/ so that `go build ./...`, `go vet ./...` and
// `go test ./...` of the extension do not treat it as part of the product;
// build.sh runs it with `go run ./testdata/mkzip`.
package main

import (
	"archive/zip"
	"compress/flate"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// entryTime is the modification time of every entry; build_test.go checks
// the zips for exactly this value.
var entryTime = time.Date(2020, time.January, 1, 0, 0, 0, 0, time.UTC)

// entryMode is the mode of the entry: Lambda runs /opt/extensions/* as is.
const entryMode = 0o755

func main() {
	out := flag.String("o", "", "zip file to write (replaced atomically)")
	name := flag.String("name", "", "path of the single entry inside the zip, e.g. extensions/kinesis-telemetry-extension")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: mkzip -o OUT.zip -name ENTRY FILE\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || *name == "" || flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	if err := writeZip(*out, *name, flag.Arg(0)); err != nil {
		fmt.Fprintf(os.Stderr, "mkzip: %v\n", err)
		os.Exit(1)
	}
}

// writeZip writes out as a zip with one entry called name holding the
// contents of src. A reader never sees a half-written out: the zip is
// written beside it and renamed into place.
func writeZip(out, name, src string) (err error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("read executable: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(out), ".mkzip-*")
	if err != nil {
		return fmt.Errorf("create temporary zip: %w", err)
	}
	defer func() {
		if err != nil {
			_ = tmp.Close()
			_ = os.Remove(tmp.Name())
		}
	}()

	zw := zip.NewWriter(tmp)
	zw.RegisterCompressor(zip.Deflate, func(w io.Writer) (io.WriteCloser, error) {
		return flate.NewWriter(w, flate.BestCompression)
	})
	fh := &zip.FileHeader{Name: name, Method: zip.Deflate, Modified: entryTime}
	fh.SetMode(entryMode)
	w, err := zw.CreateHeader(fh)
	if err != nil {
		return fmt.Errorf("add %s: %w", name, err)
	}
	if _, err := w.Write(data); err != nil {
		return fmt.Errorf("compress %s: %w", name, err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("finish zip: %w", err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		return fmt.Errorf("chmod zip: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close zip: %w", err)
	}
	if err := os.Rename(tmp.Name(), out); err != nil {
		return fmt.Errorf("move zip into place: %w", err)
	}
	return nil
}
