-- E2B's template tags and the build layer cache (migration 00020).

-- name: SetTemplateHidden :exec
-- Renames a template row and hides or shows it (a version that stops or
-- becomes its template's default; version_of: the template it is a version
-- of, kept in its metadata; '' for a build layer).
UPDATE templates SET name = @name, hidden = @hidden,
  metadata = CASE WHEN @version_of::text = '' THEN metadata
                  ELSE metadata || jsonb_build_object('version_of', @version_of::text) END
WHERE id = @id;

-- name: SetTemplateTag :one
-- Points a tag of the team's template name at a version; returns the
-- version it named before (the same when it is new).
WITH prev AS (
  SELECT template_id FROM template_tags WHERE team_id = @team_id AND name = @name AND tag = @tag
)
INSERT INTO template_tags AS g (team_id, name, tag, template_id, build_id)
VALUES (@team_id, @name, @tag, @template_id, sqlc.narg('build_id'))
ON CONFLICT (team_id, name, tag) DO UPDATE SET template_id = EXCLUDED.template_id, build_id = EXCLUDED.build_id,
  created_at = now()
RETURNING coalesce((SELECT template_id FROM prev), g.template_id)::uuid AS previous;

-- name: GetTaggedTemplate :one
-- The version a tag names: the team's own tag, else the platform's.
SELECT t.* FROM template_tags g JOIN templates t ON t.id = g.template_id
WHERE g.name = @name AND g.tag = @tag AND g.team_id IN (@team_id, '00000000-0000-0000-0000-000000000000')
ORDER BY (g.team_id = @team_id) DESC
LIMIT 1;

-- name: ListTemplateTags :many
SELECT * FROM template_tags WHERE team_id = @team_id AND name = @name ORDER BY tag;

-- name: TemplateHasTags :one
-- Whether the team has any tag of a template name.
SELECT EXISTS (SELECT 1 FROM template_tags WHERE team_id IN (@team_id, '00000000-0000-0000-0000-000000000000')
               AND name = @name)::boolean;

-- name: DeleteTemplateTags :many
DELETE FROM template_tags WHERE team_id = @team_id AND name = @name AND tag = ANY(@tags::text[])
RETURNING template_id;

-- name: CountTemplateTagsOf :one
-- How many tags name a version, other than except_tag.
SELECT count(*)::bigint FROM template_tags WHERE template_id = @template_id AND tag <> @except_tag::text;

-- name: DeleteUntaggedVersions :many
-- The team's hidden versions of a template name no tag names any more
-- (all of them when all is set: the template is deleted).
DELETE FROM templates t
WHERE t.team_id = @team_id AND t.hidden AND t.metadata->>'version_of' = @name::text
  AND (@all_versions::boolean OR NOT EXISTS (SELECT 1 FROM template_tags g WHERE g.template_id = t.id))
RETURNING *;

-- name: FindBuildLayer :one
-- The team's deepest cached layer among prefix hashes.
SELECT l.steps, l.prefix_hash, t.name AS template_name, t.id AS template_id
FROM build_layers l JOIN templates t ON t.id = l.template_id
WHERE l.team_id = @team_id AND l.prefix_hash = ANY(@hashes::bytea[])
ORDER BY l.steps DESC
LIMIT 1;

-- name: TouchBuildLayer :exec
UPDATE build_layers SET last_used_at = now() WHERE team_id = @team_id AND prefix_hash = @prefix_hash;

-- name: InsertBuildLayer :execrows
-- A layer for a prefix (nothing when one exists already: a concurrent build
-- cached it first).
INSERT INTO build_layers (team_id, prefix_hash, steps, template_id)
VALUES (@team_id, @prefix_hash, @steps, @template_id)
ON CONFLICT (team_id, prefix_hash) DO NOTHING;

-- name: EvictableBuildLayers :many
-- The team's layers beyond the keep most recently used, with their rows.
SELECT t.* FROM build_layers l JOIN templates t ON t.id = l.template_id
WHERE l.team_id = @team_id
ORDER BY l.last_used_at DESC, l.created_at DESC
OFFSET @keep;

-- name: OrphanLayerTemplates :many
-- The team's hidden layer templates no build_layers row names (their build
-- died between the template and its record), older than the cutoff.
SELECT t.* FROM templates t
WHERE t.team_id = @team_id AND t.hidden AND NOT (t.metadata ? 'version_of')
  AND t.created_at < @before
  AND NOT EXISTS (SELECT 1 FROM build_layers l WHERE l.template_id = t.id);
