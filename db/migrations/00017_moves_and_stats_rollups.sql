-- Issue 11.6 and issue 12.3.
--
-- sandbox_moves: a paused sandbox being moved off a draining host when it
-- is resumed (service/move.go). The row is written, in the transaction
-- that marks the sandbox resuming, before anything is made on either
-- host, and deleted once the move is finished or rolled back; a control
-- plane that restarts finds the moves it left half done here and
-- finishes them (the sandbox runs on to_host: the old host's copy goes)
-- or rolls them back (the sandbox stays paused on from_host, what was
-- made on to_host goes). template is the name of the move's snapshot of
-- the sandbox on both hosts (never a template record's: the agents'
-- hidden templates are not reconciled away).
--
-- team_stats_5m: each 5-minute bucket's maxima of team_stats, kept in
-- step by the sampler like team_stats_hourly, so that the 24 h range of
-- GET /v1/sandboxes/stats reads 288 rows, not 8 640. Pruned with the
-- samples (60 days).

-- +goose Up
CREATE TABLE sandbox_moves (
  sandbox_id uuid        PRIMARY KEY REFERENCES sandboxes (id) ON DELETE CASCADE,
  from_host  uuid        NOT NULL,
  to_host    uuid        NOT NULL,
  template   text        NOT NULL,
  started_at timestamptz NOT NULL DEFAULT now()
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

-- The samples already stored get their buckets.
INSERT INTO team_stats_5m (team_id, bucket, running_max, paused_max, reserved_vcpus_max, reserved_memory_mb_max)
SELECT team_id, date_bin('5 minutes', ts, timestamptz '1970-01-01 00:00:00+00'), max(running), max(paused),
       max(reserved_vcpus), max(reserved_memory_mb)
FROM team_stats
WHERE ts >= now() - interval '60 days'
GROUP BY 1, 2;

-- +goose Down
DROP TABLE IF EXISTS team_stats_5m;
DROP TABLE IF EXISTS sandbox_moves;
