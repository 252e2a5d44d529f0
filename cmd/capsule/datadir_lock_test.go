package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/dirlock"
)

// TestDataDirLockedFirst: `capsule serve` and `capsule agent` on a data
// directory whose lock is held fail at once, naming the holder's PID, and
// create nothing there (the lock is the first thing they take).
func TestDataDirLockedFirst(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(ctx context.Context, args []string) error
	}{
		{"serve", runServe},
		{"agent", runAgent},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			l, err := dirlock.Acquire(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Release()
			t.Setenv("CAPSULE_CONFIG", "/dev/null")
			err = tc.run(context.Background(), []string{"-data-dir", dir, "-run-dir", dir + "/run"})
			want := "is in use by process " + strconv.Itoa(os.Getpid())
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("%s on a locked data directory: %v, want an error containing %q", tc.name, err, want)
			}
			entries, _ := os.ReadDir(dir)
			if len(entries) != 1 || entries[0].Name() != dirlock.FileName {
				t.Fatalf("%s touched the data directory: %v", tc.name, entries)
			}
		})
	}
}
