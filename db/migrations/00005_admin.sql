-- Issue 11.7: the platform admin's surface.
--
--   * users.disabled_at: a disabled user (set by a platform admin) cannot
--     log in, and their sessions and the API keys they created stop
--     working on the next call (the authentication reads it every time);
--     clearing it re-enables the account, keys included. NULL: enabled.
--   * audit_logs_created_idx: the platform-wide audit log
--     (/v1/admin/audit-logs) pages newest first across every team.

-- +goose Up
ALTER TABLE users ADD COLUMN disabled_at timestamptz;
-- The active admins, locked together when one is disabled (never the last).
CREATE INDEX users_active_admins_idx ON users (id) WHERE is_admin AND disabled_at IS NULL;
CREATE INDEX audit_logs_created_idx ON audit_logs (created_at DESC, id DESC);

-- +goose Down
DROP INDEX IF EXISTS audit_logs_created_idx;
DROP INDEX IF EXISTS users_active_admins_idx;
ALTER TABLE users DROP COLUMN IF EXISTS disabled_at;
