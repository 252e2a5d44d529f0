package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/controlplane"
	"github.com/capsulehq/capsule/internal/pgembed"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// metricsBenchOptions configures `capsule bench metrics`.
type metricsBenchOptions struct {
	benchStackOptions
	sampler bench.SamplerOptions
	n       int // metrics endpoint samples per figure
	// others is how many other sandboxes' stored histories fill the table.
	others int
	// statsTeams and statsDays size the team stats history (teams × days
	// of 10 s samples) under GET /v1/sandboxes/stats.
	statsTeams, statsDays int
	// noSampler skips the sampler's overhead (the endpoints only).
	noSampler bool
	// statsOnly measures the stats endpoint alone, on a control plane
	// without a host (it reads PostgreSQL only).
	statsOnly bool
}

func parseBenchMetricsFlags(args []string) (metricsBenchOptions, error) {
	fs := flag.NewFlagSet("bench metrics", flag.ContinueOnError)
	o := metricsBenchOptions{}
	o.benchStackOptions.flags(fs)
	fs.IntVar(&o.sampler.Sandboxes, "sandboxes", 20, "stand-in sandboxes the sampler samples")
	fs.IntVar(&o.sampler.MemoryMiB, "memory-mib", 256, "memory each stand-in VMM process holds resident (MiB)")
	fs.DurationVar(&o.sampler.Duration, "duration", 30*time.Second, "how long the sampler's CPU time is measured")
	fs.IntVar(&o.n, "n", 300, "GET /v1/sandboxes/{id}/metrics?range=24h samples per figure")
	fs.IntVar(&o.others, "others", 200, "other sandboxes whose stored 24 h histories fill sandbox_metrics")
	fs.BoolVar(&o.statsOnly, "stats-only", false, "measure only the stats endpoint, on a control plane without a host (no root, no VMs)")
	fs.BoolVar(&o.noSampler, "no-sampler", false, "skip the host sampler's overhead (measure the endpoints only)")
	fs.IntVar(&o.statsTeams, "stats-teams", 50, "teams whose 10 s team stats samples fill team_stats")
	fs.IntVar(&o.statsDays, "stats-days", 60, "days of team stats samples per team")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.n < 1 || o.others < 0 || o.statsTeams < 1 || o.statsDays < 1 {
		return o, errors.New("bench metrics: -n, -stats-teams and -stats-days must be positive, -others not negative")
	}
	o.sampler.EnvdBin = o.envdBin
	return o, nil
}

// benchMetrics measures the metrics history: the agent's sampler's CPU
// overhead (bench.SamplerOverhead), and the latency of the control
// plane's GET /v1/sandboxes/{id}/metrics?range=24h over the API, for a
// running sandbox (live from its agent) and for a paused one whose full
// history (every tier) is stored among o.others other histories; then the
// latency of GET /v1/sandboxes/stats?range=30d (and 24h) with o.statsDays
// days of 10 s team stats samples for o.statsTeams teams stored.
func benchMetrics(ctx context.Context, o metricsBenchOptions) (out map[string]any, err error) {
	if o.statsOnly {
		return benchStatsOnly(ctx, o)
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("bench metrics: needs root (the host agent's VMs and network)")
	}
	out = map[string]any{}
	if !o.noSampler {
		sampler, err := bench.SamplerOverhead(ctx, o.sampler)
		if err != nil {
			return nil, fmt.Errorf("sampler: %w", err)
		}
		out["sampler"] = sampler
	}
	stack, err := startBenchStack(ctx, o.benchStackOptions, "bench-metrics-")
	if err != nil {
		return nil, err
	}
	defer stack.close()
	b := stack.api()

	// Paused: a full history stored, among others'.
	paused, err := b.storedHistories(ctx, o.others)
	if err != nil {
		return out, fmt.Errorf("store histories: %w", err)
	}
	if out["metrics_24h_paused"], err = b.metricsReads(ctx, paused, o.n); err != nil {
		return out, err
	}
	// Running: live from the agent.
	sb, _, _, err := b.create(ctx, "minimal")
	if err != nil {
		return out, err
	}
	defer func() { _ = b.destroy(context.Background(), sb.ID) }()
	time.Sleep(2 * time.Second) // a few samples
	if out["metrics_24h_running"], err = b.metricsReads(ctx, sb.ID, o.n); err != nil {
		return out, err
	}
	out["stored_rows"] = (o.others + 1) * (1200 + 240 + 288)
	return out, b.statsFigures(ctx, o, out)
}

// benchStatsOnly measures the stats endpoint on a control plane built as
// capsule serve builds it, over an embedded PostgreSQL, with no host (the
// endpoint reads the database only).
func benchStatsOnly(ctx context.Context, o metricsBenchOptions) (map[string]any, error) {
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	work, err := os.MkdirTemp("", "capsule-bench-stats-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	if err := os.Chmod(work, 0o755); err != nil { // PostgreSQL's own user reaches it
		return nil, err
	}
	pg, err := pgembed.Start(ctx, pgembed.Config{DataDir: work, BinDir: o.pgBinDir, Logger: o.log})
	if err != nil {
		return nil, fmt.Errorf("embedded PostgreSQL: %w", err)
	}
	defer pg.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	cp, err := controlplane.New(ctx, controlplane.Config{DSN: pg.DSN(), Secret: []byte("capsule-bench-stats-secret-0123456789abcdef"),
		Signup: service.SignupOpen, SandboxAddr: ln.Addr(), Log: o.log, SingleReplica: true})
	if err != nil {
		return nil, err
	}
	defer cp.Close()
	srv := &http.Server{Handler: cp.APIHandler(), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	acc, err := cp.Accounts.Signup(ctx, service.Signup{Email: "bench@capsule.local", Password: "bench-stats-password", Name: "Bench"})
	if err != nil {
		return nil, err
	}
	key, err := cp.Accounts.CreateAPIKey(ctx, acc.Principal(), "bench")
	if err != nil {
		return nil, err
	}
	tb, _ := acc.Team.ID.UUID()
	b := &apiBench{st: cp.Store, url: "http://" + ln.Addr().String(), key: key.Plaintext,
		team: db.Team{ID: pgtype.UUID{Bytes: tb, Valid: true}}, client: &http.Client{Timeout: time.Minute}}
	out := map[string]any{}
	return out, b.statsFigures(ctx, o, out)
}

// statsFigures stores the team stats history and times the stats
// endpoint into out.
func (b *apiBench) statsFigures(ctx context.Context, o metricsBenchOptions, out map[string]any) error {
	// Team stats: a long history for many teams, the bench's among them.
	t0 := time.Now()
	rows, err := b.statsHistory(ctx, o.statsTeams, o.statsDays)
	if err != nil {
		return fmt.Errorf("team stats history: %w", err)
	}
	out["stats_rows"], out["stats_teams"], out["stats_days"] = rows, o.statsTeams, o.statsDays
	out["stats_fill_s"] = int(time.Since(t0).Seconds())
	for _, rng := range []string{"30d", "24h"} {
		if out["stats_endpoint_"+rng], err = b.statsReads(ctx, rng, o.n); err != nil {
			return err
		}
	}
	out["stats_query_plans"], err = b.statsPlans(ctx)
	return err
}

// statsPlans runs EXPLAIN ANALYZE on the queries of the stats endpoint's
// 30 d and 24 h ranges (as the service sends them) and returns, per
// range, the rows its scans read and the buffers it touched: what the
// endpoint's cost follows.
func (b *apiBench) statsPlans(ctx context.Context) (map[string]any, error) {
	now := time.Now().UTC()
	out := map[string]any{}
	for _, rng := range []string{"30d", "24h"} {
		r := service.TeamStatsRanges[rng]
		last := now.Truncate(r.Step)
		first := last.Add(-(r.Span/r.Step - 1) * r.Step)
		var raw []byte
		if err := b.st.Pool().QueryRow(ctx, `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
			SELECT bucket, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max
			FROM team_stats_rollup WHERE team_id = $1 AND step_s = $2 AND bucket >= $3 AND bucket <= $4 ORDER BY bucket`,
			b.team.ID, int(r.Step/time.Second), first, last).Scan(&raw); err != nil {
			return nil, err
		}
		var plans []struct {
			Plan          map[string]any `json:"Plan"`
			ExecutionTime float64        `json:"Execution Time"`
		}
		if err := json.Unmarshal(raw, &plans); err != nil || len(plans) != 1 {
			return nil, fmt.Errorf("EXPLAIN of the %s range: %v", rng, err)
		}
		var rows, blocks float64
		var nodes []string
		var walk func(n map[string]any)
		walk = func(n map[string]any) {
			nodes = append(nodes, fmt.Sprint(n["Node Type"]))
			if strings.HasSuffix(fmt.Sprint(n["Node Type"]), "Scan") {
				rows += n["Actual Rows"].(float64)
			}
			for _, k := range []string{"Shared Hit Blocks", "Shared Read Blocks"} {
				if v, ok := n[k].(float64); ok && len(nodes) == 1 {
					blocks += v
				}
			}
			if subs, ok := n["Plans"].([]any); ok {
				for _, sub := range subs {
					walk(sub.(map[string]any))
				}
			}
		}
		walk(plans[0].Plan)
		out[rng] = map[string]any{"rows_read": int(rows), "blocks": int(blocks), "nodes": strings.Join(nodes, ">"),
			"execution_ms": bench.Round4(plans[0].ExecutionTime)}
	}
	return out, nil
}

// statsHistory stores days of 10 s team stats samples for teams teams (the
// bench's team and others) and their rollups' maxima, as the control plane's
// sampler writes them, and returns how many samples it stored.
func (b *apiBench) statsHistory(ctx context.Context, teams, days int) (int64, error) {
	pool := b.st.Pool()
	now := time.Now().UTC().Truncate(service.TeamStatsInterval)
	var rows int64
	for i := range teams {
		team := b.team.ID
		if i > 0 {
			team = pgtype.UUID{Valid: true}
			if _, err := rand.Read(team.Bytes[:]); err != nil {
				return rows, err
			}
		}
		tag, err := pool.Exec(ctx, `
			INSERT INTO team_stats (team_id, ts, running, paused, reserved_vcpus, reserved_memory_mb)
			SELECT $1, $2::timestamptz - make_interval(secs => g * 10), r, p, r * 2, r * 1024 + p * 256
			FROM (SELECT g, (random() * 8)::int AS r, (random() * 3)::int AS p FROM generate_series(0, $3::int - 1) AS g) AS x
			ON CONFLICT DO NOTHING`, team, now, days*24*360)
		if err != nil {
			return rows, err
		}
		rows += tag.RowsAffected()
		for _, width := range []time.Duration{5 * time.Minute, time.Hour} {
			if _, err := pool.Exec(ctx, `
				INSERT INTO team_stats_rollup (team_id, step_s, bucket, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max)
				SELECT team_id, $2::int, date_bin(make_interval(secs => $2::int), ts, timestamptz '1970-01-01 00:00:00+00'), max(running),
				       max(paused), max(reserved_vcpus), max(reserved_memory_mb)
				FROM team_stats WHERE team_id = $1 GROUP BY 1, 2, 3
				ON CONFLICT (team_id, step_s, bucket) DO NOTHING`, team, int(width/time.Second)); err != nil {
				return rows, err
			}
		}
	}
	// Vacuumed and analyzed as tables that lived 60 days would be:
	// autovacuum, woken by 26 M fresh rows, would otherwise work through
	// them during the timed reads.
	for _, stmt := range []string{"VACUUM (ANALYZE) team_stats", "VACUUM (ANALYZE) team_stats_rollup"} {
		if _, err := pool.Exec(ctx, stmt); err != nil {
			return rows, fmt.Errorf("%s: %w", stmt, err)
		}
	}
	return rows, nil
}

// statsReads times GET /v1/sandboxes/stats?range=rng.
func (b *apiBench) statsReads(ctx context.Context, rng string, n int) (bench.Timing, error) {
	want := int(service.TeamStatsRanges[rng].Span / service.TeamStatsRanges[rng].Step)
	samples := make([]time.Duration, 0, n)
	for i := range n + 10 {
		t0 := time.Now()
		resp, data, err := b.do(ctx, "GET", "/v1/sandboxes/stats?range="+rng, nil)
		d := time.Since(t0)
		if err != nil {
			return bench.Timing{}, err
		}
		var s struct {
			Peak struct {
				Running int `json:"running"`
			} `json:"peak"`
			Points []json.RawMessage `json:"points"`
		}
		if resp.StatusCode != 200 || json.Unmarshal(data, &s) != nil || len(s.Points) != want || s.Peak.Running == 0 {
			return bench.Timing{}, fmt.Errorf("GET stats?range=%s: %d: %.300s", rng, resp.StatusCode, data)
		}
		if i >= 10 { // warm-up
			samples = append(samples, d)
		}
	}
	return bench.Summarize(samples), nil
}

// storedHistories inserts n+1 paused sandboxes with every tier of a 24 h
// history stored (1200 + 240 + 288 points, as a pause stores them) and
// returns the wire ID of the last.
func (b *apiBench) storedHistories(ctx context.Context, n int) (string, error) {
	var last string
	q, pool := b.st.Queries(), b.st.Pool()
	err := func() error {
		for range n + 1 {
			row, err := q.InsertSandbox(ctx, db.InsertSandboxParams{TeamID: b.team.ID, Template: "minimal", State: store.SandboxPaused,
				VCPUs: 1, MemoryMB: 256, Metadata: json.RawMessage(`{}`), AllowInternetAccess: true})
			if err != nil {
				return err
			}
			if _, err := pool.Exec(ctx, `UPDATE sandboxes SET created_at = now() - interval '25 hours' WHERE id = $1`, row.ID); err != nil {
				return err
			}
			for _, t := range []struct {
				tier  string
				n     int
				stepS float64
			}{{service.MetricTier10m, 1200, 0.5}, {service.MetricTier2h, 240, 30}, {service.MetricTier24h, 288, 300}} {
				if _, err := pool.Exec(ctx, fmt.Sprintf(`
					INSERT INTO sandbox_metrics (sandbox_id, tier, ts, cpu_pct, mem_rss_bytes, mem_pss_bytes, disk_used_bytes,
					  guest_cpu_count, guest_cpu_pct, guest_mem_used_bytes, guest_mem_total_bytes, guest_mem_cache_bytes,
					  guest_disk_used_bytes, guest_disk_total_bytes)
					SELECT $1, $2, date_trunc('second', now()) - make_interval(secs => g * %g), random() * 100, 300 << 20, 250 << 20, 20 << 20,
					  1, random() * 100, 100 << 20, 230 << 20, 50 << 20, 30 << 20, 1 << 30
					FROM generate_series(1, %d) AS g
					ON CONFLICT DO NOTHING`, t.stepS, t.n), row.ID, t.tier); err != nil {
					return err
				}
			}
			last = service.ID(row.ID)
		}
		return nil
	}()
	if err == nil {
		_, err = b.st.Pool().Exec(ctx, `ANALYZE sandbox_metrics`)
	}
	return last, err
}

// metricsReads times GET /v1/sandboxes/{id}/metrics?range=24h.
func (b *apiBench) metricsReads(ctx context.Context, id string, n int) (bench.Timing, error) {
	samples := make([]time.Duration, 0, n)
	for i := range n + 10 {
		t0 := time.Now()
		resp, data, err := b.do(ctx, "GET", "/v1/sandboxes/"+id+"/metrics?range=24h", nil)
		d := time.Since(t0)
		if err != nil {
			return bench.Timing{}, err
		}
		var s struct {
			Points []json.RawMessage `json:"points"`
		}
		if resp.StatusCode != 200 || json.Unmarshal(data, &s) != nil || len(s.Points) == 0 {
			return bench.Timing{}, fmt.Errorf("GET metrics of %s: %d: %.300s", id, resp.StatusCode, data)
		}
		if i >= 10 { // warm-up
			samples = append(samples, d)
		}
	}
	return bench.Summarize(samples), nil
}
