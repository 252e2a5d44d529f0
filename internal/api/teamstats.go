package api

import (
	"net/http"
	"time"

	"github.com/capsulehq/capsule/internal/service"
)

// teamFiguresJSON is what a team's sandboxes hold (at a time, or a
// bucket's maxima).
type teamFiguresJSON struct {
	Running          int32 `json:"running"`
	Paused           int32 `json:"paused"`
	ReservedVCPUs    int32 `json:"reserved_vcpus"`
	ReservedMemoryMB int64 `json:"reserved_memory_mb"`
}

// teamStatsPointJSON is a bucket: its start and its maxima.
type teamStatsPointJSON struct {
	Timestamp        time.Time `json:"ts"`
	Running          int32     `json:"running"`
	Paused           int32     `json:"paused"`
	ReservedVCPUs    int32     `json:"reserved_vcpus"`
	ReservedMemoryMB int64     `json:"reserved_memory_mb"`
}

// teamStatsJSON is a team's figures over a range.
type teamStatsJSON struct {
	Range   string               `json:"range"`
	StepSec int64                `json:"step_sec"`
	From    time.Time            `json:"from"`
	To      time.Time            `json:"to"`
	Now     teamFiguresJSON      `json:"now"`
	Peak    teamFiguresJSON      `json:"peak"`
	Points  []teamStatsPointJSON `json:"points"`
}

func figuresJSON(f service.TeamFigures) teamFiguresJSON {
	return teamFiguresJSON{Running: f.Running, Paused: f.Paused, ReservedVCPUs: f.ReservedVCPUs, ReservedMemoryMB: f.ReservedMemoryMB}
}

// teamStats: GET /v1/sandboxes/stats?range=5m|1h|6h|24h|30d (default 1h).
func (s *Server) teamStats(w http.ResponseWriter, r *http.Request, p service.Principal) {
	rng := r.URL.Query().Get("range")
	if rng == "" {
		rng = "1h"
	}
	st, err := s.stats.Stats(r.Context(), p, rng)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := teamStatsJSON{Range: st.Range, StepSec: int64(st.Step / time.Second), From: st.From, To: st.To,
		Now: figuresJSON(st.Now), Peak: figuresJSON(st.Peak), Points: make([]teamStatsPointJSON, len(st.Points))}
	for i, pt := range st.Points {
		out.Points[i] = teamStatsPointJSON{Timestamp: pt.Timestamp, Running: pt.Running, Paused: pt.Paused,
			ReservedVCPUs: pt.ReservedVCPUs, ReservedMemoryMB: pt.ReservedMemoryMB}
	}
	writeJSON(w, http.StatusOK, out)
}

// usageDayJSON is a team's use and reservations on a UTC day.
type usageDayJSON struct {
	Date                     string  `json:"date"`
	CPUUsedMinutes           float64 `json:"cpu_used_minutes"`
	MemoryUsedMiBMinutes     float64 `json:"memory_used_mib_minutes"`
	VCPUReservedMinutes      float64 `json:"vcpu_reserved_minutes"`
	MemoryReservedMiBMinutes float64 `json:"memory_reserved_mib_minutes"`
	Live                     bool    `json:"live"`
}

// usageTotalJSON sums the days.
type usageTotalJSON struct {
	CPUUsedMinutes           float64 `json:"cpu_used_minutes"`
	MemoryUsedMiBMinutes     float64 `json:"memory_used_mib_minutes"`
	VCPUReservedMinutes      float64 `json:"vcpu_reserved_minutes"`
	MemoryReservedMiBMinutes float64 `json:"memory_reserved_mib_minutes"`
}

// usageJSON is a team's usage over days.
type usageJSON struct {
	From  string         `json:"from"`
	To    string         `json:"to"`
	Days  []usageDayJSON `json:"days"`
	Total usageTotalJSON `json:"total"`
}

// teamUsage: GET /v1/sandboxes/usage?from=YYYY-MM-DD&to=YYYY-MM-DD.
func (s *Server) teamUsage(w http.ResponseWriter, r *http.Request, p service.Principal) {
	q := r.URL.Query()
	u, err := s.stats.Usage(r.Context(), p, q.Get("from"), q.Get("to"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := usageJSON{From: u.From.Format(time.DateOnly), To: u.To.Format(time.DateOnly), Days: make([]usageDayJSON, len(u.Days)),
		Total: usageTotalJSON{CPUUsedMinutes: u.Total.CPUUsedMinutes, MemoryUsedMiBMinutes: u.Total.MemoryUsedMiBMinutes,
			VCPUReservedMinutes: u.Total.VCPUReservedMinutes, MemoryReservedMiBMinutes: u.Total.MemoryReservedMiBMinutes}}
	for i, d := range u.Days {
		out.Days[i] = usageDayJSON{Date: d.Day.Format(time.DateOnly), CPUUsedMinutes: d.CPUUsedMinutes,
			MemoryUsedMiBMinutes: d.MemoryUsedMiBMinutes, VCPUReservedMinutes: d.VCPUReservedMinutes,
			MemoryReservedMiBMinutes: d.MemoryReservedMiBMinutes, Live: d.Live}
	}
	writeJSON(w, http.StatusOK, out)
}
