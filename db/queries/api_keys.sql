-- name: CreateAPIKey :one
INSERT INTO team_api_keys (team_id, name, prefix, key_hash, created_by)
VALUES (@team_id, @name, @prefix, @key_hash, sqlc.narg('created_by'))
RETURNING *;

-- name: AuthenticateAPIKey :one
-- Finds a live key of a live team by the SHA-256 of the presented key and
-- records its use. The key's creator must still be a member of the key's
-- team: a key dies with its creator's membership (leaving, removal, a
-- deleted user), whatever path ended it. creator_disabled_at is the
-- creator's users.disabled_at: a disabled user's keys are refused (and work
-- again once the user is re-enabled). last_used_at is written at most once a minute per key, so
-- a busy key does not turn every request into a write; the returned row
-- carries the value from before this call.
WITH k AS (
  SELECT team_api_keys.*, users.disabled_at AS creator_disabled_at
  FROM team_api_keys
  JOIN users ON users.id = team_api_keys.created_by
  JOIN teams ON teams.id = team_api_keys.team_id
  JOIN users_teams ON users_teams.user_id = team_api_keys.created_by
                  AND users_teams.team_id = team_api_keys.team_id
  WHERE team_api_keys.key_hash = @key_hash
    AND team_api_keys.revoked_at IS NULL
    AND teams.deleted_at IS NULL
), touched AS (
  UPDATE team_api_keys SET last_used_at = now()
  WHERE team_api_keys.id = (SELECT k.id FROM k WHERE k.creator_disabled_at IS NULL)
    AND (team_api_keys.last_used_at IS NULL OR team_api_keys.last_used_at < now() - interval '1 minute')
  RETURNING team_api_keys.id
)
SELECT k.id, k.team_id, k.name, k.prefix, k.key_hash, k.created_by, k.created_at, k.last_used_at, k.revoked_at,
       k.creator_disabled_at
FROM k;

-- name: GetAPIKey :one
SELECT * FROM team_api_keys WHERE id = @id AND team_id = @team_id;

-- name: ListAPIKeys :many
-- The team's live keys, newest first.
SELECT * FROM team_api_keys
WHERE team_id = @team_id AND revoked_at IS NULL
ORDER BY created_at DESC, id DESC;

-- name: RevokeAPIKey :one
UPDATE team_api_keys SET revoked_at = now()
WHERE id = @id AND team_id = @team_id AND revoked_at IS NULL
RETURNING *;

-- name: RevokeAPIKeysOfCreator :many
-- Revokes the live keys that a user created in a team (the user leaves it
-- or is removed from it).
UPDATE team_api_keys SET revoked_at = now()
WHERE team_id = @team_id AND created_by = @created_by AND revoked_at IS NULL
RETURNING *;
