package main

// cpuCgroup: a CPU cgroup with Lambda's CPU share for a memory size, for BenchmarkCPUShare
// (cpushare_test.go). Lambda gives a function CPU in proportion to its memory, one vCPU at
// 1,769 MB, and the function shares it with its extensions; here that is a CFS bandwidth quota on
// one cgroup holding both processes. It uses cgroup v1's cpu controller (cpu.cfs_quota_us,
// cpu.cfs_period_us) where it is mounted and writable, else cgroup v2's cpu.max. Lambda does not
// publish its CFS period; a short one (cpuSharePeriod) is used so that a 50 ms burn at 128 MB
// spans many periods and the end of an invocation is not rounded to a long period.

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const (
	// oneVCPUMB is the memory size at which Lambda gives a function one full vCPU.
	oneVCPUMB = 1769
	// cpuSharePeriod is the CFS period; at 128 MB the quota is 1,447 µs of it (v1's minimum is 1 ms).
	cpuSharePeriod = 20 * time.Millisecond
)

type cpuCgroup struct {
	dir   string // the cgroup's folder
	v2    bool
	quota time.Duration // per cpuSharePeriod
}

var cgroupSeq atomic.Int32

// newCPUCgroup creates a cgroup with the CPU share of a memoryMB function and removes it in the
// test's cleanup (registered first, so it runs after the cleanups of processes started later).
// The error says why no cgroup version was writable.
func newCPUCgroup(tb testing.TB, memoryMB int) (*cpuCgroup, error) {
	tb.Helper()
	cg := &cpuCgroup{quota: time.Duration(cpuSharePeriod.Microseconds()*int64(memoryMB)/oneVCPUMB) * time.Microsecond}
	name := fmt.Sprintf("kte-cpushare-%d-%d", os.Getpid(), cgroupSeq.Add(1))
	v1err := cg.createV1(name)
	if v1err != nil {
		if v2err := cg.createV2(name); v2err != nil {
			return nil, fmt.Errorf("no writable CPU cgroup: cgroup v1: %v; cgroup v2: %v", v1err, v2err)
		}
	}
	tb.Cleanup(func() {
		if err := cg.remove(); err != nil {
			tb.Errorf("remove cgroup: %v", err)
		}
	})
	return cg, nil
}

// createV1 makes name under the v1 cpu controller and sets its quota.
func (cg *cpuCgroup) createV1(name string) error {
	root := "/sys/fs/cgroup/cpu"
	if _, err := os.Stat(filepath.Join(root, "cpu.cfs_quota_us")); err != nil {
		return fmt.Errorf("no cpu controller at %s: %w", root, err)
	}
	cg.dir = filepath.Join(root, name)
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		return err
	}
	// The period first: a quota is checked against the current period.
	err := errors.Join(
		os.WriteFile(filepath.Join(cg.dir, "cpu.cfs_period_us"), []byte(strconv.Itoa(int(cpuSharePeriod.Microseconds()))), 0),
		os.WriteFile(filepath.Join(cg.dir, "cpu.cfs_quota_us"), []byte(strconv.Itoa(int(cg.quota.Microseconds()))), 0))
	if err != nil {
		os.Remove(cg.dir)
		return fmt.Errorf("set the quota: %w", err)
	}
	return nil
}

// createV2 makes name under the cgroup v2 mount and sets cpu.max, enabling the cpu controller for
// the root's children when it is not.
func (cg *cpuCgroup) createV2(name string) error {
	root := ""
	for _, dir := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		if _, err := os.Stat(filepath.Join(dir, "cgroup.subtree_control")); err == nil {
			root = dir
			break
		}
	}
	if root == "" {
		return errors.New("no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified")
	}
	ctl, err := os.ReadFile(filepath.Join(root, "cgroup.controllers"))
	if err != nil {
		return err
	}
	if !slices.Contains(strings.Fields(string(ctl)), "cpu") {
		return fmt.Errorf("the cpu controller is not available in %s (it is bound to cgroup v1, or not delegated)", root)
	}
	if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+cpu"), 0); err != nil {
		return fmt.Errorf("enable the cpu controller: %w", err)
	}
	cg.dir, cg.v2 = filepath.Join(root, name), true
	if err := os.Mkdir(cg.dir, 0o755); err != nil {
		return err
	}
	max := fmt.Sprintf("%d %d", cg.quota.Microseconds(), cpuSharePeriod.Microseconds())
	if err := os.WriteFile(filepath.Join(cg.dir, "cpu.max"), []byte(max), 0); err != nil {
		os.Remove(cg.dir)
		return fmt.Errorf("set cpu.max: %w", err)
	}
	return nil
}

// procs is the file a process joins the cgroup through.
func (cg *cpuCgroup) procs() string { return filepath.Join(cg.dir, "cgroup.procs") }

// members returns the processes in the cgroup.
func (cg *cpuCgroup) members() ([]int, error) {
	b, err := os.ReadFile(cg.procs())
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%s: %q", cg.procs(), f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// await waits until pid has joined the cgroup (commandInCgroup's shell does it after the start).
func (cg *cpuCgroup) await(tb testing.TB, pid int) {
	tb.Helper()
	for range 500 {
		if pids, err := cg.members(); err != nil || slices.Contains(pids, pid) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	tb.Fatalf("process %d did not join cgroup %s within a second", pid, cg.dir)
}

// throttled reads how often and for how long the quota stopped the cgroup's processes.
func (cg *cpuCgroup) throttled() (periods int, d time.Duration) {
	b, _ := os.ReadFile(filepath.Join(cg.dir, "cpu.stat"))
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, " ")
		n, _ := strconv.ParseInt(v, 10, 64)
		switch k {
		case "nr_throttled":
			periods = int(n)
		case "throttled_time": // v1, ns
			d = time.Duration(n)
		case "throttled_usec": // v2
			d = time.Duration(n) * time.Microsecond
		}
	}
	return periods, d
}

// remove deletes the cgroup once the processes in it have gone (a killed process leaves it when
// it has been reaped, which can lag by a moment).
func (cg *cpuCgroup) remove() error {
	var err error
	for range 50 {
		if err = os.Remove(cg.dir); err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	pids, _ := cg.members()
	return fmt.Errorf("%w (processes still in it: %v)", err, pids)
}

// TestCPUCgroup checks the harness of BenchmarkCPUShare: the cgroup gets 128 MB's quota, a
// process started through it runs inside it and gets no more CPU than the quota, and the cgroup
// is gone after the test.
func TestCPUCgroup(t *testing.T) {
	var dir string
	t.Run("quota", func(t *testing.T) {
		cg, err := newCPUCgroup(t, 128)
		if err != nil {
			t.Skipf("skipped: %v", err)
		}
		dir = cg.dir
		if cg.quota != 1447*time.Microsecond {
			t.Errorf("quota %v per %v at 128 MB, want 1.447ms", cg.quota, cpuSharePeriod)
		}
		fn := startCPUFunction(t, cg)
		if pids, _ := cg.members(); !slices.Contains(pids, fn.cmd.Process.Pid) {
			t.Fatalf("function pid %d not in the cgroup (members %v)", fn.cmd.Process.Pid, pids)
		}
		// 10 ms of CPU at 7.2% of one CPU: about 140 ms of wall time, and never under 100 ms.
		done, lines := fn.run(t, "r1", 3, 10*time.Millisecond)
		if len(lines) != 3 {
			t.Errorf("function printed %d lines, want 3: %q", len(lines), lines)
		}
		if done.cpu < 10*time.Millisecond || done.wall < 100*time.Millisecond {
			t.Errorf("function used %v of CPU in %v: the quota did not hold it back", done.cpu, done.wall)
		}
		if n, _ := cg.throttled(); n == 0 {
			t.Errorf("cpu.stat counts no throttled period")
		}
	})
	if dir != "" {
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s still exists after the test (%v)", dir, err)
		}
	}
}
