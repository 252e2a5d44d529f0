package metrics

import (
	"math"
	"testing"
	"time"
)

var t0 = time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)

// feed adds n samples every step from start; value(i) gives CPUPct and
// MemRSS (and, when guest(i), the guest's CPU).
func feed(s *Series, start time.Time, step time.Duration, n int, value func(i int) float64, guest func(i int) bool) {
	for i := range n {
		p := Point{TS: start.Add(time.Duration(i) * step), CPUPct: value(i), MemRSS: int64(value(i) * 1000), MemPSS: 7, DiskUsed: 4096}
		if guest != nil && guest(i) {
			p.HasGuest = true
			p.Guest = Guest{CPUCount: 2, CPUPct: value(i) / 2, MemUsed: 100, MemTotal: 200}
		}
		s.Add(p)
	}
}

func TestSeriesTiers(t *testing.T) {
	const step = 500 * time.Millisecond
	ramp := func(i int) float64 { return float64(i) }
	cases := []struct {
		name string
		n    int
		// want per tier: number of points and the first and last values
		// (CPUPct) and timestamps.
		tier      Tier
		wantN     int
		wantFirst float64
		wantLast  float64
		firstTS   time.Time
		lastTS    time.Time
	}{
		{name: "tier0 keeps the last 1200 samples", n: 1500, tier: Tier10m, wantN: 1200,
			wantFirst: 300, wantLast: 1499, firstTS: t0.Add(300 * step), lastTS: t0.Add(1499 * step)},
		{name: "tier1 averages 60 samples per 30 s bucket", n: 180, tier: Tier2h, wantN: 3,
			wantFirst: 29.5, wantLast: 149.5, firstTS: t0, lastTS: t0.Add(time.Minute)},
		{name: "tier1 reports the open bucket's partial mean", n: 70, tier: Tier2h, wantN: 2,
			wantFirst: 29.5, wantLast: 64.5, firstTS: t0, lastTS: t0.Add(30 * time.Second)},
		{name: "tier2 is the exact mean of 600 samples per 5 min", n: 1200, tier: Tier24h, wantN: 2,
			wantFirst: 299.5, wantLast: 899.5, firstTS: t0, lastTS: t0.Add(5 * time.Minute)},
		{name: "tier2 open bucket includes the open tier1 bucket", n: 610, tier: Tier24h, wantN: 2,
			wantFirst: 299.5, wantLast: 604.5, firstTS: t0, lastTS: t0.Add(5 * time.Minute)},
		{name: "tier1 keeps 240 buckets (2 h)", n: 250 * 60, tier: Tier2h, wantN: 240,
			// 250 buckets closed or open: the first kept is bucket 10.
			wantFirst: 10*60 + 29.5, wantLast: 249*60 + 29.5, firstTS: t0.Add(10 * 30 * time.Second), lastTS: t0.Add(249 * 30 * time.Second)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewSeries()
			feed(s, t0, step, c.n, ramp, nil)
			pts := s.Points(nil, c.tier, time.Time{}, time.Time{})
			if c.tier == Tier2h && c.wantN == 240 {
				// 239 closed in the ring plus the open one.
				if len(pts) != 241 {
					t.Fatalf("got %d points, want 241 (240 kept + the open bucket)", len(pts))
				}
				pts = pts[1:]
			}
			if len(pts) != c.wantN {
				t.Fatalf("got %d points, want %d", len(pts), c.wantN)
			}
			first, last := pts[0], pts[len(pts)-1]
			if math.Abs(first.CPUPct-c.wantFirst) > 1e-9 || math.Abs(last.CPUPct-c.wantLast) > 1e-9 {
				t.Errorf("first/last CPU = %v/%v, want %v/%v", first.CPUPct, last.CPUPct, c.wantFirst, c.wantLast)
			}
			if !first.TS.Equal(c.firstTS) || !last.TS.Equal(c.lastTS) {
				t.Errorf("first/last TS = %v/%v, want %v/%v", first.TS, last.TS, c.firstTS, c.lastTS)
			}
			if first.MemRSS != round(c.wantFirst*1000) {
				t.Errorf("first MemRSS = %d, want %d", first.MemRSS, round(c.wantFirst*1000))
			}
			for i := 1; i < len(pts); i++ {
				if !pts[i].TS.After(pts[i-1].TS) {
					t.Fatalf("points out of order at %d: %v after %v", i, pts[i].TS, pts[i-1].TS)
				}
			}
		})
	}
}

func TestSeriesGuestAveraging(t *testing.T) {
	cases := []struct {
		name      string
		guest     func(i int) bool
		wantGuest bool
		wantCPU   float64
	}{
		{name: "no guest reading leaves the guest fields empty", guest: func(int) bool { return false }},
		{name: "guest fields average only the samples that had them", guest: func(i int) bool { return i%2 == 0 },
			wantGuest: true, wantCPU: 14.5 / 1}, // even i of 0..58: mean 29, halved: 14.5
		{name: "every sample with a guest reading", guest: func(int) bool { return true }, wantGuest: true, wantCPU: 14.75},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := NewSeries()
			feed(s, t0, 500*time.Millisecond, 61, func(i int) float64 { return float64(i) }, c.guest)
			pts := s.Points(nil, Tier2h, time.Time{}, t0) // the closed first bucket only
			if len(pts) != 1 {
				t.Fatalf("got %d points, want 1", len(pts))
			}
			p := pts[0]
			if p.HasGuest != c.wantGuest {
				t.Fatalf("HasGuest = %v, want %v", p.HasGuest, c.wantGuest)
			}
			if c.wantGuest && (math.Abs(p.Guest.CPUPct-c.wantCPU) > 1e-9 || p.Guest.CPUCount != 2 || p.Guest.MemTotal != 200) {
				t.Errorf("guest = %+v, want CPU %v, 2 vCPUs, total 200", p.Guest, c.wantCPU)
			}
		})
	}
}

func TestSeriesRangeAndOrder(t *testing.T) {
	s := NewSeries()
	feed(s, t0, time.Second, 20, func(i int) float64 { return float64(i) }, nil)
	steps := []struct {
		name     string
		from, to time.Time
		want     int
	}{
		{"unbounded", time.Time{}, time.Time{}, 20},
		{"inclusive bounds", t0.Add(5 * time.Second), t0.Add(9 * time.Second), 5},
		{"a window before the first sample is empty", t0.Add(-time.Hour), t0.Add(-time.Second), 0},
		{"a window after the last sample is empty", t0.Add(time.Hour), time.Time{}, 0},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if got := len(s.Points(nil, Tier10m, st.from, st.to)); got != st.want {
				t.Errorf("got %d points, want %d", got, st.want)
			}
		})
	}
	t.Run("a sample not after the last is dropped", func(t *testing.T) {
		s.Add(Point{TS: t0.Add(3 * time.Second), CPUPct: 999})
		last, _ := s.Last()
		if last.CPUPct == 999 || len(s.Points(nil, Tier10m, time.Time{}, time.Time{})) != 20 {
			t.Errorf("an out-of-order sample was kept: last %+v", last)
		}
	})
	t.Run("a gap leaves no invented points", func(t *testing.T) {
		g := NewSeries()
		feed(g, t0, 10*time.Second, 3, func(int) float64 { return 1 }, nil)
		feed(g, t0.Add(time.Hour), 10*time.Second, 3, func(int) float64 { return 3 }, nil)
		pts := g.Points(nil, Tier2h, time.Time{}, time.Time{})
		if len(pts) != 2 || pts[0].CPUPct != 1 || pts[1].CPUPct != 3 {
			t.Errorf("got %+v, want two buckets (1 then 3)", pts)
		}
	})
}

func TestSeriesAddAllocatesNothing(t *testing.T) {
	s := NewSeries()
	i := 0
	allocs := testing.AllocsPerRun(5000, func() {
		s.Add(Point{TS: t0.Add(time.Duration(i) * 500 * time.Millisecond), CPUPct: 1})
		i++
	})
	if allocs != 0 {
		t.Errorf("Add allocates %v times per sample, want 0 (fixed memory)", allocs)
	}
}
