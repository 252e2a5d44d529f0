package service

import (
	"context"
	"fmt"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// revokedKeep is how long a revoked token's row outlives the token: its
// expiry plus the verification's tolerated clock skew, with margin.
const revokedKeep = 2 * auth.MaxLeeway

// RevokeSession revokes a session token before its expiry (a logout, or a
// dashboard cookie replaced on a team switch): AuthenticateJWT and
// AuthenticateUser refuse it from then on. A token that does not verify
// (expired, forged) needs no revocation: nil. Idempotent.
func (a *Accounts) RevokeSession(ctx context.Context, token string) error {
	claims, err := a.sessions.Verify(token)
	if err != nil {
		return nil
	}
	uid, err := wireid.Parse(wireid.User, claims.UserID)
	if err != nil {
		return nil
	}
	return a.st.Tx(ctx, func(q *db.Queries) error {
		err := q.RevokeSession(ctx, db.RevokeSessionParams{Jti: claims.ID, UserID: uid, ExpiresAt: claims.ExpiresAt})
		if err != nil {
			return fmt.Errorf("revoke session: %w", err)
		}
		if err := q.DeleteExpiredRevokedSessions(ctx, a.now().Add(-revokedKeep)); err != nil {
			return fmt.Errorf("revoke session: prune: %w", err)
		}
		return nil
	})
}

// verifySession verifies a session token and refuses a revoked one.
func (a *Accounts) verifySession(ctx context.Context, token string) (auth.SessionClaims, error) {
	claims, err := a.sessions.Verify(token)
	if err != nil {
		return auth.SessionClaims{}, &Error{Kind: ErrUnauthorized, Msg: "invalid or expired session token", Err: err}
	}
	revoked, err := a.st.Queries().IsSessionRevoked(ctx, claims.ID)
	if err != nil {
		return auth.SessionClaims{}, fmt.Errorf("authenticate session: %w", err)
	}
	if revoked {
		return auth.SessionClaims{}, errorf(ErrUnauthorized, "the session was signed out")
	}
	return claims, nil
}

// SessionExpiry authenticates a session token as AuthenticateUser does and
// answers when it expires (the dashboard turns a token from an OAuth login
// into its cookie, which must not outlive the token).
func (a *Accounts) SessionExpiry(ctx context.Context, token string) (Principal, time.Time, error) {
	p, err := a.AuthenticateUser(ctx, token)
	if err != nil {
		return Principal{}, time.Time{}, err
	}
	claims, err := a.sessions.Verify(token)
	if err != nil {
		return Principal{}, time.Time{}, &Error{Kind: ErrUnauthorized, Msg: "invalid or expired session token", Err: err}
	}
	return p, claims.ExpiresAt, nil
}
