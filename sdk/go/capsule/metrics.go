package capsule

import (
	"context"
	"net/http"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// MetricPoint is one sample of a sandbox: what its host measured of its
// machine and, when the guest answered, what the guest reported.
type MetricPoint struct {
	Time time.Time `json:"ts"`
	// CPUPct is the VMM process' CPU in percent of one host core.
	CPUPct float64 `json:"cpu_pct"`
	// MemRSSBytes and MemPSSBytes are the VMM process' memory.
	MemRSSBytes int64 `json:"mem_rss_bytes"`
	MemPSSBytes int64 `json:"mem_pss_bytes"`
	// DiskUsedBytes is what the sandbox's copy-on-write disk layer takes
	// on the host.
	DiskUsedBytes int64 `json:"disk_used_bytes"`
	// Guest is nil when the guest did not answer.
	Guest *GuestMetric `json:"guest,omitempty"`
}

// GuestMetric is what a sandbox's guest reports of itself.
type GuestMetric struct {
	CPUCount       int     `json:"cpu_count"`
	CPUPct         float64 `json:"cpu_pct"`
	MemTotalBytes  int64   `json:"mem_total_bytes"`
	MemUsedBytes   int64   `json:"mem_used_bytes"`
	MemCacheBytes  int64   `json:"mem_cache_bytes"`
	DiskTotalBytes int64   `json:"disk_total_bytes"`
	DiskUsedBytes  int64   `json:"disk_used_bytes"`
}

// MetricSeries is a sandbox's samples over a range.
type MetricSeries struct {
	Range string    `json:"range"`
	From  time.Time `json:"from"`
	To    time.Time `json:"to"`
	// Tier is the tier read; Step its resolution.
	Tier string        `json:"tier"`
	Step time.Duration `json:"step"`
	// Source is "live" (from the host) or "stored".
	Source string        `json:"source"`
	Points []MetricPoint `json:"points"`
}

// Metric ranges for SandboxService.Metrics.
const (
	Range5m  = "5m"
	Range10m = "10m"
	Range1h  = "1h"
	Range2h  = "2h"
	Range6h  = "6h"
	Range12h = "12h"
	Range24h = "24h"
)

// Metrics returns the samples of sandbox id over rng (one of the Range
// constants; "" is the server's default): live from its host while it
// runs, stored while it is paused; ErrNotFound once it is destroyed.
func (s *SandboxService) Metrics(ctx context.Context, id, rng string) (MetricSeries, error) {
	var params wire.GetSandboxMetricsParams
	if rng != "" {
		r := wire.GetSandboxMetricsParamsRange(rng)
		params.Range = &r
	}
	var out wire.SandboxMetricSeries
	resp, err := s.c.wire.GetSandboxMetrics(ctx, id, &params)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return MetricSeries{}, err
	}
	ms := MetricSeries{Range: string(out.Range), From: out.From, To: out.To, Tier: string(out.Tier),
		Step: time.Duration(out.StepMs) * time.Millisecond, Source: string(out.Source), Points: make([]MetricPoint, len(out.Points))}
	for i, p := range out.Points {
		mp := MetricPoint{Time: p.Ts, CPUPct: float64(p.CpuPct), MemRSSBytes: int64(p.MemRssBytes), MemPSSBytes: int64(p.MemPssBytes),
			DiskUsedBytes: int64(p.DiskUsedBytes)}
		if g := p.Guest; g != nil {
			mp.Guest = &GuestMetric{CPUCount: g.CpuCount, CPUPct: float64(g.CpuPct), MemTotalBytes: int64(g.MemTotalBytes),
				MemUsedBytes: int64(g.MemUsedBytes), MemCacheBytes: int64(g.MemCacheBytes), DiskTotalBytes: int64(g.DiskTotalBytes),
				DiskUsedBytes: int64(g.DiskUsedBytes)}
		}
		ms.Points[i] = mp
	}
	return ms, nil
}

// NetworkRules are a sandbox's egress rules: AllowOut and DenyOut hold
// CIDRs, IP addresses and domain names ("*.example.com" too); a
// destination in AllowOut is reachable even when AllowInternetAccess is
// false. Private ranges and the platform's hosts stay closed whatever
// they say.
type NetworkRules struct {
	AllowInternetAccess bool     `json:"allow_internet_access"`
	AllowOut            []string `json:"allow_out"`
	DenyOut             []string `json:"deny_out"`
}

// Network returns the egress rules of sandbox id.
func (s *SandboxService) Network(ctx context.Context, id string) (NetworkRules, error) {
	var out wire.NetworkRules
	resp, err := s.c.wire.GetSandboxNetwork(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return NetworkRules{}, err
	}
	return NetworkRules{AllowInternetAccess: out.AllowInternetAccess == nil || *out.AllowInternetAccess,
		AllowOut: out.AllowOut, DenyOut: out.DenyOut}, nil
}

// SetNetwork replaces the egress rules of sandbox id; a running sandbox's
// open connections that the new rules deny are cut within the call.
func (s *SandboxService) SetNetwork(ctx context.Context, id string, rules NetworkRules) (NetworkRules, error) {
	allow, deny := rules.AllowOut, rules.DenyOut
	if allow == nil {
		allow = []string{}
	}
	if deny == nil {
		deny = []string{}
	}
	internet := rules.AllowInternetAccess
	var out wire.NetworkRules
	resp, err := s.c.wire.SetSandboxNetwork(ctx, id, wire.SetSandboxNetworkJSONRequestBody{AllowInternetAccess: &internet, AllowOut: allow, DenyOut: deny})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return NetworkRules{}, err
	}
	return NetworkRules{AllowInternetAccess: out.AllowInternetAccess == nil || *out.AllowInternetAccess,
		AllowOut: out.AllowOut, DenyOut: out.DenyOut}, nil
}
