package main

// What the extension costs a function inside Lambda's CPU share (issue 20). The built extension
// (stripped, as build.sh builds it) and a CPU-bound fake function (cpufunction_test.go) run in
// one CPU cgroup (cgroup_test.go) with the quota Lambda gives at 128 MB, 512 MB and 1,769 MB,
// under the fake Lambda (fakelambda_test.go) with real freezes: SIGSTOP after the extension's
// /event/next, SIGCONT before the next event. The function burns cpuShareBurn of CPU per
// invocation and prints its log lines; the harness relays them to the extension as Telemetry API
// function events, batched as Lambda does (at most every telemetryBatch, or 1,000 events).
// Every case runs again with testdata/floor (register, subscribe, next; ships nothing) in the
// same run, so that the figures say what this extension adds.
//
// Run: go test -run '^$' -bench CPUShare -benchtime 1x .   (about 3 minutes; -v adds nothing)
//
// For focused runs: KTE_CPUSHARE_MB="1769" picks the memory sizes, KTE_CPUSHARE_ENV="GOGC=100
// GOMEMLIMIT=16MiB" adds variables to the extension's environment (to choose memory settings),
// and KTE_CPUSHARE_BIN=/path/to/binary measures another build of the extension (BENCHMARKS.md's
// "before" column is the build of an older commit).
// The extension runs with GODEBUG=gctrace=1; its collections per invocation are counted from it.
//
// Extension CPU is read from /proc/<pid>/task/*/schedstat (ns of CPU per thread, exact), and
// checked against /proc/<pid>/stat's utime+stime (10 ms ticks). The function's duration is its
// own wall time from the command to its last instruction.

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	// cpuShareBurn is the function's CPU per invocation.
	cpuShareBurn = 50 * time.Millisecond
	// cpuSharePause is the frozen time between dense invocations.
	cpuSharePause = 10 * time.Millisecond
	// telemetryBatch is Lambda's buffering timeout as the extension subscribes (timeoutMs 25).
	telemetryBatch = 25 * time.Millisecond
)

// shareRun is what one run of one program (the extension or the floor) measured.
type shareRun struct {
	initMS    float64   // exec → first /event/next
	initCPUMS float64   // CPU used by then (package initialisation, configuration, register, subscribe)
	cpuMS     []float64 // extension CPU per invocation, frozen to frozen
	duringMS  []float64 // extension CPU while the function ran (INVOKE to the function's end)
	fnWallMS  []float64 // the function's duration
	fnCPUMS   []float64 // the function's CPU
	addedMS   []float64 // function end → the extension's next /event/next
	hwmMiB    float64
	statCPUMS float64 // utime+stime over the process's life, to check the schedstat sums
	sumCPUMS  float64 // schedstat over the process's life
	events    int     // events posted per invocation
	throttled time.Duration
	gcs       float64   // collections per invocation, from gctrace (the extension only), init included
	gcCPUMS   float64   // their CPU per invocation, as gctrace estimates it
	mem       memSample // at the end
	switches  float64   // context switches per invocation, all threads: how often it woke
}

func (r shareRun) mean(xs []float64) float64 { return summarize(xs).mean }

// BenchmarkCPUShare reports, per memory size, lines per invocation and flush mode: the function's
// duration inflation beside the extension (÷ beside the floor), measured and as the CPU model
// predicts it; extension CPU per invocation and per event; init time; time added per invocation
// p50/p95; peak RSS; each beside the floor's. It prints the whole table at the end.
func BenchmarkCPUShare(b *testing.B) {
	if _, err := newCPUCgroup(b, oneVCPUMB); err != nil {
		b.Skipf("skipped: %v", err)
	}
	ours, floor := buildBenchBinaries(b)
	if bin := os.Getenv("KTE_CPUSHARE_BIN"); bin != "" {
		ours = copyAs(b, bin, extensionName) // another build (an older commit), under the layer's name
	}
	var rows []string
	// Printed, not logged: a benchmark with sub-benchmarks does not show its own log.
	defer func() {
		fmt.Printf("CPU share (the function burns %v of CPU per invocation; %d and %d invocations at 128 and 512 MB, %d at 1,769 MB):\n%s\n%s\n",
			cpuShareBurn, shareInvocations(128), shareInvocations(512), shareInvocations(oneVCPUMB), shareHeader, strings.Join(rows, "\n"))
	}()
	sizes := []int{128, 512, oneVCPUMB}
	if v := os.Getenv("KTE_CPUSHARE_MB"); v != "" {
		sizes = nil
		for _, f := range strings.Fields(v) {
			mb, err := strconv.Atoi(f)
			if err != nil {
				b.Fatalf("KTE_CPUSHARE_MB=%q: want memory sizes in MB, e.g. \"128 1769\"", v)
			}
			sizes = append(sizes, mb)
		}
	}
	var userEnv []string
	for _, kv := range strings.Fields(os.Getenv("KTE_CPUSHARE_ENV")) {
		k, v, _ := strings.Cut(kv, "=")
		userEnv = append(userEnv, k, v)
	}
	for _, mb := range sizes {
		twenty := map[string]shareRun{} // the 20-line runs, by program, for the per-event cost
		for _, lines := range []int{20, 200} {
			b.Run(fmt.Sprintf("mb=%d/lines=%d", mb, lines), func(b *testing.B) {
				fl := runCPUShare(b, floor, mb, lines, nil)
				if lines == 20 {
					twenty["floor"] = fl
				}
				rows = append(rows, shareRow(mb, lines, "floor", fl, fl, twenty["floor"]))
				for _, flush := range []string{"adaptive", "end"} {
					b.Run("flush="+flush, func(b *testing.B) {
						extra := append([]string{"GODEBUG", "gctrace=1"}, userEnv...)
						if flush != "adaptive" {
							extra = append(extra, "KINESIS_TELEMETRY_FLUSH", flush)
						}
						ext := runCPUShare(b, ours, mb, lines, extra)
						if lines == 20 {
							twenty[flush] = ext
						}
						reportShare(b, ext, fl, twenty[flush])
						rows = append(rows, shareRow(mb, lines, flush, ext, fl, twenty[flush]))
					})
				}
			})
		}
	}
}

// shareHeader and shareRow are the printed table.
const shareHeader = "MB    lines flush    | fn ms   infl%  model% | CPU ms/inv  over floor  µs/event | init ms ×floor CPU ms | added p50/p95 ms | VmHWM MiB"

func shareRow(mb, lines int, name string, r, floor, twenty shareRun) string {
	perEvent := "-"
	if twenty.events != 0 && r.events != twenty.events {
		perEvent = fmt.Sprintf("%.1f", perEventUS(r, twenty))
	}
	added := summarize(r.addedMS)
	return fmt.Sprintf("%-5d %-5d %-8s | %6.1f %6.2f %6.2f | %9.3f %+10.3f %9s | %7.1f %5.2f %6.1f | %7.2f / %6.2f | %6.2f",
		mb, lines, name, r.mean(r.fnWallMS), inflation(r, floor), modelInflation(r, floor),
		r.mean(r.cpuMS), r.mean(r.cpuMS)-floor.mean(floor.cpuMS), perEvent,
		r.initMS, r.initMS/floor.initMS, r.initCPUMS, added.median, quantileOf(r.addedMS, 0.95), r.hwmMiB)
}

func reportShare(b *testing.B, r, floor, twenty shareRun) {
	b.ReportMetric(0, "ns/op")
	b.ReportMetric(inflation(r, floor), "infl-%")
	b.ReportMetric(modelInflation(r, floor), "model-infl-%")
	b.ReportMetric(r.mean(r.cpuMS), "cpu-ms/inv")
	b.ReportMetric(floor.mean(floor.cpuMS), "floor-cpu-ms/inv")
	if twenty.events != 0 && r.events != twenty.events {
		b.ReportMetric(perEventUS(r, twenty), "µs/event")
	}
	b.ReportMetric(r.initMS, "init-ms")
	b.ReportMetric(floor.initMS, "floor-init-ms")
	b.ReportMetric(r.initCPUMS, "init-cpu-ms")
	b.ReportMetric(floor.initCPUMS, "floor-init-cpu-ms")
	b.ReportMetric(summarize(r.addedMS).median, "added-p50-ms")
	b.ReportMetric(quantileOf(r.addedMS, 0.95), "added-p95-ms")
	b.ReportMetric(r.hwmMiB, "hwm-MiB")
	b.ReportMetric(floor.hwmMiB, "floor-hwm-MiB")
	b.ReportMetric(r.gcs, "gc/inv")
	b.ReportMetric(r.switches, "switches/inv")
	b.ReportMetric(floor.switches, "floor-switches/inv")
	b.ReportMetric(r.gcCPUMS, "gc-cpu-ms/inv")
	b.Logf("CPU over the process's life: schedstat %.1f ms, utime+stime %.0f ms (10 ms ticks); quota throttled the cgroup for %v; %.2f collections per invocation, %.3f ms of CPU; at the end %s (floor %s)",
		r.sumCPUMS, r.statCPUMS, r.throttled.Round(time.Millisecond), r.gcs, r.gcCPUMS, r.mem, floor.mem)
}

// inflation is the function's mean duration beside the extension over its mean beside the floor,
// in percent above 1.
func inflation(r, floor shareRun) float64 {
	return (r.mean(r.fnWallMS)/floor.mean(floor.fnWallMS) - 1) * 100
}

// modelInflation is what the CPU says the inflation should be: inside one quota the function's
// duration is proportional to the CPU the cgroup uses while it runs, its own and the extension's.
func modelInflation(r, floor shareRun) float64 {
	return ((r.mean(r.fnCPUMS)+r.mean(r.duringMS))/(floor.mean(floor.fnCPUMS)+floor.mean(floor.duringMS)) - 1) * 100
}

// perEventUS is the CPU of each additional event: the difference between two runs with different
// numbers of lines, divided by the difference in events.
func perEventUS(r, twenty shareRun) float64 {
	return (r.mean(r.cpuMS) - twenty.mean(twenty.cpuMS)) * 1000 / float64(r.events-twenty.events)
}

func quantileOf(xs []float64, q float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return quantile(s, q)
}

// shareInvocations is how many invocations a run at mb measures: fewer where each takes longer
// (about 0.85 s at 128 MB, 0.2 s at 512 MB, 0.06 s at 1,769 MB).
func shareInvocations(mb int) int {
	switch {
	case mb < 256:
		return 8
	case mb < 1024:
		return 20
	}
	return 60
}

// runCPUShare runs bin and the function in a fresh cgroup with mb's share: init, one warm-up
// invocation, then shareInvocations(mb) dense frozen invocations of lines log lines each, then
// shutdown, checking (for the extension) that every event reached the fake Kinesis.
func runCPUShare(b *testing.B, bin string, mb, lines int, extra []string) shareRun {
	b.Helper()
	cg, err := newCPUCgroup(b, mb)
	if err != nil {
		b.Skipf("skipped: %v", err)
	}
	f := newFakeLambda(b)
	fk := newFakeKinesis(b, allOK)
	fn := startCPUFunction(b, cg)
	env := lambdaEnv(f, fk.URL, append([]string{"AWS_LAMBDA_FUNCTION_MEMORY_SIZE", strconv.Itoa(mb)}, extra...)...)
	p, start := launchInCgroup(b, cg, bin, env)
	pid := p.cmd.Process.Pid
	f.freeze = p.cmd.Process

	var r shareRun
	f.awaitNext()
	r.initCPUMS = ms(taskCPU(b, pid))
	f.mu.Lock()
	r.initMS = float64(f.nextAt[0].Sub(start).Microseconds()) / 1000
	f.mu.Unlock()
	f.init()
	tally := &trafficTally{f: f, fk: fk}

	n := shareInvocations(mb)
	_, throttled0 := cg.throttled()
	var frozenCPU []time.Duration
	var switches0 int
	// After each invocation: the report, once the extension is in next, then the freeze.
	report := func() {
		f.awaitNext()
		f.post("", f.ev("platform.report", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":50.0,"billedDurationMs":50,"memorySizeMB":%d,"maxMemoryUsedMB":40}}`, f.lastReq, mb)))
		f.freeze.Signal(syscall.SIGSTOP)
	}
	for i := 0; i <= n; i++ { // invocation 0 is the warm-up
		if f.lastReq != "" {
			report()
		}
		if i > 0 {
			frozenCPU = append(frozenCPU, taskCPU(b, pid))
		}
		if i == 1 {
			switches0 = contextSwitches(b, pid)
		}
		time.Sleep(cpuSharePause)
		id := fmt.Sprintf("8c4f3a2e-1b6d-4e8f-9a0c-%012d", i)
		done, during := shareInvocation(b, f, fn, pid, id, lines)
		if i > 0 {
			r.fnWallMS = append(r.fnWallMS, ms(done.wall))
			r.fnCPUMS = append(r.fnCPUMS, ms(done.cpu))
			r.duringMS = append(r.duringMS, ms(during))
		}
		if i%20 == 0 {
			tally.forget()
		}
	}
	report()
	f.lastReq = "" // reported: the shutdown has none to post
	frozenCPU = append(frozenCPU, taskCPU(b, pid))
	r.switches = float64(contextSwitches(b, pid)-switches0) / float64(n)
	f.freeze.Signal(syscall.SIGCONT)
	for i := 1; i < len(frozenCPU); i++ {
		r.cpuMS = append(r.cpuMS, ms(frozenCPU[i]-frozenCPU[i-1]))
	}
	r.events = lines + 3 // platform.start, the lines, platform.runtimeDone, the previous report
	r.addedMS = nil
	for _, d := range f.addedTimes()[1:] { // [0] is the warm-up
		r.addedMS = append(r.addedMS, ms(d))
	}
	_, throttled1 := cg.throttled()
	r.throttled = throttled1 - throttled0
	r.hwmMiB = kibToMiB(readMemory(b, pid).hwm)
	r.sumCPUMS = ms(taskCPU(b, pid))
	r.statCPUMS = ms(statCPU(b, pid))
	gcs, gcCPU := gcTrace(p.stderr.String())
	r.gcs, r.gcCPUMS = float64(gcs)/float64(n+1), gcCPU/float64(n+1)
	r.mem = readMemory(b, pid)
	tally.shutdown(b, p, filepath.Base(bin) == extensionName)
	return r
}

// shareInvocation is one invocation: INVOKE (thawing the extension), platform.start, the
// function's lines relayed as Lambda buffers them, the function's end, platform.runtimeDone. It
// returns the function's figures and the extension's CPU from INVOKE to the function's end.
func shareInvocation(b *testing.B, f *fakeLambda, fn *cpuFunction, pid int, id string, lines int) (functionDone, time.Duration) {
	b.Helper()
	cpu0 := taskCPU(b, pid)
	start := time.Now()
	f.deliver(fmt.Sprintf(`{"eventType":"INVOKE","deadlineMs":%d,"requestId":%q,"invokedFunctionArn":"arn:aws:lambda:eu-west-1:123456789012:function:fn","tracing":{"type":"X-Amzn-Trace-Id","value":"Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"}}`,
		start.Add(60*time.Second).UnixMilli(), id))
	fn.invoke(b, id, lines, cpuShareBurn)
	f.post(id, f.ev("platform.start", fmt.Sprintf(`{"requestId":%q,"version":"$LATEST","tracing":{"spanId":"a","type":"X-Amzn-Trace-Id","value":"Root=1"}}`, id)))

	var batch []postedEvent
	var flush <-chan time.Time
	send := func() {
		if len(batch) > 0 {
			f.post(id, batch...)
		}
		batch, flush = nil, nil
	}
	timeout := time.NewTimer(60 * time.Second)
	defer timeout.Stop()
	var done functionDone
	for done.wall == 0 {
		select {
		case o, ok := <-fn.out:
			if !ok {
				b.Fatal("the function exited during an invocation")
			}
			if o.done != nil {
				done = *o.done
				break
			}
			text, _ := json.Marshal(o.line + "\n")
			batch = append(batch, f.ev("function", string(text)))
			if len(batch) == 1 {
				flush = time.After(telemetryBatch)
			}
			if len(batch) == 1000 {
				send()
			}
		case <-flush:
			send()
		case <-timeout.C:
			b.Fatal("the function did not finish an invocation within 60 s")
		}
	}
	send()
	during := taskCPU(b, pid) - cpu0
	f.mu.Lock()
	f.runtimeEnd = append(f.runtimeEnd, time.Now())
	f.mu.Unlock()
	f.post(id, f.ev("platform.runtimeDone", fmt.Sprintf(`{"requestId":%q,"status":"success","metrics":{"durationMs":%.3f,"producedBytes":12}}`, id, ms(done.wall))))
	f.lastReq = id
	return done, during
}

// launchInCgroup is launch (coldstart_test.go) with bin started inside cg.
func launchInCgroup(b *testing.B, cg *cpuCgroup, bin string, env map[string]string) (*extProcess, time.Time) {
	b.Helper()
	var kv []string
	for k, v := range env {
		kv = append(kv, k+"="+v)
	}
	cmd := commandInCgroup(cg, bin, kv...)
	p := &extProcess{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.stderr, p.stderr
	start := time.Now()
	if err := cmd.Start(); err != nil {
		b.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		p.kill()
	})
	cg.await(b, cmd.Process.Pid)
	return p, start
}

// taskCPU is the CPU time of pid's threads (/proc/<pid>/task/*/schedstat, first field, ns). A Go
// program keeps its threads, so nothing is lost to threads that exited.
func taskCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		b.Fatalf("no /proc/%d/task/*/schedstat (%v)", pid, err)
	}
	var sum time.Duration
	for _, t := range tasks {
		s, err := os.ReadFile(t)
		if err != nil {
			continue // a thread that just exited
		}
		ns, err := strconv.ParseInt(strings.Fields(string(s))[0], 10, 64)
		if err != nil {
			b.Fatalf("%s: %q", t, s)
		}
		sum += time.Duration(ns)
	}
	return sum
}

// statCPU is utime+stime from /proc/<pid>/stat, at the kernel's 100 ticks a second.
func statCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	s, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// The fields after the command name, which is in parentheses and may hold spaces.
	fields := strings.Fields(string(s[strings.LastIndexByte(string(s), ')')+2:]))
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// gcTrace counts the collections GODEBUG=gctrace=1 reported in out and sums their CPU, the
// "a+b/c/d+e ms cpu" field of each line (stop-the-world, assist, background and idle marking,
// stop-the-world).
func gcTrace(out string) (n int, cpuMS float64) {
	for _, line := range strings.Split(out, "\n") {
		if !strings.HasPrefix(line, "gc ") {
			continue
		}
		n++
		_, rest, ok := strings.Cut(line, "clock, ")
		field, _, ok2 := strings.Cut(rest, " ms cpu")
		if !ok || !ok2 {
			continue
		}
		for _, part := range strings.FieldsFunc(field, func(r rune) bool { return r == '+' || r == '/' }) {
			v, _ := strconv.ParseFloat(part, 64)
			cpuMS += v
		}
	}
	return n, cpuMS
}

// copyAs copies the executable bin into a temporary folder as name.
func copyAs(b *testing.B, bin, name string) string {
	b.Helper()
	data, err := os.ReadFile(bin)
	if err != nil {
		b.Fatalf("KTE_CPUSHARE_BIN: %v", err)
	}
	out := filepath.Join(b.TempDir(), name)
	if err := os.WriteFile(out, data, 0o755); err != nil {
		b.Fatal(err)
	}
	return out
}

// contextSwitches sums the voluntary and involuntary context switches of pid's threads.
func contextSwitches(b *testing.B, pid int) int {
	b.Helper()
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	n := 0
	for _, t := range tasks {
		s, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(s), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.HasSuffix(k, "ctxt_switches") {
				c, _ := strconv.Atoi(strings.TrimSpace(v))
				n += c
			}
		}
	}
	return n
}
