-- Issue 15: the dashboard's logout revokes its session on the server.
--
-- Session tokens are JWTs (internal/auth): valid until they expire, with
-- nothing stored per session. revoked_sessions is the denylist of the ones
-- revoked before that (a logout, or the cookie replaced by a team switch),
-- by the token's "jti"; every session authentication reads it. A row is
-- needed only until its token's expiry: revoking deletes the rows whose
-- tokens expired (expires_at) long enough ago to be refused anyway.

-- +goose Up
CREATE TABLE revoked_sessions (
    jti        text        PRIMARY KEY,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX revoked_sessions_expires_idx ON revoked_sessions (expires_at);

-- +goose Down
DROP TABLE IF EXISTS revoked_sessions;
