package service

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
)

// TestRevokeSession: a revoked session token is refused by both session
// authentications until and after its expiry; revoking is idempotent and a
// token that does not verify needs none; the denylist forgets a token once
// it has expired (pruned by a later revocation), on the injected clock.
func TestRevokeSession(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	clock := time.Now()
	now := func() time.Time { mu.Lock(); defer mu.Unlock(); return clock }
	advance := func(d time.Duration) { mu.Lock(); clock = clock.Add(d); mu.Unlock() }

	st, s := testServices(t, map[string]agentclient.Endpoint{LocalHost: {URL: unreachable, Token: "unused"}},
		func(c *ServicesConfig) { c.Now = now })
	acc := s.Accounts
	var err error
	// The tokens' clock is the test's too (issue, expiry, verification).
	if acc.sessions, err = auth.NewSessionManager(auth.SessionConfig{Secret: testSecret, Now: now}); err != nil {
		t.Fatal(err)
	}
	if _, err := acc.Signup(ctx, Signup{Email: "rev@example.com", Password: "correct horse battery"}); err != nil {
		t.Fatal(err)
	}
	login := func() (string, string) {
		sess, err := acc.Login(ctx, "rev@example.com", "correct horse battery")
		if err != nil {
			t.Fatal(err)
		}
		c, err := acc.sessions.Verify(sess.Token)
		if err != nil {
			t.Fatal(err)
		}
		return sess.Token, c.ID
	}
	revoked := func(jti string) bool {
		ok, err := st.Queries().IsSessionRevoked(ctx, jti)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	first, firstID := login()
	other, _ := login()

	t.Run("revoked token is refused", func(t *testing.T) {
		if _, err := acc.AuthenticateJWT(ctx, first); err != nil {
			t.Fatalf("before revocation: %v", err)
		}
		if err := acc.RevokeSession(ctx, first); err != nil {
			t.Fatal(err)
		}
		if _, err := acc.AuthenticateJWT(ctx, first); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("AuthenticateJWT of a revoked token: %v, want unauthorized", err)
		}
		if _, err := acc.AuthenticateUser(ctx, first); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("AuthenticateUser of a revoked token: %v, want unauthorized", err)
		}
		if _, _, err := acc.SessionExpiry(ctx, first); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("SessionExpiry of a revoked token: %v, want unauthorized", err)
		}
	})
	t.Run("another session of the user still works", func(t *testing.T) {
		if _, err := acc.AuthenticateJWT(ctx, other); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("idempotent, and nothing to do for a token that does not verify", func(t *testing.T) {
		for _, tok := range []string{first, "garbage", ""} {
			if err := acc.RevokeSession(ctx, tok); err != nil {
				t.Fatalf("RevokeSession(%.12q): %v", tok, err)
			}
		}
	})
	t.Run("an expired token's row is pruned by a later revocation", func(t *testing.T) {
		if !revoked(firstID) {
			t.Fatal("the revoked token is not in the denylist")
		}
		advance(auth.DefaultSessionTTL + revokedKeep + time.Minute)
		later, laterID := login()
		if err := acc.RevokeSession(ctx, later); err != nil {
			t.Fatal(err)
		}
		if revoked(firstID) {
			t.Fatal("the expired token's row was kept")
		}
		if !revoked(laterID) {
			t.Fatal("the fresh revocation was pruned")
		}
		if _, err := acc.AuthenticateJWT(ctx, first); !errors.Is(err, ErrUnauthorized) {
			t.Fatalf("the expired, pruned token: %v, want unauthorized", err)
		}
	})
}
