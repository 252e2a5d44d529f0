-- The host monitor (internal/service: monitor.go) and the static hosts
-- the control plane reaches with a configured endpoint (issue 11.5).

-- name: MarkHostsDown :many
-- Online hosts without a heartbeat since stale_seconds become
-- unreachable (draining ones too: they keep sandboxes). Returns the hosts
-- that changed, each once: of several control planes only the one whose
-- UPDATE wins sees a host here.
UPDATE hosts SET status = 'unreachable'
WHERE status IN ('online', 'draining')
  AND (last_heartbeat_at IS NULL
       OR last_heartbeat_at <= now() - make_interval(secs => @stale_seconds::double precision))
RETURNING *;

-- name: MarkHostSandboxesDown :many
-- The sandboxes of a host that stopped reporting become missing
-- (reversible): those whose machine runs, or may run, there. A starting
-- one is left to its create (which fails or finishes on its own).
-- Leaving running clears envd_url and end_at as UpdateSandboxState does.
UPDATE sandboxes SET state = 'missing', state_reason = @reason::text, envd_url = '', end_at = NULL
WHERE host_id = @host_id AND state IN ('running', 'pausing', 'paused', 'resuming')
RETURNING *;

-- name: ListReturningHosts :many
-- Unreachable hosts that beat again (a heartbeat since fresh_seconds): the
-- monitor reconciles each before it takes sandboxes again.
SELECT * FROM hosts
WHERE status = 'unreachable'
  AND last_heartbeat_at > now() - make_interval(secs => @fresh_seconds::double precision)
ORDER BY name, id;

-- name: MarkHostUp :one
-- A returning host, reconciled, takes sandboxes again. No row: it is no
-- longer unreachable (deleted, or marked by another pass).
UPDATE hosts SET status = 'online' WHERE id = @id AND status = 'unreachable'
RETURNING *;

-- name: GetHostByName :one
SELECT * FROM hosts WHERE name = @name;

-- name: AdoptEmbeddedHost :one
-- capsule serve's embedded agent registers as a regular host: the row of
-- its name (an older server's static "local" row, or its own from an
-- earlier start) gets the declared loopback address and, when asked, a
-- new registration token (the agent has no credentials: it registers
-- again, which revokes the earlier ones). A row of another team: no row.
UPDATE hosts SET
  address = @address,
  registration_token_hash = CASE WHEN sqlc.narg('token_hash')::bytea IS NULL THEN registration_token_hash
                                 ELSE sqlc.narg('token_hash')::bytea END,
  registration_token_issued_at = CASE WHEN sqlc.narg('token_hash')::bytea IS NULL THEN registration_token_issued_at
                                      ELSE now() END,
  registration_token_expires_at = CASE WHEN sqlc.narg('token_hash')::bytea IS NULL THEN registration_token_expires_at
                                       ELSE @token_expires_at::timestamptz END,
  registration_token_used_at = CASE WHEN sqlc.narg('token_hash')::bytea IS NULL THEN registration_token_used_at
                                    ELSE NULL END
WHERE name = @name AND team_id = '00000000-0000-0000-0000-000000000000'
RETURNING *;

-- name: ListHostsToReconcile :many
-- The hosts whose records a new leader reconciles with their agents: those
-- that report (online, draining).
SELECT * FROM hosts WHERE status IN ('online', 'draining') ORDER BY name, id;

-- name: ListRunningSandboxIDs :many
-- Every running sandbox, whatever its host (the traffic proxy's index of
-- signed file URLs).
SELECT id FROM sandboxes WHERE state = 'running' ORDER BY created_at, id;
