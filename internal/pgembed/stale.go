package pgembed

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// recoverStale makes the data directory startable after a crash of a
// previous Capsule: a postmaster still running in it is shut down (fast, then
// immediate), backends left by a killed postmaster are stopped, and lock files
// whose process is gone (or whose PID now belongs to another process) are
// removed. postgres itself refuses to start on a lock file whose PID is alive,
// which in containers, with PIDs reused from 1 after every restart, is often
// an unrelated process.
func recoverStale(pgdata, sockDir string, timeout time.Duration, log *slog.Logger) error {
	pidFile := filepath.Join(pgdata, "postmaster.pid")
	pid, err := readPIDFile(pidFile)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		log.Warn("pgembed: unreadable postmaster.pid; removing it", "err", err)
	}
	if pid > 0 && processIn(pid, pgdata) {
		log.Warn("pgembed: a postmaster left by a previous run is still running; shutting it down", "pid", pid)
		if err := stopPID(pid, pgdata, timeout); err != nil {
			return err
		}
	}
	// Backends outlive a SIGKILLed postmaster for a moment; wait for them (and
	// make them go) before a new postmaster, which no longer knows the old
	// shared memory segment, starts.
	if pids := processesIn(pgdata); len(pids) > 0 {
		log.Warn("pgembed: stopping processes left in the data directory", "pids", pids)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGQUIT)
		}
		if !waitGone(pgdata, 5*time.Second) {
			for _, p := range processesIn(pgdata) {
				_ = syscall.Kill(p, syscall.SIGKILL)
			}
			if !waitGone(pgdata, 5*time.Second) {
				return fmt.Errorf("pgembed: processes %v still run in %s", processesIn(pgdata), pgdata)
			}
		}
	}
	if err := removeIfExists(pidFile); err != nil {
		return err
	}
	// The socket's lock file records the postmaster's PID too.
	locks, _ := filepath.Glob(filepath.Join(sockDir, ".s.PGSQL.*.lock"))
	for _, l := range locks {
		if err := removeIfExists(l); err != nil {
			return err
		}
		if err := removeIfExists(strings.TrimSuffix(l, ".lock")); err != nil {
			return err
		}
	}
	return nil
}

func removeIfExists(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("pgembed: remove stale %s: %w", p, err)
	}
	return nil
}

// readPIDFile returns the PID on the first line of a postmaster.pid.
func readPIDFile(p string) (int, error) {
	f, err := os.Open(p)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, fmt.Errorf("%s is empty", p)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(sc.Text()))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s: bad PID %q", p, sc.Text())
	}
	return pid, nil
}

// processIn reports whether pid is a postgres process working in dir
// (postgres processes chdir into their data directory).
func processIn(pid int, dir string) bool {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return false
	}
	if b := filepath.Base(strings.TrimSuffix(exe, " (deleted)")); b != "postgres" && b != "postmaster" {
		return false
	}
	cwd, err := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid))
	if err != nil {
		return false
	}
	want, err := filepath.EvalSymlinks(dir)
	if err != nil {
		want = dir
	}
	return cwd == want || cwd == dir
}

// Running reports whether postgres processes work in the data directory
// pgdata (a server that is up, or still shutting down).
func Running(pgdata string) bool { return len(processesIn(pgdata)) > 0 }

// processesIn lists the postgres processes working in dir.
func processesIn(dir string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	self := os.Getpid()
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if processIn(pid, dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func waitGone(dir string, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for {
		if len(processesIn(dir)) == 0 {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopPID shuts down a postmaster that is not our child: SIGINT (fast), then
// SIGQUIT (immediate), then SIGKILL.
func stopPID(pid int, dir string, timeout time.Duration) error {
	steps := []struct {
		sig  syscall.Signal
		wait time.Duration
	}{{syscall.SIGINT, timeout}, {syscall.SIGQUIT, 5 * time.Second}, {syscall.SIGKILL, 5 * time.Second}}
	for _, s := range steps {
		if err := syscall.Kill(pid, s.sig); err != nil {
			if errors.Is(err, syscall.ESRCH) {
				return nil
			}
			return fmt.Errorf("pgembed: signal postmaster %d: %w", pid, err)
		}
		deadline := time.Now().Add(s.wait)
		for time.Now().Before(deadline) {
			if !processIn(pid, dir) {
				return nil
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return fmt.Errorf("pgembed: postmaster %d in %s does not exit", pid, dir)
}
