-- name: RevokeSession :exec
-- (nothing for a deleted user: its tokens are refused anyway)
INSERT INTO revoked_sessions (jti, user_id, expires_at)
SELECT sqlc.arg(jti)::text, u.id, sqlc.arg(expires_at)::timestamptz FROM users u WHERE u.id = sqlc.arg(user_id)
ON CONFLICT (jti) DO NOTHING;

-- name: IsSessionRevoked :one
SELECT EXISTS (SELECT 1 FROM revoked_sessions WHERE jti = $1);

-- name: DeleteExpiredRevokedSessions :exec
DELETE FROM revoked_sessions WHERE expires_at < $1;
