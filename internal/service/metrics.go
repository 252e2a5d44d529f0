package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Metric is one sample of a sandbox's resource use, as its guest sees it.
type Metric struct {
	Timestamp  time.Time
	CPUCount   int32
	CPUUsedPct float64
	// Bytes.
	MemUsed, MemTotal, MemCache, DiskUsed, DiskTotal int64
}

// Metrics returns the samples of a sandbox of p's team within [start,
// end] (E2B's getMetrics; zero start: since the sandbox was created, zero
// end: now), from the same history as MetricsRange: live while it runs,
// stored while it is paused. The window is clipped to the sandbox's life,
// so a window before it existed has no sample. Its length picks the tier
// (up to 10 min: every 0.5 s; up to 2 h: 30 s means; longer: 5 min means),
// whose points with the guest's figures are answered (E2B's metrics are
// the guest's view; a sample whose envd read failed is left out),
// then a coarser one, then a finer one, when that has nothing there. A stopped, failed or lost
// sandbox is not found. Reading is not activity: it does not push the
// sandbox's TTL.
func (s *Sandboxes) Metrics(ctx context.Context, p Principal, id SandboxID, start, end time.Time) ([]Metric, error) {
	row, err := s.metricsRow(ctx, p, id)
	if err != nil {
		return nil, err
	}
	now := metricsNow().UTC()
	if end.IsZero() || end.After(now) {
		end = now
	}
	if start.IsZero() || start.Before(row.CreatedAt) {
		start = row.CreatedAt
	}
	if end.Before(start) {
		return []Metric{}, nil
	}
	// The tier that fits the window, then the coarser ones, then the
	// finer ones (a sandbox with only part of its history somewhere).
	tiers := []string{MetricTier10m, MetricTier2h, MetricTier24h}
	switch d := end.Sub(start); {
	case d > 2*time.Hour:
		tiers = []string{MetricTier24h, MetricTier2h, MetricTier10m}
	case d > 10*time.Minute:
		tiers = []string{MetricTier2h, MetricTier24h, MetricTier10m}
	}
	var pts []MetricPoint
	for _, tier := range tiers {
		if pts, _, err = s.metricPoints(ctx, row, tier, start, end); err != nil {
			return nil, err
		}
		if len(pts) > 0 {
			break
		}
	}
	out := make([]Metric, 0, len(pts))
	for _, pt := range pts {
		if g := pt.Guest; g != nil {
			out = append(out, Metric{Timestamp: pt.Timestamp, CPUCount: g.CPUCount, CPUUsedPct: g.CPUPct,
				MemUsed: g.MemUsed, MemTotal: g.MemTotal, MemCache: g.MemCache, DiskUsed: g.DiskUsed, DiskTotal: g.DiskTotal})
		}
	}
	return out, nil
}

// Refresh keeps a running sandbox of p's team alive: its deadline moves to
// at least now + sec (sec 0: now + its own timeout, as activity does); it
// is never brought earlier. A sandbox that is not running is not found
// (there is nothing to keep alive).
func (s *Sandboxes) Refresh(ctx context.Context, p Principal, id SandboxID, sec int32) (Sandbox, error) {
	if sec < 0 || sec > maxTimeoutSec {
		return Sandbox{}, errorf(ErrInvalid, "duration: 0 to %d seconds", maxTimeoutSec)
	}
	var (
		row db.Sandbox
		err error
	)
	if sec == 0 {
		row, err = s.st.Queries().TouchSandbox(ctx, db.TouchSandboxParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID)})
	} else {
		row, err = s.st.Queries().ExtendSandboxTimeout(ctx, db.ExtendSandboxTimeoutParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID), TimeoutSec: sec})
	}
	if errors.Is(err, store.ErrNotFound) {
		return Sandbox{}, errorf(ErrNotFound, "sandbox not found or not running")
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("refresh: %w", err)
	}
	s.noteTouched(pgUUID(id), s.now())
	return s.view(row, nil), nil
}
