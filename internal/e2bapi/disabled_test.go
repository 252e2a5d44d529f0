package e2bapi

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/service"
)

// TestDisabledUsersKey: the API key of a user a platform admin disabled
// answers 403 on the E2B facade from the next call on, and works again
// once the user is re-enabled.
func TestDisabledUsersKey(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	acc, err := f.acc.Signup(ctx, service.Signup{Email: "root@example.com", Password: "correct horse battery", IsAdmin: true})
	if err != nil {
		t.Fatal(err)
	}
	admin := acc.Principal()
	userBytes, userValid := f.teamA.UserID.UUID()
	userUUID := pgtype.UUID{Bytes: userBytes, Valid: userValid}
	admin.ActorName = acc.User.Email
	path := "/sandboxes/" + f.running
	for _, step := range []struct {
		name     string
		disabled bool
		want     int
	}{
		{"disabled", true, 403},
		{"re-enabled", false, 200},
	} {
		t.Run(step.name, func(t *testing.T) {
			if _, err := f.se.Admin.SetUserDisabled(ctx, admin, userUUID, step.disabled); err != nil {
				t.Fatal(err)
			}
			if r := f.do(t, "GET", path, f.keyA, nil); r.status != step.want {
				t.Fatalf("%d, want %d: %s", r.status, step.want, r.body)
			}
			if r := f.do(t, "GET", path, f.keyB, nil); r.status != 404 {
				t.Fatalf("another user's key: %d, want 404", r.status)
			}
		})
	}
}
