-- name: InsertSandbox :one
-- id NULL: generated. end_at is set when the sandbox enters running.
INSERT INTO sandboxes (
  id, team_id, host_id, template, state, vcpus, memory_mb, disk_mb, timeout_sec,
  auto_pause, auto_pause_memory, auto_resume, allow_internet_access, allow_public_traffic, metadata, env_vars, created_by
) VALUES (
  COALESCE(sqlc.narg('id')::uuid, gen_random_uuid()), @team_id, sqlc.narg('host_id'), @template, @state,
  @vcpus, @memory_mb, @disk_mb, @timeout_sec, @auto_pause, @auto_pause_memory, @auto_resume, @allow_internet_access,
  @allow_public_traffic, @metadata, sqlc.narg('env_vars'), sqlc.narg('created_by')
)
RETURNING *;

-- name: GetSandbox :one
-- Team-scoped: another team's sandbox is not found.
SELECT * FROM sandboxes WHERE id = @id AND team_id = @team_id;

-- name: GetSandboxByID :one
-- Not team-scoped: for the control plane's own loops (reaper, reconciler).
SELECT * FROM sandboxes WHERE id = @id;

-- name: ListSandboxes :many
-- A team's sandboxes newest first, keyset-paginated on (created_at, id):
-- pass the last row's created_at and id as after_created_at/after_id for the
-- next page. states empty: any state; metadata NULL: any metadata, else the
-- sandbox's metadata must contain it (jsonb @>); started_after NULL: any
-- creation time, else created at or after it; template NULL: any template.
-- ListSandboxesAsc is the same oldest first.
SELECT * FROM sandboxes
WHERE team_id = @team_id
  AND (COALESCE(cardinality(@states::text[]), 0) = 0 OR state = ANY(@states::text[]))
  AND (sqlc.narg('metadata')::jsonb IS NULL OR metadata @> sqlc.narg('metadata')::jsonb)
  AND (sqlc.narg('started_after')::timestamptz IS NULL OR created_at >= sqlc.narg('started_after')::timestamptz)
  AND (sqlc.narg('template')::text IS NULL OR template = sqlc.narg('template')::text)
  AND (sqlc.narg('after_created_at')::timestamptz IS NULL
       OR (created_at, id) < (sqlc.narg('after_created_at')::timestamptz, sqlc.narg('after_id')::uuid))
ORDER BY created_at DESC, id DESC
LIMIT @page_size;

-- name: ListSandboxesAsc :many
-- ListSandboxes oldest first: after_created_at/after_id continue after the
-- last row of the previous page.
SELECT * FROM sandboxes
WHERE team_id = @team_id
  AND (COALESCE(cardinality(@states::text[]), 0) = 0 OR state = ANY(@states::text[]))
  AND (sqlc.narg('metadata')::jsonb IS NULL OR metadata @> sqlc.narg('metadata')::jsonb)
  AND (sqlc.narg('started_after')::timestamptz IS NULL OR created_at >= sqlc.narg('started_after')::timestamptz)
  AND (sqlc.narg('template')::text IS NULL OR template = sqlc.narg('template')::text)
  AND (sqlc.narg('after_created_at')::timestamptz IS NULL
       OR (created_at, id) > (sqlc.narg('after_created_at')::timestamptz, sqlc.narg('after_id')::uuid))
ORDER BY created_at ASC, id ASC
LIMIT @page_size;

-- name: UpdateSandboxState :one
-- An optimistic transition: only from one of expected_states (no row: the
-- sandbox is gone or in another state; store.TransitionSandbox tells which).
-- Entering running starts the TTL (end_at = now + timeout_sec) and the
-- activity clock; paused and stopped record their time. Leaving running
-- clears envd_url (SetSandboxEnvdURL sets it once running); paused, stopped
-- and error clear end_at (only a running sandbox has a deadline).
UPDATE sandboxes SET
  state          = @new_state::text,
  state_reason   = @reason::text,
  started_at     = CASE WHEN @new_state::text = 'running' THEN COALESCE(started_at, now()) ELSE started_at END,
  last_active_at = CASE WHEN @new_state::text = 'running' THEN now() ELSE last_active_at END,
  end_at         = CASE WHEN @new_state::text = 'running' AND timeout_sec > 0
                          THEN now() + make_interval(secs => timeout_sec)
                        WHEN @new_state::text IN ('running', 'paused', 'stopped', 'error') THEN NULL
                        ELSE end_at END,
  envd_url       = CASE WHEN @new_state::text = 'running' THEN envd_url ELSE '' END,
  paused_at      = CASE WHEN @new_state::text = 'paused' THEN now() ELSE paused_at END,
  stopped_at     = CASE WHEN @new_state::text = 'stopped' THEN now() ELSE stopped_at END,
  pause_failures = CASE WHEN @new_state::text = 'paused' THEN 0 ELSE pause_failures END
WHERE id = @id AND state = ANY(@expected_states::text[])
RETURNING *;

-- name: SetSandboxHost :one
UPDATE sandboxes SET host_id = sqlc.narg('host_id') WHERE id = @id RETURNING *;

-- name: SetSandboxTimeout :one
-- A new timeout counted from now; 0 clears the TTL. Only a running sandbox
-- gets a deadline (another one's starts when it enters running).
UPDATE sandboxes SET
  timeout_sec = @timeout_sec::integer,
  end_at = CASE WHEN @timeout_sec::integer > 0 AND state = 'running'
                THEN now() + make_interval(secs => @timeout_sec::integer) ELSE NULL END
WHERE id = @id AND team_id = @team_id AND state <> 'stopped'
RETURNING *;

-- name: SetSandboxEnvdURL :one
-- Where a running sandbox's envd is (run in the transaction that made it
-- running).
UPDATE sandboxes SET envd_url = @envd_url::text
WHERE id = @id AND state = 'running'
RETURNING *;

-- name: TouchSandbox :one
-- Activity (ping, exec, file access) of a running sandbox: restarts its
-- inactivity TTL.
UPDATE sandboxes SET
  last_active_at = now(),
  end_at = CASE WHEN timeout_sec > 0 THEN now() + make_interval(secs => timeout_sec) ELSE end_at END
WHERE id = @id AND team_id = @team_id AND state = 'running'
RETURNING *;

-- name: TouchSandboxByID :execrows
-- TouchSandbox for callers that checked the team already (exec, files):
-- one UPDATE, no row returned.
UPDATE sandboxes SET
  last_active_at = now(),
  end_at = CASE WHEN timeout_sec > 0 THEN now() + make_interval(secs => timeout_sec) ELSE end_at END
WHERE id = @id AND state = 'running';

-- name: MarkSandboxStopped :one
-- Final state, from any other state; no deadline, no envd.
UPDATE sandboxes SET state = 'stopped', state_reason = @reason::text, stopped_at = now(),
  end_at = NULL, envd_url = ''
WHERE id = @id AND state <> 'stopped'
RETURNING *;

-- name: DeleteSandbox :execrows
DELETE FROM sandboxes WHERE id = @id AND team_id = @team_id;

-- name: ListExpiredSandboxes :many
-- Running sandboxes whose TTL has passed at now (the reaper's clock), oldest
-- deadline first.
SELECT * FROM sandboxes
WHERE state = 'running' AND end_at IS NOT NULL AND end_at < @now::timestamptz
ORDER BY end_at, id
LIMIT @max_results;

-- name: NextSandboxDeadline :one
-- The reaper's next wake-up at now (its clock): the earliest deadline of a
-- running sandbox from now on, or horizon when there is none before it;
-- and whether some running sandbox's deadline has passed already (left by
-- an earlier pass: its host could not be asked).
SELECT least(coalesce(min(end_at) FILTER (WHERE end_at >= @now::timestamptz), @horizon::timestamptz),
    @horizon::timestamptz)::timestamptz AS next_end_at,
  coalesce(bool_or(end_at < @now::timestamptz), false)::boolean AS expired
FROM sandboxes
WHERE state = 'running' AND end_at IS NOT NULL;

-- name: ClaimExpiredSandbox :one
-- The reaper's guarded running -> pausing: only while the sandbox is still
-- running and still past its deadline at now (activity since the listing,
-- or another replica's reaper, make it no row).
UPDATE sandboxes SET state = 'pausing', state_reason = @reason::text
WHERE id = @id AND state = 'running' AND end_at IS NOT NULL AND end_at < @now::timestamptz
RETURNING *;

-- name: RevertSandboxPausing :one
-- A pause that did not happen: back to running with the deadline it had
-- (the next reaper pass tries again).
UPDATE sandboxes SET state = 'running', state_reason = @reason::text
WHERE id = @id AND state = 'pausing'
RETURNING *;

-- name: RetrySandboxPausing :one
-- An auto-pause the host refused: back to running with one more failure
-- and the deadline moved to retry_at (the reaper's back-off).
UPDATE sandboxes SET state = 'running', state_reason = @reason::text,
  pause_failures = pause_failures + 1, end_at = @retry_at::timestamptz
WHERE id = @id AND state = 'pausing'
RETURNING *;

-- name: FailSandboxPausing :one
-- An auto-pause refused once too often: the sandbox is left in error, with
-- its disk kept on the host (nothing is destroyed); no deadline.
UPDATE sandboxes SET state = 'error', state_reason = @reason::text,
  pause_failures = pause_failures + 1, end_at = NULL
WHERE id = @id AND state = 'pausing'
RETURNING *;

-- name: CountTeamStoredUsage :one
-- What a team keeps on disk, for the paused and stored-bytes quotas: its
-- paused sandboxes (count, and their memory, which a pause writes out) and
-- the bytes of its snapshot templates.
SELECT
  (SELECT count(*) FROM sandboxes s
    WHERE s.team_id = @team_id AND s.state IN ('paused', 'pausing'))::integer AS paused,
  (SELECT COALESCE(sum(s.memory_mb), 0) FROM sandboxes s
    WHERE s.team_id = @team_id AND s.state IN ('paused', 'pausing'))::bigint AS paused_memory_mb,
  (SELECT COALESCE(sum(t.size_bytes), 0) FROM templates t
    WHERE t.team_id = @team_id)::bigint AS template_bytes;

-- name: CountTeamSandboxUsage :one
-- What a team's sandboxes in the given states hold, for quota checks (run it
-- after LockTeam in the transaction that inserts the sandbox).
SELECT count(*)::integer                    AS sandboxes,
       COALESCE(sum(vcpus), 0)::integer     AS vcpus,
       COALESCE(sum(memory_mb), 0)::bigint  AS memory_mb
FROM sandboxes
WHERE team_id = @team_id AND state = ANY(@states::text[]);

-- name: ListSandboxesByHost :many
-- A host's sandboxes (states empty: any), for reconciliation.
SELECT * FROM sandboxes
WHERE host_id = @host_id
  AND (COALESCE(cardinality(@states::text[]), 0) = 0 OR state = ANY(@states::text[]))
ORDER BY created_at, id;

-- name: MarkHostSandboxesMissing :many
-- A host stopped answering: its live sandboxes become missing (reversible).
UPDATE sandboxes SET state = 'missing', state_reason = @reason::text
WHERE host_id = @host_id AND state IN ('starting', 'running', 'pausing', 'resuming')
RETURNING id;

-- name: ExtendSandboxTimeout :one
-- E2B's connect: the deadline only ever moves later (now + timeout_sec at
-- the least) and the idle window only ever grows. Running sandboxes only.
UPDATE sandboxes SET
  timeout_sec = GREATEST(timeout_sec, @timeout_sec::integer),
  end_at = GREATEST(COALESCE(end_at, now()), now() + make_interval(secs => @timeout_sec::integer))
WHERE id = @id AND team_id = @team_id AND state = 'running' AND @timeout_sec::integer > 0
RETURNING *;
