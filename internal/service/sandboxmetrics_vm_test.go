package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/store/db"
)

// TestSandboxMetricsRealAgent drives a real agent (network slot pool cmx)
// through the metrics history: a sandbox that burns CPU shows it in the
// live series within 2 s of sample time, its VMM's memory grows after the
// guest fills 64 MiB; paused, the same series comes from the database,
// unchanged; resumed, it continues live, and the maintenance job's
// checkpoint (CheckpointMetrics) stores its 24 h tier while it runs, as
// read live; another team's read is not found;
// destroyed, it is not found and only its 24 h tier stays stored; a range
// read of the stored history is one primary-key range scan that reads only
// the rows of its range.
func TestSandboxMetricsRealAgent(t *testing.T) {
	e, _ := newEnvHost(t, hosttest.ServiceMetricsPool)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	_, p := e.signup(t, "metrics@example.com")
	_, other := e.signup(t, "other-metrics@example.com")

	sb, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, sb.ID) })
	envd := envdclient.New(sb.EnvdURL, sb.EnvdAccessToken)
	defer envd.Close()
	series := func(t *testing.T, rng string) MetricSeries {
		t.Helper()
		ms, err := e.sbx.MetricsRange(ctx, p, sb.ID, rng)
		if err != nil {
			t.Fatalf("MetricsRange(%s): %v", rng, err)
		}
		return ms
	}
	// waitFor polls the live 5m series until a point after since satisfies
	// ok (the sampler runs in real time: 0.5 s per sample).
	waitFor := func(t *testing.T, what string, since time.Time, ok func(MetricPoint) bool) MetricPoint {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		var last MetricPoint
		for time.Now().Before(deadline) {
			for _, pt := range series(t, "5m").Points {
				if pt.Timestamp.After(since) && ok(pt) {
					return pt
				}
				last = pt
			}
			time.Sleep(250 * time.Millisecond) // the next sample
		}
		g := "none"
		if last.Guest != nil {
			g = fmt.Sprintf("%+v", *last.Guest)
		}
		t.Fatalf("no point after %v shows %s; the last: %+v, guest %s", since, what, last, g)
		return MetricPoint{}
	}

	t.Run("another team's sandbox is not found", func(t *testing.T) {
		if _, err := e.sbx.MetricsRange(ctx, other, sb.ID, "5m"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("MetricsRange of another team's sandbox = %v, want not found", err)
		}
	})
	t.Run("a bad range is refused", func(t *testing.T) {
		if _, err := e.sbx.MetricsRange(ctx, p, sb.ID, "3d"); !errors.Is(err, ErrInvalid) {
			t.Fatalf("MetricsRange(3d) = %v, want invalid", err)
		}
	})
	t.Run("the live series has the guest's figures", func(t *testing.T) {
		pt := waitFor(t, "the guest's figures", time.Time{}, func(pt MetricPoint) bool { return pt.Guest != nil })
		if pt.Guest.MemTotal < 100<<20 || pt.Guest.CPUCount != 1 || pt.MemRSS <= 0 || pt.MemPSS <= 0 || pt.DiskUsed <= 0 {
			t.Fatalf("point %+v, guest %+v", pt, *pt.Guest)
		}
		if ms := series(t, "5m"); ms.Source != "live" || ms.Tier != MetricTier10m || ms.Step != 500*time.Millisecond {
			t.Fatalf("series source %s tier %s step %v", ms.Source, ms.Tier, ms.Step)
		}
	})
	t.Run("CPU burnt in the guest shows within 2 s", func(t *testing.T) {
		// The guest's own figure: how much of its vCPU it used. (The
		// VMM's share of a host core also depends on what else the host
		// runs: on a loaded test machine it may stay below 50 %.)
		started := time.Now()
		if _, err := envd.Shell(ctx, `setsid sh -c 'while :; do :; done' </dev/null >/dev/null 2>&1 &`); err != nil {
			t.Fatal(err)
		}
		pt := waitFor(t, "guest CPU above 50 %", started, func(pt MetricPoint) bool { return pt.Guest != nil && pt.Guest.CPUPct > 50 })
		if d := pt.Timestamp.Sub(started); d > 2*time.Second {
			t.Errorf("the first sample above 50 %% is %v after the burner started, want ≤ 2 s", d)
		}
		// The host sees the VMM busy too.
		waitFor(t, "VMM CPU above 30 %", started, func(pt MetricPoint) bool { return pt.CPUPct > 30 })
	})
	t.Run("memory grows after the guest fills 64 MiB", func(t *testing.T) {
		// The sampler reads PSS only every 30 s (RSS every sample), and a
		// cold-booted guest gives pages back (free-page reporting): a
		// sample's PSS may be older and higher than its RSS. The baseline
		// is the first sample after a fresh PSS read.
		first := waitFor(t, "a sample", time.Now(), func(MetricPoint) bool { return true })
		before := waitFor(t, "a fresh PSS reading", first.Timestamp, func(pt MetricPoint) bool { return pt.MemPSS != first.MemPSS })
		res, err := envd.Shell(ctx, `mkdir -p /mnt/fill && mount -t tmpfs -o size=128m tmpfs /mnt/fill && dd if=/dev/zero of=/mnt/fill/x bs=1M count=64 2>&1`)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("fill: %v %+v", err, res)
		}
		filled := time.Now()
		// The guest's memory used grows by what it filled.
		if before.Guest == nil {
			before = waitFor(t, "a sample with the guest's figures", time.Time{}, func(pt MetricPoint) bool { return pt.Guest != nil })
		}
		waitFor(t, "the guest's memory used up by 48 MiB", filled, func(pt MetricPoint) bool {
			return pt.Guest != nil && pt.Guest.MemUsed-before.Guest.MemUsed >= 48<<20
		})
		// The VMM's RSS and PSS grow with it when at least 48 MiB of the
		// guest's 256 MiB was not resident yet, which is certain only when
		// the RSS (guest pages plus QEMU's own) was at most 256 − 48 MiB;
		// a machine restored from a snapshot, or whose kernel touched
		// every page, has little or nothing left to fault in.
		if before.MemRSS > (256-48)<<20 {
			t.Logf("the VMM's RSS was %d MiB before the fill: 48 MiB of the guest's 256 MiB may have been resident already", before.MemRSS>>20)
			return
		}
		t.Logf("before the fill: RSS %d MiB, PSS %d MiB", before.MemRSS>>20, before.MemPSS>>20)
		waitFor(t, "RSS and PSS up by 48 MiB", filled, func(pt MetricPoint) bool {
			return pt.MemRSS-before.MemRSS >= 48<<20 && pt.MemPSS-before.MemPSS >= 48<<20
		})
	})

	var live map[string]MetricSeries
	t.Run("paused, the series comes from the database unchanged", func(t *testing.T) {
		live = map[string]MetricSeries{}
		for _, rng := range []string{"10m", "2h", "24h"} {
			live[rng] = series(t, rng)
		}
		if _, err := e.sbx.Pause(ctx, p, sb.ID); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		for rng, was := range live {
			now := series(t, rng)
			if now.Source != "stored" {
				t.Fatalf("%s: source %s after pause", rng, now.Source)
			}
			// Every point read live is stored as it was; a coarse tier's
			// last point was its open bucket, whose mean moved since.
			want := was.Points
			if rng != "10m" {
				want = want[:len(want)-1]
			}
			if len(now.Points) < len(was.Points) {
				t.Fatalf("%s: %d points stored, %d read live before the pause", rng, len(now.Points), len(was.Points))
			}
			for i, w := range want {
				if got := now.Points[i]; !samePoint(got, w) {
					t.Fatalf("%s point %d: stored %+v, live %+v", rng, i, got, w)
				}
			}
		}
	})
	t.Run("resumed, the series continues live", func(t *testing.T) {
		paused := time.Now()
		if _, err := e.sbx.Resume(ctx, p, sb.ID); err != nil {
			t.Fatalf("Resume: %v", err)
		}
		waitFor(t, "a sample after the resume", paused, func(MetricPoint) bool { return true })
		ms := series(t, "10m")
		if ms.Source != "live" || len(ms.Points) == 0 || !samePoint(ms.Points[0], live["10m"].Points[0]) {
			t.Fatalf("after resume: source %s, %d points, first %+v (before the pause %+v)", ms.Source, len(ms.Points),
				ms.Points[0], live["10m"].Points[0])
		}
	})
	t.Run("a running sandbox's 24 h tier is checkpointed to the database", func(t *testing.T) {
		// What the pause stored goes: the checkpoint alone must store it.
		if _, err := e.st.Pool().Exec(ctx, `DELETE FROM sandbox_metrics WHERE sandbox_id = $1 AND tier = '24h'`, pgUUID(sb.ID)); err != nil {
			t.Fatal(err)
		}
		was := series(t, "24h")
		if was.Source != "live" || len(was.Points) == 0 {
			t.Fatalf("24h before the checkpoint: source %s, %d points", was.Source, len(was.Points))
		}
		stored := func() []MetricPoint {
			t.Helper()
			pts, err := e.sbx.storedMetrics(ctx, pgUUID(sb.ID), MetricTier24h, was.Points[0].Timestamp.Add(-time.Hour), time.Now().Add(time.Hour))
			if err != nil {
				t.Fatal(err)
			}
			return pts
		}
		for i := range 2 { // a second checkpoint stores the same buckets again
			if err := e.sbx.CheckpointMetrics(ctx); err != nil {
				t.Fatalf("CheckpointMetrics #%d: %v", i+1, err)
			}
			got := stored()
			if len(got) < len(was.Points) || len(got) > len(was.Points)+1 {
				t.Fatalf("checkpoint #%d stored %d points; %d read live before", i+1, len(got), len(was.Points))
			}
			// Every closed bucket read live is stored as it was; the open
			// one (the last) is stored at its time, its mean as it was
			// at the checkpoint.
			for j, w := range was.Points {
				if j == len(was.Points)-1 {
					if !got[j].Timestamp.Truncate(time.Microsecond).Equal(w.Timestamp.Truncate(time.Microsecond)) {
						t.Fatalf("checkpoint #%d: the open bucket stored at %v, live at %v", i+1, got[j].Timestamp, w.Timestamp)
					}
				} else if !samePoint(got[j], w) {
					t.Fatalf("checkpoint #%d point %d: stored %+v, live %+v", i+1, j, got[j], w)
				}
			}
		}
	})
	t.Run("a range read scans only its rows of the primary key", func(t *testing.T) {
		// Hours of stored history of another sandbox of the team and of
		// this one: the 6 h read must not touch what is outside it.
		filler := insertSandbox(t, e, pgUUID(p.TeamID), "paused", 0, 0)
		if _, err := e.st.Pool().Exec(ctx, `
			INSERT INTO sandbox_metrics (sandbox_id, tier, ts, cpu_pct, mem_rss_bytes, mem_pss_bytes, disk_used_bytes)
			SELECT s, t, now() - make_interval(secs => g * 300), 1, 1, 1, 1
			FROM unnest($1::uuid[]) AS s, unnest(ARRAY['10m', '2h', '24h']) AS t, generate_series(1, 2000) AS g`,
			[]any{filler.ID, pgUUID(sb.ID)}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.st.Pool().Exec(ctx, `ANALYZE sandbox_metrics`); err != nil {
			t.Fatal(err)
		}
		from, to := time.Now().Add(-6*time.Hour), time.Now()
		rows, err := e.st.Queries().ListSandboxMetrics(ctx, db.ListSandboxMetricsParams{SandboxID: pgUUID(sb.ID), Tier: MetricTier24h, FromTs: from, ToTs: to})
		if err != nil {
			t.Fatal(err)
		}
		var plan []map[string]any
		var raw []byte
		if err := e.st.Pool().QueryRow(ctx, `EXPLAIN (ANALYZE, FORMAT JSON)
			SELECT * FROM sandbox_metrics WHERE sandbox_id = $1 AND tier = $2 AND ts >= $3 AND ts <= $4 ORDER BY ts`,
			pgUUID(sb.ID), MetricTier24h, from, to).Scan(&raw); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(raw, &plan); err != nil {
			t.Fatal(err)
		}
		// Walk the plan: the rows come from sandbox_metrics_pkey with the
		// whole range as its condition, no node reads a row outside it.
		var pkeyRows float64 = -1
		var walk func(n map[string]any)
		walk = func(n map[string]any) {
			if n["Node Type"] == "Seq Scan" {
				t.Errorf("a sequential scan: %s", raw)
			}
			for _, k := range []string{"Rows Removed by Filter", "Rows Removed by Index Recheck"} {
				if v, ok := n[k].(float64); ok && v > 0 {
					t.Errorf("%s: %v rows outside the range read", k, v)
				}
			}
			if n["Index Name"] == "sandbox_metrics_pkey" {
				cond, _ := n["Index Cond"].(string)
				if !strings.Contains(cond, "sandbox_id =") || !strings.Contains(cond, "tier =") || !strings.Contains(cond, "ts >=") || !strings.Contains(cond, "ts <=") {
					t.Errorf("the primary key's condition is not the whole range: %s", cond)
				}
				pkeyRows = n["Actual Rows"].(float64)
			}
			if n["Index Name"] != nil && n["Index Name"] != "sandbox_metrics_pkey" {
				t.Errorf("index %v used", n["Index Name"])
			}
			kids, _ := n["Plans"].([]any)
			for _, k := range kids {
				walk(k.(map[string]any))
			}
		}
		walk(plan[0]["Plan"].(map[string]any))
		if int(pkeyRows) != len(rows) || len(rows) < 70 {
			t.Errorf("the primary key produced %v rows, the range has %d (≥ 72 expected in 6 h): %s", pkeyRows, len(rows), raw)
		}
		if _, err := e.st.Pool().Exec(ctx, `DELETE FROM sandbox_metrics WHERE sandbox_id = $1 AND cpu_pct = 1 AND mem_rss_bytes = 1`, pgUUID(sb.ID)); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("destroyed, it is not found and its 24 h tier stays", func(t *testing.T) {
		if err := e.sbx.Destroy(ctx, p, sb.ID); err != nil {
			t.Fatalf("Destroy: %v", err)
		}
		if _, err := e.sbx.MetricsRange(ctx, p, sb.ID, "24h"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("MetricsRange of a destroyed sandbox = %v, want not found", err)
		}
		var tiers []string
		r, err := e.st.Pool().Query(ctx, `SELECT DISTINCT tier FROM sandbox_metrics WHERE sandbox_id = $1`, pgUUID(sb.ID))
		if err != nil {
			t.Fatal(err)
		}
		for r.Next() {
			var tier string
			if err := r.Scan(&tier); err != nil {
				t.Fatal(err)
			}
			tiers = append(tiers, tier)
		}
		if len(tiers) != 1 || tiers[0] != MetricTier24h {
			t.Fatalf("stored tiers after destroy: %v, want [24h]", tiers)
		}
	})
}

// samePoint compares points as stored (microsecond timestamps).
func samePoint(a, b MetricPoint) bool {
	if !a.Timestamp.Truncate(time.Microsecond).Equal(b.Timestamp.Truncate(time.Microsecond)) ||
		a.CPUPct != b.CPUPct || a.MemRSS != b.MemRSS || a.MemPSS != b.MemPSS || a.DiskUsed != b.DiskUsed ||
		(a.Guest == nil) != (b.Guest == nil) {
		return false
	}
	return a.Guest == nil || *a.Guest == *b.Guest
}
