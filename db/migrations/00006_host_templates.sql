-- Issue 11.4 and 11.6: what the scheduler reads of each host.
--
--   * host_templates: the templates whose files a host holds (its cache).
--     The scheduler prefers hosts that hold the requested template
--     (affinity); the replication of templates between hosts reads which
--     hosts hold one (a source), records a copy it made, and evicts the
--     least recently used when a host's disk runs low. A host's rows go
--     with the host; a template's rows go with the template (its deletion
--     reads the holders first, in the same transaction, to tell them).
--   * sandboxes_host_reservation_idx: what the sandboxes recorded on a host
--     reserve, summed per host by the scheduler's candidates query
--     (db/queries/scheduler.sql) with an index-only scan. It covers the
--     states that reserve something (internal/scheduler: Reservation), so
--     stopped sandboxes, the bulk of the table, are not in it.

-- +goose Up
CREATE TABLE host_templates (
  host_id      uuid        NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
  template_id  uuid        NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
  size_bytes   bigint      NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
  last_used_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (host_id, template_id)
);
-- The hosts that hold a template: a replication source, a deletion's fan-out.
CREATE INDEX host_templates_template_idx ON host_templates (template_id);
-- A host's templates least recently used first: LRU eviction.
CREATE INDEX host_templates_lru_idx ON host_templates (host_id, last_used_at);

CREATE INDEX sandboxes_host_reservation_idx ON sandboxes (host_id)
  INCLUDE (state, vcpus, memory_mb, disk_mb)
  WHERE host_id IS NOT NULL
    AND state IN ('starting', 'running', 'pausing', 'resuming', 'missing', 'paused', 'error');

-- +goose Down
DROP INDEX IF EXISTS sandboxes_host_reservation_idx;
DROP TABLE IF EXISTS host_templates;
