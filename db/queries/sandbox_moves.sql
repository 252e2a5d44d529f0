-- Moves of paused sandboxes off draining hosts (issue 11.6; the table:
-- 00017_moves_and_stats_rollups.sql).

-- name: InsertSandboxMove :exec
INSERT INTO sandbox_moves (sandbox_id, from_host, to_host, template)
VALUES (@sandbox_id, @from_host, @to_host, @template);

-- name: DeleteSandboxMove :exec
DELETE FROM sandbox_moves WHERE sandbox_id = @sandbox_id;

-- name: ListSandboxMoves :many
-- The moves in progress (a control plane that restarts finishes or rolls
-- them back), oldest first.
SELECT * FROM sandbox_moves ORDER BY started_at, sandbox_id;

-- name: ListSandboxMovesOfHost :many
-- The sandboxes being moved from or to host (its reconciliation leaves
-- them to the move).
SELECT sandbox_id FROM sandbox_moves WHERE from_host = @host_id OR to_host = @host_id;

-- name: SetSandboxMovedHost :one
-- A moved sandbox's new host, set while it is resuming there.
UPDATE sandboxes SET host_id = @host_id, updated_at = now()
WHERE id = @id AND state = 'resuming'
RETURNING *;
