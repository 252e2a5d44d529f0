package guestinit

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// errNotInit is returned by every operation that is only safe as PID 1.
var errNotInit = errors.New("not PID 1: refusing a system-wide operation")

// Shutdown timings.
const (
	termGrace = 3 * time.Second // from SIGTERM to SIGKILL
	killGrace = 2 * time.Second // from SIGKILL to giving up on stragglers
	pollEvery = 20 * time.Millisecond
)

// shutdownOps are the system-wide operations of a shutdown. The real ones
// (initOps) refuse to run outside PID 1; tests supply recording fakes.
type shutdownOps interface {
	killAll(sig unix.Signal) error
	reap(all bool) []Exit
	hasChildren() bool
	sync()
	mountTable() ([]MountInfo, error)
	unmount(points []string) error
	remountRootReadOnly() error
	powerOff() error
	sleep(time.Duration)
}

// initOps performs the real operations. It can only be built as PID 1.
type initOps struct {
	log    *slog.Logger
	reaper *Reaper
}

// newInitOps returns the real shutdown operations, or errNotInit when this
// process is not PID 1 — so that a test or a developer running envd on a
// host can never signal every process or power the machine off.
func newInitOps(log *slog.Logger, r *Reaper) (*initOps, error) {
	if os.Getpid() != 1 {
		return nil, errNotInit
	}
	return &initOps{log: log, reaper: r}, nil
}

func (o *initOps) killAll(sig unix.Signal) error {
	if os.Getpid() != 1 { // second guard: kill(-1) outside PID 1 is fatal to the host
		return errNotInit
	}
	// kill(-1) signals every process but PID 1 itself; ESRCH means there
	// was none.
	if err := unix.Kill(-1, sig); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("kill(-1, %s): %w", sig, err)
	}
	return nil
}

func (o *initOps) reap(all bool) []Exit { return o.reaper.reap(all) }

func (o *initOps) hasChildren() bool {
	_, err := peekZombie()
	return !errors.Is(err, unix.ECHILD)
}

func (o *initOps) sync() { unix.Sync() }

func (o *initOps) mountTable() ([]MountInfo, error) { return readMountInfo() }

func (o *initOps) unmount(points []string) error { return unmountAll(o.log, points) }

func (o *initOps) remountRootReadOnly() error {
	if err := unix.Mount("", "/", "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		return fmt.Errorf("remount / read-only: %w", err)
	}
	return nil
}

func (o *initOps) powerOff() error {
	if os.Getpid() != 1 {
		return errNotInit
	}
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// Only reached when power-off failed: a reset at least ends the VM
	// under QEMU -no-reboot and Firecracker.
	rerr := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	return fmt.Errorf("power off: %w; restart: %w", err, rerr)
}

func (o *initOps) sleep(d time.Duration) { time.Sleep(d) }

// shutdown runs the shutdown sequence on ops and returns the collected
// errors when powerOff returns (which the real one never does).
func shutdown(log *slog.Logger, ops shutdownOps) error {
	var errs []error
	note := func(err error) {
		if err != nil {
			log.Warn("shutdown", "err", err)
			errs = append(errs, err)
		}
	}

	log.Info("stopping all processes")
	note(ops.killAll(unix.SIGTERM))
	if !waitChildren(ops, termGrace) {
		log.Warn("processes still running after SIGTERM; sending SIGKILL")
		note(ops.killAll(unix.SIGKILL))
		if !waitChildren(ops, killGrace) {
			note(errors.New("children still running after SIGKILL"))
		}
	}
	ops.sync()
	ms, err := ops.mountTable()
	note(err)
	if err == nil {
		note(ops.unmount(unmountPlan(ms, "/")))
	}
	note(ops.remountRootReadOnly())
	ops.sync()
	log.Info("powering off")
	note(ops.powerOff())
	return errors.Join(errs...)
}

// waitChildren reaps everything (owned children included: their owners
// are gone) until no child is left or d elapses. It reports whether all
// children are gone. Processes that are not our children (only possible
// with a subreaper outside PID 1) are not waited for.
func waitChildren(ops shutdownOps, d time.Duration) bool {
	for waited := time.Duration(0); ; waited += pollEvery {
		ops.reap(true)
		if !ops.hasChildren() {
			return true
		}
		if waited >= d {
			return false
		}
		ops.sleep(pollEvery)
	}
}
