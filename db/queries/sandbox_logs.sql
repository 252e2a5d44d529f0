-- name: SaveSandboxConsole :exec
-- The console's tail at the sandbox's destroy (a second destroy's, if
-- any, replaces it).
INSERT INTO sandbox_logs (sandbox_id, console, truncated)
VALUES (@sandbox_id, @console, @truncated)
ON CONFLICT (sandbox_id) DO UPDATE SET
  console   = EXCLUDED.console,
  truncated = EXCLUDED.truncated,
  saved_at  = now();

-- name: GetSandboxConsole :one
SELECT * FROM sandbox_logs WHERE sandbox_id = @sandbox_id;

-- name: PruneSandboxLogs :execrows
-- Stored consoles saved before the retention's start.
DELETE FROM sandbox_logs WHERE saved_at < @before;

-- name: ListSandboxEvents :many
-- A sandbox's lifecycle events (its sandbox.* audit rows), oldest first,
-- at most 1000.
SELECT * FROM audit_logs
WHERE team_id = @team_id AND resource_type = 'sandbox' AND resource_id = @resource_id
ORDER BY created_at, id
LIMIT 1000;
