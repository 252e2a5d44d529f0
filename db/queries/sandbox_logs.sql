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
-- A sandbox's lifecycle events (its audit rows every member may see),
-- the newest 1000, newest first.
SELECT * FROM audit_logs
WHERE team_id = @team_id AND resource_type = 'sandbox' AND resource_id = @resource_id AND scope = 'team'
ORDER BY created_at DESC, id DESC
LIMIT 1000;
