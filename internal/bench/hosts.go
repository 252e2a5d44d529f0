package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/jackc/pgx/v5/pgtype"
)

// Fleet is the database content of the hosts benchmark: many hosts and the
// sandboxes recorded on them.
type Fleet struct {
	// Hosts are platform hosts: every 50th is draining, every 33rd
	// unreachable (a heartbeat 10 minutes old), the others online with a
	// fresh heartbeat; 16, 32 or 64 CPUs with 64, 128 or 256 GiB; 1 or 2
	// TiB of disk; a "zone" label.
	Hosts int
	// Live sandboxes are spread over the hosts (a stride that visits them
	// all): 85% running, 10% paused, 2% starting, 1% each pausing,
	// resuming and error; 1–4 vCPUs, 512–4096 MiB, 1–10 GiB of disk.
	Live int
	// Stopped sandboxes are history on the same hosts (they reserve
	// nothing; the table's bulk).
	Stopped int
	// Teams own the sandboxes; Templates are platform snapshot templates,
	// each host holding one in ten of them (host_templates).
	Teams, Templates int
}

// DefaultFleet is the scale: 1,000 hosts, 20,000 live sandboxes
// and 80,000 stopped ones (100,000 rows).
var DefaultFleet = Fleet{Hosts: 1000, Live: 20000, Stopped: 80000, Teams: 200, Templates: 50}

// SeedFleet writes f into an empty Capsule database (migrated), then
// vacuums and analyzes it as autovacuum would have.
func SeedFleet(ctx context.Context, st *store.Store, f Fleet) error {
	if f.Hosts < 1 || f.Teams < 1 || f.Templates < 1 || f.Live < 0 || f.Stopped < 0 {
		return errors.New("bench hosts: the fleet needs hosts, teams and templates")
	}
	pool := st.Pool()
	stmts := []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO teams (name) SELECT 'bench-team-' || i FROM generate_series(1, $1) i`, []any{f.Teams}},
		{`INSERT INTO hosts (name, address, status, version, arch, total_vcpus, total_memory_mb, total_disk_mb,
		                     labels, last_heartbeat_at)
		  SELECT format('host-%s', lpad(i::text, 5, '0')), format('10.%s.%s.1:7000', i / 250, i % 250),
		         CASE WHEN i % 50 = 0 THEN 'draining' WHEN i % 33 = 0 THEN 'unreachable' ELSE 'online' END,
		         'bench', 'amd64', (ARRAY[16, 32, 64])[1 + i % 3], (ARRAY[65536, 131072, 262144])[1 + i % 3],
		         1048576 * (1 + i % 2), jsonb_build_object('zone', 'z' || (i % 4)),
		         CASE WHEN i % 33 = 0 THEN now() - interval '10 minutes' ELSE now() END
		  FROM generate_series(1, $1) i`, []any{f.Hosts}},
		{`INSERT INTO templates (team_id, name, kind, vcpus, memory_mb, size_bytes)
		  SELECT $2, 'bench-tpl-' || i, 'snapshot', 1, 512, 1 << 30 FROM generate_series(1, $1) i`,
			[]any{f.Templates, store.PlatformTeamID}},
		{`INSERT INTO host_templates (host_id, template_id, size_bytes, last_used_at)
		  SELECT h.id, t.id, t.size_bytes, now() - make_interval(secs => (h.n * 7 + t.n) % 86400)
		  FROM (SELECT id, row_number() OVER (ORDER BY name) AS n FROM hosts) h
		  JOIN (SELECT id, size_bytes, row_number() OVER (ORDER BY name) AS n FROM templates WHERE name LIKE 'bench-tpl-%') t
		    ON (h.n + t.n) % 10 = 0`, nil},
		{seedSandboxes, []any{f.Live, 0, false}},
		{seedSandboxes, []any{f.Stopped, f.Live, true}},
		// Two passes, as autovacuum would have made by then: measured here,
		// the first pass after the bulk insert leaves the visibility map
		// empty (relallvisible 0), the second sets it, which lets the
		// candidates query scan its index only.
		{`VACUUM ANALYZE`, nil},
		{`VACUUM`, nil},
		// The online hosts beat (seeding outlasts a heartbeat's freshness on
		// a busy machine).
		{`UPDATE hosts SET last_heartbeat_at = now() WHERE status = 'online'`, nil},
	}
	for _, s := range stmts {
		if _, err := pool.Exec(ctx, s.sql, s.args...); err != nil {
			return fmt.Errorf("bench hosts: seed: %w", err)
		}
	}
	return nil
}

// seedSandboxes inserts $1 sandboxes numbered from $2 (stopped when $3),
// sandbox i on host (i × 7919) mod hosts — a prime stride, so hosts get
// the same share — for team i mod teams.
const seedSandboxes = `
WITH h AS (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n, count(*) OVER () AS c FROM hosts),
     t AS (SELECT id, row_number() OVER (ORDER BY name) - 1 AS n, count(*) OVER () AS c FROM teams
           WHERE name LIKE 'bench-team-%')
INSERT INTO sandboxes (team_id, host_id, template, state, vcpus, memory_mb, disk_mb, started_at, stopped_at)
SELECT t.id, h.id, 'bench-tpl-' || (1 + i % 50),
       CASE WHEN $3::boolean THEN 'stopped'
            ELSE CASE (i % 100) WHEN 0 THEN 'starting' WHEN 1 THEN 'starting' WHEN 2 THEN 'pausing'
                                WHEN 3 THEN 'resuming' WHEN 4 THEN 'error'
                                WHEN 5 THEN 'paused' WHEN 6 THEN 'paused' WHEN 7 THEN 'paused' WHEN 8 THEN 'paused'
                                WHEN 9 THEN 'paused' WHEN 10 THEN 'paused' WHEN 11 THEN 'paused' WHEN 12 THEN 'paused'
                                WHEN 13 THEN 'paused' WHEN 14 THEN 'paused' ELSE 'running' END END,
       1 + i % 4, 512 * (1 + i % 8), 1024 * (1 + i % 10), now(),
       CASE WHEN $3::boolean THEN now() END
FROM generate_series($2::integer, $2::integer + $1::integer - 1) i
JOIN h ON h.n = (i::bigint * 7919) % h.c
JOIN t ON t.n = i % t.c`

// HostsOptions configures the hosts benchmark.
type HostsOptions struct {
	Fleet Fleet
	// N is the number of scheduling decisions measured.
	N int
	// Request is the sandbox each decision places (default 2 vCPUs,
	// 2048 MiB, 5120 MiB of disk).
	Request scheduler.Resources
}

// Hosts measures the scheduling decision over st (an empty, migrated
// Capsule database, which it fills with o.Fleet): the candidates query
// (one round trip) and scheduler.Choose (service.Decide, as a create makes
// it), for a regular team asking for
// one of the fleet's templates. It prints nothing; the figures of the
// 3-host cluster (create ratio, kill → unreachable, replication) are not
// measured here.
func Hosts(ctx context.Context, st *store.Store, o HostsOptions) (map[string]any, error) {
	if o.N < 1 {
		return nil, errors.New("bench hosts: N must be positive")
	}
	if o.Request == (scheduler.Resources{}) {
		o.Request = scheduler.Resources{VCPUs: 2, MemoryMB: 2048, DiskMB: 5120}
	}
	if err := SeedFleet(ctx, st, o.Fleet); err != nil {
		return nil, err
	}
	rows, err := st.Pool().Query(ctx, `SELECT id FROM templates WHERE name LIKE 'bench-tpl-%' ORDER BY name`)
	if err != nil {
		return nil, fmt.Errorf("bench hosts: %w", err)
	}
	var tpls []pgtype.UUID
	for rows.Next() {
		var id pgtype.UUID
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		tpls = append(tpls, id)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// The online hosts keep beating while decisions are measured (every
	// host every 15 s in a real fleet; here all of them every 5 s).
	beatCtx, stopBeats := context.WithCancel(ctx)
	beats := make(chan error, 1)
	go func() { beats <- heartbeat(beatCtx, st, 5*time.Second) }()
	defer func() { stopBeats(); <-beats }()
	s := scheduler.New(scheduler.Config{})
	samples := make([]time.Duration, 0, o.N)
	affinity := 0
	for i := range o.N {
		tpl := tpls[i%len(tpls)]
		req := scheduler.Request{Team: [16]byte{15: 1}, Resources: o.Request, Template: tpl.Bytes, HasTemplate: true}
		start := time.Now()
		choice, _, err := service.Decide(ctx, st.Queries(), s, req, time.Now(), nil)
		samples = append(samples, time.Since(start))
		if err != nil {
			return nil, fmt.Errorf("bench hosts: decision %d: %w", i, err)
		}
		if choice.Affinity {
			affinity++
		}
	}
	return map[string]any{
		"scheduling_decision": Summarize(samples),
		"hosts":               o.Fleet.Hosts,
		"sandboxes":           o.Fleet.Live + o.Fleet.Stopped,
		"live_sandboxes":      o.Fleet.Live,
		"affinity_ratio":      Round3(float64(affinity) / float64(o.N)),
	}, nil
}

// heartbeat refreshes the online hosts' heartbeats every interval until
// ctx ends.
func heartbeat(ctx context.Context, st *store.Store, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := st.Pool().Exec(ctx, `UPDATE hosts SET last_heartbeat_at = now() WHERE status = 'online'`); err != nil && ctx.Err() == nil {
				return err
			}
		}
	}
}
