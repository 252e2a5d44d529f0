-- Issue 14.6: a sandbox's logs, kept after it stops.
--
-- What the platform records of a sandbox is served as its logs (GET
-- /v1/sandboxes/{id}/logs, E2B's /sandboxes/{id}/logs and
-- /v2/sandboxes/{id}/logs): its lifecycle events (the audit log's
-- sandbox.* rows, read by resource), and its serial console, where the
-- kernel and envd (the guest's PID 1, logging to stderr) write. The host
-- keeps the console in the sandbox's directory, which its destroy
-- deletes: the destroy's answer carries the console's tail (at most
-- 256 KiB), stored here, one row per sandbox. Rows go with their sandbox
-- and are pruned after service.LogsRetention by saved_at.

-- +goose Up
CREATE TABLE sandbox_logs (
  sandbox_id uuid        PRIMARY KEY REFERENCES sandboxes (id) ON DELETE CASCADE,
  -- The console's tail as the host had it (raw bytes: not necessarily
  -- UTF-8); truncated when older output was left out.
  console    bytea       NOT NULL CHECK (length(console) <= 1048576),
  truncated  boolean     NOT NULL DEFAULT false,
  saved_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandbox_logs_saved_idx ON sandbox_logs (saved_at);
-- A sandbox's lifecycle events: one index range per sandbox.
CREATE INDEX audit_logs_resource_idx ON audit_logs (team_id, resource_type, resource_id, created_at);

-- +goose Down
DROP INDEX IF EXISTS audit_logs_resource_idx;
DROP TABLE IF EXISTS sandbox_logs;
