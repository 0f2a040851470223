package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/semver"
)

// The vulnerability database is the source repository of vuln.go.dev,
// fetched as a Go module because the module proxy is the only network
// this project's CI can reach. Bump the version to pick up new reports.
const (
	vulnDBModule  = "golang.org/x/vulndb"
	vulnDBVersion = "v0.0.0-20261105234957-e22db6528018"

	// vulnDBLayout is stored in each prepared database; a cached database
	// with another value is rebuilt, so change it whenever
	// vulnWriteDB's output changes.
	vulnDBLayout = "v1 index built from data/osv by vuln_test.go, rev 1"

	// Generous: the module zip is ~25 MB and takes seconds on a good link;
	// the limit is there so that a proxy that drops packets skips the test
	// instead of hanging it.
	vulnNetTimeout = 5 * time.Minute
)

// TestGovulncheck fails when govulncheck finds a vulnerability that the
// module's code can reach, using a database built offline from the
// pinned vulndb module.
func TestGovulncheck(t *testing.T) {
	dbURL := vulnPrepareDB(t)

	// Without this, a database that silently matches nothing would let the
	// repository scan pass forever.
	t.Run("database finds a known vulnerability", func(t *testing.T) {
		vulnCheckProbe(t, dbURL)
	})

	t.Run("module has no reachable vulnerability", func(t *testing.T) {
		// The scan judges the standard library of the release that builds the zips (go.mod's
		// toolchain line, which build.sh exports), not that of whatever Go runs the tests.
		toolchain := vulnToolchain(t)
		if runtime.Version() != toolchain {
			t.Logf("tests run with %s; scanning with go.mod's toolchain %s, which builds the zips", runtime.Version(), toolchain)
		}
		out, code, err := vulnGovulncheck(t, ".", dbURL, "GOTOOLCHAIN="+toolchain)
		switch {
		case err != nil:
			t.Fatalf("govulncheck did not run: %v\n%s", err, out)
		case code == 3 && strings.Contains(out, "Standard library"):
			t.Fatalf("govulncheck reports vulnerabilities in the standard library of %s reachable from this module.\n"+
				"Fix: raise the toolchain line in go.mod to a release at or after each \"Fixed in\" below (and its mentions in README.md and docs/development.md), then rerun.\n%s", toolchain, out)
		case code == 3:
			t.Fatalf("govulncheck reports vulnerabilities reachable from this module.\n"+
				"Fix: go get each module at or after its \"Fixed in\" version below, then go mod tidy.\n%s", out)
		case code != 0:
			t.Fatalf("govulncheck failed with exit code %d:\n%s", code, out)
		}
		t.Logf("govulncheck:\n%s", out)
	})
}

// vulnCheckProbe scans a throwaway module that calls
// golang.org/x/text/language.Parse at v0.3.5, which GO-2021-0113
// (CVE-2021-38561, fixed in v0.3.7) covers, and requires govulncheck to
// report it as called, not merely present.
func vulnCheckProbe(t *testing.T, dbURL string) {
	const wantID = "GO-2021-0113"
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module vulnprobe\n\ngo 1.21\n\nrequire golang.org/x/text v0.3.5\n",
		"main.go": `package main

import (
	"fmt"
	"os"

	"golang.org/x/text/language"
)

func main() {
	tag, err := language.Parse(os.Args[1])
	fmt.Println(tag, err)
}
`,
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatalf("writing probe module: %v", err)
		}
	}
	// tidy writes go.sum and fetches golang.org/x/text through the proxy.
	if out, err := vulnGo(t, dir, "mod", "tidy"); err != nil {
		vulnNetworkFailure(t, fmt.Sprintf("fetching golang.org/x/text v0.3.5 for the probe module: %v\n%s", err, out))
	}

	out, code, err := vulnGovulncheck(t, dir, dbURL)
	if err != nil {
		t.Fatalf("govulncheck did not run on the probe module: %v\n%s", err, out)
	}
	if code != 3 {
		t.Fatalf("govulncheck on a module calling golang.org/x/text v0.3.5 language.Parse: got exit code %d, want 3 (vulnerabilities found)\n%s", code, out)
	}
	// Without -show verbose, text output lists only vulnerabilities whose
	// symbols are called, each with a call trace.
	called := regexp.MustCompile(`(?m)^Vulnerability #\d+: ` + wantID + `$`)
	if !called.MatchString(out) || !strings.Contains(out, "calls language.Parse") {
		t.Fatalf("govulncheck output does not report %s as called through language.Parse:\n%s", wantID, out)
	}
}

// vulnToolchain returns the release go.mod's toolchain line names.
func vulnToolchain(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "toolchain "); ok {
			return strings.TrimSpace(v)
		}
	}
	t.Fatal("go.mod has no toolchain line: it pins the Go release that builds the zips")
	return ""
}

// vulnGovulncheck runs the pinned govulncheck (go.mod's tool directive) on
// the module in dir, with env added to the environment. err is set only
// when govulncheck could not be started or timed out; otherwise its exit
// code is returned as code.
func vulnGovulncheck(t *testing.T, dir, dbURL string, env ...string) (out string, code int, err error) {
	t.Helper()
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", 0, fmt.Errorf("resolving %s: %w", dir, err)
	}
	// Run from this module so that "go tool" resolves the pinned version;
	// -C points the scan at dir.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "tool", "govulncheck", "-C", abs, "-db", dbURL, "./...")
	cmd.Env = append(append(os.Environ(), "GOWORK=off"), env...)
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err = cmd.Run()
	var exit *exec.ExitError
	if errors.As(err, &exit) && ctx.Err() == nil {
		return buf.String(), exit.ExitCode(), nil
	}
	if err != nil {
		return buf.String(), 0, fmt.Errorf("go tool govulncheck: %w", err)
	}
	return buf.String(), 0, nil
}

// vulnPrepareDB returns a file:// URL of a v1 vulnerability database for
// vulnDBVersion, building it once per version under the user cache
// directory so later runs need neither the network nor the conversion.
func vulnPrepareDB(t *testing.T) string {
	t.Helper()
	parent := t.TempDir()
	if cache, err := os.UserCacheDir(); err == nil {
		parent = filepath.Join(cache, "kinesis-telemetry-extension")
	} else {
		t.Logf("no user cache directory (%v): building the database in a temporary directory", err)
	}
	dir := filepath.Join(parent, "vulndb-"+vulnDBVersion)
	if vulnDBReady(dir) {
		return vulnFileURL(dir)
	}

	start := time.Now()
	src, snapshot := vulnDownload(t)
	t.Logf("downloaded %s@%s in %v", vulnDBModule, vulnDBVersion, time.Since(start).Round(time.Millisecond))

	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatalf("creating cache directory: %v", err)
	}
	// Build beside the final path and rename, so an interrupted run or a
	// concurrent test binary never sees a half-written database.
	tmp, err := os.MkdirTemp(parent, ".vulndb-build-")
	if err != nil {
		t.Fatalf("creating build directory: %v", err)
	}
	defer os.RemoveAll(tmp)
	start = time.Now()
	n, err := vulnWriteDB(filepath.Join(src, "data", "osv"), tmp, snapshot)
	if err != nil {
		t.Fatalf("building vulnerability database from %s: %v", src, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatalf("removing stale database: %v", err)
	}
	if err := os.Rename(tmp, dir); err != nil && !vulnDBReady(dir) {
		t.Fatalf("installing database: %v", err)
	}
	t.Logf("built vulnerability database with %d entries in %s in %v", n, dir, time.Since(start).Round(time.Millisecond))
	return vulnFileURL(dir)
}

func vulnDBReady(dir string) bool {
	b, err := os.ReadFile(filepath.Join(dir, "LAYOUT"))
	return err == nil && string(b) == vulnDBLayout
}

func vulnFileURL(dir string) string {
	return (&url.URL{Scheme: "file", Path: filepath.ToSlash(dir)}).String()
}

// vulnDownload fetches the pinned vulndb module through the module proxy
// and returns its extracted directory and the commit time of the snapshot.
func vulnDownload(t *testing.T) (dir string, snapshot time.Time) {
	t.Helper()
	// An empty directory keeps "go mod download" from touching this
	// module's go.mod or go.sum.
	out, err := vulnGo(t, t.TempDir(), "mod", "download", "-json", vulnDBModule+"@"+vulnDBVersion)
	var info struct {
		Dir   string
		Info  string
		Error string
	}
	if jerr := json.Unmarshal(out, &info); jerr != nil || info.Error != "" || err != nil {
		msg := fmt.Sprintf("downloading %s@%s through the Go module proxy: %v\n%s", vulnDBModule, vulnDBVersion, err, out)
		if strings.Contains(string(out), "SECURITY ERROR") || strings.Contains(string(out), "checksum mismatch") {
			t.Fatal(msg)
		}
		vulnNetworkFailure(t, msg)
	}
	b, err := os.ReadFile(info.Info)
	if err != nil {
		t.Fatalf("reading module info: %v", err)
	}
	var meta struct{ Time time.Time }
	if err := json.Unmarshal(b, &meta); err != nil || meta.Time.IsZero() {
		t.Fatalf("parsing module info %s: %v (%s)", info.Info, err, b)
	}
	return info.Dir, meta.Time
}

// vulnNetworkFailure skips, because the proxy is a peer that a developer's
// machine may lack, except in CI, where nothing may be skipped.
func vulnNetworkFailure(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("TEST_REQUIRE_PEERS") == "1" {
		t.Fatalf("%s\n(TEST_REQUIRE_PEERS=1, so this is a failure, not a skip)", msg)
	}
	t.Skipf("skipping: Go module proxy unavailable (set TEST_REQUIRE_PEERS=1 to fail instead): %s", msg)
}

func vulnGo(t *testing.T, dir string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), vulnNetTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return append(out, stderr.Bytes()...), fmt.Errorf("go %s: %w", strings.Join(args, " "), err)
	}
	return out, nil
}

// vulnOSV holds the fields of an OSV entry that the v1 indexes need.
type vulnOSV struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Aliases  []string  `json:"aliases"`
	Affected []struct {
		Package struct {
			Name string `json:"name"`
		} `json:"package"`
		Ranges []vulnRange `json:"ranges"`
	} `json:"affected"`
}

type vulnRange struct {
	Type   string `json:"type"`
	Events []struct {
		Introduced string `json:"introduced"`
		Fixed      string `json:"fixed"`
	} `json:"events"`
}

type vulnModuleVuln struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Fixed    string    `json:"fixed,omitempty"`
}

type vulnModule struct {
	Path  string           `json:"path"`
	Vulns []vulnModuleVuln `json:"vulns"`
}

type vulnVuln struct {
	ID       string    `json:"id"`
	Modified time.Time `json:"modified"`
	Aliases  []string  `json:"aliases,omitempty"`
}

// vulnWriteDB writes the v1 database layout of
// https://go.dev/security/vuln/database#api (index/db.json,
// index/modules.json, index/vulns.json, ID/<id>.json) into out from the
// OSV files in osvDir, as golang.org/x/vulndb/internal/database does for
// vuln.go.dev, and returns the number of entries.
//
// The repository stores "modified" as the zero time: the deploy job
// derives it from git history, which a module zip lacks. Such entries
// get the snapshot's commit time, the latest moment they can have changed.
func vulnWriteDB(osvDir, out string, snapshot time.Time) (int, error) {
	names, err := filepath.Glob(filepath.Join(osvDir, "*.json"))
	if err != nil {
		return 0, err
	}
	// A few hundred would already be suspicious; this catches a wrong path
	// or a layout change in the vulndb repository.
	if len(names) < 1000 {
		return 0, fmt.Errorf("found %d OSV files in %s, want thousands", len(names), osvDir)
	}
	for _, d := range []string{"index", "ID"} {
		if err := os.MkdirAll(filepath.Join(out, d), 0o755); err != nil {
			return 0, err
		}
	}

	var dbModified time.Time
	modules := map[string]*vulnModule{}
	var vulns []vulnVuln
	for _, name := range names {
		raw, err := os.ReadFile(name)
		if err != nil {
			return 0, err
		}
		var e vulnOSV
		if err := json.Unmarshal(raw, &e); err != nil {
			return 0, fmt.Errorf("parsing %s: %w", name, err)
		}
		if filepath.Base(name) != e.ID+".json" {
			return 0, fmt.Errorf("%s holds entry %q; the client looks entries up by file name", name, e.ID)
		}
		if e.Modified.IsZero() {
			e.Modified = snapshot
			if raw, err = vulnSetModified(raw, snapshot); err != nil {
				return 0, fmt.Errorf("rewriting %s: %w", name, err)
			}
		}
		if err := os.WriteFile(filepath.Join(out, "ID", e.ID+".json"), raw, 0o644); err != nil {
			return 0, err
		}

		if e.Modified.After(dbModified) {
			dbModified = e.Modified
		}
		vulns = append(vulns, vulnVuln{ID: e.ID, Modified: e.Modified, Aliases: e.Aliases})
		for _, a := range e.Affected {
			m := modules[a.Package.Name]
			if m == nil {
				m = &vulnModule{Path: a.Package.Name, Vulns: []vulnModuleVuln{}}
				modules[a.Package.Name] = m
			}
			m.Vulns = append(m.Vulns, vulnModuleVuln{ID: e.ID, Modified: e.Modified, Fixed: vulnLatestFixed(a.Ranges)})
		}
	}

	paths := make([]string, 0, len(modules))
	for p := range modules {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	moduleList := make([]*vulnModule, 0, len(paths))
	for _, p := range paths {
		moduleList = append(moduleList, modules[p])
	}
	// names is sorted, so vulns and each module's list are sorted by ID.
	index := map[string]any{
		"db.json": struct {
			Modified time.Time `json:"modified"`
		}{dbModified},
		"modules.json": moduleList,
		"vulns.json":   vulns,
	}
	for name, v := range index {
		b, err := json.Marshal(v)
		if err != nil {
			return 0, err
		}
		if err := os.WriteFile(filepath.Join(out, "index", name), b, 0o644); err != nil {
			return 0, err
		}
	}
	if err := os.WriteFile(filepath.Join(out, "LAYOUT"), []byte(vulnDBLayout), 0o644); err != nil {
		return 0, err
	}
	return len(names), nil
}

func vulnSetModified(raw []byte, t time.Time) ([]byte, error) {
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(raw, &fields); err != nil {
		return nil, err
	}
	ts, err := json.Marshal(t.UTC())
	if err != nil {
		return nil, err
	}
	fields["modified"] = ts
	return json.Marshal(fields)
}

// vulnLatestFixed mirrors osvutils.LatestFixed in golang.org/x/vulndb: the
// version from which no SEMVER range is affected any more, or "" when a
// range stays open. The client trusts it to skip entries, so erring
// towards "" is safe and erring the other way hides vulnerabilities.
func vulnLatestFixed(ranges []vulnRange) string {
	less := func(a, b string) bool { return semver.Compare(vulnSemver(a), vulnSemver(b)) < 0 }
	var latest string
	for _, r := range ranges {
		if r.Type != "SEMVER" {
			continue
		}
		for _, e := range r.Events {
			if e.Fixed != "" && less(latest, e.Fixed) {
				latest = e.Fixed
			}
		}
		for _, e := range r.Events {
			if e.Introduced != "" && e.Introduced != "0" && less(latest, e.Introduced) {
				latest = ""
				break
			}
		}
	}
	return latest
}

// vulnSemver turns OSV's bare versions ("1.2.3") into the "v1.2.3" form
// that golang.org/x/mod/semver compares; "" stays invalid, which sorts
// before every version.
func vulnSemver(v string) string {
	if v == "" {
		return ""
	}
	return "v" + strings.TrimPrefix(v, "v")
}
