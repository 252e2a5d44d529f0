-- Issue 13: E2B template tags and the build layer cache.
--
--   * templates.hidden: a template row no listing shows — a tagged version
--     of a template that is not its default version (named
--     'v..<its id in hex>', a name ValidateSnapshotName never accepts, so
--     no user-named template takes it), or a cached build layer. Hidden
--     rows count against the team's stored quotas like every template.
--   * template_tags: E2B's tags. (team_id, name, tag) names one version
--     of the team's template `name`. The tag 'default' always names the
--     visible row called `name` (what "name" alone means everywhere);
--     other tags name that row or a hidden one. A hidden version no tag
--     names any more is deleted (internal/service: PublishTemplate,
--     AssignTemplateTags, RemoveTemplateTags).
--   * build_layers: the layer cache of template builds (internal/builds).
--     prefix_hash is the sha256 of a build's FROM template version and its
--     first `steps` steps (with the content hash of every COPY's archive);
--     template_id is a hidden image template of the build sandbox's disk
--     after those steps. A build of the same team starts from the deepest
--     cached prefix of its own steps. Never shared between teams; evicted
--     least recently used (a few per team).

-- +goose Up
ALTER TABLE templates ADD COLUMN hidden boolean NOT NULL DEFAULT false;

CREATE TABLE template_tags (
  team_id     uuid        NOT NULL REFERENCES teams (id),
  name        text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
  tag         text        NOT NULL CHECK (tag ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$'),
  template_id uuid        NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
  build_id    uuid        REFERENCES builds (id) ON DELETE SET NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (team_id, name, tag)
);
CREATE INDEX template_tags_template_idx ON template_tags (template_id);

CREATE TABLE build_layers (
  team_id      uuid        NOT NULL REFERENCES teams (id),
  prefix_hash  bytea       NOT NULL CHECK (length(prefix_hash) = 32),
  steps        integer     NOT NULL CHECK (steps > 0),
  template_id  uuid        NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (team_id, prefix_hash)
);
CREATE INDEX build_layers_template_idx ON build_layers (template_id);

-- +goose Down
DROP TABLE build_layers;
DROP TABLE template_tags;
DELETE FROM templates WHERE hidden;
ALTER TABLE templates DROP COLUMN hidden;
