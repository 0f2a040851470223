package main

// cpuFunction: the CPU-bound fake function of BenchmarkCPUShare (cpushare_test.go), a process of
// this test binary started again with cpuFunctionEnv set. For each command line
// "<requestId> <lines> <cpu ns>" on its stdin it burns exactly that much CPU, measured on its own
// CPU clock (not wall time, so that the quota and other processes decide how long it takes), and
// prints the log lines spread evenly through the burn, one write each, as a handler's print does.
// It ends each invocation with the line cpuFunctionDone, its wall and CPU duration in ns: the
// harness relays the lines before it to the extension as Telemetry API function events.

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"
)

const (
	cpuFunctionEnv  = "KTE_CPUSHARE_FUNCTION"
	cpuFunctionDone = "\x1eDONE"
)

// The test binary becomes the function when started with cpuFunctionEnv set.
func init() {
	if os.Getenv(cpuFunctionEnv) == "1" {
		os.Exit(cpuFunctionMain(os.Stdin, os.Stdout))
	}
}

func cpuFunctionMain(in io.Reader, out io.Writer) int {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		var id string
		var lines int
		var cpu time.Duration
		if _, err := fmt.Sscan(sc.Text(), &id, &lines, (*int64)(&cpu)); err != nil {
			fmt.Fprintf(os.Stderr, "function: bad command %q: %v\n", sc.Text(), err)
			return 2
		}
		start, c0 := time.Now(), processCPU()
		for i := range lines {
			burnUntil(c0 + cpu*time.Duration(i+1)/time.Duration(lines+1))
			fmt.Fprintf(out, "%s\t%s\tINFO\tprocessed order %d: 3 items, total 59.97 EUR, customer c-%06d\n",
				time.Now().UTC().Format("2006-01-02T15:04:05.000Z"), id, i, i*7919%1000000)
		}
		burnUntil(c0 + cpu)
		fmt.Fprintf(out, "%s %d %d\n", cpuFunctionDone, time.Since(start), processCPU()-c0)
	}
	return 0
}

// processCPU is the CPU time this process has used (CLOCK_PROCESS_CPUTIME_ID).
func processCPU() time.Duration {
	var ts syscall.Timespec
	const clockProcessCPUTime = 2
	if _, _, errno := syscall.Syscall(syscall.SYS_CLOCK_GETTIME, clockProcessCPUTime, uintptr(unsafe.Pointer(&ts)), 0); errno != 0 {
		panic(errno)
	}
	return time.Duration(ts.Nano())
}

var burnSink uint64

// burnUntil computes until the process CPU clock reaches t.
func burnUntil(t time.Duration) {
	x := burnSink
	for processCPU() < t {
		for range 2000 {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	burnSink = x
}

// cpuFunction is a running function process.
type cpuFunction struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   chan functionOutput
}

// functionOutput is one line the function printed, or, when done is set, the end of an invocation.
type functionOutput struct {
	line string
	done *functionDone
}

type functionDone struct{ wall, cpu time.Duration }

// startCPUFunction starts the function inside cg; the test's cleanup stops it.
func startCPUFunction(tb testing.TB, cg *cpuCgroup) *cpuFunction {
	tb.Helper()
	self, err := os.Executable()
	if err != nil {
		tb.Fatal(err)
	}
	// A one-threaded handler that does not collect garbage during its burn.
	cmd := commandInCgroup(cg, self, cpuFunctionEnv+"=1", "GOMAXPROCS=1", "GOGC=off")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		tb.Fatalf("start the function: %v", err)
	}
	tb.Cleanup(func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			tb.Errorf("function: %v\n%s", err, stderr.String())
		}
	})
	cg.await(tb, cmd.Process.Pid)
	fn := &cpuFunction{cmd: cmd, stdin: stdin, out: make(chan functionOutput, 4096)}
	go fn.read(stdout)
	return fn
}

// read parses the function's stdout until it closes.
func (fn *cpuFunction) read(stdout io.Reader) {
	defer close(fn.out)
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, cpuFunctionDone+" "); ok {
			var d functionDone
			fmt.Sscan(rest, (*int64)(&d.wall), (*int64)(&d.cpu))
			fn.out <- functionOutput{done: &d}
			continue
		}
		fn.out <- functionOutput{line: line}
	}
}

// invoke tells the function to run one invocation.
func (fn *cpuFunction) invoke(tb testing.TB, requestID string, lines int, cpu time.Duration) {
	tb.Helper()
	if _, err := fmt.Fprintf(fn.stdin, "%s %d %d\n", requestID, lines, int64(cpu)); err != nil {
		tb.Fatalf("invoke the function: %v", err)
	}
}

// run is one invocation that collects the lines; for tests of the harness itself.
func (fn *cpuFunction) run(tb testing.TB, requestID string, lines int, cpu time.Duration) (functionDone, []string) {
	tb.Helper()
	fn.invoke(tb, requestID, lines, cpu)
	var got []string
	timeout := time.After(30 * time.Second)
	for {
		select {
		case o, ok := <-fn.out:
			if !ok {
				tb.Fatal("the function exited during an invocation")
			}
			if o.done != nil {
				return *o.done, got
			}
			got = append(got, o.line)
		case <-timeout:
			tb.Fatal("the function did not finish its invocation within 30 s")
		}
	}
}

// commandInCgroup is a command that joins cg before it starts bin, so that all of bin's CPU,
// its start included, is inside the quota: a shell writes its own pid into the cgroup and execs
// bin (same pid). env is the whole environment.
func commandInCgroup(cg *cpuCgroup, bin string, env ...string) *exec.Cmd {
	cmd := exec.Command("/bin/sh", "-c", `echo $$ > "$0" && exec "$1"`, cg.procs(), bin)
	cmd.Env = env
	return cmd
}
