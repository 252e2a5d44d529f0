package bench

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

func TestMaxIdle(t *testing.T) {
	for _, tc := range []struct {
		name      string
		host, pss float64
		want      int
	}{
		{"exact", 16384, 32, 512},
		{"rounds down", 16384, 47.3, 346},
		{"no figure", 16384, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := MaxIdle(tc.host, tc.pss); got != tc.want {
				t.Errorf("MaxIdle(%g, %g) = %d, want %d", tc.host, tc.pss, got, tc.want)
			}
		})
	}
}

func TestAllocatedMiB(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "memory-1"), make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	// Sparse: 64 MiB long, one 4 KiB block written.
	f, err := os.Create(filepath.Join(dir, "memory-2"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{1}, 32<<20); err != nil {
		t.Fatal(err)
	}
	f.Truncate(64 << 20)
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, "state-1"), make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := AllocatedMiB(dir, "memory-*")
	if err != nil {
		t.Fatal(err)
	}
	// 1 MiB and a block or a few (the filesystem's), not 65 or 69 MiB.
	if got < 1 || got > 1.5 {
		t.Errorf("AllocatedMiB = %g MiB, want about 1", got)
	}
	if got, err := AllocatedMiB(filepath.Join(dir, "missing"), "*"); err != nil || got != 0 {
		t.Errorf("a missing directory: %g, %v", got, err)
	}
}

func TestConcurrent(t *testing.T) {
	var running, peak atomic.Int32
	gate := make(chan struct{})
	boom := errors.New("boom")
	wall, each, err := Concurrent(context.Background(), 4, func(ctx context.Context, i int) error {
		n := running.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		if n == 4 {
			close(gate) // every call runs at once
		}
		<-gate
		running.Add(-1)
		if i == 2 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || len(each) != 4 || wall <= 0 || peak.Load() != 4 {
		t.Fatalf("Concurrent: wall %v, each %v, err %v, peak %d", wall, each, err, peak.Load())
	}
}
