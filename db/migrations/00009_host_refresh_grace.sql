-- Issue 11.2: the refresh grace of internal/hostapi (Credentials). An agent
-- that dies after the control plane answered a refresh but before it stored
-- the answer comes back with the previous refresh token; that token is
-- accepted once more as long as nothing of the new credentials was used.
--
--   * access_token_id: the "jti" of the access token issued with this
--     refresh token ('' for tokens issued before this migration).
--   * used_at: the credentials issued with this token were used (a
--     heartbeat with that access token). Its predecessor is then past its
--     grace. (A refresh with the token itself revokes it, which ends the
--     grace too.)
--   * grace_spent_at: this revoked token has no grace (left): it was
--     accepted once more already, or it was the unused successor a replay
--     of its predecessor replaced. Presented again it is a reuse and
--     revokes the family.

-- +goose Up
ALTER TABLE host_refresh_tokens
  ADD COLUMN access_token_id text NOT NULL DEFAULT '',
  ADD COLUMN used_at         timestamptz,
  ADD COLUMN grace_spent_at  timestamptz;

-- +goose Down
ALTER TABLE host_refresh_tokens
  DROP COLUMN IF EXISTS grace_spent_at,
  DROP COLUMN IF EXISTS used_at,
  DROP COLUMN IF EXISTS access_token_id;
