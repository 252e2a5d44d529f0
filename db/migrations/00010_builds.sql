-- Issue 13: template builds on a durable queue.
--
--   * builds: one row per build of a template from a recipe (internal/recipe),
--     for a team (PlatformTeamID: a platform admin's build of a public
--     template). Status pending → running → success | failed | cancelled.
--     The queue is River's (river_job, created by River's own migrations,
--     which run after these: db/migrations.Up); job_id is the job that
--     owns the build now. A worker claims a pending build for its job,
--     and beats heartbeat_at while it runs: a build whose heartbeat stops
--     (its worker or control plane died) is retried with a new job, or
--     failed after max_attempts, by the sweeper (internal/builds), so no
--     build stays running for ever. cancel_requested is how a cancel
--     reaches the worker, on whichever replica it runs.
--   * build_steps: the recipe's steps with their progress and result.
--   * build_logs: every output line of a build, numbered 1, 2, … per build
--     without gaps (builds.log_count is the counter), so a client reads
--     them by offset (E2B's logsOffset) and a live stream resumes where
--     it was.
--   * build_archives, build_archive_chunks: the uploaded archives, checked
--     and rewritten (internal/archive) as a gzip-compressed tar, stored in
--     1 MiB chunks. PostgreSQL is the store every replica shares: an
--     archive uploaded to one replica is built by a worker of any other.
--   * template_builds (the seeds' shape, never used) is dropped.

-- +goose Up
DROP TABLE template_builds;

CREATE TABLE build_archives (
  id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  team_id     uuid        NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
  -- sha256 of the stored (normalized, compressed) bytes.
  sha256      bytea       NOT NULL CHECK (length(sha256) = 32),
  size_bytes  bigint      NOT NULL CHECK (size_bytes >= 0),
  -- Uncompressed content, as counted by internal/archive.
  content_bytes bigint    NOT NULL DEFAULT 0 CHECK (content_bytes >= 0),
  -- E2B's files hash of a COPY (GET /templates/{id}/files/{hash}).
  files_hash  text        CHECK (files_hash ~ '^[0-9a-f]{64}$'),
  created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX build_archives_team_hash_idx ON build_archives (team_id, files_hash) WHERE files_hash IS NOT NULL;

CREATE TABLE build_archive_chunks (
  archive_id uuid    NOT NULL REFERENCES build_archives (id) ON DELETE CASCADE,
  seq        integer NOT NULL CHECK (seq >= 0),
  data       bytea   NOT NULL,
  PRIMARY KEY (archive_id, seq)
);

CREATE TABLE builds (
  id               uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  team_id          uuid        NOT NULL REFERENCES teams (id),
  template_name    text        NOT NULL CHECK (template_name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
  -- waiting: an E2B build announced (POST /v3/templates) and not yet
  -- triggered with its steps; it has no job.
  status           text        NOT NULL DEFAULT 'pending'
                               CHECK (status IN ('waiting', 'pending', 'running', 'success', 'failed', 'cancelled')),
  recipe           text        NOT NULL,
  -- snapshot: a healthcheck makes it a snapshot template; image: disk only.
  kind             text        NOT NULL CHECK (kind IN ('image', 'snapshot')),
  vcpus            integer     NOT NULL CHECK (vcpus > 0),
  memory_mb        integer     NOT NULL CHECK (memory_mb > 0),
  current_step     integer     NOT NULL DEFAULT 0 CHECK (current_step >= 0),
  total_steps      integer     NOT NULL CHECK (total_steps >= 0),
  -- The failing step (1-based; 0: before the steps, e.g. FROM) and its recipe line.
  failed_step      integer,
  failed_line      integer,
  error            text        NOT NULL DEFAULT '',
  archive_id       uuid        REFERENCES build_archives (id) ON DELETE SET NULL,
  job_id           bigint,
  attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  max_attempts     integer     NOT NULL DEFAULT 2 CHECK (max_attempts > 0),
  cancel_requested boolean     NOT NULL DEFAULT false,
  heartbeat_at     timestamptz,
  -- The build sandbox of the running attempt (destroyed when it ends).
  sandbox_id       uuid,
  template_id      uuid        REFERENCES templates (id) ON DELETE SET NULL,
  log_count        bigint      NOT NULL DEFAULT 0 CHECK (log_count >= 0),
  -- Extra fields of the API that created it (E2B: template ID, tags).
  metadata         jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
  created_by       uuid        REFERENCES users (id) ON DELETE SET NULL,
  created_at       timestamptz NOT NULL DEFAULT now(),
  started_at       timestamptz,
  finished_at      timestamptz
);
CREATE INDEX builds_team_created_idx ON builds (team_id, created_at DESC, id DESC);
CREATE INDEX builds_template_idx ON builds (team_id, template_name, created_at DESC);
-- What the sweeper and the queue-depth gauge read.
CREATE INDEX builds_active_idx ON builds (status, heartbeat_at) WHERE status IN ('pending', 'running');

CREATE TABLE build_steps (
  build_id    uuid        NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
  step        integer     NOT NULL CHECK (step > 0),
  line        integer     NOT NULL CHECK (line > 0),
  kind        text        NOT NULL,
  text        text        NOT NULL,
  status      text        NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'running', 'success', 'failed', 'cancelled')),
  exit_code   integer,
  started_at  timestamptz,
  finished_at timestamptz,
  PRIMARY KEY (build_id, step)
);

CREATE TABLE build_logs (
  build_id   uuid        NOT NULL REFERENCES builds (id) ON DELETE CASCADE,
  seq        bigint      NOT NULL CHECK (seq > 0),
  -- 0: the build itself (setup, finalize); N: step N.
  step       integer     NOT NULL CHECK (step >= 0),
  stream     text        NOT NULL CHECK (stream IN ('stdout', 'stderr', 'system')),
  line       text        NOT NULL,
  created_at timestamptz NOT NULL,
  PRIMARY KEY (build_id, seq)
);

-- +goose Down
DROP TABLE build_logs;
DROP TABLE build_steps;
DROP TABLE builds;
DROP TABLE build_archive_chunks;
DROP TABLE build_archives;
CREATE TABLE template_builds (
  id            uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
  team_id       uuid        NOT NULL REFERENCES teams (id),
  template_name text        NOT NULL CHECK (template_name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
  kind          text        NOT NULL DEFAULT 'snapshot' CHECK (kind IN ('image', 'snapshot')),
  status        text        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
  base_template text        NOT NULL DEFAULT 'base',
  recipe        jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(recipe) = 'array'),
  healthcheck   text        NOT NULL DEFAULT '',
  vcpus         integer     NOT NULL CHECK (vcpus > 0),
  memory_mb     integer     NOT NULL CHECK (memory_mb > 0),
  disk_mb       integer     NOT NULL DEFAULT 0 CHECK (disk_mb >= 0),
  current_step  integer     NOT NULL DEFAULT 0 CHECK (current_step >= 0),
  total_steps   integer     NOT NULL DEFAULT 0 CHECK (total_steps >= 0),
  logs          jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(logs) = 'array'),
  error         text        NOT NULL DEFAULT '',
  sandbox_id    uuid,
  template_id   uuid        REFERENCES templates (id) ON DELETE SET NULL,
  created_by    uuid        REFERENCES users (id) ON DELETE SET NULL,
  created_at    timestamptz NOT NULL DEFAULT now(),
  started_at    timestamptz,
  finished_at   timestamptz
);
CREATE INDEX template_builds_team_created_idx ON template_builds (team_id, created_at DESC, id DESC);
CREATE INDEX template_builds_active_idx ON template_builds (created_at) WHERE status IN ('pending', 'running');
