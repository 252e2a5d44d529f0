package bench

import (
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/sandbox/metrics"
)

func TestParseBusyCPU(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want time.Duration // 0: an error
	}{
		// user+nice+system+irq+softirq+steal; idle and iowait left out,
		// guest and guest_nice already in user and nice.
		{"a 2-core machine", "cpu  6632303 37470 2534044 2097786 67626 0 48790 0 0 0\ncpu0 3302353 18783 1248800 1098835 20791 0 18715 0 0 0\nintr 1 2\n",
			(6632303 + 37470 + 2534044 + 48790) * 10 * time.Millisecond},
		{"steal and guest", "cpu  100 20 30 5000 40 1 2 7 50 3\n", (100 + 20 + 30 + 1 + 2 + 7) * 10 * time.Millisecond},
		{"an old kernel", "cpu  100 20 30 5000 40 1 2\n", (100 + 20 + 30 + 1 + 2) * 10 * time.Millisecond},
		{"the per-core lines alone", "cpu0 1 2 3 4 5 6 7 8 9 10\n", 0},
		{"too few fields", "cpu  1 2 3 4\n", 0},
		{"not a number", "cpu  1 2 x 4 5 6 7 8 9 10\n", 0},
		{"empty", "", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseBusyCPU(strings.NewReader(tc.in))
			if tc.want == 0 {
				if err == nil {
					t.Fatalf("parseBusyCPU = %v, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("parseBusyCPU = %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

// TestCPUGrowsWhileSpinning spins a goroutine until this process has used
// 300 ms more CPU, and checks the machine's busy CPU grew at least about
// as much and no more than its cores could give over the wall time.
func TestCPUGrowsWhileSpinning(t *testing.T) {
	const spin = 300 * time.Millisecond
	self0, err := metrics.ProcessCPU(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	busy0, err := BusyCPU()
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		var x uint64
		for {
			select {
			case <-stop:
				done <- x
				return
			default:
			}
			for i := range 100000 {
				x += uint64(i) * x
			}
		}
	}()
	var self1 time.Duration
	for self1-self0 < spin && time.Since(t0) < time.Minute {
		if self1, err = metrics.ProcessCPU(os.Getpid()); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	<-done
	busy1, err := BusyCPU()
	if err != nil {
		t.Fatal(err)
	}
	wall := time.Since(t0)
	self, busy := self1-self0, busy1-busy0
	if self < spin {
		t.Fatalf("the process used %v of CPU in %v of spinning, want ≥ %v", self, wall, spin)
	}
	// Both are counted in ticks of 10 ms, sampled: allow a few per core.
	slack := time.Duration(runtime.NumCPU()) * 3 * clockTick
	if busy < self-slack || busy > wall*time.Duration(runtime.NumCPU())+slack {
		t.Fatalf("busy CPU grew %v while the process used %v in %v on %d cores", busy, self, wall, runtime.NumCPU())
	}
	t.Logf("process %v, machine %v, wall %v", self, busy, wall)
}

func TestCPUFloorRatio(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cpu      time.Duration
		n, cores int
		one      time.Duration
		want     float64
	}{
		{"CPU-bound on 2 cores", 600 * time.Millisecond, 10, 2, 400 * time.Millisecond, 7.5},
		{"within the target", 400 * time.Millisecond, 10, 2, 400 * time.Millisecond, 5},
		{"no one-create figure", time.Second, 10, 2, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := CPUFloorRatio(tc.cpu, tc.n, tc.cores, tc.one); got != tc.want {
				t.Errorf("CPUFloorRatio = %g, want %g", got, tc.want)
			}
		})
	}
}
