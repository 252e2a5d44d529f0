package sandbox

import (
	"context"
	"time"

	"github.com/capsulehq/capsule/internal/sandbox/metrics"
	"github.com/capsulehq/capsule/internal/vmm"
)

// Metrics: the manager runs one metrics.Sampler for all its sandboxes. A
// sandbox is sampled from the moment it runs (started, resumed or adopted
// after an agent restart) until it leaves running (pause, stop, destroy);
// its history (a metrics.Series) lives as long as the sandbox on this host,
// across pauses, so that a resumed sandbox's series continues.

// guestMetricsDelay is how long after a sandbox starts running its envd's
// figures are first read (metrics.Target.GuestAfter): a guest just
// restored runs under TCG with none of its code translated, and a read
// every 0.5 s (the sampler's interval) measurably slowed creates running
// at once (≈ 0.1 s of CPU per sandbox in its first second). The host's
// figures of the VMM are sampled from the start.
const guestMetricsDelay = 2 * time.Second

// startSampler starts the sampling goroutine (New).
func (m *Manager) startSampler() {
	m.sampler = metrics.New(metrics.Config{Interval: m.cfg.MetricsInterval, Now: m.now, Log: m.log})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	m.stopSampler = func() { cancel(); <-done }
	go func() {
		defer close(done)
		m.sampler.Run(ctx)
	}()
}

// running starts what watches and samples the running machine of b.
func (m *Manager) running(b *box, machine vmm.Machine) {
	m.sampleBox(b)
	go m.watchMachine(b, machine)
}

// sampleBox adds b, which runs, to the sampler. A sandbox that cannot be
// sampled (its process just went) runs unsampled: its watcher stops it.
func (m *Manager) sampleBox(b *box) {
	b.mu.Lock()
	if b.machine == nil {
		b.mu.Unlock()
		return
	}
	id, pid, client := b.rec.ID, b.machine.PID(), b.client
	series := b.seriesLocked()
	b.mu.Unlock()
	t := metrics.Target{ID: id, PID: pid, Disks: []string{m.diskPath(id)}, Series: series}
	if client != nil {
		t.Guest = client.Metrics
		t.GuestAfter = m.now().Add(guestMetricsDelay)
	}
	if err := m.sampler.Add(t); err != nil {
		m.log.Warn("sandbox not sampled", "sandbox", id, "err", err)
	}
}

// seriesLocked is b's history, made on first use. Called with b.mu held.
func (b *box) seriesLocked() *metrics.Series {
	if b.series == nil {
		b.series = metrics.NewSeries()
	}
	return b.series
}

// Metrics is the history of a sandbox on this host (empty until it first
// runs here). The series stays readable after the sandbox is destroyed:
// a caller that took it before Destroy reads its last points after.
func (m *Manager) Metrics(id string) (*metrics.Series, error) {
	b, err := m.get(id)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.seriesLocked(), nil
}

// Sampler is the manager's sampler (its cost and size, for the agent's
// Prometheus metrics).
func (m *Manager) Sampler() *metrics.Sampler { return m.sampler }
