package main

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/service/servicetest"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestBootstrapAdminIsPlatformAdmin: the first start on an empty database
// creates the --admin-email user as a platform admin (users.is_admin,
// what every /v1/admin call checks) with its credentials in admin.json;
// a later start creates no other, and neither does a start over a
// database that has users but lost admin.json.
func TestBootstrapAdminIsPlatformAdmin(t *testing.T) {
	ctx := context.Background()
	se := servicetest.New(t, "", "")
	o := &serveOptions{adminEmail: "ops@example.com"}
	o.dataDir = t.TempDir()
	log := slog.New(slog.DiscardHandler)
	count := func() int64 {
		t.Helper()
		n, err := se.Store.Queries().CountUsers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}

	t.Run("first start", func(t *testing.T) {
		if err := bootstrapAdmin(ctx, o, se.Store, se.Accounts, log); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(o.dataDir, "admin.json"))
		if err != nil {
			t.Fatal(err)
		}
		var af adminFile
		if err := json.Unmarshal(b, &af); err != nil || af.Email != o.adminEmail || af.Password == "" || af.APIKey == "" {
			t.Fatalf("admin.json: %+v, %v", af, err)
		}
		uid, err := wireid.Parse(wireid.User, af.UserID)
		if err != nil {
			t.Fatal(err)
		}
		u, err := se.Store.Queries().GetUser(ctx, uid)
		if err != nil || !u.IsAdmin || u.DisabledAt.Valid {
			t.Fatalf("the bootstrap user: %+v, %v", u, err)
		}
		sess, err := se.Accounts.Login(ctx, af.Email, af.Password)
		if err != nil {
			t.Fatal(err)
		}
		p, err := se.Accounts.AuthenticateUser(ctx, sess.Token)
		if err != nil {
			t.Fatal(err)
		}
		if err := se.Admin.Authorize(ctx, p); err != nil {
			t.Fatalf("the bootstrap admin is refused as a platform admin: %v", err)
		}
		if count() != 1 {
			t.Fatalf("%d users", count())
		}
	})
	t.Run("second start", func(t *testing.T) {
		if err := bootstrapAdmin(ctx, o, se.Store, se.Accounts, log); err != nil || count() != 1 {
			t.Fatalf("%v, %d users", err, count())
		}
	})
	t.Run("admin.json lost", func(t *testing.T) {
		if err := os.Remove(filepath.Join(o.dataDir, "admin.json")); err != nil {
			t.Fatal(err)
		}
		if err := bootstrapAdmin(ctx, o, se.Store, se.Accounts, log); err != nil || count() != 1 {
			t.Fatalf("%v, %d users", err, count())
		}
	})
	// An ordinary sign-up is no admin.
	acc, err := se.Accounts.Signup(ctx, service.Signup{Email: "user@example.com", Password: "correct horse battery"})
	if err != nil || acc.User.IsAdmin {
		t.Fatalf("sign-up: %+v, %v", acc.User, err)
	}
}
