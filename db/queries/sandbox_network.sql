-- name: SetSandboxNetwork :one
-- Replaces a sandbox's egress rules (allow_internet_access follows them).
UPDATE sandboxes SET network = @network, allow_internet_access = @allow_internet_access
WHERE id = @id AND team_id = @team_id
RETURNING *;
