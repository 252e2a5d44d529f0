-- Issue 12, a clean-up: the 5-minute and hourly maxima of team_stats
-- (team_stats_5m, 00017, and team_stats_hourly, 00012) were two tables of
-- one shape written and read by near-copy queries. They become one,
-- keyed by the bucket's width: team_stats_rollup (step_s 300 and 3600),
-- kept in step by the 10 s sampler and pruned with the samples (60 days).
-- A range of GET /v1/sandboxes/stats is still one index range scan of
-- (team_id, step_s, bucket).

-- +goose Up
CREATE TABLE team_stats_rollup (
  team_id                uuid        NOT NULL,
  step_s                 integer     NOT NULL CHECK (step_s > 0),
  bucket                 timestamptz NOT NULL,
  running_max            integer     NOT NULL,
  paused_max             integer     NOT NULL,
  reserved_vcpus_max     integer     NOT NULL,
  reserved_memory_mb_max bigint      NOT NULL,
  PRIMARY KEY (team_id, step_s, bucket)
);

INSERT INTO team_stats_rollup (team_id, step_s, bucket, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max)
SELECT team_id, 300, bucket, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max FROM team_stats_5m;
INSERT INTO team_stats_rollup (team_id, step_s, bucket, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max)
SELECT team_id, 3600, hour, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max FROM team_stats_hourly;

DROP TABLE team_stats_5m;
DROP TABLE team_stats_hourly;

-- +goose Down
CREATE TABLE team_stats_hourly (
  team_id                uuid        NOT NULL,
  hour                   timestamptz NOT NULL,
  running_max            integer     NOT NULL,
  paused_max             integer     NOT NULL,
  reserved_vcpus_max     integer     NOT NULL,
  reserved_memory_mb_max bigint      NOT NULL,
  PRIMARY KEY (team_id, hour)
);
CREATE TABLE team_stats_5m (
  team_id                uuid        NOT NULL,
  bucket                 timestamptz NOT NULL,
  running_max            integer     NOT NULL,
  paused_max             integer     NOT NULL,
  reserved_vcpus_max     integer     NOT NULL,
  reserved_memory_mb_max bigint      NOT NULL,
  PRIMARY KEY (team_id, bucket)
);
INSERT INTO team_stats_hourly
SELECT team_id, bucket, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max
FROM team_stats_rollup WHERE step_s = 3600;
INSERT INTO team_stats_5m
SELECT team_id, bucket, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max
FROM team_stats_rollup WHERE step_s = 300;
DROP TABLE team_stats_rollup;
