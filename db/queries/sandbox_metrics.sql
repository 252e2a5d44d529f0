-- name: UpsertSandboxMetrics :exec
-- Stores points of one tier of a sandbox (arrays of equal length, one
-- element per point); a point already stored at the same time is replaced
-- (the newest point of a coarse tier is its open bucket, whose mean moves
-- until it closes). has_guest false: the guest_ columns stay NULL.
INSERT INTO sandbox_metrics (
  sandbox_id, tier, ts, cpu_pct, mem_rss_bytes, mem_pss_bytes, disk_used_bytes,
  guest_cpu_count, guest_cpu_pct, guest_mem_used_bytes, guest_mem_total_bytes,
  guest_mem_cache_bytes, guest_disk_used_bytes, guest_disk_total_bytes
)
SELECT @sandbox_id::uuid, @tier::text, p.ts, p.cpu, p.rss, p.pss, p.disk,
       CASE WHEN p.hg THEN p.gcount END, CASE WHEN p.hg THEN p.gcpu END,
       CASE WHEN p.hg THEN p.gused END, CASE WHEN p.hg THEN p.gtotal END,
       CASE WHEN p.hg THEN p.gcache END, CASE WHEN p.hg THEN p.gdu END,
       CASE WHEN p.hg THEN p.gdt END
FROM (
  -- Set-returning functions in one select list run in lockstep.
  SELECT unnest(@ts::timestamptz[]) AS ts, unnest(@cpu_pct::float8[]) AS cpu,
         unnest(@mem_rss::bigint[]) AS rss, unnest(@mem_pss::bigint[]) AS pss,
         unnest(@disk_used::bigint[]) AS disk, unnest(@has_guest::boolean[]) AS hg,
         unnest(@guest_cpu_count::integer[]) AS gcount, unnest(@guest_cpu_pct::float8[]) AS gcpu,
         unnest(@guest_mem_used::bigint[]) AS gused, unnest(@guest_mem_total::bigint[]) AS gtotal,
         unnest(@guest_mem_cache::bigint[]) AS gcache, unnest(@guest_disk_used::bigint[]) AS gdu,
         unnest(@guest_disk_total::bigint[]) AS gdt
) AS p
ON CONFLICT (sandbox_id, tier, ts) DO UPDATE SET
  cpu_pct = EXCLUDED.cpu_pct, mem_rss_bytes = EXCLUDED.mem_rss_bytes, mem_pss_bytes = EXCLUDED.mem_pss_bytes,
  disk_used_bytes = EXCLUDED.disk_used_bytes, guest_cpu_count = EXCLUDED.guest_cpu_count,
  guest_cpu_pct = EXCLUDED.guest_cpu_pct, guest_mem_used_bytes = EXCLUDED.guest_mem_used_bytes,
  guest_mem_total_bytes = EXCLUDED.guest_mem_total_bytes, guest_mem_cache_bytes = EXCLUDED.guest_mem_cache_bytes,
  guest_disk_used_bytes = EXCLUDED.guest_disk_used_bytes, guest_disk_total_bytes = EXCLUDED.guest_disk_total_bytes;

-- name: ListSandboxMetrics :many
-- The points of one tier of a sandbox within [from_ts, to_ts], oldest
-- first: one range scan of the primary key.
SELECT * FROM sandbox_metrics
WHERE sandbox_id = @sandbox_id AND tier = @tier AND ts >= @from_ts AND ts <= @to_ts
ORDER BY ts;

-- name: DeleteSandboxMetricsExcept :exec
-- Drops a sandbox's tiers other than keep_tier (a destroyed sandbox keeps
-- its 24 h tier only).
DELETE FROM sandbox_metrics WHERE sandbox_id = @sandbox_id AND tier <> @keep_tier;

-- name: PruneSandboxMetrics :execrows
-- Retention: drops every point older than before.
DELETE FROM sandbox_metrics WHERE ts < @before;

-- name: CountSandboxesByTeamState :many
-- Sandboxes by team and state, stopped ones left out (Prometheus, at
-- scrape time).
SELECT team_id, state, count(*)::bigint AS n
FROM sandboxes WHERE state <> 'stopped'
GROUP BY team_id, state
ORDER BY team_id, state;
