package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/vmm"
)

// Adopt takes over the machine that runs in dir, as recorded there by the
// driver that started it (typically before the agent restarted). The
// process must still be the one recorded (same pid and start time). The
// returned machine supports every operation; Err stays nil since the
// process is not our child.
func (d *Driver) Adopt(ctx context.Context, dir string) (*Machine, error) {
	rec, pidfd, err := findRunning(dir)
	if err != nil {
		return nil, fmt.Errorf("qemu: adopt %s: %w", dir, err)
	}
	log := d.log.With("machine", rec.ID)
	fail := func(err error) (*Machine, error) {
		unix.Close(pidfd)
		return nil, fmt.Errorf("qemu: adopt %s: %w", dir, err)
	}
	var memfd *os.File
	if rec.Memory == memShared {
		if memfd, err = os.OpenFile(fmt.Sprintf("/proc/%d/fd/%d", rec.PID, rec.MemoryFD), os.O_RDWR, 0); err != nil {
			return fail(fmt.Errorf("reopen guest memory: %w", err))
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	qmp, err := dialQMP(qctx, filepath.Join(dir, qmpSocket), log, nil)
	if err != nil {
		if memfd != nil {
			memfd.Close()
		}
		return fail(err)
	}
	con, err := followConsole(dir, rec.ConsoleLog, rec.consoleMax(), log)
	if err != nil {
		qmp.Close()
		if memfd != nil {
			memfd.Close()
		}
		return fail(err)
	}
	m := &Machine{d: d, log: log, dir: dir, rec: rec, pidfd: pidfd, qmp: qmp, memfd: memfd, console: con,
		logCap: capLog(filepath.Join(dir, qemuLogFile)), done: make(chan struct{})}
	go m.watchPidfd()
	go m.watchEvents()
	if err := m.resumeInterrupted(qctx); err != nil {
		_ = m.Kill(context.Background())
		return nil, fmt.Errorf("qemu: adopt %s: %w", dir, err)
	}
	m.log.Info("machine adopted", "pid", rec.PID)
	return m, nil
}

// AdoptMachine is Adopt as vmm.Adopter has it.
func (d *Driver) AdoptMachine(ctx context.Context, dir string) (vmm.Machine, error) {
	m, err := d.Adopt(ctx, dir)
	if err != nil {
		return nil, err
	}
	return m, nil
}

// resumeInterrupted undoes a snapshot that the previous agent did not
// finish: a migration still running is cancelled, and a guest left
// stopped by it (paused, or done migrating) runs again. An adopted
// machine runs, whatever happened to the process that last drove it.
func (m *Machine) resumeInterrupted(ctx context.Context) error {
	for {
		var mig struct{ Status string }
		if err := m.qmp.Execute(ctx, "query-migrate", nil, &mig); err != nil {
			return err
		}
		if mig.Status != "setup" && mig.Status != "active" && mig.Status != "device" && mig.Status != "cancelling" && mig.Status != "pre-switchover" {
			break
		}
		m.log.Warn("cancelling the migration of an interrupted snapshot", "status", mig.Status)
		if err := m.qmp.Execute(ctx, "migrate_cancel", nil, nil); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	var st struct{ Status string }
	if err := m.qmp.Execute(ctx, "query-status", nil, &st); err != nil {
		return err
	}
	switch st.Status {
	case "running":
		return nil
	case "paused", "postmigrate", "finish-migrate":
		m.log.Warn("resuming a guest that an interrupted snapshot left stopped", "status", st.Status)
		return m.qmp.Execute(ctx, "cont", nil, nil)
	case "inmigrate", "prelaunch":
		// A restore that the previous agent did not see through: the
		// guest has not run a single instruction.
		return fmt.Errorf("guest is %s: %w", st.Status, vmm.ErrNeverRan)
	default:
		return fmt.Errorf("guest is %s", st.Status)
	}
}

// Cleanup kills the VMM that runs in dir, if any, and removes the files
// that describe it; the directory itself is the caller's. An agent that
// starts runs it on every machine directory it does not adopt. It needs
// no working QMP: the process is killed through a pidfd.
func Cleanup(ctx context.Context, dir string) error {
	rec, pidfd, err := findRunning(dir)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, vmm.ErrExited) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("qemu: cleanup %s: %w", dir, err)
	}
	defer unix.Close(pidfd)
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("qemu: cleanup %s: kill %d: %w", dir, rec.PID, err)
	}
	if err := waitPidfd(ctx, pidfd); err != nil {
		return fmt.Errorf("qemu: cleanup %s: %w", dir, err)
	}
	removeRuntimeFiles(dir, rec.PID)
	return nil
}

// watchPidfd finishes an adopted machine when its process exits.
func (m *Machine) watchPidfd() {
	_ = waitPidfd(context.Background(), m.pidfd)
	m.finish(nil)
}

// waitPidfd waits until the process of pidfd has exited.
func waitPidfd(ctx context.Context, pidfd int) error {
	for {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll pidfd: %w", err)
		}
		if n > 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
