package dirlock_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/dirlock"
)

func TestAcquire(t *testing.T) {
	dir := t.TempDir()
	pid := strconv.Itoa(os.Getpid())
	var first *dirlock.Lock
	t.Run("first holder writes its pid", func(t *testing.T) {
		var err error
		if first, err = dirlock.Acquire(dir); err != nil {
			t.Fatal(err)
		}
		b, _ := os.ReadFile(filepath.Join(dir, dirlock.FileName))
		if strings.TrimSpace(string(b)) != pid {
			t.Fatalf("lock file holds %q, want %s", b, pid)
		}
	})
	t.Run("second is refused and names the holder", func(t *testing.T) {
		before, _ := os.Stat(filepath.Join(dir, dirlock.FileName))
		_, err := dirlock.Acquire(dir)
		var le *dirlock.LockedError
		if !errors.As(err, &le) || !errors.Is(err, dirlock.ErrLocked) {
			t.Fatalf("second Acquire: %v, want a LockedError", err)
		}
		if le.PID != os.Getpid() || !strings.Contains(err.Error(), "process "+pid) {
			t.Fatalf("error %q does not name pid %s", err, pid)
		}
		after, _ := os.Stat(filepath.Join(dir, dirlock.FileName))
		if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
			t.Fatal("the refused Acquire changed the lock file")
		}
	})
	t.Run("released lock can be taken again", func(t *testing.T) {
		if err := first.Release(); err != nil {
			t.Fatal(err)
		}
		l, err := dirlock.Acquire(dir)
		if err != nil {
			t.Fatal(err)
		}
		_ = l.Release()
	})
	t.Run("missing directory is an error, not a lock", func(t *testing.T) {
		if _, err := dirlock.Acquire(filepath.Join(dir, "nope")); err == nil || errors.Is(err, dirlock.ErrLocked) {
			t.Fatalf("Acquire of a missing dir: %v", err)
		}
	})
}
