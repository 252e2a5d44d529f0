package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// A sandbox's metrics history. The host agent samples each running
// sandbox every 0.5 s into three tiers (package sandbox/metrics on the
// host); the control plane reads a running sandbox's tiers from its agent
// and keeps them in sandbox_metrics when the host lets them go: every tier
// on pause (PauseSandbox's answer carries them: nothing is lost between two
// calls), the 24 h tier on destroy (DestroySandbox's answer). A paused
// sandbox's series is served from the database; a stopped (destroyed),
// failed or lost one is not found.

// Metric tiers, as stored (sandbox_metrics.tier).
const (
	MetricTier10m = "10m" // raw samples every 0.5 s, 10 minutes
	MetricTier2h  = "2h"  // 30 s averages, 2 hours
	MetricTier24h = "24h" // 5 min averages, 24 hours
)

var (
	tierSteps = map[string]time.Duration{MetricTier10m: 500 * time.Millisecond, MetricTier2h: 30 * time.Second, MetricTier24h: 5 * time.Minute}
	tierWire  = map[string]pb.MetricTier{MetricTier10m: pb.MetricTier_METRIC_TIER_10M, MetricTier2h: pb.MetricTier_METRIC_TIER_2H,
		MetricTier24h: pb.MetricTier_METRIC_TIER_24H}
)

// MetricRanges are the ranges GET /v1/sandboxes/{id}/metrics serves and
// the tier each reads.
var MetricRanges = map[string]struct {
	Span time.Duration
	Tier string
}{
	"5m": {5 * time.Minute, MetricTier10m}, "10m": {10 * time.Minute, MetricTier10m},
	"1h": {time.Hour, MetricTier2h}, "2h": {2 * time.Hour, MetricTier2h},
	"6h": {6 * time.Hour, MetricTier24h}, "12h": {12 * time.Hour, MetricTier24h}, "24h": {24 * time.Hour, MetricTier24h},
}

// GuestMetric is what a sandbox's envd reported (bytes; CPU in percent of
// the guest's vCPUs).
type GuestMetric struct {
	CPUCount  int32
	CPUPct    float64
	MemUsed   int64
	MemTotal  int64
	MemCache  int64
	DiskUsed  int64
	DiskTotal int64
}

// MetricPoint is a sample (tier 10m) or a bucket's mean (2h, 24h; its
// time is the bucket's start).
type MetricPoint struct {
	Timestamp time.Time
	// CPUPct: the VMM process, in percent of one host core.
	CPUPct float64
	// Bytes: the VMM's RSS and PSS, the blocks its disk overlay takes.
	MemRSS, MemPSS, DiskUsed int64
	// Guest is nil when envd did not answer.
	Guest *GuestMetric
}

// MetricSeries is a sandbox's metrics over a range.
type MetricSeries struct {
	Range    string
	Tier     string
	Step     time.Duration
	From, To time.Time
	// Source: "live" (from the host agent, older points from the
	// database) or "stored" (the database only).
	Source string
	Points []MetricPoint
}

// metricsNow is the clock of the metrics ranges.
var metricsNow = time.Now

// MetricsRange returns the series of a sandbox of p's team over rng (a
// key of MetricRanges) up to now: live while it runs, stored otherwise;
// a stopped, failed or lost sandbox is not found.
func (s *Sandboxes) MetricsRange(ctx context.Context, p Principal, id SandboxID, rng string) (MetricSeries, error) {
	r, ok := MetricRanges[rng]
	if !ok {
		return MetricSeries{}, errorf(ErrInvalid, "range: one of 5m, 10m, 1h, 2h, 6h, 12h, 24h")
	}
	row, err := s.metricsRow(ctx, p, id)
	if err != nil {
		return MetricSeries{}, err
	}
	to := metricsNow().UTC()
	out := MetricSeries{Range: rng, Tier: r.Tier, Step: tierSteps[r.Tier], From: to.Add(-r.Span), To: to}
	out.Points, out.Source, err = s.metricPoints(ctx, row, r.Tier, out.From, out.To)
	return out, err
}

// metricsRow is the record of a sandbox of p's team whose metrics can be
// read.
func (s *Sandboxes) metricsRow(ctx context.Context, p Principal, id SandboxID) (db.Sandbox, error) {
	row, err := s.get(ctx, p, id)
	if err != nil {
		return db.Sandbox{}, err
	}
	switch row.State {
	case store.SandboxStopped, store.SandboxError, store.SandboxMissing:
		return db.Sandbox{}, errorf(ErrNotFound, "sandbox not found")
	}
	return row, nil
}

// metricPoints reads tier within [from, to]: from the agent while the
// sandbox runs (and, before the agent's first point, from the database:
// an agent that restarted lost what it had), else from the database.
func (s *Sandboxes) metricPoints(ctx context.Context, row db.Sandbox, tier string, from, to time.Time) ([]MetricPoint, string, error) {
	if row.State == store.SandboxRunning {
		live, err := s.liveMetrics(ctx, row.HostID, row.ID, tier, from, to)
		switch {
		case err == nil:
			storedTo := to
			if len(live) > 0 {
				storedTo = live[0].Timestamp.Add(-time.Microsecond)
			}
			stored, err := s.storedMetrics(ctx, row.ID, tier, from, storedTo)
			if err != nil {
				return nil, "", err
			}
			return append(stored, live...), "live", nil
		case errors.Is(err, agentclient.ErrNotFound), errors.Is(err, agentclient.ErrConflict):
			// It left running since the read: what is stored.
		default:
			return nil, "", agentError(err, "metrics")
		}
	}
	pts, err := s.storedMetrics(ctx, row.ID, tier, from, to)
	return pts, "stored", err
}

func (s *Sandboxes) liveMetrics(ctx context.Context, host, id pgtype.UUID, tier string, from, to time.Time) ([]MetricPoint, error) {
	c, err := s.agentFor(ctx, host)
	if err != nil {
		return nil, err
	}
	resp, err := c.GetSandboxMetrics(ctx, connect.NewRequest(&pb.GetSandboxMetricsRequest{
		SandboxId: ID(id), Tier: tierWire[tier], From: timestamppb.New(from), To: timestamppb.New(to),
	}))
	if err != nil {
		return nil, err
	}
	pts := resp.Msg.GetSeries().GetPoints()
	out := make([]MetricPoint, 0, len(pts))
	for _, p := range pts {
		out = append(out, pointFromWire(p))
	}
	return out, nil
}

func pointFromWire(p *pb.MetricPoint) MetricPoint {
	out := MetricPoint{Timestamp: p.GetTimestamp().AsTime().UTC(), CPUPct: p.GetCpuPct(),
		MemRSS: int64(p.GetMemRss()), MemPSS: int64(p.GetMemPss()), DiskUsed: int64(p.GetDiskUsed())}
	if g := p.GetGuest(); g != nil {
		out.Guest = &GuestMetric{CPUCount: int32(g.GetCpuCount()), CPUPct: g.GetCpuUsedPct(), MemUsed: int64(g.GetMemUsed()),
			MemTotal: int64(g.GetMemTotal()), MemCache: int64(g.GetMemCache()), DiskUsed: int64(g.GetDiskUsed()), DiskTotal: int64(g.GetDiskTotal())}
	}
	return out
}

func (s *Sandboxes) storedMetrics(ctx context.Context, id pgtype.UUID, tier string, from, to time.Time) ([]MetricPoint, error) {
	rows, err := s.st.Queries().ListSandboxMetrics(ctx, db.ListSandboxMetricsParams{SandboxID: id, Tier: tier, FromTs: from, ToTs: to})
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	out := make([]MetricPoint, len(rows))
	for i, r := range rows {
		out[i] = MetricPoint{Timestamp: r.Ts.UTC(), CPUPct: r.CpuPct, MemRSS: r.MemRssBytes, MemPSS: r.MemPssBytes, DiskUsed: r.DiskUsedBytes}
		if r.GuestCpuPct.Valid {
			out[i].Guest = &GuestMetric{CPUCount: r.GuestCpuCount.Int32, CPUPct: r.GuestCpuPct.Float64, MemUsed: r.GuestMemUsedBytes.Int64,
				MemTotal: r.GuestMemTotalBytes.Int64, MemCache: r.GuestMemCacheBytes.Int64, DiskUsed: r.GuestDiskUsedBytes.Int64,
				DiskTotal: r.GuestDiskTotalBytes.Int64}
		}
	}
	return out, nil
}

// storeMetrics keeps the series an agent handed over (pause: every tier;
// destroy: the 24 h tier, and the finer tiers stored before are dropped).
// A failure is logged: the pause or destroy it comes with has happened.
func (s *Sandboxes) storeMetrics(ctx context.Context, id pgtype.UUID, series []*pb.MetricSeries, onlyTier string) {
	err := s.st.Tx(ctx, func(q *db.Queries) error {
		if onlyTier != "" {
			if err := q.DeleteSandboxMetricsExcept(ctx, db.DeleteSandboxMetricsExceptParams{SandboxID: id, KeepTier: onlyTier}); err != nil {
				return err
			}
		}
		for _, sr := range series {
			tier := ""
			for k, v := range tierWire {
				if v == sr.GetTier() {
					tier = k
				}
			}
			if tier == "" || (onlyTier != "" && tier != onlyTier) || len(sr.GetPoints()) == 0 {
				continue
			}
			if err := q.UpsertSandboxMetrics(ctx, upsertParams(id, tier, sr.GetPoints())); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		s.log.ErrorContext(ctx, "store a sandbox's metrics", "sandbox", ID(id), "err", err)
	}
}

func upsertParams(id pgtype.UUID, tier string, pts []*pb.MetricPoint) db.UpsertSandboxMetricsParams {
	n := len(pts)
	a := db.UpsertSandboxMetricsParams{SandboxID: id, Tier: tier,
		Ts: make([]time.Time, n), CpuPct: make([]float64, n), MemRss: make([]int64, n), MemPss: make([]int64, n),
		DiskUsed: make([]int64, n), HasGuest: make([]bool, n), GuestCpuCount: make([]int32, n), GuestCpuPct: make([]float64, n),
		GuestMemUsed: make([]int64, n), GuestMemTotal: make([]int64, n), GuestMemCache: make([]int64, n),
		GuestDiskUsed: make([]int64, n), GuestDiskTotal: make([]int64, n)}
	for i, p := range pts {
		a.Ts[i], a.CpuPct[i] = p.GetTimestamp().AsTime(), max(p.GetCpuPct(), 0)
		a.MemRss[i], a.MemPss[i], a.DiskUsed[i] = int64(p.GetMemRss()), int64(p.GetMemPss()), int64(p.GetDiskUsed())
		if g := p.GetGuest(); g != nil {
			a.HasGuest[i] = true
			a.GuestCpuCount[i], a.GuestCpuPct[i] = int32(g.GetCpuCount()), g.GetCpuUsedPct()
			a.GuestMemUsed[i], a.GuestMemTotal[i], a.GuestMemCache[i] = int64(g.GetMemUsed()), int64(g.GetMemTotal()), int64(g.GetMemCache())
			a.GuestDiskUsed[i], a.GuestDiskTotal[i] = int64(g.GetDiskUsed()), int64(g.GetDiskTotal())
		}
	}
	return a
}

// MetricsRetention is how long stored metric points are kept.
const MetricsRetention = 30 * 24 * time.Hour

// PruneMetrics deletes the stored metric points older than before and
// returns how many went.
func (s *Sandboxes) PruneMetrics(ctx context.Context, before time.Time) (int64, error) {
	n, err := s.st.Queries().PruneSandboxMetrics(ctx, before)
	if err != nil {
		return 0, fmt.Errorf("prune metrics: %w", err)
	}
	return n, nil
}

// TeamStateCount is how many sandboxes of a team are in a state.
type TeamStateCount struct {
	Team  string // wire ID
	State string
	N     int64
}

// CountByTeamState counts the sandboxes that are not stopped by team and
// state (the Prometheus gauge, read from the table at scrape time).
func (s *Sandboxes) CountByTeamState(ctx context.Context) ([]TeamStateCount, error) {
	rows, err := s.st.Queries().CountSandboxesByTeamState(ctx)
	if err != nil {
		return nil, fmt.Errorf("count sandboxes: %w", err)
	}
	out := make([]TeamStateCount, len(rows))
	for i, r := range rows {
		out[i] = TeamStateCount{Team: wireid.Format(wireid.Team, r.TeamID), State: r.State, N: r.N}
	}
	return out, nil
}
