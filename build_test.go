package main

import (
	"archive/zip"
	"bytes"
	"crypto/sha256"
	"debug/buildinfo"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The layer contract that build.sh and testdata/mkzip must keep.
const (
	layerZipBudget = 9 << 19 // bytes (4.5 MiB); issue 4's size budget per zip, raised by issue 12
	layerEntryName = "extensions/kinesis-telemetry-extension"
	layerEntryMode = 0o755
)

// layerEntryTime is the fixed modification time mkzip gives the entry.
var layerEntryTime = time.Date(2020, time.January, 1, 0, 0, 0, 0, time.UTC)

var layerArches = []struct {
	name    string // Lambda's name, in the zip's file name
	goarch  string
	machine elf.Machine
}{
	{"x86_64", "amd64", elf.EM_X86_64},
	{"arm64", "arm64", elf.EM_AARCH64},
}

func layerZipName(arch string) string {
	return "kinesis-telemetry-extension-" + arch + ".zip"
}

// TestBuildLayerZips runs ./build.sh twice, into two fresh folders, with a
// different umask, time zone and temporary folder each time, and checks both
// zips of each run: under budget, one executable entry with a fixed time, a
// static stripped Linux binary for the right machine, and the same bytes in
// both runs. Under TEST_REQUIRE_PEERS=1 (./build.sh test, which has just
// built dist/) it also compares dist/ with the fresh builds.
func TestBuildLayerZips(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the layer zips twice; not in -short mode")
	}
	first := runBuildScript(t, "0022", "UTC")
	second := runBuildScript(t, "0077", "Pacific/Chatham")
	checkQuotedZipSizes(t, first)

	for _, arch := range layerArches {
		t.Run(arch.name, func(t *testing.T) {
			zipA, err := os.ReadFile(filepath.Join(first, layerZipName(arch.name)))
			if err != nil {
				t.Fatal(err)
			}
			zipB, err := os.ReadFile(filepath.Join(second, layerZipName(arch.name)))
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: %d bytes (%.2f MiB of the %.1f MiB budget), sha256 %x",
				layerZipName(arch.name), len(zipA), float64(len(zipA))/(1<<20), float64(layerZipBudget)/(1<<20), sha256.Sum256(zipA))
			if len(zipA) >= layerZipBudget {
				t.Errorf("zip is %d bytes, want under %d", len(zipA), layerZipBudget)
			}
			if !bytes.Equal(zipA, zipB) {
				t.Errorf("two builds differ: sha256 %x (umask 022, UTC) vs %x (umask 077, Pacific/Chatham)",
					sha256.Sum256(zipA), sha256.Sum256(zipB))
			}
			checkLayerZip(t, zipA, arch.goarch, arch.machine)

			if os.Getenv("TEST_REQUIRE_PEERS") == "1" {
				dist, err := os.ReadFile(filepath.Join("dist", layerZipName(arch.name)))
				if err != nil {
					t.Fatalf("TEST_REQUIRE_PEERS=1 expects ./build.sh to have built dist/: %v", err)
				}
				if !bytes.Equal(dist, zipA) {
					t.Errorf("dist/%s (sha256 %x) differs from a fresh build (sha256 %x)",
						layerZipName(arch.name), sha256.Sum256(dist), sha256.Sum256(zipA))
				}
			}
		})
	}
}

// zipSizeQuotes are the places that quote the zips' sizes. Each regexp captures the quoted
// figures; want renders what they must read for the zips just built (x86_64, arm64 bytes). The
// figures are rounded (MiB to two places), so a change of a few KB passes and a reader who
// rebuilds finds what the documents say; the exact bytes are what ./build.sh prints.
var zipSizeQuotes = []struct {
	file, where string
	re          *regexp.Regexp
	want        func(x86, arm int) []string
}{
	{"docs/development.md", "the Zip sizes table's extension row",
		regexp.MustCompile("\\| the extension \\(`./build.sh`\\) \\| ([0-9.]+) MiB \\| ([0-9.]+) MiB \\|"),
		func(x86, arm int) []string { return []string{mib(x86), mib(arm)} }},
	{"docs/development.md", "the sentence on what is left under the budget",
		regexp.MustCompile(`The x86_64 zip has ([0-9.]+) MiB \(([0-9]+)%\) left under the budget`),
		func(x86, _ int) []string {
			return []string{mib(layerZipBudget - x86), fmt.Sprint((layerZipBudget - x86) * 100 / layerZipBudget)}
		}},
	{"BENCHMARKS.md", "the Layer zips row",
		regexp.MustCompile(`\| Layer zips \| x86_64 \*\*([0-9.]+) MiB\*\*, arm64 ([0-9.]+) MiB[^|]*\|.*\| yes \(([0-9]+)% to spare on x86_64\)`),
		func(x86, arm int) []string {
			return []string{mib(x86), mib(arm), fmt.Sprint((layerZipBudget - x86) * 100 / layerZipBudget)}
		}},
}

func mib(n int) string { return fmt.Sprintf("%.2f", float64(n)/(1<<20)) }

// checkQuotedZipSizes fails when docs/development.md or BENCHMARKS.md quote zip sizes other than
// those of the zips in dist, and says what to write instead.
func checkQuotedZipSizes(t *testing.T, dist string) {
	t.Helper()
	var size [2]int
	for i, arch := range layerArches {
		fi, err := os.Stat(filepath.Join(dist, layerZipName(arch.name)))
		if err != nil {
			t.Fatal(err)
		}
		size[i] = int(fi.Size())
	}
	for _, q := range zipSizeQuotes {
		doc, err := os.ReadFile(q.file)
		if err != nil {
			t.Fatal(err)
		}
		m := q.re.FindSubmatch(doc)
		if m == nil {
			t.Errorf("%s: %s not found (pattern %s): keep its wording, or change zipSizeQuotes in build_test.go with it", q.file, q.where, q.re)
			continue
		}
		want := q.want(size[0], size[1])
		var got []string
		for _, g := range m[1:] {
			got = append(got, string(g))
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: %s quotes %q, but the zips just built (x86_64 %d bytes, arm64 %d bytes) give %q: update it to %q",
				q.file, q.where, m[0], size[0], size[1], want, fill(q.re, m[0], want))
		}
	}
}

// fill returns match with its capture groups replaced by values.
func fill(re *regexp.Regexp, match []byte, values []string) string {
	idx := re.FindSubmatchIndex(match)
	var b strings.Builder
	last := 0
	for i, v := range values {
		b.Write(match[last:idx[2*i+2]])
		b.WriteString(v)
		last = idx[2*i+3]
	}
	b.Write(match[last:])
	return b.String()
}

// runBuildScript runs `./build.sh build` with the given umask and TZ into a
// new folder, checks what it printed and left there, and returns the folder.
func runBuildScript(t *testing.T, umask, tz string) string {
	t.Helper()
	dist := t.TempDir()
	cmd := exec.Command("bash", "-c", "umask "+umask+" && exec ./build.sh build")
	cmd.Env = append(os.Environ(), "DIST_DIR="+dist, "TZ="+tz, "TMPDIR="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("./build.sh build (umask %s, TZ %s): %v\n%s", umask, tz, err, out)
	}

	var want []string
	for _, arch := range layerArches {
		want = append(want, layerZipName(arch.name))
		path := filepath.Join(dist, layerZipName(arch.name))
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		line := fmt.Sprintf("%s %d bytes", path, fi.Size())
		if !slices.Contains(strings.Split(string(out), "\n"), line) {
			t.Errorf("./build.sh output lacks the line %q:\n%s", line, out)
		}
	}
	entries, err := os.ReadDir(dist)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	slices.Sort(want) // ReadDir sorts by name
	if !slices.Equal(got, want) {
		t.Errorf("DIST_DIR holds %q, want exactly %q", got, want)
	}
	return dist
}

// checkLayerZip checks that data is a zip with exactly one entry, the
// extension, mode 0755 and the fixed time, holding a static, stripped,
// trimmed Linux executable for goarch.
func checkLayerZip(t *testing.T, data []byte, goarch string, machine elf.Machine) {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("open zip: %v", err)
	}
	if len(zr.File) != 1 || zr.File[0].Name != layerEntryName {
		var names []string
		for _, f := range zr.File {
			names = append(names, f.Name)
		}
		t.Fatalf("zip entries: got %q, want exactly [%q]", names, layerEntryName)
	}
	f := zr.File[0]
	if got := f.Mode(); !got.IsRegular() || got.Perm() != layerEntryMode {
		t.Errorf("entry mode: got %v, want -rwxr-xr-x", got)
	}
	if f.CreatorVersion>>8 != 3 {
		t.Errorf("entry made by system %d, want 3 (Unix: only then do unzip and Lambda honour the mode)", f.CreatorVersion>>8)
	}
	if !f.Modified.Equal(layerEntryTime) {
		t.Errorf("entry time: got %v, want %v", f.Modified, layerEntryTime)
	}
	// The DOS fields are what tools without the extended timestamp read.
	// 2020-01-01 00:00:00 is date (2020-1980)<<9 | 1<<5 | 1, time 0.
	if f.ModifiedDate != 40<<9|1<<5|1 || f.ModifiedTime != 0 {
		t.Errorf("entry DOS date/time: got %#x/%#x, want %#x/0", f.ModifiedDate, f.ModifiedTime, 40<<9|1<<5|1)
	}

	rc, err := f.Open()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := io.ReadAll(rc) // checks the CRC at EOF
	rc.Close()
	if err != nil {
		t.Fatalf("read entry: %v", err)
	}

	ef, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("entry is not an ELF executable: %v", err)
	}
	defer ef.Close()
	if ef.Machine != machine || ef.Type != elf.ET_EXEC || ef.OSABI != elf.ELFOSABI_NONE {
		t.Errorf("ELF: got %v %v %v, want %v ET_EXEC ELFOSABI_NONE", ef.Machine, ef.Type, ef.OSABI, machine)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("ELF has a %v segment: not statically linked", p.Type)
		}
	}
	if ef.Section(".symtab") != nil {
		t.Error("ELF has a .symtab section: not stripped (-s)")
	}
	if ef.Section(".debug_info") != nil || ef.Section(".zdebug_info") != nil {
		t.Error("ELF has DWARF: not built with -w")
	}

	bi, err := buildinfo.Read(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("read Go build info: %v", err)
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	for key, want := range map[string]string{
		"GOOS":         "linux",
		"GOARCH":       goarch,
		"CGO_ENABLED":  "0",
		"-trimpath":    "true",
		"-buildmode":   "exe",
		"vcs.revision": "", // -buildvcs=false: same bytes from any checkout
	} {
		if got := settings[key]; got != want {
			t.Errorf("build setting %s: got %q, want %q", key, got, want)
		}
	}
	// With -trimpath, Go does not record -ldflags; -s and -w are checked
	// on the ELF above and -buildid= here: the build ID note must be empty.
	if sec := ef.Section(".note.go.buildid"); sec != nil {
		note, err := sec.Data()
		if err != nil {
			t.Fatal(err)
		}
		if len(note) >= 12 && binary.LittleEndian.Uint32(note[4:8]) != 0 {
			t.Errorf("Go build ID note is not empty (%d bytes): -buildid= missing", binary.LittleEndian.Uint32(note[4:8]))
		}
	}
}

// TestBuildScriptMissingTools runs build.sh with a PATH that lacks one tool
// and checks that it stops with a message naming that tool.
func TestBuildScriptMissingTools(t *testing.T) {
	goPath, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not on PATH: %v", err)
	}
	// build.sh needs these before it checks for go or node.
	base := []string{"bash", "dirname", "sed"}
	tests := []struct {
		name    string
		tools   []string // on PATH besides base
		args    []string
		wantErr string
	}{
		{"build without go", nil, []string{"build"}, "build.sh: go not found in PATH"},
		{"test without node", []string{goPath}, []string{"test"}, "build.sh: node not found in PATH"},
		{"demo without node", []string{goPath}, []string{"demo"}, "build.sh: node not found in PATH"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bin := t.TempDir()
			for _, tool := range append(slices.Clone(base), tt.tools...) {
				path := tool
				if !filepath.IsAbs(path) {
					if path, err = exec.LookPath(tool); err != nil {
						t.Fatal(err)
					}
				}
				if err := os.Symlink(path, filepath.Join(bin, filepath.Base(tool))); err != nil {
					t.Fatal(err)
				}
			}
			bash := filepath.Join(bin, "bash")
			cmd := exec.Command(bash, append([]string{"./build.sh"}, tt.args...)...)
			cmd.Env = append(os.Environ(), "PATH="+bin, "DIST_DIR="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("build.sh %v succeeded without the tool:\n%s", tt.args, out)
			}
			if !strings.Contains(string(out), tt.wantErr) {
				t.Errorf("output: got %q, want it to contain %q", out, tt.wantErr)
			}
		})
	}
}

// TestBuildScriptSubcommands checks that help lists every subcommand and
// that an unknown one fails instead of silently building.
func TestBuildScriptSubcommands(t *testing.T) {
	out, err := exec.Command("./build.sh", "help").CombinedOutput()
	if err != nil {
		t.Fatalf("./build.sh help: %v\n%s", err, out)
	}
	for _, sub := range []string{"build", "test", "demo", "bench", "help"} {
		if !strings.Contains(string(out), "\n  "+sub+" ") {
			t.Errorf("./build.sh help does not list %q:\n%s", sub, out)
		}
	}

	out, err = exec.Command("./build.sh", "nosuch").CombinedOutput()
	if err == nil {
		t.Fatalf("./build.sh nosuch succeeded:\n%s", out)
	}
	if !strings.Contains(string(out), "unknown subcommand: nosuch") {
		t.Errorf("./build.sh nosuch: got %q, want it to name the unknown subcommand", out)
	}
}
