-- Template builds (internal/builds). A build is owned by the River job in
-- builds.job_id; every change a worker makes names its job, so a job that
-- lost the build (its worker was presumed dead and the build retried or
-- failed) changes nothing.

-- name: InsertBuildArchive :one
INSERT INTO build_archives (team_id, sha256, size_bytes, content_bytes, files_hash)
VALUES (@team_id, @sha256, @size_bytes, @content_bytes, sqlc.narg('files_hash'))
RETURNING *;

-- name: FinishBuildArchive :one
-- The archive's sums, once its chunks are written.
UPDATE build_archives SET sha256 = @sha256, size_bytes = @size_bytes, content_bytes = @content_bytes
WHERE id = @id RETURNING *;

-- name: InsertBuildArchiveChunk :exec
INSERT INTO build_archive_chunks (archive_id, seq, data) VALUES (@archive_id, @seq, @data);

-- name: GetBuildArchive :one
SELECT * FROM build_archives WHERE id = @id;

-- name: GetBuildArchiveChunk :one
SELECT data FROM build_archive_chunks WHERE archive_id = @archive_id AND seq = @seq;

-- name: FindBuildArchiveByFilesHash :one
-- The team's newest archive uploaded for an E2B files hash.
SELECT * FROM build_archives WHERE team_id = @team_id AND files_hash = @files_hash
ORDER BY created_at DESC LIMIT 1;

-- name: DeleteUnusedBuildArchives :execrows
-- Archives no unfinished build needs, older than the cutoff.
DELETE FROM build_archives a
WHERE a.created_at < @before
  AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.archive_id = a.id AND b.status IN ('pending', 'running'));

-- name: InsertBuild :one
INSERT INTO builds (id, team_id, template_name, recipe, kind, vcpus, memory_mb, total_steps, archive_id,
                    max_attempts, metadata, created_by)
VALUES (@id, @team_id, @template_name, @recipe, @kind, @vcpus, @memory_mb, @total_steps, sqlc.narg('archive_id'),
        @max_attempts, @metadata, sqlc.narg('created_by'))
RETURNING *;

-- name: InsertBuildStep :exec
INSERT INTO build_steps (build_id, step, line, kind, text) VALUES (@build_id, @step, @line, @kind, @text);

-- name: SetBuildJob :exec
UPDATE builds SET job_id = @job_id WHERE id = @id;

-- name: GetBuild :one
SELECT * FROM builds WHERE id = @id;

-- name: GetTeamBuild :one
SELECT * FROM builds WHERE id = @id AND team_id = @team_id;

-- name: ListTeamBuilds :many
-- A team's builds, newest first; template_name '' for all of them.
SELECT * FROM builds
WHERE team_id = @team_id AND (@template_name::text = '' OR template_name = @template_name)
  AND (sqlc.narg('before_created')::timestamptz IS NULL
       OR (created_at, id) < (sqlc.narg('before_created')::timestamptz, sqlc.narg('before_id')::uuid))
ORDER BY created_at DESC, id DESC
LIMIT @max_rows;

-- name: ListBuildSteps :many
SELECT * FROM build_steps WHERE build_id = @build_id ORDER BY step;

-- name: ClaimBuild :one
-- The job's worker takes its pending build: running, one more attempt.
UPDATE builds SET status = 'running', attempts = attempts + 1, heartbeat_at = now(),
                  started_at = coalesce(started_at, now()), current_step = 0,
                  failed_step = NULL, failed_line = NULL, error = ''
WHERE id = @id AND job_id = @job_id AND status = 'pending' AND NOT cancel_requested
RETURNING *;

-- name: BuildHeartbeat :one
-- The worker is alive; answers whether a cancel was asked.
UPDATE builds SET heartbeat_at = now()
WHERE id = @id AND job_id = @job_id AND status = 'running'
RETURNING cancel_requested;

-- name: SetBuildSandbox :exec
UPDATE builds SET sandbox_id = sqlc.narg('sandbox_id') WHERE id = @id AND job_id = @job_id;

-- name: SetBuildProgress :exec
UPDATE builds SET current_step = @current_step WHERE id = @id AND job_id = @job_id AND status = 'running';

-- name: StartBuildStep :exec
UPDATE build_steps SET status = 'running', started_at = now(), finished_at = NULL, exit_code = NULL
WHERE build_id = @build_id AND step = @step;

-- name: FinishBuildStep :exec
UPDATE build_steps SET status = @status, finished_at = now(), exit_code = sqlc.narg('exit_code')
WHERE build_id = @build_id AND step = @step;

-- name: ResetBuildSteps :exec
UPDATE build_steps SET status = 'pending', started_at = NULL, finished_at = NULL, exit_code = NULL
WHERE build_id = @build_id;

-- name: FinishBuild :one
-- The job's running build ends: success, failed or cancelled.
UPDATE builds SET status = @status, finished_at = now(), heartbeat_at = NULL,
                  error = @error, failed_step = sqlc.narg('failed_step'), failed_line = sqlc.narg('failed_line'),
                  template_id = sqlc.narg('template_id'), current_step = @current_step
WHERE id = @id AND job_id = @job_id AND status = 'running'
RETURNING *;

-- name: RequeueBuild :one
-- The job's running build goes back to pending (an attempt that failed for
-- a reason another attempt may not meet), with the job that retries it.
UPDATE builds SET status = 'pending', heartbeat_at = NULL, job_id = @new_job_id, sandbox_id = NULL
WHERE id = @id AND job_id = @job_id AND status = 'running'
RETURNING *;

-- name: CancelPendingBuild :one
UPDATE builds SET status = 'cancelled', cancel_requested = true, finished_at = now(), error = 'cancelled'
WHERE id = @id AND status = 'pending'
RETURNING *;

-- name: RequestBuildCancel :one
UPDATE builds SET cancel_requested = true WHERE id = @id AND status = 'running' RETURNING *;

-- name: StaleBuilds :many
-- Running builds whose worker stopped beating, locked for the sweeper.
SELECT * FROM builds
WHERE status = 'running' AND heartbeat_at < @before
ORDER BY heartbeat_at
FOR UPDATE SKIP LOCKED;

-- name: SweepBuild :one
-- The sweeper ends or retries a build it locked: status pending (with the new
-- job) or failed.
UPDATE builds SET status = @status, job_id = sqlc.narg('job_id'), heartbeat_at = NULL, sandbox_id = NULL,
                  error = @error, finished_at = CASE WHEN @status::text = 'failed' THEN now() END
WHERE id = @id
RETURNING *;

-- name: CountActiveBuilds :one
SELECT count(*) FILTER (WHERE status = 'pending')::bigint AS pending,
       count(*) FILTER (WHERE status = 'running')::bigint AS running
FROM builds WHERE status IN ('pending', 'running');

-- name: AppendBuildLogCount :one
-- Reserves n log sequence numbers of the job's build: the last one is returned.
UPDATE builds SET log_count = log_count + @n::bigint WHERE id = @id AND job_id = @job_id
RETURNING log_count;

-- name: InsertBuildLogs :exec
-- A batch of log lines (arrays of equal length).
INSERT INTO build_logs (build_id, seq, step, stream, line, created_at)
SELECT @build_id::uuid, unnest(@seqs::bigint[]), unnest(@steps::integer[]), unnest(@streams::text[]),
       unnest(@lines::text[]), unnest(@created::timestamptz[]);

-- name: ReadBuildLogs :many
-- Log lines after offset (seq > offset), oldest first.
SELECT * FROM build_logs WHERE build_id = @build_id AND seq > @after_seq ORDER BY seq LIMIT @max_rows;

-- name: TemplateBuildsActive :one
-- Whether a build of this team's template name is pending or running.
SELECT EXISTS (SELECT 1 FROM builds WHERE team_id = @team_id AND template_name = @template_name
               AND status IN ('pending', 'running'))::boolean;

-- name: CountSandboxesOfTemplate :one
-- The live sandboxes created from a template name of a team (a template in use).
SELECT count(*)::bigint FROM sandboxes
WHERE template = @template AND team_id = @team_id AND state NOT IN ('stopped');

-- name: TriggerBuild :one
-- A waiting build gets its recipe and becomes pending.
UPDATE builds SET recipe = @recipe, kind = @kind, total_steps = @total_steps, status = 'pending',
                  metadata = @metadata, created_at = now()
WHERE id = @id AND team_id = @team_id AND status = 'waiting'
RETURNING *;

-- name: FailWaitingBuild :one
-- A waiting build that cannot run (an image no registry serves).
UPDATE builds SET status = 'failed', error = @error, failed_step = @failed_step, finished_at = now()
WHERE id = @id AND team_id = @team_id AND status = 'waiting'
RETURNING *;
