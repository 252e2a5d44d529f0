-- name: UpsertTemplate :one
-- Creates the team's template, or overwrites the one of the same name in place
-- (same id, new contents). inserted tells which happened.
INSERT INTO templates (team_id, name, kind, vcpus, memory_mb, disk_mb, size_bytes, host_id,
                       source_sandbox_id, metadata, created_by)
VALUES (@team_id, @name, @kind, @vcpus, @memory_mb, @disk_mb, @size_bytes, sqlc.narg('host_id'),
        sqlc.narg('source_sandbox_id'), @metadata, sqlc.narg('created_by'))
ON CONFLICT (team_id, name) DO UPDATE SET
  kind              = EXCLUDED.kind,
  vcpus             = EXCLUDED.vcpus,
  memory_mb         = EXCLUDED.memory_mb,
  disk_mb           = EXCLUDED.disk_mb,
  size_bytes        = EXCLUDED.size_bytes,
  host_id           = EXCLUDED.host_id,
  source_sandbox_id = EXCLUDED.source_sandbox_id,
  metadata          = EXCLUDED.metadata,
  created_by        = EXCLUDED.created_by
RETURNING sqlc.embed(templates), (xmax = 0)::boolean AS inserted;

-- name: GetTemplate :one
-- The template a team means by name: its own, else the public one of that name.
SELECT * FROM templates
WHERE name = @name AND team_id IN (@team_id, '00000000-0000-0000-0000-000000000000')
ORDER BY (team_id = @team_id) DESC
LIMIT 1;

-- name: ListTemplates :many
-- The team's templates and the public ones, by name (the team's first on a
-- tie); hidden rows (tagged versions, build layers) are not listed.
SELECT * FROM templates
WHERE team_id IN (@team_id, '00000000-0000-0000-0000-000000000000') AND NOT hidden
ORDER BY name, (team_id = @team_id) DESC;

-- name: DeleteTemplate :one
-- Only the team's own templates (public ones belong to the platform team).
DELETE FROM templates WHERE team_id = @team_id AND name = @name RETURNING *;

-- name: InsertTemplate :one
-- A new template of a team with the given id (the host knows its files by
-- that id); a name the team uses already is a conflict.
INSERT INTO templates (id, team_id, name, kind, vcpus, memory_mb, disk_mb, size_bytes, host_id,
                       source_sandbox_id, metadata, created_by)
VALUES (@id, @team_id, @name, @kind, @vcpus, @memory_mb, @disk_mb, @size_bytes, sqlc.narg('host_id'),
        sqlc.narg('source_sandbox_id'), @metadata, sqlc.narg('created_by'))
RETURNING *;

-- name: ListTemplatesByHost :many
-- The templates whose files a host keeps (snapshots), for reconciliation.
SELECT * FROM templates WHERE host_id = @host_id ORDER BY id;
