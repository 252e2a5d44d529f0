-- Issue 12: a sandbox's metrics history (the initial schema's
-- sandbox_metrics, completed), kept when the host lets it go.
--
-- The host agent samples every running sandbox every 0.5 s into three
-- tiers ('10m': raw, 10 min at 0.5 s; '2h': 30 s averages; '24h': 5 min
-- averages).
-- The control plane stores them when the host's copy would be lost or
-- unreachable: on pause every tier (a paused sandbox's series is served
-- from here), on destroy the 24 h tier (finer tiers of the sandbox are
-- dropped then). A range read is one index range scan of the primary key
-- (sandbox_id, tier, ts). No index on ts alone: the planner would take it
-- for range reads over a long history (measured: 392 rows read for 72 in
-- the test of a 6 h read), and the hourly retention prune can scan.
-- Memory and disk are bytes; cpu_pct is the VMM's CPU in percent of one
-- core; the guest_ columns are envd's figures, NULL when it did not answer.

-- +goose Up
-- The initial schema's table had one memory column and no guest figures.
ALTER TABLE sandbox_metrics RENAME COLUMN mem_bytes TO mem_rss_bytes;
ALTER TABLE sandbox_metrics RENAME COLUMN disk_bytes TO disk_used_bytes;
ALTER TABLE sandbox_metrics
  ADD COLUMN mem_pss_bytes          bigint NOT NULL DEFAULT 0,
  ADD COLUMN guest_cpu_count        integer,
  ADD COLUMN guest_cpu_pct          double precision,
  ADD COLUMN guest_mem_used_bytes   bigint,
  ADD COLUMN guest_mem_total_bytes  bigint,
  ADD COLUMN guest_mem_cache_bytes  bigint,
  ADD COLUMN guest_disk_used_bytes  bigint,
  ADD COLUMN guest_disk_total_bytes bigint;

-- +goose Down
ALTER TABLE sandbox_metrics
  DROP COLUMN IF EXISTS guest_disk_total_bytes,
  DROP COLUMN IF EXISTS guest_disk_used_bytes,
  DROP COLUMN IF EXISTS guest_mem_cache_bytes,
  DROP COLUMN IF EXISTS guest_mem_total_bytes,
  DROP COLUMN IF EXISTS guest_mem_used_bytes,
  DROP COLUMN IF EXISTS guest_cpu_pct,
  DROP COLUMN IF EXISTS guest_cpu_count,
  DROP COLUMN IF EXISTS mem_pss_bytes;
ALTER TABLE sandbox_metrics RENAME COLUMN disk_used_bytes TO disk_bytes;
ALTER TABLE sandbox_metrics RENAME COLUMN mem_rss_bytes TO mem_bytes;
