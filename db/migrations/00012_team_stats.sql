-- Issue 12: team stats and usage.
--
-- team_stats: what each team's sandboxes hold, sampled every 10 s by the
-- control plane replica that leads the background loops (ts is the
-- sample's 10 s slot, so a sample taken twice in a slot is one row). A
-- team with no starting, running, pausing, resuming or paused sandbox
-- gets no row: an absent sample is zero. running and paused count
-- sandboxes in those states; reserved_vcpus is what starting, running,
-- pausing and resuming sandboxes were given (paused ones hold no vCPU);
-- reserved_memory_mb is their memory plus ⌈Σ paused memory / 2⌉ (the
-- seeds' formula). Kept 60 days. No foreign key: teams are soft-deleted,
-- and this table takes a row per team every 10 s.
--
-- team_stats_hourly: each hour's maximum of those figures, kept in step
-- by the sampler (so a 30-day range reads 720 rows, not 259 200).
--
-- team_usage_daily: per team and UTC day, CPU-minutes and memory-MiB-
-- minutes used (from the stored 5-minute metric points, sandbox_metrics
-- tier '24h') and vCPU-minutes and memory-MiB-minutes reserved (from
-- team_stats), rolled up once a day is over; usage_rollup_days records
-- which days are rolled up, so that a rollup that did not run for days
-- catches up on every one of them.
--
-- The initial schema's sandbox_metrics_snapshots (the seeds' name, never
-- used) gives way to team_stats.

-- +goose Up
DROP TABLE sandbox_metrics_snapshots;

CREATE TABLE team_stats (
  team_id            uuid        NOT NULL,
  ts                 timestamptz NOT NULL,
  running            integer     NOT NULL CHECK (running >= 0),
  paused             integer     NOT NULL CHECK (paused >= 0),
  reserved_vcpus     integer     NOT NULL CHECK (reserved_vcpus >= 0),
  reserved_memory_mb bigint      NOT NULL CHECK (reserved_memory_mb >= 0),
  PRIMARY KEY (team_id, ts)
);

CREATE TABLE team_stats_hourly (
  team_id                uuid        NOT NULL,
  hour                   timestamptz NOT NULL,
  running_max            integer     NOT NULL,
  paused_max             integer     NOT NULL,
  reserved_vcpus_max     integer     NOT NULL,
  reserved_memory_mb_max bigint      NOT NULL,
  PRIMARY KEY (team_id, hour)
);

CREATE TABLE team_usage_daily (
  team_id                     uuid             NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
  day                         date             NOT NULL,
  cpu_used_minutes            double precision NOT NULL,
  memory_used_mib_minutes     double precision NOT NULL,
  vcpu_reserved_minutes       double precision NOT NULL,
  memory_reserved_mib_minutes double precision NOT NULL,
  PRIMARY KEY (team_id, day)
);

CREATE TABLE usage_rollup_days (
  day       date        PRIMARY KEY,
  rolled_at timestamptz NOT NULL
);

-- +goose Down
DROP TABLE IF EXISTS usage_rollup_days;
DROP TABLE IF EXISTS team_usage_daily;
DROP TABLE IF EXISTS team_stats_hourly;
DROP TABLE IF EXISTS team_stats;
CREATE TABLE sandbox_metrics_snapshots (
  team_id            uuid        NOT NULL REFERENCES teams (id),
  ts                 timestamptz NOT NULL,
  running_count      integer     NOT NULL DEFAULT 0,
  paused_count       integer     NOT NULL DEFAULT 0,
  vcpus_reserved     integer     NOT NULL DEFAULT 0,
  memory_mb_reserved bigint      NOT NULL DEFAULT 0,
  PRIMARY KEY (team_id, ts)
);
CREATE INDEX sandbox_metrics_snapshots_ts_idx ON sandbox_metrics_snapshots (ts);
