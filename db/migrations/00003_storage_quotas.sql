-- Issue 9.6: what a full disk or a failed pause may no longer do.
--
--   * teams.max_paused_sandboxes, teams.max_stored_mb: per-team quotas on
--     paused sandboxes and on stored bytes (paused sandboxes' memory and
--     snapshot templates); NULL means "the platform default" (flags of
--     capsule serve), as for the other quota columns.
--   * sandboxes.pause_failures: consecutive auto-pauses the host refused;
--     the reaper backs off by it and, past its limit, leaves the sandbox in
--     state error (its disk kept), never destroyed. A pause resets it.

-- +goose Up
ALTER TABLE teams
  ADD COLUMN max_paused_sandboxes integer CHECK (max_paused_sandboxes >= 0),
  ADD COLUMN max_stored_mb        bigint  CHECK (max_stored_mb >= 0);
ALTER TABLE sandboxes
  ADD COLUMN pause_failures integer NOT NULL DEFAULT 0 CHECK (pause_failures >= 0);

-- +goose Down
ALTER TABLE sandboxes DROP COLUMN IF EXISTS pause_failures;
ALTER TABLE teams
  DROP COLUMN IF EXISTS max_stored_mb,
  DROP COLUMN IF EXISTS max_paused_sandboxes;
