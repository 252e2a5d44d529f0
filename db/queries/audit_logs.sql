-- name: InsertAuditLog :one
INSERT INTO audit_logs (team_id, actor_type, actor_id, actor_name, resource_type, resource_id,
                        action, scope, status, metadata)
VALUES (@team_id, @actor_type, @actor_id, @actor_name, @resource_type, @resource_id,
        @action, @scope, @status, @metadata)
RETURNING *;

-- name: ListAuditLogs :many
-- A team's events newest first, keyset-paginated on (created_at, id), at most
-- 200 a page. Each filter list empty: no filter; scopes ['team'] is what a
-- plain member may see.
SELECT * FROM audit_logs
WHERE team_id = @team_id
  AND (COALESCE(cardinality(@scopes::text[]), 0) = 0 OR scope = ANY(@scopes::text[]))
  AND (COALESCE(cardinality(@resource_types::text[]), 0) = 0 OR resource_type = ANY(@resource_types::text[]))
  AND (COALESCE(cardinality(@actions::text[]), 0) = 0 OR action = ANY(@actions::text[]))
  AND (sqlc.narg('after_created_at')::timestamptz IS NULL
       OR (created_at, id) < (sqlc.narg('after_created_at')::timestamptz, sqlc.narg('after_id')::uuid))
ORDER BY created_at DESC, id DESC
LIMIT LEAST(GREATEST(@page_size::integer, 1), 200);
