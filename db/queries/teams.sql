-- name: CreateTeam :one
-- slug NULL: a random one (team_slug()). A slug collision is a unique
-- violation (store.ErrConflict): retry.
INSERT INTO teams (name, slug)
VALUES (@name, COALESCE(sqlc.narg('slug')::text, team_slug()))
RETURNING *;

-- name: GetTeam :one
-- Soft-deleted teams are not found.
SELECT * FROM teams WHERE id = @id AND deleted_at IS NULL;

-- name: GetTeamBySlug :one
SELECT * FROM teams WHERE slug = @slug AND deleted_at IS NULL;

-- name: LockTeam :one
-- Locks the team's row for the rest of the transaction: serializes quota
-- checks and owner-invariant checks of one team.
SELECT * FROM teams WHERE id = @id AND deleted_at IS NULL FOR UPDATE;

-- name: RenameTeam :one
UPDATE teams SET name = @name WHERE id = @id AND deleted_at IS NULL RETURNING *;

-- name: SoftDeleteTeam :one
-- The slug stays reserved. The platform team cannot be deleted.
UPDATE teams SET deleted_at = now()
WHERE id = @id AND deleted_at IS NULL AND id <> '00000000-0000-0000-0000-000000000000'
RETURNING *;

-- name: SetTeamBYOC :one
UPDATE teams SET is_byoc = @is_byoc WHERE id = @id AND deleted_at IS NULL RETURNING *;

-- name: SetTeamQuotas :one
-- NULL: the platform default.
UPDATE teams SET
  max_running_sandboxes     = sqlc.narg('max_running_sandboxes'),
  max_vcpus_per_sandbox     = sqlc.narg('max_vcpus_per_sandbox'),
  max_memory_mb_per_sandbox = sqlc.narg('max_memory_mb_per_sandbox'),
  max_total_vcpus           = sqlc.narg('max_total_vcpus'),
  max_total_memory_mb       = sqlc.narg('max_total_memory_mb')
WHERE id = @id AND deleted_at IS NULL
RETURNING *;

-- name: SetTeamStorageQuotas :one
-- The paused-sandboxes and stored-MiB quotas; NULL: the platform default.
UPDATE teams SET
  max_paused_sandboxes = sqlc.narg('max_paused_sandboxes'),
  max_stored_mb        = sqlc.narg('max_stored_mb')
WHERE id = @id AND deleted_at IS NULL
RETURNING *;

-- name: ListTeamsForUser :many
-- The user's live teams with the user's role in each, oldest membership first.
SELECT sqlc.embed(teams), users_teams.role, users_teams.created_at AS joined_at
FROM users_teams
JOIN teams ON teams.id = users_teams.team_id
WHERE users_teams.user_id = @user_id AND teams.deleted_at IS NULL
ORDER BY users_teams.created_at, teams.id;

-- name: GetDefaultTeamForUser :one
-- The team a login lands in: users.default_team_id if the user is still a
-- member and the team is live, else the oldest live membership.
SELECT sqlc.embed(teams), users_teams.role
FROM users_teams
JOIN teams ON teams.id = users_teams.team_id
JOIN users ON users.id = users_teams.user_id
WHERE users_teams.user_id = @user_id AND teams.deleted_at IS NULL
ORDER BY COALESCE(teams.id = users.default_team_id, false) DESC, users_teams.created_at, teams.id
LIMIT 1;
