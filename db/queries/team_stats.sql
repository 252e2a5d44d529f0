-- Team stats and usage (issue 12; the tables: 00012_team_stats.sql).
-- Starting, running, pausing and resuming sandboxes reserve their vCPUs
-- and memory; paused ones no vCPU and ceil(sum of the team paused memory / 2)
-- (the seeds formula).

-- name: LiveTeamStats :many
-- What every team sandboxes hold now (teams holding nothing left out).
SELECT team_id,
       count(*) FILTER (WHERE state = 'running')::integer AS running,
       count(*) FILTER (WHERE state = 'paused')::integer AS paused,
       coalesce(sum(vcpus) FILTER (WHERE state <> 'paused'), 0)::integer AS reserved_vcpus,
       (coalesce(sum(memory_mb) FILTER (WHERE state <> 'paused'), 0)
        + ceil(coalesce(sum(memory_mb) FILTER (WHERE state = 'paused'), 0) / 2.0))::bigint AS reserved_memory_mb
FROM sandboxes
WHERE state IN ('starting', 'running', 'pausing', 'resuming', 'paused')
GROUP BY team_id
ORDER BY team_id;

-- name: LiveTeamStatsOf :one
-- What one team sandboxes hold now (zeros when nothing).
SELECT count(*) FILTER (WHERE state = 'running')::integer AS running,
       count(*) FILTER (WHERE state = 'paused')::integer AS paused,
       coalesce(sum(vcpus) FILTER (WHERE state <> 'paused'), 0)::integer AS reserved_vcpus,
       (coalesce(sum(memory_mb) FILTER (WHERE state <> 'paused'), 0)
        + ceil(coalesce(sum(memory_mb) FILTER (WHERE state = 'paused'), 0) / 2.0))::bigint AS reserved_memory_mb
FROM sandboxes
WHERE team_id = @team_id AND state IN ('starting', 'running', 'pausing', 'resuming', 'paused');

-- name: InsertTeamStats :exec
-- One sample of several teams at ts (arrays of equal length); a sample
-- taken again in the same slot replaces it.
INSERT INTO team_stats (team_id, ts, running, paused, reserved_vcpus, reserved_memory_mb)
SELECT t.team_id, @ts::timestamptz, t.running, t.paused, t.vcpus, t.mem
FROM (
  SELECT unnest(@team_ids::uuid[]) AS team_id, unnest(@running::integer[]) AS running,
         unnest(@paused::integer[]) AS paused, unnest(@vcpus::integer[]) AS vcpus,
         unnest(@memory_mb::bigint[]) AS mem
) AS t
ON CONFLICT (team_id, ts) DO UPDATE SET
  running = EXCLUDED.running, paused = EXCLUDED.paused,
  reserved_vcpus = EXCLUDED.reserved_vcpus, reserved_memory_mb = EXCLUDED.reserved_memory_mb;

-- name: UpsertTeamStatsRollup :exec
-- Raises the maxima of the buckets of a sample (same arrays) in every
-- rollup: each step_s (a width in seconds) with the bucket of the sample
-- in that width (step_s and bucket arrays of equal length).
INSERT INTO team_stats_rollup (team_id, step_s, bucket, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max)
SELECT t.team_id, r.step_s, r.bucket, t.running, t.paused, t.vcpus, t.mem
FROM (
  SELECT unnest(@team_ids::uuid[]) AS team_id, unnest(@running::integer[]) AS running,
         unnest(@paused::integer[]) AS paused, unnest(@vcpus::integer[]) AS vcpus,
         unnest(@memory_mb::bigint[]) AS mem
) AS t
CROSS JOIN (
  SELECT unnest(@step_s::integer[]) AS step_s, unnest(@buckets::timestamptz[]) AS bucket
) AS r
ON CONFLICT (team_id, step_s, bucket) DO UPDATE SET
  running_max = greatest(team_stats_rollup.running_max, EXCLUDED.running_max),
  paused_max = greatest(team_stats_rollup.paused_max, EXCLUDED.paused_max),
  reserved_vcpus_max = greatest(team_stats_rollup.reserved_vcpus_max, EXCLUDED.reserved_vcpus_max),
  reserved_memory_mb_max = greatest(team_stats_rollup.reserved_memory_mb_max, EXCLUDED.reserved_memory_mb_max);

-- name: TeamStatsSeries :many
-- A team samples in buckets of step from first to last (the buckets
-- starts), each bucket maximum (0 without a sample): one range scan of the
-- primary key per bucket.
SELECT g.ts::timestamptz AS ts,
       coalesce(max(s.running), 0)::integer AS running,
       coalesce(max(s.paused), 0)::integer AS paused,
       coalesce(max(s.reserved_vcpus), 0)::integer AS reserved_vcpus,
       coalesce(max(s.reserved_memory_mb), 0)::bigint AS reserved_memory_mb
FROM generate_series(@first::timestamptz, @last::timestamptz, @step::interval) AS g(ts)
LEFT JOIN team_stats s ON s.team_id = @team_id AND s.ts >= g.ts AND s.ts < g.ts + @step::interval
GROUP BY g.ts
ORDER BY g.ts;

-- name: TeamStatsRollupRange :many
-- A team maxima of the buckets of width step_s from first to last (an
-- index range scan: the buckets without a sample have no row, and are
-- zeros).
SELECT bucket AS ts, running_max AS running, paused_max AS paused,
       reserved_vcpus_max AS reserved_vcpus, reserved_memory_mb_max AS reserved_memory_mb
FROM team_stats_rollup
WHERE team_id = @team_id AND step_s = @step_s AND bucket >= @first AND bucket <= @last
ORDER BY bucket;

-- name: PruneTeamStats :one
-- Retention: the samples and the rollups' maxima older than before.
WITH raw AS (DELETE FROM team_stats WHERE ts < @before RETURNING 1),
     rollup AS (DELETE FROM team_stats_rollup WHERE bucket < @before RETURNING 1)
SELECT ((SELECT count(*) FROM raw) + (SELECT count(*) FROM rollup))::bigint AS deleted;

-- name: UsedByTeamDay :many
-- A team use per UTC day within [start_ts, end_ts), from the stored
-- 5-minute points (tier 24h) of its sandboxes that lived then, except
-- those in skip: CPU-minutes (the VMM CPU) and memory-MiB-minutes (PSS,
-- RSS where PSS was not read), each point worth point_minutes.
WITH p AS (SELECT @team_id::uuid AS team_id, @start_ts::timestamptz AS start_ts, @end_ts::timestamptz AS end_ts,
                  @point_minutes::float8 AS point_minutes, @skip::uuid[] AS skip)
SELECT (m.ts AT TIME ZONE 'UTC')::date AS day,
       (coalesce(sum(m.cpu_pct), 0) / 100.0 * min(p.point_minutes))::float8 AS cpu_minutes,
       (coalesce(sum(CASE WHEN m.mem_pss_bytes > 0 THEN m.mem_pss_bytes ELSE m.mem_rss_bytes END), 0)
        / 1048576.0 * min(p.point_minutes))::float8 AS memory_mib_minutes
FROM p
JOIN sandboxes s ON s.team_id = p.team_id AND s.created_at < p.end_ts
  AND (s.stopped_at IS NULL OR s.stopped_at >= p.start_ts) AND NOT (s.id = ANY(p.skip))
JOIN sandbox_metrics m ON m.sandbox_id = s.id AND m.tier = '24h' AND m.ts >= p.start_ts AND m.ts < p.end_ts
GROUP BY 1
ORDER BY 1;

-- name: ReservedByTeamDay :many
-- A team reservations per UTC day within [start_ts, end_ts), from its
-- samples, each worth sample_minutes.
SELECT (ts AT TIME ZONE 'UTC')::date AS day,
       (sum(reserved_vcpus) * @sample_minutes::float8)::float8 AS vcpu_minutes,
       (sum(reserved_memory_mb) * @sample_minutes::float8)::float8 AS memory_mib_minutes
FROM team_stats
WHERE team_id = @team_id AND ts >= @start_ts AND ts < @end_ts
GROUP BY 1
ORDER BY 1;

-- name: DaysToRollUp :many
-- The days from first to last not rolled up yet, oldest first.
SELECT d::date AS day
FROM generate_series(@first::date, @last::date, interval '1 day') AS d
WHERE NOT EXISTS (SELECT 1 FROM usage_rollup_days r WHERE r.day = d::date)
ORDER BY 1;

-- name: RollUpUsageDay :execrows
-- Rolls the UTC day [start_ts, end_ts) up for every team: use from the
-- stored 5-minute points (as UsedByTeamDay), reservations from the
-- samples (as ReservedByTeamDay). Replaces the days rows.
WITH p AS (SELECT @start_ts::timestamptz AS start_ts, @end_ts::timestamptz AS end_ts,
                  @point_minutes::float8 AS point_minutes, @sample_minutes::float8 AS sample_minutes),
u AS (
  SELECT s.team_id,
         m.cpu_pct / 100.0 * p.point_minutes AS cpu,
         (CASE WHEN m.mem_pss_bytes > 0 THEN m.mem_pss_bytes ELSE m.mem_rss_bytes END) / 1048576.0 * p.point_minutes AS mem,
         0::float8 AS vcpu_r, 0::float8 AS mem_r
  FROM p
  JOIN sandboxes s ON s.created_at < p.end_ts AND (s.stopped_at IS NULL OR s.stopped_at >= p.start_ts)
  JOIN sandbox_metrics m ON m.sandbox_id = s.id AND m.tier = '24h' AND m.ts >= p.start_ts AND m.ts < p.end_ts
  UNION ALL
  SELECT t.team_id, 0, 0, t.reserved_vcpus * p.sample_minutes, t.reserved_memory_mb * p.sample_minutes
  FROM p JOIN team_stats t ON t.ts >= p.start_ts AND t.ts < p.end_ts
)
INSERT INTO team_usage_daily (team_id, day, cpu_used_minutes, memory_used_mib_minutes,
                              vcpu_reserved_minutes, memory_reserved_mib_minutes)
SELECT u.team_id, @day::date, sum(u.cpu), sum(u.mem), sum(u.vcpu_r), sum(u.mem_r)
FROM u JOIN teams ON teams.id = u.team_id
GROUP BY u.team_id
ON CONFLICT (team_id, day) DO UPDATE SET
  cpu_used_minutes = EXCLUDED.cpu_used_minutes, memory_used_mib_minutes = EXCLUDED.memory_used_mib_minutes,
  vcpu_reserved_minutes = EXCLUDED.vcpu_reserved_minutes, memory_reserved_mib_minutes = EXCLUDED.memory_reserved_mib_minutes;

-- name: MarkUsageDayRolledUp :exec
INSERT INTO usage_rollup_days (day, rolled_at) VALUES (@day, @rolled_at)
ON CONFLICT (day) DO UPDATE SET rolled_at = EXCLUDED.rolled_at;

-- name: TeamUsageDays :many
-- A team rolled-up days within [first, last].
SELECT d.day, (r.day IS NOT NULL)::boolean AS rolled_up,
       coalesce(u.cpu_used_minutes, 0)::float8 AS cpu_used_minutes,
       coalesce(u.memory_used_mib_minutes, 0)::float8 AS memory_used_mib_minutes,
       coalesce(u.vcpu_reserved_minutes, 0)::float8 AS vcpu_reserved_minutes,
       coalesce(u.memory_reserved_mib_minutes, 0)::float8 AS memory_reserved_mib_minutes
FROM (SELECT g::date AS day FROM generate_series(@first::date, @last::date, interval '1 day') AS g) AS d
LEFT JOIN usage_rollup_days r ON r.day = d.day
LEFT JOIN team_usage_daily u ON u.team_id = @team_id AND u.day = d.day
ORDER BY d.day;

-- name: PruneUsage :one
-- Retention of the rollups: days before before_day.
WITH usage AS (DELETE FROM team_usage_daily WHERE team_usage_daily.day < @before_day::date RETURNING 1),
     marks AS (DELETE FROM usage_rollup_days WHERE usage_rollup_days.day < @before_day::date RETURNING 1)
SELECT ((SELECT count(*) FROM usage) + (SELECT count(*) FROM marks))::bigint AS deleted;

-- name: RunningSandboxesOfTeam :many
-- A team running sandboxes (live usage reads their newest points from
-- their hosts).
SELECT * FROM sandboxes WHERE team_id = @team_id AND state = 'running' ORDER BY id;

-- name: RunningSandboxes :many
-- Every running sandbox with a host (the metrics checkpoint).
SELECT * FROM sandboxes WHERE state = 'running' AND host_id IS NOT NULL ORDER BY id;

-- name: LatestSandboxMetricTs :one
-- The time of the newest stored point of a sandbox tier (no rows: none).
SELECT ts FROM sandbox_metrics WHERE sandbox_id = @sandbox_id AND tier = @tier ORDER BY ts DESC LIMIT 1;
