-- The platform admin's queries (/v1/admin/…). The caller checks that the
-- user is an active platform admin (GetActiveAdmin) first.

-- name: GetActiveAdmin :one
-- The user when it is an active (not disabled) platform admin; no row
-- otherwise. FOR SHARE: a change made as that admin commits only while
-- the admin is still one (a concurrent demotion or disabling waits).
SELECT * FROM users WHERE id = @id AND is_admin AND disabled_at IS NULL FOR SHARE;

-- name: LockActiveAdmins :many
-- Locks every active platform admin's row, in ID order (two admins
-- disabling each other serialize here), and returns their IDs.
SELECT id FROM users WHERE is_admin AND disabled_at IS NULL ORDER BY id FOR UPDATE;

-- name: LockUser :one
SELECT * FROM users WHERE id = @id FOR UPDATE;

-- name: SetUserDisabled :one
-- disabled: disabled since now (kept when disabled already); else enabled.
UPDATE users SET disabled_at = CASE WHEN @disabled::boolean THEN COALESCE(disabled_at, now()) END
WHERE id = @id
RETURNING *;

-- name: AdminListTeams :many
-- Every live team newest first with its member count and its sandboxes
-- that are not stopped, keyset-paginated on (created_at, id).
SELECT teams.id, teams.name, teams.slug, teams.is_byoc, teams.created_at,
       (SELECT count(*) FROM users_teams WHERE users_teams.team_id = teams.id)::bigint AS member_count,
       (SELECT count(*) FROM sandboxes
        WHERE sandboxes.team_id = teams.id AND sandboxes.state <> 'stopped')::bigint AS sandbox_count
FROM teams
WHERE teams.deleted_at IS NULL
  AND (sqlc.narg('after_created_at')::timestamptz IS NULL
       OR (teams.created_at, teams.id) < (sqlc.narg('after_created_at')::timestamptz, sqlc.narg('after_id')::uuid))
ORDER BY teams.created_at DESC, teams.id DESC
LIMIT @page_size;

-- name: AdminListUsers :many
-- Users by e-mail address (case-insensitively, which is unique), keyset-
-- paginated on it: prefix '' matches all; LIKE metacharacters in prefix
-- match literally. after_email: the last row's lower(email). No password
-- hashes.
SELECT id, email, name, is_admin, disabled_at, created_at,
       (SELECT count(*) FROM users_teams JOIN teams ON teams.id = users_teams.team_id
        WHERE users_teams.user_id = users.id AND teams.deleted_at IS NULL)::bigint AS team_count
FROM users
WHERE lower(email) LIKE
      lower(replace(replace(replace(@prefix::text, '\', '\\'), '%', '\%'), '_', '\_')) || '%' ESCAPE '\'
  AND (sqlc.narg('after_email')::text IS NULL OR lower(email) > sqlc.narg('after_email')::text)
ORDER BY lower(email)
LIMIT @page_size;

-- name: AdminListHosts :many
-- Every host with its team's name, newest first, keyset-paginated on
-- (created_at, id). Explicit columns: hosts gains columns in other
-- migrations.
SELECT hosts.id, hosts.team_id, teams.name AS team_name, teams.is_byoc AS team_is_byoc, hosts.name,
       hosts.address, hosts.status, hosts.version, hosts.arch, hosts.total_vcpus, hosts.total_memory_mb,
       hosts.total_disk_mb, hosts.last_heartbeat_at, hosts.created_at,
       (SELECT count(*) FROM sandboxes
        WHERE sandboxes.host_id = hosts.id AND sandboxes.state <> 'stopped')::bigint AS sandbox_count
FROM hosts
JOIN teams ON teams.id = hosts.team_id
WHERE (sqlc.narg('after_created_at')::timestamptz IS NULL
       OR (hosts.created_at, hosts.id) < (sqlc.narg('after_created_at')::timestamptz, sqlc.narg('after_id')::uuid))
ORDER BY hosts.created_at DESC, hosts.id DESC
LIMIT @page_size;

-- name: AdminListAuditLogs :many
-- The platform-wide audit log (every team, every scope) newest first, as
-- ListAuditLogs pages it; team_id NULL: every team.
SELECT * FROM audit_logs
WHERE (sqlc.narg('team_id')::uuid IS NULL OR team_id = sqlc.narg('team_id')::uuid)
  AND (COALESCE(cardinality(@resource_types::text[]), 0) = 0 OR resource_type = ANY(@resource_types::text[]))
  AND (COALESCE(cardinality(@actions::text[]), 0) = 0 OR action = ANY(@actions::text[]))
  AND (sqlc.narg('after_created_at')::timestamptz IS NULL
       OR (created_at, id) < (sqlc.narg('after_created_at')::timestamptz, sqlc.narg('after_id')::uuid))
ORDER BY created_at DESC, id DESC
LIMIT LEAST(GREATEST(@page_size::integer, 1), 200);

-- name: GetSessionUser :one
-- A session's authentication in one round trip: the user (no row: gone),
-- whether it is disabled, and its role in the live team team_id (empty: not
-- a member, or the team is deleted).
SELECT users.email, users.disabled_at,
       COALESCE((SELECT users_teams.role FROM users_teams
                 JOIN teams ON teams.id = users_teams.team_id
                 WHERE users_teams.user_id = users.id AND users_teams.team_id = @team_id
                   AND teams.deleted_at IS NULL), '')::text AS role
FROM users
WHERE users.id = @user_id;
