// Package dirlock gives one process at a time a data directory: an
// exclusive flock(2) on DIR/.lock, whose content is the holder's PID.
//
// It exists so that `capsule serve` and `capsule agent` can refuse to
// start on a directory that a running instance uses before they touch
// anything: a second instance that got as far as the embedded PostgreSQL
// or the network slots would shut down or tear apart the first one's.
// The lock is an advisory flock, so it dies with its holder (kill -9
// included) and a stale lock file never blocks a restart. A process that
// fails to take the lock changes nothing: it opens the file without
// truncating it (creating it only when it does not exist yet) and writes
// its PID only once the lock is its own.
package dirlock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// FileName is the lock file's name in the directory.
const FileName = ".lock"

// ErrLocked is returned (wrapped in a *LockedError) when another process
// holds the lock.
var ErrLocked = errors.New("dirlock: directory in use")

// LockedError says who holds the lock.
type LockedError struct {
	Dir string
	// PID is the holder's process ID as it wrote it (0 if unreadable).
	PID int
}

func (e *LockedError) Error() string {
	who := "another process"
	if e.PID > 0 {
		who = "process " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("data directory %s is in use by %s (lock %s); stop that instance first, or use another data directory",
		e.Dir, who, filepath.Join(e.Dir, FileName))
}

func (e *LockedError) Unwrap() error { return ErrLocked }

// Lock is a held directory lock.
type Lock struct {
	f *os.File
}

// Acquire takes the lock of dir, which must exist. It fails at once with
// a *LockedError when another process (or another Lock of this process)
// holds it.
func Acquire(dir string) (*Lock, error) {
	path := filepath.Join(dir, FileName)
	// O_RDWR without O_TRUNC: nothing changes until the lock is ours.
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("dirlock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, &LockedError{Dir: dir, PID: readPID(path)}
		}
		return nil, fmt.Errorf("dirlock: lock %s: %w", path, err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()) + "\n")
	err = f.Truncate(0)
	if err == nil {
		_, err = f.WriteAt(pid, 0)
	}
	if err == nil {
		err = f.Sync()
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("dirlock: write %s: %w", path, err)
	}
	return &Lock{f: f}, nil
}

// Release gives the lock up. The file stays (removing it would race with
// a process that just opened it).
func (l *Lock) Release() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}

// Holder returns the PID written in dir's lock file (0 if none), whether
// or not a process still holds it.
func Holder(dir string) int { return readPID(filepath.Join(dir, FileName)) }

func readPID(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0
	}
	return pid
}
