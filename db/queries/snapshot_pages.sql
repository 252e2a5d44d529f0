-- name: ListSnapshotPage :many
-- A team's own snapshots of sandboxes (not the templates its builds
-- made, whose metadata names their build) newest first, keyset-paginated
-- on (created_at, id) like ListSandboxes; source_sandbox_id and name
-- NULL: any.
SELECT * FROM templates
WHERE team_id = @team_id AND kind = 'snapshot' AND NOT (metadata ? 'build_id') AND NOT hidden
  AND (sqlc.narg('source_sandbox_id')::uuid IS NULL OR source_sandbox_id = sqlc.narg('source_sandbox_id')::uuid)
  AND (sqlc.narg('name')::text IS NULL OR name = sqlc.narg('name')::text)
  AND (sqlc.narg('after_created_at')::timestamptz IS NULL
       OR (created_at, id) < (sqlc.narg('after_created_at')::timestamptz, sqlc.narg('after_id')::uuid))
ORDER BY created_at DESC, id DESC
LIMIT @page_size;
