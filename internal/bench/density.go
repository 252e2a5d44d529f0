package bench

import (
	"context"
	"errors"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Concurrent runs fn n times at once and returns the wall time from the
// start of the first to the end of the last, with each call's own
// duration. The first error wins; every call still runs to its end.
func Concurrent(ctx context.Context, n int, fn func(ctx context.Context, i int) error) (time.Duration, []time.Duration, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
		each  = make([]time.Duration, n)
	)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			err := fn(ctx, i)
			each[i] = time.Since(t0)
			if err != nil {
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	return time.Since(t0), each, first
}

// MaxIdle is how many idle sandboxes fit in hostMiB of host memory when
// each costs pssMiB: the memory divided by the measured mean proportional
// set size of one idle sandbox's VMM (its private pages, its share of the
// pages it maps with others — the template's memory file in the page
// cache, QEMU's binary and libraries). Memory the guests do not touch
// costs nothing (guest RAM is allocated on first write), so the guests'
// nominal size does not enter; the host's own processes are left out.
func MaxIdle(hostMiB, pssMiB float64) int {
	if pssMiB <= 0 {
		return 0
	}
	return int(math.Floor(hostMiB / pssMiB))
}

// AllocatedMiB is the space the regular files under root whose names
// match pattern (filepath.Match) occupy on disk: their allocated blocks,
// so a sparse file counts what it holds. In MiB.
func AllocatedMiB(root, pattern string) (float64, error) {
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		if ok, err := filepath.Match(pattern, d.Name()); err != nil || !ok {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		total += st.Blocks * 512
		return nil
	})
	return Round3(float64(total) / (1 << 20)), err
}
