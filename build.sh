#!/usr/bin/env bash
# Builds the kinesis-telemetry-extension Lambda layer zips and runs the tests.
# Run ./build.sh help for the subcommands.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")"

readonly NAME=kinesis-telemetry-extension
# Build and test with the Go release go.mod names: it carries security fixes the
# machine's Go may lack, and the same compiler keeps the zips byte-identical.
# Go itself fetches that release through the module proxy when needed.
GOTOOLCHAIN="$(sed -n 's/^toolchain //p' go.mod)"
export GOTOOLCHAIN
# Where the zips go; build_test.go points it at temporary folders.
readonly DIST_DIR="${DIST_DIR:-dist}"
# Lambda's architecture name, then Go's.
readonly ARCHES=("x86_64:amd64" "arm64:arm64")

usage() {
	cat <<EOF
usage: ./build.sh [SUBCOMMAND] [ARGS...]

  build (default)  build the layer zips $DIST_DIR/$NAME-{x86_64,arm64}.zip,
                   each holding extensions/$NAME (static, stripped, mode 0755,
                   fixed timestamps; byte-identical for the same commit)
  test             what CI runs: npm ci (test peers), build, gofmt and go vet
                   checks, each fuzz target for FUZZTIME (20000x), BenchmarkFleet
                   once, then
                   TEST_REQUIRE_PEERS=1 go test -count=1 -timeout 30m -v ./...
  test FLAGS...    the fast path for focused reruns: npm ci only when
                   node_modules does not match package-lock.json, build,
                   gofmt and go vet, no fuzzing and no benchmark, then
                   TEST_REQUIRE_PEERS=1 go test -count=1 -timeout 30m -v FLAGS ./...
                   e.g. ./build.sh test -run Template
  demo [FLAGS]     build, then TEST_DEMO=1 go test -count=1 -run '^TestDemo\$' -v [FLAGS] .
  bench [FLAGS]    go test -run '^\$' -bench . -benchmem -count=1 [FLAGS] .
  help             this text

Needs Go; test and demo also need Node.js and npm. DIST_DIR overrides the
output folder (default: dist).
EOF
}

die() {
	printf 'build.sh: %s\n' "$*" >&2
	exit 1
}

# need CMD HINT fails with HINT unless CMD is on PATH.
need() {
	command -v "$1" >/dev/null 2>&1 || die "$1 not found in PATH; $2"
}

need_go() {
	need go "install Go $(sed -n 's/^go //p' go.mod) or newer (https://go.dev/dl/) and put its bin folder on PATH"
}

need_node() {
	need node "install Node.js 20 or newer; the tests run the Kinesis emulators and cfn-lint from npm"
	need npm "install npm (it comes with Node.js)"
}

# npm_ci installs the pinned test peers from package-lock.json. Install
# scripts are skipped on purpose: only leveldown (kinesalite's on-disk store;
# the tests keep kinesalite in memory with memdown) and core-js (a donation
# banner) have any, and npm 11 would skip them anyway with a warning.
npm_ci() {
	if [[ -L node_modules ]]; then
		# npm ci replaces the link with a folder, and empties the folder it
		# pointed to first: a checkout sharing another's node_modules would
		# break every other checkout using it.
		echo "build.sh: node_modules is a symlink (to $(readlink node_modules)): not running npm ci through it; run npm ci where it points, or remove the link"
		return
	fi
	echo "build.sh: npm ci (kinesalite, kinesis-local, cfn-lint)"
	npm ci --ignore-scripts --no-audit --no-fund
}

# npm_ci_if_changed runs npm_ci unless node_modules already holds exactly the
# packages package-lock.json pins. npm records what it installed in
# node_modules/.package-lock.json; the two must list the same packages (the
# lock file's own entry aside). Comparing contents, not times, keeps a fresh
# checkout with an up-to-date node_modules from reinstalling.
npm_ci_if_changed() {
	if [[ -f node_modules/.package-lock.json ]] && node -e '
		const want = require("./package-lock.json").packages;
		const have = require("./node_modules/.package-lock.json").packages;
		delete want[""];
		const canon = (p) => JSON.stringify(Object.keys(p).sort().map((k) => [k, p[k]]));
		process.exit(canon(want) === canon(have) ? 0 : 1);'; then
		echo "build.sh: test peers in node_modules match package-lock.json (no npm ci)"
	else
		npm_ci
	fi
}

build() {
	need_go
	mkdir -p "$DIST_DIR"
	local tmp
	tmp="$(mktemp -d)"
	# The zip writer runs here, so it is built for this machine even when the
	# caller exported GOOS or GOARCH.
	env -u GOOS -u GOARCH go build -o "$tmp/mkzip" ./testdata/mkzip

	local pair arch goarch bin zip
	for pair in "${ARCHES[@]}"; do
		arch="${pair%%:*}"
		goarch="${pair##*:}"
		bin="$tmp/$arch/extensions/$NAME"
		# GOAMD64/GOARM64 are pinned so that a caller's environment cannot
		# change the machine code (and break reproducibility or old CPUs);
		# -buildvcs=false keeps the bytes independent of whether this is a git
		# checkout, a tarball or a tree with uncommitted files.
		CGO_ENABLED=0 GOOS=linux GOARCH="$goarch" GOAMD64=v1 GOARM64=v8.0 \
			go build -trimpath -buildvcs=false -ldflags='-s -w -buildid=' -o "$bin" .
		zip="$DIST_DIR/$NAME-$arch.zip"
		"$tmp/mkzip" -o "$zip" -name "extensions/$NAME" "$bin"
		printf '%s %d bytes\n' "$zip" "$(wc -c <"$zip")"
	done
	rm -rf "$tmp"
}

# fuzz_briefly runs each fuzz target for FUZZTIME, by default 20000x: a count of
# inputs, about 10 s each here. A duration such as 10s races the fuzz coordinator's
# own deadline in Go 1.26 and can fail with "context deadline exceeded" and no
# failing input (golang/go#75804, fixed in Go 1.27); a count sets no deadline.
# Run them longer by hand, e.g. go test -run '^$' -fuzz FuzzScanBatch -fuzztime 10m .
fuzz_briefly() {
	local target out first=1
	for target in FuzzScanBatch FuzzRecordBuilding FuzzAppendBase64; do
		if ((first)); then
			# go test -fuzz builds its own coverage-instrumented test binary; later
			# targets reuse it from the build cache.
			echo "build.sh: fuzzing $target for ${FUZZTIME:-20000x}, after compiling the instrumented test binary (about a minute when not cached)"
			first=0
		else
			echo "build.sh: fuzzing $target for ${FUZZTIME:-20000x}"
		fi
		if ! out="$(go test -run '^$' -fuzz "^$target\$" -fuzztime "${FUZZTIME:-20000x}" . 2>&1)"; then
			printf '%s\n' "$out"
			die "$target found a failing input (saved under testdata/fuzz/$target)"
		fi
	done
}

# style fails when a Go file is not gofmt-formatted or go vet complains.
style() {
	local files unformatted
	files="$(find . -name '*.go' -not -path './node_modules/*' -not -path './.git/*')"
	# shellcheck disable=SC2086 # one file per word
	unformatted="$(gofmt -l $files)"
	[[ -z "$unformatted" ]] || die "not gofmt-formatted (run gofmt -w):"$'\n'"$unformatted"
	echo "build.sh: go vet (about 30 s when not cached; silent unless it finds something)"
	go vet ./... ./testdata/mkzip ./testdata/floor ./testdata/function ./testdata/probe
}

cmd="${1:-build}"
[[ $# -gt 0 ]] && shift

case "$cmd" in
build)
	[[ $# -eq 0 ]] || die "build takes no arguments (got: $*)"
	build
	;;
test)
	need_go
	need_node
	if [[ $# -eq 0 ]]; then
		# The full run, what CI (.ci/run) calls.
		npm_ci
		build
		style
		fuzz_briefly
		# The fleet benchmark once, as a check that it still runs; its figures are
		# in BENCHMARKS.md. (-run '^$' runs no test.)
		echo "build.sh: BenchmarkFleet once"
		go test -run '^$' -bench '^BenchmarkFleet$' -benchtime 1x .
	else
		# The fast path for focused reruns (./build.sh test -run X).
		npm_ci_if_changed
		build
		style
	fi
	echo "build.sh: go test: compiling the tests and building the extension they run (about 25 s when not cached) before the first test"
	# -v so that the fault matrix, the flood and the other reports print their tables.
	TEST_REQUIRE_PEERS=1 exec go test -count=1 -timeout 30m -v "$@" ./...
	;;
demo)
	need_go
	need_node
	npm_ci_if_changed
	build
	TEST_DEMO=1 exec go test -count=1 -run '^TestDemo$' -v "$@" .
	;;
bench)
	need_go
	exec go test -run '^$' -bench . -benchmem -count=1 "$@" .
	;;
help | -h | --help)
	usage
	;;
*)
	usage >&2
	die "unknown subcommand: $cmd"
	;;
esac
