package metrics

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdapi"
)

func TestParseStatTicks(t *testing.T) {
	cases := []struct {
		name string
		line string
		want uint64
		ok   bool
	}{
		{"plain", "42 (qemu-system-x86) S 1 42 42 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 3 0 100 0\n", 1801, true},
		{"command with spaces and parens", "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 10 20 0 0 20 0 1 0 1 0", 30, true},
		{"truncated", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 10", 0, false},
		{"no command", "garbage", 0, false},
		{"not a number", "7 (x) R 1 7 7 0 -1 0 0 0 0 0 1x 20 0", 0, false},
		{"qemu", "4242 (qemu-system-x86) S 1 4242 4242 0 -1 4194624 51234 0 12 0 321 79 0 0 20 0 5 0 1234 1000 2000\n", 400, true},
		{"parentheses and spaces in the command", "7 (a) b (c)) R 1 7 7 0 -1 0 0 0 0 0 5 6 0 0 20 0 1 0 9 1 2\n", 11, true},
		{"too short", "7 (a) R 1 7 7 0 -1 0 0 0 0 0 5\n", 0, false},
		{"no parentheses", "7 a R 1 7 7 0 -1 0 0 0 0 0 5 6 0\n", 0, false},
		{"stime not a number", "7 (a) R 1 7 7 0 -1 0 0 0 0 0 5 x 0 0\n", 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseStatTicks([]byte(c.line))
			if (err == nil) != c.ok || got != c.want {
				t.Errorf("parseStatTicks = %d, %v; want %d, ok %v", got, err, c.want, c.ok)
			}
		})
	}
}

func TestParseRollup(t *testing.T) {
	cases := []struct {
		name     string
		in       string
		rss, pss int64
		ok       bool
	}{
		{"kernel format", "00400000-7ffd [rollup]\nRss:                2272 kB\nPss:                2264 kB\nPss_Dirty: 1 kB\n", 2272 << 10, 2264 << 10, true},
		{"missing Pss", "Rss: 10 kB\n", 0, 0, false},
		{"malformed", "Rss: x kB\nPss: 1 kB\n", 0, 0, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rss, pss, err := parseRollup([]byte(c.in))
			if (err == nil) != c.ok || rss != c.rss || pss != c.pss {
				t.Errorf("parseRollup = %d, %d, %v; want %d, %d, ok %v", rss, pss, err, c.rss, c.pss, c.ok)
			}
		})
	}
}

// TestSamplerGuestAfter: a target's guest is not read before its
// GuestAfter, and is read at every sample from then on.
func TestSamplerGuestAfter(t *testing.T) {
	var reads atomic.Int32
	counted := func(ctx context.Context) (*envdapi.Metrics, error) {
		reads.Add(1)
		return &envdapi.Metrics{CPUCount: 1, MemTotal: 256 << 20}, nil
	}
	s := New(Config{})
	later := NewSeries()
	start := time.Now()
	if err := s.Add(Target{ID: "later", PID: os.Getpid(), Guest: counted, Series: later, GuestAfter: start.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	defer s.Remove("later")
	for _, step := range []struct {
		name  string
		at    time.Time
		reads int32
	}{
		{"before", start, 0},
		{"just before", start.Add(time.Minute - time.Millisecond), 0},
		{"at GuestAfter", start.Add(time.Minute), 1},
		{"after", start.Add(2 * time.Minute), 2},
	} {
		t.Run(step.name, func(t *testing.T) {
			s.SampleAll(step.at)
			s.WaitGuest()
			if got := reads.Load(); got != step.reads {
				t.Errorf("%d guest reads, want %d", got, step.reads)
			}
			if p, ok := later.Last(); !ok || (step.reads == 0 && p.HasGuest) {
				t.Errorf("sample %+v (ok %v), want one without guest figures", p, ok)
			}
		})
	}
}

// TestSamplerReadsTheProcess samples this test's own process: its CPU
// while a goroutine burns it, its memory after an allocation, the
// allocated (not apparent) size of a sparse "overlay", and the guest's
// figures or their absence.
func TestSamplerReadsTheProcess(t *testing.T) {
	dir := t.TempDir()
	overlay := filepath.Join(dir, "rootfs.qcow2")
	f, err := os.Create(overlay)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(256 << 20); err != nil { // sparse: apparent 256 MiB
		t.Fatal(err)
	}
	var guestFails atomic.Bool
	guest := func(ctx context.Context) (*envdapi.Metrics, error) {
		if guestFails.Load() {
			return nil, errors.New("envd unreachable")
		}
		return &envdapi.Metrics{CPUCount: 2, CPUUsedPct: 12.5, MemUsed: 64 << 20, MemTotal: 256 << 20, DiskUsed: 1 << 20, DiskTotal: 1 << 30}, nil
	}
	series := NewSeries()
	s := New(Config{PSSEvery: time.Nanosecond}) // PSS read at every sample here
	if err := s.Add(Target{ID: "self", PID: os.Getpid(), Disks: []string{overlay}, Guest: guest, Series: series}); err != nil {
		t.Fatal(err)
	}
	defer s.Remove("self")
	sample := func() Point {
		t.Helper()
		s.SampleAll(time.Now())
		s.WaitGuest()
		p, ok := series.Last()
		if !ok {
			t.Fatal("no sample")
		}
		return p
	}
	first := sample()

	t.Run("disk counts allocated blocks, not the apparent size", func(t *testing.T) {
		if first.DiskUsed >= 1<<20 {
			t.Fatalf("a sparse 256 MiB file counted %d bytes", first.DiskUsed)
		}
		if _, err := f.WriteAt(make([]byte, 8<<20), 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		// Zeros written are allocated too (no hole punching).
		if p := sample(); p.DiskUsed < 8<<20 || p.DiskUsed > 16<<20 {
			t.Errorf("after writing 8 MiB: %d bytes allocated", p.DiskUsed)
		}
	})
	t.Run("the guest's figures come with the next sample", func(t *testing.T) {
		p := sample()
		if !p.HasGuest || p.Guest.CPUPct != 12.5 || p.Guest.MemUsed != 64<<20 || p.Guest.CPUCount != 2 {
			t.Errorf("guest = %v %+v, want envd's figures", p.HasGuest, p.Guest)
		}
	})
	t.Run("a failed guest read leaves the guest fields empty", func(t *testing.T) {
		guestFails.Store(true)
		defer guestFails.Store(false)
		sample() // starts the failing read
		if p := sample(); p.HasGuest {
			t.Errorf("guest figures after a failed read: %+v", p.Guest)
		}
	})
	t.Run("memory grows after an allocation", func(t *testing.T) {
		before := sample()
		buf := make([]byte, 64<<20)
		for i := 0; i < len(buf); i += 4096 {
			buf[i] = 1
		}
		after := sample()
		runtime.KeepAlive(buf)
		if after.MemRSS-before.MemRSS < 48<<20 || after.MemPSS-before.MemPSS < 48<<20 {
			t.Errorf("RSS %d → %d, PSS %d → %d after touching 64 MiB", before.MemRSS, after.MemRSS, before.MemPSS, after.MemPSS)
		}
	})
	t.Run("a busy process shows its CPU", func(t *testing.T) {
		// The figure is the process' CPU time over the wall time between
		// two samples: it must match what getrusage says of the same
		// window (whatever share of a core the loaded host gives us).
		var stop atomic.Bool
		defer stop.Store(true)
		go func() {
			for !stop.Load() { // burn CPU
			}
		}()
		cpu0, wall0 := selfCPU(), time.Now()
		s.SampleAll(wall0)
		time.Sleep(time.Second) // a CPU share needs wall time to show
		cpu1, wall1 := selfCPU(), time.Now()
		s.SampleAll(wall1)
		p, _ := series.Last()
		want := 100 * (cpu1 - cpu0).Seconds() / wall1.Sub(wall0).Seconds()
		if p.CPUPct < 5 || p.CPUPct < want-10 || p.CPUPct > want+10 {
			t.Errorf("CPU %.1f%%, getrusage says %.1f%% over the same second", p.CPUPct, want)
		}
	})
	t.Run("a removed target is no longer sampled", func(t *testing.T) {
		n := len(series.Points(nil, Tier10m, time.Time{}, time.Time{}))
		s.Remove("self")
		s.SampleAll(time.Now())
		if got := len(series.Points(nil, Tier10m, time.Time{}, time.Time{})); got != n || s.Len() != 0 {
			t.Errorf("%d points after Remove, want %d", got, n)
		}
	})
}

func TestSamplerRefusesAGoneProcess(t *testing.T) {
	s := New(Config{})
	if err := s.Add(Target{ID: "x", PID: 1 << 30, Series: NewSeries()}); err == nil {
		t.Fatal("Add of a process that does not exist succeeded")
	}
	if err := s.Add(Target{ID: "x", PID: os.Getpid()}); err == nil {
		t.Fatal("Add without a Series succeeded")
	}
}

func TestSampleAllocatesNothing(t *testing.T) {
	s := New(Config{})
	series := NewSeries()
	if err := s.Add(Target{ID: "self", PID: os.Getpid(), Disks: []string{"/proc/self/exe"}, Series: series}); err != nil {
		t.Fatal(err)
	}
	defer s.Remove("self")
	at := time.Now()
	allocs := testing.AllocsPerRun(200, func() {
		at = at.Add(500 * time.Millisecond)
		s.SampleAll(at)
	})
	if allocs != 0 {
		t.Errorf("a round over one sandbox allocates %v times, want 0", allocs)
	}
}

func selfCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestParseStatm(t *testing.T) {
	page := int64(os.Getpagesize())
	for _, c := range []struct {
		name string
		in   string
		want int64
		ok   bool
	}{
		{"kernel format", "12345 678 90 1 0 2 0\n", 678 * page, true},
		{"one field", "12345", 0, false},
		{"malformed", "1 x 3", 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseStatm([]byte(c.in))
			if (err == nil) != c.ok || got != c.want {
				t.Errorf("parseStatm = %d, %v; want %d, ok %v", got, err, c.want, c.ok)
			}
		})
	}
}

// TestPSSIsReadEveryPSSEvery: PSS (smaps_rollup, costly) is read at the
// first sample and then once per PSSEvery of the injected clock; the
// samples in between carry it, RSS is read every time.
func TestPSSIsReadEveryPSSEvery(t *testing.T) {
	s := New(Config{PSSEvery: 30 * time.Second})
	series := NewSeries()
	if err := s.Add(Target{ID: "self", PID: os.Getpid(), Series: series}); err != nil {
		t.Fatal(err)
	}
	defer s.Remove("self")
	var keep [][]byte
	steps := []struct {
		name    string
		at      time.Duration
		allocMB int
		fresh   bool
	}{
		{"first sample reads PSS", 0, 0, true},
		{"10 s later: carried", 10 * time.Second, 32, false},
		{"29.5 s later: carried", 29500 * time.Millisecond, 0, false},
		{"30 s later: read again", 30 * time.Second, 0, true},
		{"31 s later: carried", 31 * time.Second, 32, false},
	}
	var last Point
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if st.allocMB > 0 {
				b := make([]byte, st.allocMB<<20)
				for i := 0; i < len(b); i += 4096 {
					b[i] = 1
				}
				keep = append(keep, b)
			}
			s.SampleAll(t0.Add(st.at))
			p, _ := series.Last()
			if !st.fresh && p.MemPSS != last.MemPSS {
				t.Errorf("PSS changed to %d between readings (was %d)", p.MemPSS, last.MemPSS)
			}
			if st.fresh && st.at > 0 && p.MemPSS-last.MemPSS < 24<<20 {
				t.Errorf("PSS %d → %d after 32 MiB allocated: not read again", last.MemPSS, p.MemPSS)
			}
			if st.allocMB > 0 && p.MemRSS-last.MemRSS < int64(st.allocMB-8)<<20 {
				t.Errorf("RSS %d → %d after %d MiB: RSS must be read at every sample", last.MemRSS, p.MemRSS, st.allocMB)
			}
			last = p
		})
	}
	runtime.KeepAlive(keep)
}
