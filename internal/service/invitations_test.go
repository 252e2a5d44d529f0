package service

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
)

// withPolicy returns accounts over e's database with another sign-up
// policy ("" : the default).
func withPolicy(t *testing.T, e *env, p SignupPolicy) *Accounts {
	t.Helper()
	a, err := NewAccounts(AccountsConfig{Store: e.st, Hasher: e.acc.hasher, Sessions: e.acc.sessions, Signup: p})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestSignupPolicyService: the default policy is invite; a first OAuth
// login registers nobody unless sign-up is open; the bootstrap admin is
// exempt; an unknown policy is refused.
func TestSignupPolicyService(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	if got := withPolicy(t, e, "").SignupPolicy(); got != SignupInvite {
		t.Fatalf("default policy %q, want invite", got)
	}
	if _, err := NewAccounts(AccountsConfig{Store: e.st, Hasher: e.acc.hasher, Sessions: e.acc.sessions, Signup: "sometimes"}); err == nil {
		t.Fatal("an unknown policy was accepted")
	}
	for _, p := range []SignupPolicy{SignupInvite, SignupClosed} {
		t.Run(string(p), func(t *testing.T) {
			a := withPolicy(t, e, p)
			email := "octo-" + string(p) + "@example.com"
			if _, err := a.Signup(ctx, Signup{Email: email, Password: "correct horse battery"}); !errors.Is(err, ErrForbidden) {
				t.Fatalf("signup: %v, want ErrForbidden", err)
			}
			if _, err := a.OAuthLogin(ctx, "github", ghProfile("id-"+string(p), email), pgtype.UUID{}); !errors.Is(err, ErrForbidden) {
				t.Fatalf("OAuth registration: %v, want ErrForbidden", err)
			}
			if _, err := e.st.Queries().GetUserByEmail(ctx, email); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("a user was created: %v", err)
			}
			admin, err := a.Signup(ctx, Signup{Email: "admin-" + string(p) + "@example.com", Password: "correct horse battery", IsAdmin: true})
			if err != nil || !admin.User.IsAdmin || admin.Role != RoleOwner {
				t.Fatalf("bootstrap admin: %+v, %v", admin, err)
			}
			// The admin's key (as capsule serve makes it) works.
			p := Principal{UserID: userIDOf(admin.User.ID), TeamID: teamIDOf(admin.Team.ID), Role: admin.Role}
			k, err := a.CreateAPIKey(ctx, p, "admin")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.AuthenticateAPIKey(ctx, k.Plaintext); err != nil {
				t.Fatalf("the admin's key: %v", err)
			}
		})
	}
}

// TestAPIKeyPrincipalRefused: an API key's principal creates and revokes
// no keys.
func TestAPIKeyPrincipalRefused(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, p := e.signup(t, "a@example.com")
	k, err := e.acc.CreateAPIKey(ctx, p, "ci")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := e.acc.AuthenticateAPIKey(ctx, k.Plaintext)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.acc.CreateAPIKey(ctx, kp, "minted"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("create with a key: %v", err)
	}
	if err := e.acc.RevokeAPIKey(ctx, kp, apiKeyIDOf(k.Key.ID)); !errors.Is(err, ErrForbidden) {
		t.Fatalf("revoke with a key: %v", err)
	}
	if ks, _ := e.acc.ListAPIKeys(ctx, p); len(ks) != 1 {
		t.Fatalf("%d keys, want 1", len(ks))
	}
}
