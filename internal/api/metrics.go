package api

import (
	"net/http"
	"time"

	"github.com/capsulehq/capsule/internal/service"
)

// metricSeriesJSON is a sandbox's metrics over a range.
type metricSeriesJSON struct {
	Range  string            `json:"range"`
	Tier   string            `json:"tier"`
	StepMS int64             `json:"step_ms"`
	From   time.Time         `json:"from"`
	To     time.Time         `json:"to"`
	Source string            `json:"source"`
	Points []metricPointJSON `json:"points"`
}

// metricPointJSON is one point: the host's view of the sandbox's VMM and
// the guest's own figures (null when envd did not answer).
type metricPointJSON struct {
	Timestamp     time.Time        `json:"ts"`
	CPUPct        float64          `json:"cpu_pct"`
	MemRSSBytes   int64            `json:"mem_rss_bytes"`
	MemPSSBytes   int64            `json:"mem_pss_bytes"`
	DiskUsedBytes int64            `json:"disk_used_bytes"`
	Guest         *guestMetricJSON `json:"guest"`
}

type guestMetricJSON struct {
	CPUCount       int32   `json:"cpu_count"`
	CPUPct         float64 `json:"cpu_pct"`
	MemUsedBytes   int64   `json:"mem_used_bytes"`
	MemTotalBytes  int64   `json:"mem_total_bytes"`
	MemCacheBytes  int64   `json:"mem_cache_bytes"`
	DiskUsedBytes  int64   `json:"disk_used_bytes"`
	DiskTotalBytes int64   `json:"disk_total_bytes"`
}

// sandboxMetrics: GET /v1/sandboxes/{id}/metrics?range=5m|10m|1h|2h|6h|12h|24h
// (default 10m).
func (s *Server) sandboxMetrics(w http.ResponseWriter, r *http.Request, p service.Principal) {
	b, err := sandboxID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rng := r.URL.Query().Get("range")
	if rng == "" {
		rng = "10m"
	}
	ms, err := s.cfg.Sandboxes.MetricsRange(r.Context(), p, b, rng)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := metricSeriesJSON{Range: ms.Range, Tier: ms.Tier, StepMS: ms.Step.Milliseconds(), From: ms.From, To: ms.To,
		Source: ms.Source, Points: make([]metricPointJSON, len(ms.Points))}
	for i, pt := range ms.Points {
		out.Points[i] = metricPointJSON{Timestamp: pt.Timestamp, CPUPct: pt.CPUPct, MemRSSBytes: pt.MemRSS,
			MemPSSBytes: pt.MemPSS, DiskUsedBytes: pt.DiskUsed}
		if g := pt.Guest; g != nil {
			out.Points[i].Guest = &guestMetricJSON{CPUCount: g.CPUCount, CPUPct: g.CPUPct, MemUsedBytes: g.MemUsed,
				MemTotalBytes: g.MemTotal, MemCacheBytes: g.MemCache, DiskUsedBytes: g.DiskUsed, DiskTotalBytes: g.DiskTotal}
		}
	}
	writeJSON(w, http.StatusOK, out)
}
