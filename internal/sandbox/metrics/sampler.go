package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/capsulehq/capsule/internal/envdapi"
)

// GuestFunc reads envd's /metrics of a sandbox.
type GuestFunc func(ctx context.Context) (*envdapi.Metrics, error)

// Target is a running sandbox to sample.
type Target struct {
	ID string
	// PID is the VMM process.
	PID int
	// Disks are the sandbox's copy-on-write overlay files.
	Disks []string
	// Guest reads the guest's figures (nil: none).
	Guest GuestFunc
	// GuestAfter: no guest read is made before this time (the samples
	// until then have no guest figures). Package sandbox spares a guest
	// that just started: each read is an HTTP request to its envd, which
	// under TCG costs a fresh guest the translation of that code, CPU
	// that the creates running at the same time are short of.
	GuestAfter time.Time
	// Series receives the samples.
	Series *Series
}

// Config configures a Sampler.
type Config struct {
	// Interval between samples (default 500 ms, tier 0's step).
	Interval time.Duration
	// PSSEvery is how often a sandbox's PSS is read (smaps_rollup walks
	// the VMM's page tables: too costly for every sample); samples in
	// between carry the last reading. Default 30 s (tier 1's step).
	PSSEvery time.Duration
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *slog.Logger
}

// Sampler samples every added target once per interval, from one
// goroutine.
type Sampler struct {
	cfg Config
	now func() time.Time
	log *slog.Logger

	mu      sync.Mutex
	targets map[string]*target
	// round serializes rounds; order is reused by each.
	round sync.Mutex
	order []*target

	rounds  atomic.Uint64
	costNs  atomic.Int64
	guestWG sync.WaitGroup
}

// target is a Target with its open files and the previous CPU reading.
type target struct {
	Target
	// mu guards p (its files are not closed under a read) and the
	// previous CPU reading.
	mu sync.Mutex
	p  *proc

	prevTicks uint64
	prevAt    time.Time
	// pss is the last PSS reading, taken at pssAt.
	pss   int64
	pssAt time.Time

	guestBusy atomic.Bool
	guest     atomic.Pointer[guestReading]
	removed   atomic.Bool
}

type guestReading struct {
	at time.Time
	g  Guest
}

// New returns a sampler; Run drives it.
func New(cfg Config) *Sampler {
	if cfg.Interval <= 0 {
		cfg.Interval = Tiers[Tier10m].Step
	}
	if cfg.PSSEvery <= 0 {
		cfg.PSSEvery = Tiers[Tier2h].Step
	}
	s := &Sampler{cfg: cfg, now: cfg.Now, log: cfg.Log, targets: map[string]*target{}}
	if s.now == nil {
		s.now = time.Now
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	return s
}

// Add starts sampling t (it replaces a target of the same ID). It opens
// the process' /proc files and the disks and takes the first CPU reading.
func (s *Sampler) Add(t Target) error {
	if t.Series == nil {
		return errors.New("metrics: a target needs a Series")
	}
	p, err := openProc(t.PID, t.Disks)
	if err != nil {
		return fmt.Errorf("metrics: sample %s: %w", t.ID, err)
	}
	tg := &target{Target: t, p: p}
	if tg.prevTicks, err = p.cpuTicks(); err != nil {
		p.close()
		return fmt.Errorf("metrics: sample %s: %w", t.ID, err)
	}
	tg.prevAt = s.now()
	s.mu.Lock()
	old := s.targets[t.ID]
	s.targets[t.ID] = tg
	s.mu.Unlock()
	if old != nil {
		old.close()
	}
	return nil
}

// Remove stops sampling a sandbox (no-op when it is not sampled).
func (s *Sampler) Remove(id string) {
	s.mu.Lock()
	tg := s.targets[id]
	delete(s.targets, id)
	s.mu.Unlock()
	if tg != nil {
		tg.close()
	}
}

func (t *target) close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.removed.Store(true)
	t.p.close()
}

// Len is the number of sampled sandboxes.
func (s *Sampler) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.targets)
}

// Run samples every interval until ctx ends. The goroutine is locked to
// its OS thread so that Cost can read the thread's CPU time.
func (s *Sampler) Run(ctx context.Context) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t := time.NewTicker(s.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		before := threadCPU()
		s.SampleAll(s.now())
		s.costNs.Add(int64(threadCPU() - before))
	}
}

// threadCPU is the calling thread's user+system CPU time.
func threadCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Cost is how many rounds Run made and the CPU time they took (the
// sampling goroutine's own; the guest reads' HTTP requests run elsewhere).
func (s *Sampler) Cost() (rounds uint64, cpu time.Duration) {
	return s.rounds.Load(), time.Duration(s.costNs.Load())
}

// SampleAll takes one sample of every target, stamped now.
func (s *Sampler) SampleAll(now time.Time) {
	s.round.Lock()
	defer s.round.Unlock()
	s.mu.Lock()
	s.order = s.order[:0]
	for _, t := range s.targets {
		s.order = append(s.order, t)
	}
	s.mu.Unlock()
	for _, t := range s.order {
		s.sample(t, now)
	}
	s.rounds.Add(1)
}

// sample takes one sample of t. A failed read of the process (it exited)
// skips the sample; a missing guest reading leaves the guest fields empty.
func (s *Sampler) sample(t *target, now time.Time) {
	t.mu.Lock()
	if t.removed.Load() {
		t.mu.Unlock()
		return
	}
	p := Point{TS: now}
	ticks, err := t.p.cpuTicks()
	if err == nil {
		p.MemRSS, err = t.p.rss()
	}
	if err == nil && (t.pssAt.IsZero() || now.Sub(t.pssAt) >= s.cfg.PSSEvery || now.Before(t.pssAt)) {
		_, t.pss, err = t.p.memory()
		t.pssAt = now
	}
	p.MemPSS = t.pss
	if err == nil {
		p.DiskUsed, err = t.p.diskBytes()
	}
	if err != nil {
		t.mu.Unlock()
		return // the machine went away; the lifecycle removes it
	}
	if wall := now.Sub(t.prevAt); wall > 0 && ticks >= t.prevTicks {
		cpu := float64(ticks-t.prevTicks) / clockTicks
		p.CPUPct = 100 * cpu / wall.Seconds()
	}
	t.prevTicks, t.prevAt = ticks, now
	t.mu.Unlock()

	if g := t.guest.Load(); g != nil && now.Sub(g.at) <= 2*s.cfg.Interval {
		p.HasGuest, p.Guest = true, g.g
	}
	t.Series.Add(p)
	if !now.Before(t.GuestAfter) {
		s.readGuest(t)
	}
}

// readGuest starts a read of t's envd /metrics unless one is in flight;
// the next sample takes its answer.
func (s *Sampler) readGuest(t *target) {
	if t.Guest == nil || !t.guestBusy.CompareAndSwap(false, true) {
		return
	}
	s.guestWG.Add(1)
	go func() {
		defer s.guestWG.Done()
		defer t.guestBusy.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), 2*s.cfg.Interval)
		defer cancel()
		m, err := t.Guest(ctx)
		if err != nil || m == nil {
			t.guest.Store(nil)
			return
		}
		t.guest.Store(&guestReading{at: s.now(), g: Guest{
			CPUCount: int32(m.CPUCount), CPUPct: m.CPUUsedPct,
			MemUsed: int64(m.MemUsed), MemTotal: int64(m.MemTotal), MemCache: int64(m.MemCache),
			DiskUsed: int64(m.DiskUsed), DiskTotal: int64(m.DiskTotal),
		}})
	}()
}

// WaitGuest waits for the guest reads in flight (tests).
func (s *Sampler) WaitGuest() { s.guestWG.Wait() }
