package agent

import (
	"context"
	"fmt"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/sandbox/metrics"
)

// tiers maps the wire's tiers to the sampler's.
var tiers = map[pb.MetricTier]metrics.Tier{
	pb.MetricTier_METRIC_TIER_10M: metrics.Tier10m,
	pb.MetricTier_METRIC_TIER_2H:  metrics.Tier2h,
	pb.MetricTier_METRIC_TIER_24H: metrics.Tier24h,
}

// tierToProto is the wire's name of a tier.
func tierToProto(t metrics.Tier) pb.MetricTier {
	for k, v := range tiers {
		if v == t {
			return k
		}
	}
	return pb.MetricTier_METRIC_TIER_UNSPECIFIED
}

// seriesToProto is tier t of s within [from, to] (zero: unbounded).
func seriesToProto(s *metrics.Series, t metrics.Tier, from, to time.Time) *pb.MetricSeries {
	pts := s.Points(nil, t, from, to)
	out := &pb.MetricSeries{Tier: tierToProto(t), Points: make([]*pb.MetricPoint, len(pts))}
	for i, p := range pts {
		mp := &pb.MetricPoint{
			Timestamp: timestamp(p.TS), CpuPct: p.CPUPct,
			MemRss: uint64(max(p.MemRSS, 0)), MemPss: uint64(max(p.MemPSS, 0)), DiskUsed: uint64(max(p.DiskUsed, 0)),
		}
		if p.HasGuest {
			g := p.Guest
			mp.Guest = &pb.SandboxMetrics{
				CpuCount: uint32(max(g.CPUCount, 0)), CpuUsedPct: g.CPUPct,
				MemUsed: uint64(max(g.MemUsed, 0)), MemTotal: uint64(max(g.MemTotal, 0)), MemCache: uint64(max(g.MemCache, 0)),
				DiskUsed: uint64(max(g.DiskUsed, 0)), DiskTotal: uint64(max(g.DiskTotal, 0)),
			}
		}
		out.Points[i] = mp
	}
	return out
}

// allTiers is every tier of s (the pause answer's flush).
func allTiers(s *metrics.Series) []*pb.MetricSeries {
	out := make([]*pb.MetricSeries, 0, metrics.NumTiers)
	for t := range metrics.NumTiers {
		out = append(out, seriesToProto(s, t, time.Time{}, time.Time{}))
	}
	return out
}

// GetSandboxMetrics returns a tier of the sandbox's history and, while it
// runs, its guest's sample of now; it does not mark the sandbox active.
func (s *service) GetSandboxMetrics(ctx context.Context, req *connect.Request[pb.GetSandboxMetricsRequest]) (*connect.Response[pb.GetSandboxMetricsResponse], error) {
	id := req.Msg.GetSandboxId()
	series, err := s.a.mgr.Metrics(id)
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	out := &pb.GetSandboxMetricsResponse{}
	if req.Msg.GetTier() != pb.MetricTier_METRIC_TIER_UNSPECIFIED {
		t, ok := tiers[req.Msg.GetTier()]
		if !ok {
			return nil, s.a.failState(ctx, fmt.Errorf("%w: unknown metrics tier %d", sandbox.ErrInvalid, req.Msg.GetTier()))
		}
		var from, to time.Time
		if req.Msg.From != nil {
			from = req.Msg.From.AsTime()
		}
		if req.Msg.To != nil {
			to = req.Msg.To.AsTime()
		}
		out.Series = seriesToProto(series, t, from, to)
		return connect.NewResponse(out), nil
	}
	// The latest guest sample (revision 3's answer): envd asked now.
	c, err := s.a.mgr.Client(id)
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	m, err := c.Metrics(ctx)
	if err != nil {
		return nil, s.a.failState(ctx, fmt.Errorf("metrics of %s: %w", id, err))
	}
	at := s.a.now()
	if m.Timestamp > 0 {
		at = time.Unix(m.Timestamp, 0)
	}
	out.Metrics = &pb.SandboxMetrics{
		Timestamp: timestamp(at), CpuCount: uint32(max(m.CPUCount, 0)), CpuUsedPct: m.CPUUsedPct,
		MemUsed: m.MemUsed, MemTotal: m.MemTotal, MemCache: m.MemCache, DiskUsed: m.DiskUsed, DiskTotal: m.DiskTotal,
	}
	return connect.NewResponse(out), nil
}

// samplerCost is the sampler's cost for GetHostInfo.
func (a *Agent) samplerCost() *pb.SamplerCost {
	sp := a.mgr.Sampler()
	rounds, cpu := sp.Cost()
	return &pb.SamplerCost{Rounds: rounds, Cpu: durationpb.New(cpu), Sandboxes: uint32(sp.Len())}
}
