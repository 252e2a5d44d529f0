package store_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// fixture: a user who owns a team.
type fixture struct {
	st   *store.Store
	q    *db.Queries
	user db.User
	team db.Team
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st := newStore(t)
	f := &fixture{st: st, q: st.Queries()}
	f.user = f.mkUser(t, "owner@example.com")
	f.team = f.mkTeam(t, "Team A", f.user.ID)
	return f
}

func (f *fixture) mkUser(t *testing.T, email string) db.User {
	t.Helper()
	return must[db.User](t)(f.q.CreateUser(ctx(t), db.CreateUserParams{
		Email: email, Name: "N " + email, PasswordHash: pgtype.Text{String: "hash", Valid: true},
	}))
}

func (f *fixture) mkTeam(t *testing.T, name string, owner pgtype.UUID) db.Team {
	t.Helper()
	team := must[db.Team](t)(f.q.CreateTeam(ctx(t), db.CreateTeamParams{Name: name}))
	if owner.Valid {
		must[db.Membership](t)(f.q.AddTeamMember(ctx(t), db.AddTeamMemberParams{UserID: owner, TeamID: team.ID, Role: store.RoleOwner}))
	}
	return team
}

func (f *fixture) mkSandbox(t *testing.T, q *db.Queries, team pgtype.UUID, state, metadata string) db.Sandbox {
	t.Helper()
	if q == nil {
		q = f.q
	}
	return must[db.Sandbox](t)(q.InsertSandbox(ctx(t), db.InsertSandboxParams{
		TeamID: team, Template: "base", State: state, VCPUs: 2, MemoryMB: 512,
		Metadata: jsonRaw(metadata),
	}))
}

func TestUsers(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	u := f.user
	if !u.ID.Valid || u.Email != "owner@example.com" || u.IsAdmin || u.DefaultTeamID.Valid || u.CreatedAt.IsZero() {
		t.Fatalf("created user = %+v", u)
	}
	if got := must[db.User](t)(q.GetUser(ctx(t), u.ID)); got.Email != u.Email {
		t.Errorf("GetUser = %+v", got)
	}
	if got := must[db.User](t)(q.GetUserByEmail(ctx(t), "OWNER@Example.COM")); got.ID != u.ID {
		t.Errorf("GetUserByEmail is case-sensitive: %+v", got)
	}
	_, err := q.GetUser(ctx(t), store.NewUUID())
	mustIs(t, err, store.ErrNotFound)
	_, err = q.GetUserByEmail(ctx(t), "nobody@example.com")
	mustIs(t, err, store.ErrNotFound)

	// The same address in other case is taken.
	_, err = q.CreateUser(ctx(t), db.CreateUserParams{Email: "Owner@EXAMPLE.com"})
	mustIs(t, err, store.ErrConflict)
	if c := store.ConstraintName(err); c != "users_email_key" {
		t.Errorf("constraint = %q", c)
	}
	for _, bad := range []string{"no-at-sign", "@example.com", ""} {
		_, err = q.CreateUser(ctx(t), db.CreateUserParams{Email: bad})
		mustIs(t, err, store.ErrInvalid)
	}

	// An OAuth-only account has no password.
	oauthOnly := must[db.User](t)(q.CreateUser(ctx(t), db.CreateUserParams{Email: "gh@example.com"}))
	if oauthOnly.PasswordHash.Valid {
		t.Error("password hash set")
	}
	if err := q.SetUserPassword(ctx(t), db.SetUserPasswordParams{ID: oauthOnly.ID, PasswordHash: pgtype.Text{String: "h2", Valid: true}}); err != nil {
		t.Fatal(err)
	}
	if err := q.SetUserAdmin(ctx(t), db.SetUserAdminParams{ID: oauthOnly.ID, IsAdmin: true}); err != nil {
		t.Fatal(err)
	}
	if err := q.SetUserDefaultTeam(ctx(t), db.SetUserDefaultTeamParams{ID: oauthOnly.ID, TeamID: f.team.ID}); err != nil {
		t.Fatal(err)
	}
	renamed := must[db.User](t)(q.UpdateUserName(ctx(t), db.UpdateUserNameParams{ID: oauthOnly.ID, Name: "Grace"}))
	if renamed.Name != "Grace" || renamed.PasswordHash.String != "h2" || !renamed.IsAdmin || renamed.DefaultTeamID != f.team.ID {
		t.Errorf("after updates: %+v", renamed)
	}
	if !renamed.UpdatedAt.After(oauthOnly.UpdatedAt) && !renamed.UpdatedAt.Equal(oauthOnly.UpdatedAt) {
		t.Errorf("updated_at went back")
	}
	_, err = q.UpdateUserName(ctx(t), db.UpdateUserNameParams{ID: store.NewUUID(), Name: "x"})
	mustIs(t, err, store.ErrNotFound)
	if n := must[int64](t)(q.CountUsers(ctx(t))); n != 2 {
		t.Errorf("CountUsers = %d", n)
	}
}

func TestSearchUsersByEmailPrefix(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	for _, e := range []string{"alice@example.com", "al_ice@example.com", "al%ce@example.com", "alxice@example.com",
		`al\ice@example.com`, "bob@example.com", "ALBERT@example.com"} {
		f.mkUser(t, e)
	}
	cases := []struct {
		prefix string
		max    int32
		want   []string
	}{
		// Sorted by lower(email), bytewise.
		{"al", 10, []string{"al%ce@example.com", `al\ice@example.com`, "al_ice@example.com", "ALBERT@example.com", "alice@example.com", "alxice@example.com"}},
		{"AL", 2, []string{"al%ce@example.com", `al\ice@example.com`}},
		{"al_", 10, []string{"al_ice@example.com"}}, // _ is not "any character"
		{"al%", 10, []string{"al%ce@example.com"}},  // % is not "anything"
		{`al\`, 10, []string{`al\ice@example.com`}}, // \ is not an escape
		{"%", 10, []string{}},
		{"_", 10, []string{}},
		{"alb", 10, []string{"ALBERT@example.com"}},
		{"bob@", 10, []string{"bob@example.com"}},
		{"zzz", 10, []string{}},
	}
	for _, c := range cases {
		t.Run(c.prefix, func(t *testing.T) {
			rows := must[[]db.SearchUsersByEmailPrefixRow](t)(f.q.SearchUsersByEmailPrefix(ctx(t),
				db.SearchUsersByEmailPrefixParams{Prefix: c.prefix, MaxResults: c.max}))
			got := []string{}
			for _, r := range rows {
				got = append(got, r.Email)
				if !r.ID.Valid || r.Name == "" {
					t.Errorf("row %+v", r)
				}
			}
			if !slices.Equal(got, c.want) {
				t.Errorf("got  %q\nwant %q", got, c.want)
			}
		})
	}
}

var slugRE = regexp.MustCompile(`^[0-9a-f]{6}-[0-9a-f]{6}$`)

func TestTeams(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	if !slugRE.MatchString(f.team.Slug) {
		t.Errorf("generated slug %q", f.team.Slug)
	}
	named := must[db.Team](t)(q.CreateTeam(ctx(t), db.CreateTeamParams{Name: "B", Slug: pgtype.Text{String: "team-b", Valid: true}}))
	if named.Slug != "team-b" {
		t.Errorf("slug = %q", named.Slug)
	}
	_, err := q.CreateTeam(ctx(t), db.CreateTeamParams{Name: "B2", Slug: pgtype.Text{String: "team-b", Valid: true}})
	mustIs(t, err, store.ErrConflict)
	for _, bad := range []string{"Team-B", "-x", "x-", "a b", "a/b"} {
		_, err = q.CreateTeam(ctx(t), db.CreateTeamParams{Name: "B3", Slug: pgtype.Text{String: bad, Valid: true}})
		mustIs(t, err, store.ErrInvalid)
	}
	_, err = q.CreateTeam(ctx(t), db.CreateTeamParams{Name: ""})
	mustIs(t, err, store.ErrInvalid)

	if got := must[db.Team](t)(q.GetTeam(ctx(t), named.ID)); got.Name != "B" {
		t.Errorf("GetTeam = %+v", got)
	}
	if got := must[db.Team](t)(q.GetTeamBySlug(ctx(t), "team-b")); got.ID != named.ID {
		t.Errorf("GetTeamBySlug = %+v", got)
	}
	renamed := must[db.Team](t)(q.RenameTeam(ctx(t), db.RenameTeamParams{ID: named.ID, Name: "B's team @ work"}))
	if renamed.Name != "B's team @ work" || renamed.Slug != "team-b" {
		t.Errorf("renamed = %+v", renamed)
	}
	// The slug is immutable, whatever the statement.
	_, err = f.st.Pool().Exec(ctx(t), "UPDATE teams SET slug = 'other' WHERE id = $1", named.ID)
	if store.Classify(err) == nil || !errors.Is(store.Classify(err), store.ErrInvalid) {
		t.Errorf("slug update: %v", err)
	}

	byoc := must[db.Team](t)(q.SetTeamBYOC(ctx(t), db.SetTeamBYOCParams{ID: named.ID, IsBYOC: true}))
	if !byoc.IsBYOC {
		t.Error("SetTeamBYOC")
	}
	quotas := must[db.Team](t)(q.SetTeamQuotas(ctx(t), db.SetTeamQuotasParams{
		ID:                  named.ID,
		MaxRunningSandboxes: pgtype.Int4{Int32: 5, Valid: true},
		MaxTotalMemoryMB:    pgtype.Int8{Int64: 8192, Valid: true},
	}))
	if quotas.MaxRunningSandboxes.Int32 != 5 || quotas.MaxTotalMemoryMB.Int64 != 8192 || quotas.MaxVCPUsPerSandbox.Valid {
		t.Errorf("quotas = %+v", quotas)
	}
	_, err = q.SetTeamQuotas(ctx(t), db.SetTeamQuotasParams{ID: named.ID, MaxTotalVCPUs: pgtype.Int4{Int32: -1, Valid: true}})
	mustIs(t, err, store.ErrInvalid)

	// LockTeam holds the row until the transaction ends.
	err = f.st.Tx(ctx(t), func(tq *db.Queries) error {
		locked, err := tq.LockTeam(ctx(t), named.ID)
		if err != nil || locked.ID != named.ID {
			return fmt.Errorf("LockTeam = %+v, %v", locked, err)
		}
		var nowait error
		_, nowait = f.st.Pool().Exec(ctx(t), "SELECT 1 FROM teams WHERE id = $1 FOR UPDATE NOWAIT", named.ID)
		if nowait == nil {
			return errors.New("the team row is not locked")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Soft delete: gone for every query, slug stays reserved.
	deleted := must[db.Team](t)(q.SoftDeleteTeam(ctx(t), named.ID))
	if !deleted.DeletedAt.Valid {
		t.Error("deleted_at not set")
	}
	for name, fn := range map[string]func() error{
		"GetTeam":       func() error { _, err := q.GetTeam(ctx(t), named.ID); return err },
		"GetTeamBySlug": func() error { _, err := q.GetTeamBySlug(ctx(t), "team-b"); return err },
		"RenameTeam":    func() error { _, err := q.RenameTeam(ctx(t), db.RenameTeamParams{ID: named.ID, Name: "x"}); return err },
		"SoftDelete":    func() error { _, err := q.SoftDeleteTeam(ctx(t), named.ID); return err },
		"LockTeam":      func() error { _, err := q.LockTeam(ctx(t), named.ID); return err },
		"SetTeamBYOC":   func() error { _, err := q.SetTeamBYOC(ctx(t), db.SetTeamBYOCParams{ID: named.ID}); return err },
		"SetTeamQuotas": func() error { _, err := q.SetTeamQuotas(ctx(t), db.SetTeamQuotasParams{ID: named.ID}); return err },
	} {
		if err := fn(); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s on a deleted team: %v", name, err)
		}
	}
	_, err = q.CreateTeam(ctx(t), db.CreateTeamParams{Name: "reuse", Slug: pgtype.Text{String: "team-b", Valid: true}})
	mustIs(t, err, store.ErrConflict)

	// The platform team cannot be deleted, by the query or otherwise.
	_, err = q.SoftDeleteTeam(ctx(t), store.PlatformTeamID)
	mustIs(t, err, store.ErrNotFound)
	_, err = f.st.Pool().Exec(ctx(t), "UPDATE teams SET deleted_at = now() WHERE id = $1", store.PlatformTeamID)
	mustIs(t, store.Classify(err), store.ErrInvalid)
	if p := must[db.Team](t)(q.GetTeam(ctx(t), store.PlatformTeamID)); p.Name != "Platform" {
		t.Errorf("platform team = %+v", p)
	}
}

func TestMembershipsAndDefaultTeam(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	bob := f.mkUser(t, "bob@example.com")
	carol := f.mkUser(t, "carol@example.com")
	teamA := f.team

	m := must[db.Membership](t)(q.AddTeamMember(ctx(t), db.AddTeamMemberParams{UserID: bob.ID, TeamID: teamA.ID, Role: store.RoleMember}))
	if m.Role != "member" || m.CreatedAt.IsZero() {
		t.Errorf("membership = %+v", m)
	}
	_, err := q.AddTeamMember(ctx(t), db.AddTeamMemberParams{UserID: bob.ID, TeamID: teamA.ID, Role: store.RoleAdmin})
	mustIs(t, err, store.ErrConflict)
	_, err = q.AddTeamMember(ctx(t), db.AddTeamMemberParams{UserID: carol.ID, TeamID: teamA.ID, Role: "superuser"})
	mustIs(t, err, store.ErrInvalid)
	_, err = q.AddTeamMember(ctx(t), db.AddTeamMemberParams{UserID: store.NewUUID(), TeamID: teamA.ID, Role: store.RoleMember})
	mustIs(t, err, store.ErrConflict) // foreign key

	if got := must[db.Membership](t)(q.GetMembership(ctx(t), db.GetMembershipParams{UserID: bob.ID, TeamID: teamA.ID})); got.Role != "member" {
		t.Errorf("GetMembership = %+v", got)
	}
	_, err = q.GetMembership(ctx(t), db.GetMembershipParams{UserID: carol.ID, TeamID: teamA.ID})
	mustIs(t, err, store.ErrNotFound)

	up := must[db.Membership](t)(q.UpdateTeamMemberRole(ctx(t), db.UpdateTeamMemberRoleParams{UserID: bob.ID, TeamID: teamA.ID, Role: store.RoleOwner}))
	if up.Role != "owner" {
		t.Errorf("role = %q", up.Role)
	}
	if n := must[int64](t)(q.CountTeamOwners(ctx(t), teamA.ID)); n != 2 {
		t.Errorf("owners = %d", n)
	}
	_, err = q.UpdateTeamMemberRole(ctx(t), db.UpdateTeamMemberRoleParams{UserID: carol.ID, TeamID: teamA.ID, Role: store.RoleAdmin})
	mustIs(t, err, store.ErrNotFound)

	members := must[[]db.ListTeamMembersRow](t)(q.ListTeamMembers(ctx(t), teamA.ID))
	if len(members) != 2 || members[0].Email != "owner@example.com" || members[1].Email != "bob@example.com" || members[1].Name == "" {
		t.Errorf("members = %+v", members)
	}

	// Teams of a user, and the one a login lands in.
	teamB := f.mkTeam(t, "Team B", bob.ID)
	teamC := f.mkTeam(t, "Team C", bob.ID)
	list := must[[]db.ListTeamsForUserRow](t)(q.ListTeamsForUser(ctx(t), bob.ID))
	if len(list) != 3 || list[0].Team.ID != teamA.ID || list[1].Team.ID != teamB.ID || list[0].Role != "owner" || list[0].JoinedAt.IsZero() {
		t.Errorf("teams of bob = %+v", list)
	}
	def := must[db.GetDefaultTeamForUserRow](t)(q.GetDefaultTeamForUser(ctx(t), bob.ID))
	if def.Team.ID != teamA.ID {
		t.Errorf("default without a choice = %s, want the oldest membership", def.Team.Name)
	}
	if err := q.SetUserDefaultTeam(ctx(t), db.SetUserDefaultTeamParams{ID: bob.ID, TeamID: teamC.ID}); err != nil {
		t.Fatal(err)
	}
	def = must[db.GetDefaultTeamForUserRow](t)(q.GetDefaultTeamForUser(ctx(t), bob.ID))
	if def.Team.ID != teamC.ID || def.Role != "owner" {
		t.Errorf("default = %s", def.Team.Name)
	}
	// A deleted default team falls back to the oldest live membership, and
	// deleted teams are not listed.
	must[db.Team](t)(q.SoftDeleteTeam(ctx(t), teamC.ID))
	def = must[db.GetDefaultTeamForUserRow](t)(q.GetDefaultTeamForUser(ctx(t), bob.ID))
	if def.Team.ID != teamA.ID {
		t.Errorf("default after deleting it = %s", def.Team.Name)
	}
	if list := must[[]db.ListTeamsForUserRow](t)(q.ListTeamsForUser(ctx(t), bob.ID)); len(list) != 2 {
		t.Errorf("%d teams listed after a delete", len(list))
	}
	_, err = q.GetMembership(ctx(t), db.GetMembershipParams{UserID: bob.ID, TeamID: teamC.ID})
	mustIs(t, err, store.ErrNotFound)

	if n := must[int64](t)(q.RemoveTeamMember(ctx(t), db.RemoveTeamMemberParams{UserID: bob.ID, TeamID: teamA.ID})); n != 1 {
		t.Errorf("removed %d", n)
	}
	if n := must[int64](t)(q.RemoveTeamMember(ctx(t), db.RemoveTeamMemberParams{UserID: bob.ID, TeamID: teamA.ID})); n != 0 {
		t.Errorf("removed %d twice", n)
	}
	if n := must[int64](t)(q.CountTeamOwners(ctx(t), teamA.ID)); n != 1 {
		t.Errorf("owners = %d", n)
	}
	_, err = q.GetDefaultTeamForUser(ctx(t), carol.ID)
	mustIs(t, err, store.ErrNotFound)
}

func keyHash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func TestAPIKeys(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	other := f.mkTeam(t, "Other", pgtype.UUID{})
	k := must[db.TeamAPIKey](t)(q.CreateAPIKey(ctx(t), db.CreateAPIKeyParams{
		TeamID: f.team.ID, Name: "ci", Prefix: "cap_1234", KeyHash: keyHash("secret1"), CreatedBy: f.user.ID,
	}))
	if k.LastUsedAt.Valid || k.RevokedAt.Valid || k.CreatedBy != f.user.ID {
		t.Errorf("key = %+v", k)
	}
	for name, p := range map[string]db.CreateAPIKeyParams{
		"same hash":      {TeamID: other.ID, Name: "x", Prefix: "cap_", KeyHash: keyHash("secret1")},
		"same live name": {TeamID: f.team.ID, Name: "ci", Prefix: "cap_", KeyHash: keyHash("secret2")},
	} {
		_, err := q.CreateAPIKey(ctx(t), p)
		if !errors.Is(err, store.ErrConflict) {
			t.Errorf("%s: %v", name, err)
		}
	}
	_, err := q.CreateAPIKey(ctx(t), db.CreateAPIKeyParams{TeamID: f.team.ID, Name: "short", Prefix: "cap_", KeyHash: []byte("short")})
	mustIs(t, err, store.ErrInvalid)
	// Another team may use the same name.
	must[db.TeamAPIKey](t)(q.CreateAPIKey(ctx(t), db.CreateAPIKeyParams{TeamID: other.ID, Name: "ci", Prefix: "cap_", KeyHash: keyHash("other")}))

	// Authentication records the use (at most once a minute).
	a := must[db.AuthenticateAPIKeyRow](t)(q.AuthenticateAPIKey(ctx(t), keyHash("secret1")))
	if a.ID != k.ID || a.TeamID != f.team.ID || a.LastUsedAt.Valid {
		t.Errorf("first authentication = %+v", a)
	}
	a = must[db.AuthenticateAPIKeyRow](t)(q.AuthenticateAPIKey(ctx(t), keyHash("secret1")))
	if !a.LastUsedAt.Valid || time.Since(a.LastUsedAt.Time) > time.Minute {
		t.Errorf("last_used_at after use = %+v", a.LastUsedAt)
	}
	first := a.LastUsedAt.Time
	a = must[db.AuthenticateAPIKeyRow](t)(q.AuthenticateAPIKey(ctx(t), keyHash("secret1")))
	if !a.LastUsedAt.Time.Equal(first) {
		t.Error("last_used_at rewritten within a minute")
	}
	// An hour later it is written again.
	if _, err := f.st.Pool().Exec(ctx(t), "UPDATE team_api_keys SET last_used_at = now() - interval '1 hour' WHERE id = $1", k.ID); err != nil {
		t.Fatal(err)
	}
	must[db.AuthenticateAPIKeyRow](t)(q.AuthenticateAPIKey(ctx(t), keyHash("secret1")))
	got := must[db.TeamAPIKey](t)(q.GetAPIKey(ctx(t), db.GetAPIKeyParams{ID: k.ID, TeamID: f.team.ID}))
	if time.Since(got.LastUsedAt.Time) > time.Minute {
		t.Errorf("last_used_at not refreshed: %v", got.LastUsedAt.Time)
	}
	_, err = q.AuthenticateAPIKey(ctx(t), keyHash("wrong"))
	mustIs(t, err, store.ErrNotFound)

	// Team-scoped reads.
	_, err = q.GetAPIKey(ctx(t), db.GetAPIKeyParams{ID: k.ID, TeamID: other.ID})
	mustIs(t, err, store.ErrNotFound)
	k2 := must[db.TeamAPIKey](t)(q.CreateAPIKey(ctx(t), db.CreateAPIKeyParams{TeamID: f.team.ID, Name: "dev", Prefix: "cap_9", KeyHash: keyHash("secret3")}))
	keys := must[[]db.TeamAPIKey](t)(q.ListAPIKeys(ctx(t), f.team.ID))
	if len(keys) != 2 || keys[0].ID != k2.ID || keys[1].ID != k.ID {
		t.Errorf("ListAPIKeys = %+v", keys)
	}

	// Revocation: once, by the owning team; the key stops working and frees
	// its name.
	_, err = q.RevokeAPIKey(ctx(t), db.RevokeAPIKeyParams{ID: k.ID, TeamID: other.ID})
	mustIs(t, err, store.ErrNotFound)
	r := must[db.TeamAPIKey](t)(q.RevokeAPIKey(ctx(t), db.RevokeAPIKeyParams{ID: k.ID, TeamID: f.team.ID}))
	if !r.RevokedAt.Valid {
		t.Error("revoked_at not set")
	}
	_, err = q.RevokeAPIKey(ctx(t), db.RevokeAPIKeyParams{ID: k.ID, TeamID: f.team.ID})
	mustIs(t, err, store.ErrNotFound)
	_, err = q.AuthenticateAPIKey(ctx(t), keyHash("secret1"))
	mustIs(t, err, store.ErrNotFound)
	if keys := must[[]db.TeamAPIKey](t)(q.ListAPIKeys(ctx(t), f.team.ID)); len(keys) != 1 {
		t.Errorf("%d keys listed after a revocation", len(keys))
	}
	must[db.TeamAPIKey](t)(q.CreateAPIKey(ctx(t), db.CreateAPIKeyParams{TeamID: f.team.ID, Name: "ci", Prefix: "cap_", KeyHash: keyHash("secret4")}))

	// The keys of a deleted team stop working.
	must[db.Team](t)(q.SoftDeleteTeam(ctx(t), f.team.ID))
	_, err = q.AuthenticateAPIKey(ctx(t), keyHash("secret3"))
	mustIs(t, err, store.ErrNotFound)
}

func TestOAuthProviders(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	l := must[db.OAuthProvider](t)(q.LinkOAuthProvider(ctx(t), db.LinkOAuthProviderParams{
		UserID: f.user.ID, Provider: "github", ProviderUserID: "42", Email: "owner@example.com",
	}))
	if got := must[db.OAuthProvider](t)(q.GetOAuthProvider(ctx(t), db.GetOAuthProviderParams{Provider: "github", ProviderUserID: "42"})); got.ID != l.ID || got.UserID != f.user.ID {
		t.Errorf("GetOAuthProvider = %+v", got)
	}
	bob := f.mkUser(t, "bob@example.com")
	for name, p := range map[string]db.LinkOAuthProviderParams{
		// Two sign-ups racing for one GitHub account: the loser retries as a login.
		"identity taken": {UserID: bob.ID, Provider: "github", ProviderUserID: "42"},
		"second github":  {UserID: f.user.ID, Provider: "github", ProviderUserID: "43"},
	} {
		if _, err := q.LinkOAuthProvider(ctx(t), p); !errors.Is(err, store.ErrConflict) {
			t.Errorf("%s: %v", name, err)
		}
	}
	_, err := q.LinkOAuthProvider(ctx(t), db.LinkOAuthProviderParams{UserID: bob.ID, Provider: "Bad Name", ProviderUserID: "1"})
	mustIs(t, err, store.ErrInvalid)
	must[db.OAuthProvider](t)(q.LinkOAuthProvider(ctx(t), db.LinkOAuthProviderParams{UserID: f.user.ID, Provider: "google", ProviderUserID: "g1"}))
	links := must[[]db.OAuthProvider](t)(q.ListOAuthProvidersForUser(ctx(t), f.user.ID))
	if len(links) != 2 || links[0].Provider != "github" || links[1].Provider != "google" {
		t.Errorf("links = %+v", links)
	}
	_, err = q.GetOAuthProvider(ctx(t), db.GetOAuthProviderParams{Provider: "github", ProviderUserID: "43"})
	mustIs(t, err, store.ErrNotFound)
}

func TestSandboxInsertGetAndConstraints(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	other := f.mkTeam(t, "Other", pgtype.UUID{})
	host := must[db.Host](t)(q.RegisterHost(ctx(t), db.RegisterHostParams{TeamID: store.PlatformTeamID, Name: "h1", Labels: jsonRaw(`{}`)}))
	id := store.NewUUID()
	sb := must[db.Sandbox](t)(q.InsertSandbox(ctx(t), db.InsertSandboxParams{
		ID: id, TeamID: f.team.ID, HostID: host.ID, Template: "code-interpreter.v1", State: store.SandboxStarting,
		VCPUs: 2, MemoryMB: 1024, DiskMB: 4096, TimeoutSec: 300, AutoPause: true, AutoResume: true,
		AllowInternetAccess: false, Metadata: jsonRaw(`{"user":"u1","n":1}`), EnvVars: []byte{0, 1, 2}, CreatedBy: f.user.ID,
	}))
	if sb.ID != id || sb.HostID != host.ID || !sb.AutoPause || sb.AllowInternetAccess || !bytes.Equal(sb.EnvVars, []byte{0, 1, 2}) ||
		sb.StartedAt.Valid || sb.EndAt.Valid || sb.StateReason != "" || sb.CreatedBy != f.user.ID {
		t.Errorf("inserted = %+v", sb)
	}
	var md map[string]any
	if err := jsonUnmarshal(sb.Metadata, &md); err != nil || md["user"] != "u1" {
		t.Errorf("metadata = %s", sb.Metadata)
	}
	gen := f.mkSandbox(t, nil, f.team.ID, store.SandboxStarting, `{}`)
	if !gen.ID.Valid || gen.ID == id {
		t.Error("no generated id")
	}
	if got := must[db.Sandbox](t)(q.GetSandbox(ctx(t), db.GetSandboxParams{ID: id, TeamID: f.team.ID})); got.ID != id {
		t.Error("GetSandbox")
	}
	_, err := q.GetSandbox(ctx(t), db.GetSandboxParams{ID: id, TeamID: other.ID})
	mustIs(t, err, store.ErrNotFound)
	if got := must[db.Sandbox](t)(q.GetSandboxByID(ctx(t), id)); got.TeamID != f.team.ID {
		t.Error("GetSandboxByID")
	}
	_, err = q.InsertSandbox(ctx(t), db.InsertSandboxParams{ID: id, TeamID: f.team.ID, Template: "base", State: "starting", VCPUs: 1, MemoryMB: 1, Metadata: jsonRaw(`{}`)})
	mustIs(t, err, store.ErrConflict)

	bad := []struct {
		name string
		p    db.InsertSandboxParams
		want error
	}{
		{"state", db.InsertSandboxParams{State: "sleeping"}, store.ErrInvalid},
		{"vcpus", db.InsertSandboxParams{VCPUs: -1}, store.ErrInvalid},
		{"memory", db.InsertSandboxParams{MemoryMB: 0}, store.ErrInvalid},
		{"timeout", db.InsertSandboxParams{TimeoutSec: -5}, store.ErrInvalid},
		{"template traversal", db.InsertSandboxParams{Template: "../etc"}, store.ErrInvalid},
		{"template slash", db.InsertSandboxParams{Template: "a/b"}, store.ErrInvalid},
		{"metadata array", db.InsertSandboxParams{Metadata: jsonRaw(`[1]`)}, store.ErrInvalid},
		{"metadata syntax", db.InsertSandboxParams{Metadata: jsonRaw(`{`)}, store.ErrInvalid},
		{"unknown team", db.InsertSandboxParams{TeamID: store.NewUUID()}, store.ErrConflict},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			p := db.InsertSandboxParams{TeamID: f.team.ID, Template: "base", State: "starting", VCPUs: 1, MemoryMB: 128, Metadata: jsonRaw(`{}`)}
			if c.p.State != "" {
				p.State = c.p.State
			}
			if c.p.VCPUs != 0 {
				p.VCPUs = c.p.VCPUs
			}
			if c.name == "memory" {
				p.MemoryMB = 0
			}
			if c.p.TimeoutSec != 0 {
				p.TimeoutSec = c.p.TimeoutSec
			}
			if c.p.Template != "" {
				p.Template = c.p.Template
			}
			if c.p.Metadata != nil {
				p.Metadata = c.p.Metadata
			}
			if c.p.TeamID.Valid {
				p.TeamID = c.p.TeamID
			}
			_, err := q.InsertSandbox(ctx(t), p)
			mustIs(t, err, c.want)
		})
	}
	// Every state constant is one the schema accepts.
	for _, s := range store.SandboxStates {
		f.mkSandbox(t, nil, f.team.ID, s, `{}`)
	}
}

// Keyset pagination returns every sandbox exactly once, newest first, ties
// on created_at broken by id, even when rows are added between pages.
func TestListSandboxesPagination(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	other := f.mkTeam(t, "Other", pgtype.UUID{})
	// Sandboxes created in one transaction share created_at (now()).
	err := f.st.Tx(ctx(t), func(tq *db.Queries) error {
		for i := range 12 {
			f.mkSandbox(t, tq, f.team.ID, store.SandboxRunning, fmt.Sprintf(`{"batch":"a","i":%d}`, i))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 9 {
		state := store.SandboxRunning
		if i%3 == 0 {
			state = store.SandboxPaused
		}
		f.mkSandbox(t, nil, f.team.ID, state, fmt.Sprintf(`{"batch":"b","i":%d,"env":"prod"}`, i))
	}
	f.mkSandbox(t, nil, other.ID, store.SandboxRunning, `{"batch":"a"}`)

	all := must[[]db.Sandbox](t)(q.ListSandboxes(ctx(t), db.ListSandboxesParams{TeamID: f.team.ID, PageSize: 1000}))
	if len(all) != 21 {
		t.Fatalf("%d sandboxes listed, want 21", len(all))
	}
	for i := 1; i < len(all); i++ {
		a, b := all[i-1], all[i]
		if a.CreatedAt.Before(b.CreatedAt) || a.CreatedAt.Equal(b.CreatedAt) && bytes.Compare(a.ID.Bytes[:], b.ID.Bytes[:]) <= 0 {
			t.Fatalf("rows %d and %d out of order", i-1, i)
		}
	}

	page := func(after *db.Sandbox, size int32) []db.Sandbox {
		p := db.ListSandboxesParams{TeamID: f.team.ID, PageSize: size}
		if after != nil {
			p.AfterCreatedAt = pgtype.Timestamptz{Time: after.CreatedAt, Valid: true}
			p.AfterID = after.ID
		}
		return must[[]db.Sandbox](t)(q.ListSandboxes(ctx(t), p))
	}
	var got []db.Sandbox
	var last *db.Sandbox
	for n := 0; ; n++ {
		p := page(last, 5)
		if n == 1 {
			// A sandbox created meanwhile is newer than the cursor: it does
			// not show up on later pages, and nothing is repeated.
			f.mkSandbox(t, nil, f.team.ID, store.SandboxRunning, `{}`)
		}
		got = append(got, p...)
		if len(p) < 5 {
			break
		}
		last = &p[len(p)-1]
	}
	if len(got) != len(all) {
		t.Fatalf("paginated %d rows, want %d", len(got), len(all))
	}
	for i := range got {
		if got[i].ID != all[i].ID {
			t.Fatalf("row %d differs from the full listing", i)
		}
	}

	// Filters.
	count := func(p db.ListSandboxesParams) int {
		p.TeamID, p.PageSize = f.team.ID, 1000
		return len(must[[]db.Sandbox](t)(q.ListSandboxes(ctx(t), p)))
	}
	for _, c := range []struct {
		name string
		p    db.ListSandboxesParams
		want int
	}{
		{"all", db.ListSandboxesParams{}, 22},
		{"empty states", db.ListSandboxesParams{States: []string{}}, 22},
		{"paused", db.ListSandboxesParams{States: []string{"paused"}}, 3},
		{"running or paused", db.ListSandboxesParams{States: []string{"running", "paused"}}, 22},
		{"stopped", db.ListSandboxesParams{States: []string{"stopped"}}, 0},
		{"metadata batch a", db.ListSandboxesParams{Metadata: jsonRaw(`{"batch":"a"}`)}, 12},
		{"metadata two keys", db.ListSandboxesParams{Metadata: jsonRaw(`{"batch":"b","env":"prod"}`)}, 9},
		{"metadata and state", db.ListSandboxesParams{Metadata: jsonRaw(`{"batch":"b"}`), States: []string{"running"}}, 6},
		{"metadata none", db.ListSandboxesParams{Metadata: jsonRaw(`{"batch":"c"}`)}, 0},
		{"metadata empty object", db.ListSandboxesParams{Metadata: jsonRaw(`{}`)}, 22},
	} {
		if got := count(c.p); got != c.want {
			t.Errorf("%s: %d sandboxes, want %d", c.name, got, c.want)
		}
	}
}

func TestSandboxStateTransitions(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	sb := must[db.Sandbox](t)(q.InsertSandbox(ctx(t), db.InsertSandboxParams{
		TeamID: f.team.ID, Template: "base", State: store.SandboxStarting, VCPUs: 1, MemoryMB: 256, TimeoutSec: 60, Metadata: jsonRaw(`{}`),
	}))
	running, err := f.st.TransitionSandbox(ctx(t), nil, sb.ID, []string{store.SandboxStarting}, store.SandboxRunning, "")
	if err != nil {
		t.Fatal(err)
	}
	if !running.StartedAt.Valid || !running.LastActiveAt.Valid || !running.EndAt.Valid {
		t.Fatalf("running = %+v", running)
	}
	if d := running.EndAt.Time.Sub(running.LastActiveAt.Time); d != 60*time.Second {
		t.Errorf("end_at - last_active_at = %v, want the 60 s timeout", d)
	}

	// From a state it is not in: refused, with the current state.
	_, err = f.st.TransitionSandbox(ctx(t), nil, sb.ID, []string{store.SandboxStarting}, store.SandboxRunning, "")
	mustIs(t, err, store.ErrConflict)
	var se *store.StateError
	if !errors.As(err, &se) || se.State != store.SandboxRunning {
		t.Errorf("err = %v", err)
	}
	_, err = f.st.TransitionSandbox(ctx(t), nil, store.NewUUID(), []string{store.SandboxRunning}, store.SandboxPaused, "")
	mustIs(t, err, store.ErrNotFound)
	_, err = f.st.TransitionSandbox(ctx(t), nil, sb.ID, []string{store.SandboxRunning}, "asleep", "")
	mustIs(t, err, store.ErrInvalid)

	// Racing transitions: exactly one wins.
	const racers = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, conflicts := 0, 0
	for range racers {
		wg.Go(func() {
			_, err := f.st.TransitionSandbox(ctx(t), nil, sb.ID, []string{store.SandboxRunning}, store.SandboxPausing, "")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrConflict):
				conflicts++
			default:
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if wins != 1 || conflicts != racers-1 {
		t.Errorf("%d wins, %d conflicts", wins, conflicts)
	}

	paused := must[db.Sandbox](t)(f.st.TransitionSandbox(ctx(t), nil, sb.ID, []string{store.SandboxPausing}, store.SandboxPaused, ""))
	if !paused.PausedAt.Valid || paused.StoppedAt.Valid {
		t.Errorf("paused = %+v", paused)
	}
	// In a transaction.
	err = f.st.Tx(ctx(t), func(tq *db.Queries) error {
		if _, err := f.st.TransitionSandbox(ctx(t), tq, sb.ID, []string{store.SandboxPaused}, store.SandboxResuming, ""); err != nil {
			return err
		}
		_, err := f.st.TransitionSandbox(ctx(t), tq, sb.ID, []string{store.SandboxResuming}, store.SandboxError, "resume failed: disk gone")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	e := must[db.Sandbox](t)(q.GetSandboxByID(ctx(t), sb.ID))
	if e.State != store.SandboxError || e.StateReason != "resume failed: disk gone" {
		t.Errorf("after error = %s %q", e.State, e.StateReason)
	}

	// Stopped is final.
	stopped := must[db.Sandbox](t)(q.MarkSandboxStopped(ctx(t), db.MarkSandboxStoppedParams{ID: sb.ID, Reason: "destroyed"}))
	if stopped.State != store.SandboxStopped || !stopped.StoppedAt.Valid {
		t.Errorf("stopped = %+v", stopped)
	}
	_, err = q.MarkSandboxStopped(ctx(t), db.MarkSandboxStoppedParams{ID: sb.ID})
	mustIs(t, err, store.ErrNotFound)
}

func TestSandboxTimeoutsAndActivity(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	other := f.mkTeam(t, "Other", pgtype.UUID{})
	sb := f.mkSandbox(t, nil, f.team.ID, store.SandboxRunning, `{}`)

	withT := must[db.Sandbox](t)(q.SetSandboxTimeout(ctx(t), db.SetSandboxTimeoutParams{ID: sb.ID, TeamID: f.team.ID, TimeoutSec: 120}))
	if withT.TimeoutSec != 120 || !withT.EndAt.Valid || time.Until(withT.EndAt.Time) < 100*time.Second {
		t.Errorf("with timeout = %+v", withT)
	}
	_, err := q.SetSandboxTimeout(ctx(t), db.SetSandboxTimeoutParams{ID: sb.ID, TeamID: other.ID, TimeoutSec: 1})
	mustIs(t, err, store.ErrNotFound)
	_, err = q.SetSandboxTimeout(ctx(t), db.SetSandboxTimeoutParams{ID: sb.ID, TeamID: f.team.ID, TimeoutSec: -1})
	mustIs(t, err, store.ErrInvalid)

	// Activity pushes the deadline.
	if _, err := f.st.Pool().Exec(ctx(t), "UPDATE sandboxes SET end_at = now() + interval '1 second', last_active_at = now() - interval '1 hour' WHERE id = $1", sb.ID); err != nil {
		t.Fatal(err)
	}
	touched := must[db.Sandbox](t)(q.TouchSandbox(ctx(t), db.TouchSandboxParams{ID: sb.ID, TeamID: f.team.ID}))
	if time.Since(touched.LastActiveAt.Time) > time.Minute || time.Until(touched.EndAt.Time) < 100*time.Second {
		t.Errorf("touched = %+v", touched)
	}
	_, err = q.TouchSandbox(ctx(t), db.TouchSandboxParams{ID: sb.ID, TeamID: other.ID})
	mustIs(t, err, store.ErrNotFound)

	noT := must[db.Sandbox](t)(q.SetSandboxTimeout(ctx(t), db.SetSandboxTimeoutParams{ID: sb.ID, TeamID: f.team.ID, TimeoutSec: 0}))
	if noT.EndAt.Valid {
		t.Error("timeout 0 kept end_at")
	}
	if touched := must[db.Sandbox](t)(q.TouchSandbox(ctx(t), db.TouchSandboxParams{ID: sb.ID, TeamID: f.team.ID})); touched.EndAt.Valid {
		t.Error("touch without a timeout set end_at")
	}

	// Expiry: only running sandboxes past their deadline, oldest first.
	expired1 := f.mkSandbox(t, nil, f.team.ID, store.SandboxRunning, `{}`)
	expired2 := f.mkSandbox(t, nil, other.ID, store.SandboxRunning, `{}`)
	pausedPast := f.mkSandbox(t, nil, f.team.ID, store.SandboxPaused, `{}`)
	future := f.mkSandbox(t, nil, f.team.ID, store.SandboxRunning, `{}`)
	for id, at := range map[pgtype.UUID]string{expired1.ID: "-2 minutes", expired2.ID: "-1 minute", pausedPast.ID: "-1 hour", future.ID: "+1 hour"} {
		if _, err := f.st.Pool().Exec(ctx(t), "UPDATE sandboxes SET end_at = now() + $2::interval WHERE id = $1", id, at); err != nil {
			t.Fatal(err)
		}
	}
	exp := must[[]db.Sandbox](t)(q.ListExpiredSandboxes(ctx(t), db.ListExpiredSandboxesParams{Now: time.Now(), MaxResults: 10}))
	if len(exp) != 2 || exp[0].ID != expired1.ID || exp[1].ID != expired2.ID {
		t.Errorf("expired = %v", ids(exp))
	}
	if exp := must[[]db.Sandbox](t)(q.ListExpiredSandboxes(ctx(t), db.ListExpiredSandboxesParams{Now: time.Now(), MaxResults: 1})); len(exp) != 1 {
		t.Errorf("limit: %d", len(exp))
	}
	// Touching a running sandbox whose deadline passed is not possible once
	// the reaper moved it on.
	must[db.Sandbox](t)(f.st.TransitionSandbox(ctx(t), nil, expired1.ID, []string{store.SandboxRunning}, store.SandboxPausing, "ttl"))
	_, err = q.TouchSandbox(ctx(t), db.TouchSandboxParams{ID: expired1.ID, TeamID: f.team.ID})
	mustIs(t, err, store.ErrNotFound)

	if n := must[int64](t)(q.DeleteSandbox(ctx(t), db.DeleteSandboxParams{ID: sb.ID, TeamID: other.ID})); n != 0 {
		t.Error("deleted another team's sandbox")
	}
	if n := must[int64](t)(q.DeleteSandbox(ctx(t), db.DeleteSandboxParams{ID: sb.ID, TeamID: f.team.ID})); n != 1 {
		t.Error("DeleteSandbox")
	}
	_, err = q.GetSandboxByID(ctx(t), sb.ID)
	mustIs(t, err, store.ErrNotFound)
}

func ids(sbs []db.Sandbox) []string {
	var out []string
	for _, s := range sbs {
		out = append(out, fmt.Sprintf("%x", s.ID.Bytes[:4]))
	}
	return out
}

func TestSandboxQuotaUsageAndHosts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	h1 := must[db.Host](t)(q.RegisterHost(ctx(t), db.RegisterHostParams{TeamID: store.PlatformTeamID, Name: "h1", Labels: jsonRaw(`{}`)}))
	h2 := must[db.Host](t)(q.RegisterHost(ctx(t), db.RegisterHostParams{TeamID: store.PlatformTeamID, Name: "h2", Labels: jsonRaw(`{}`)}))
	mk := func(state string, vcpus, mem int32, host pgtype.UUID) db.Sandbox {
		return must[db.Sandbox](t)(q.InsertSandbox(ctx(t), db.InsertSandboxParams{
			TeamID: f.team.ID, HostID: host, Template: "base", State: state, VCPUs: vcpus, MemoryMB: mem, Metadata: jsonRaw(`{}`),
		}))
	}
	mk(store.SandboxRunning, 2, 1024, h1.ID)
	mk(store.SandboxStarting, 4, 2048, h1.ID)
	mk(store.SandboxPaused, 8, 4096, h1.ID)
	mk(store.SandboxStopped, 16, 8192, h2.ID)
	onH2 := mk(store.SandboxRunning, 1, 128, pgtype.UUID{})

	for _, c := range []struct {
		states []string
		n, cpu int32
		mem    int64
	}{
		{[]string{"running", "starting"}, 3, 7, 3200},
		{[]string{"paused"}, 1, 8, 4096},
		{[]string{"error"}, 0, 0, 0},
	} {
		u := must[db.CountTeamSandboxUsageRow](t)(q.CountTeamSandboxUsage(ctx(t), db.CountTeamSandboxUsageParams{TeamID: f.team.ID, States: c.states}))
		if u.Sandboxes != c.n || u.VCPUs != c.cpu || u.MemoryMB != c.mem {
			t.Errorf("%v: %+v", c.states, u)
		}
	}

	moved := must[db.Sandbox](t)(q.SetSandboxHost(ctx(t), db.SetSandboxHostParams{ID: onH2.ID, HostID: h2.ID}))
	if moved.HostID != h2.ID {
		t.Error("SetSandboxHost")
	}
	if l := must[[]db.Sandbox](t)(q.ListSandboxesByHost(ctx(t), db.ListSandboxesByHostParams{HostID: h1.ID})); len(l) != 3 {
		t.Errorf("%d sandboxes on h1", len(l))
	}
	if l := must[[]db.Sandbox](t)(q.ListSandboxesByHost(ctx(t), db.ListSandboxesByHostParams{HostID: h2.ID, States: []string{"running"}})); len(l) != 1 || l[0].ID != onH2.ID {
		t.Errorf("running on h2: %v", ids(l))
	}
	missing := must[[]pgtype.UUID](t)(q.MarkHostSandboxesMissing(ctx(t), db.MarkHostSandboxesMissingParams{HostID: h1.ID, Reason: "host unreachable"}))
	if len(missing) != 2 {
		t.Errorf("%d marked missing, want the running and the starting one", len(missing))
	}
	if l := must[[]db.Sandbox](t)(q.ListSandboxesByHost(ctx(t), db.ListSandboxesByHostParams{HostID: h1.ID, States: []string{"missing"}})); len(l) != 2 || l[0].StateReason != "host unreachable" {
		t.Errorf("missing on h1: %+v", l)
	}
}

func TestTemplates(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	other := f.mkTeam(t, "Other", pgtype.UUID{})
	up := func(team pgtype.UUID, name string, vcpus int32) db.UpsertTemplateRow {
		return must[db.UpsertTemplateRow](t)(q.UpsertTemplate(ctx(t), db.UpsertTemplateParams{
			TeamID: team, Name: name, Kind: store.TemplateSnapshot, VCPUs: vcpus, MemoryMB: 512, SizeBytes: 1 << 20,
			Metadata: jsonRaw(`{}`), CreatedBy: f.user.ID,
		}))
	}
	pub := up(store.PlatformTeamID, "base", 1)
	pubPy := up(store.PlatformTeamID, "python", 1)
	mine := up(f.team.ID, "mysnap", 2)
	if !pub.Inserted || !mine.Inserted {
		t.Error("first upsert not an insert")
	}
	// Overwrite: same row, new contents.
	again := up(f.team.ID, "mysnap", 4)
	if again.Inserted || again.Template.ID != mine.Template.ID || again.Template.VCPUs != 4 {
		t.Errorf("overwrite = %+v", again)
	}
	shadow := up(f.team.ID, "base", 8) // the team's own "base" shadows the public one
	up(other.ID, "theirs", 1)

	for _, c := range []struct {
		team pgtype.UUID
		name string
		want pgtype.UUID
	}{
		{f.team.ID, "mysnap", mine.Template.ID},
		{f.team.ID, "base", shadow.Template.ID},
		{f.team.ID, "python", pubPy.Template.ID},
		{other.ID, "base", pub.Template.ID},
		{f.team.ID, "theirs", pgtype.UUID{}},
		{other.ID, "mysnap", pgtype.UUID{}},
	} {
		got, err := q.GetTemplate(ctx(t), db.GetTemplateParams{TeamID: c.team, Name: c.name})
		if !c.want.Valid {
			if !errors.Is(err, store.ErrNotFound) {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if err != nil || got.ID != c.want {
			t.Errorf("%s: %+v %v", c.name, got.ID, err)
		}
	}
	list := must[[]db.Template](t)(q.ListTemplates(ctx(t), f.team.ID))
	var names []string
	for _, tp := range list {
		names = append(names, fmt.Sprintf("%s/%t", tp.Name, tp.TeamID == store.PlatformTeamID))
	}
	if want := []string{"base/false", "base/true", "mysnap/false", "python/true"}; !slices.Equal(names, want) {
		t.Errorf("ListTemplates = %v, want %v", names, want)
	}

	for _, bad := range []string{"../etc", "a/b", ".hidden", "", "x y"} {
		_, err := q.UpsertTemplate(ctx(t), db.UpsertTemplateParams{TeamID: f.team.ID, Name: bad, Kind: "snapshot", VCPUs: 1, MemoryMB: 1, Metadata: jsonRaw(`{}`)})
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("name %q: %v", bad, err)
		}
	}
	_, err := q.UpsertTemplate(ctx(t), db.UpsertTemplateParams{TeamID: f.team.ID, Name: "k", Kind: "vm", VCPUs: 1, MemoryMB: 1, Metadata: jsonRaw(`{}`)})
	mustIs(t, err, store.ErrInvalid)

	// A team deletes only its own templates.
	_, err = q.DeleteTemplate(ctx(t), db.DeleteTemplateParams{TeamID: f.team.ID, Name: "python"})
	mustIs(t, err, store.ErrNotFound)
	del := must[db.Template](t)(q.DeleteTemplate(ctx(t), db.DeleteTemplateParams{TeamID: f.team.ID, Name: "base"}))
	if del.ID != shadow.Template.ID {
		t.Error("deleted the wrong base")
	}
	if got := must[db.Template](t)(q.GetTemplate(ctx(t), db.GetTemplateParams{TeamID: f.team.ID, Name: "base"})); got.ID != pub.Template.ID {
		t.Error("the public base is not visible after deleting the team's")
	}
}

func TestAuditLogs(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	other := f.mkTeam(t, "Other", pgtype.UUID{})
	type ev struct{ rtype, action, scope string }
	evs := []ev{
		{"sandbox", "create", "team"}, {"sandbox", "pause", "team"}, {"sandbox", "auto_pause", "team"},
		{"sandbox", "destroy", "team"}, {"snapshot", "create", "team"}, {"api_key", "create", "admin"},
		{"api_key", "revoke", "admin"}, {"member", "add", "admin"}, {"team", "rename", "team"},
	}
	// Three rounds in three transactions: rows within one share created_at.
	for round := range 3 {
		err := f.st.Tx(ctx(t), func(tq *db.Queries) error {
			for _, e := range evs {
				_, err := tq.InsertAuditLog(ctx(t), db.InsertAuditLogParams{
					TeamID: f.team.ID, ActorType: store.ActorUser, ActorID: "usr-x", ActorName: "owner@example.com",
					ResourceType: e.rtype, ResourceID: fmt.Sprintf("r%d", round), Action: e.action, Scope: e.scope,
					Status: store.StatusSuccess, Metadata: jsonRaw(`{"round":` + fmt.Sprint(round) + `}`),
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	sys := must[db.AuditLog](t)(q.InsertAuditLog(ctx(t), db.InsertAuditLogParams{
		TeamID: other.ID, ActorType: store.ActorSystem, ActorID: "system", ResourceType: "sandbox",
		Action: "auto_pause", Scope: store.ScopeTeam, Status: store.StatusInfo, Metadata: jsonRaw(`{}`),
	}))
	if sys.CreatedAt.IsZero() || !sys.ID.Valid {
		t.Errorf("inserted = %+v", sys)
	}
	for _, bad := range []db.InsertAuditLogParams{
		{TeamID: f.team.ID, ActorType: "robot", ResourceType: "x", Action: "y", Scope: "team", Status: "success", Metadata: jsonRaw(`{}`)},
		{TeamID: f.team.ID, ActorType: "user", ResourceType: "x", Action: "y", Scope: "world", Status: "success", Metadata: jsonRaw(`{}`)},
		{TeamID: f.team.ID, ActorType: "user", ResourceType: "x", Action: "y", Scope: "team", Status: "fine", Metadata: jsonRaw(`{}`)},
		{TeamID: f.team.ID, ActorType: "user", ResourceType: "", Action: "y", Scope: "team", Status: "success", Metadata: jsonRaw(`{}`)},
	} {
		if _, err := q.InsertAuditLog(ctx(t), bad); !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%+v: %v", bad, err)
		}
	}

	list := func(p db.ListAuditLogsParams) []db.AuditLog {
		p.TeamID = f.team.ID
		return must[[]db.AuditLog](t)(q.ListAuditLogs(ctx(t), p))
	}
	for _, c := range []struct {
		name string
		p    db.ListAuditLogsParams
		want int
	}{
		{"all", db.ListAuditLogsParams{PageSize: 100}, 27},
		{"member's view", db.ListAuditLogsParams{PageSize: 100, Scopes: []string{"team"}}, 18},
		{"one type", db.ListAuditLogsParams{PageSize: 100, ResourceTypes: []string{"sandbox"}}, 12},
		{"two types", db.ListAuditLogsParams{PageSize: 100, ResourceTypes: []string{"sandbox", "snapshot"}}, 15},
		{"two actions", db.ListAuditLogsParams{PageSize: 100, Actions: []string{"pause", "auto_pause"}}, 6},
		{"type and action", db.ListAuditLogsParams{PageSize: 100, ResourceTypes: []string{"sandbox", "api_key"}, Actions: []string{"create"}}, 6},
		{"type, action, scope", db.ListAuditLogsParams{PageSize: 100, ResourceTypes: []string{"sandbox", "api_key"}, Actions: []string{"create"}, Scopes: []string{"team"}}, 3},
		{"no match", db.ListAuditLogsParams{PageSize: 100, Actions: []string{"explode"}}, 0},
		{"page size 0 means 1", db.ListAuditLogsParams{PageSize: 0}, 1},
	} {
		if got := len(list(c.p)); got != c.want {
			t.Errorf("%s: %d rows, want %d", c.name, got, c.want)
		}
	}

	// Cursor pagination: newest first, each row once.
	all := list(db.ListAuditLogsParams{PageSize: 100})
	var got []db.AuditLog
	p := db.ListAuditLogsParams{PageSize: 4, ResourceTypes: nil}
	for {
		page := list(p)
		got = append(got, page...)
		if len(page) < 4 {
			break
		}
		last := page[len(page)-1]
		p.AfterCreatedAt, p.AfterID = pgtype.Timestamptz{Time: last.CreatedAt, Valid: true}, last.ID
	}
	if len(got) != len(all) {
		t.Fatalf("paginated %d, want %d", len(got), len(all))
	}
	for i := range got {
		if got[i].ID != all[i].ID {
			t.Fatalf("row %d differs", i)
		}
		if i > 0 && got[i].CreatedAt.After(got[i-1].CreatedAt) {
			t.Fatalf("row %d is newer than row %d", i, i-1)
		}
	}
	if all[0].Metadata == nil || string(all[0].Metadata) != `{"round": 2}` {
		t.Errorf("newest metadata = %s", all[0].Metadata)
	}

	// At most 200 a page.
	if _, err := f.st.Pool().Exec(ctx(t), `
		INSERT INTO audit_logs (team_id, actor_type, resource_type, action)
		SELECT $1, 'system', 'sandbox', 'bulk' FROM generate_series(1, 250)`, f.team.ID); err != nil {
		t.Fatal(err)
	}
	if n := len(list(db.ListAuditLogsParams{PageSize: 1000})); n != store.MaxAuditPage {
		t.Errorf("a page of %d rows", n)
	}

	// Append-only.
	_, err := f.st.Pool().Exec(ctx(t), "UPDATE audit_logs SET action = 'forged' WHERE team_id = $1", f.team.ID)
	if err == nil {
		t.Error("audit log rows can be changed")
	}
}

func TestHosts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	reg := func(team pgtype.UUID, name, addr string) (db.Host, error) {
		return q.RegisterHost(ctx(t), db.RegisterHostParams{
			TeamID: team, Name: name, Address: addr, Version: "v1", Arch: "amd64",
			TotalVCPUs: 16, TotalMemoryMB: 65536, TotalDiskMB: 1 << 20, Labels: jsonRaw(`{"zone":"a"}`),
		})
	}
	h := must[db.Host](t)(reg(store.PlatformTeamID, "node-1", "http://10.0.0.1:5008"))
	if h.Status != store.HostOnline || !h.LastHeartbeatAt.Valid || h.TotalVCPUs != 16 {
		t.Errorf("registered = %+v", h)
	}
	// Re-registering (an agent restart) keeps the host and updates it.
	h2 := must[db.Host](t)(reg(store.PlatformTeamID, "node-1", "http://10.0.0.9:5008"))
	if h2.ID != h.ID || h2.Address != "http://10.0.0.9:5008" {
		t.Errorf("re-registered = %+v", h2)
	}
	// Another team cannot take the name.
	_, err := reg(f.team.ID, "node-1", "http://evil")
	mustIs(t, err, store.ErrNotFound)
	byoc := must[db.Host](t)(reg(f.team.ID, "byoc-1", "http://10.0.1.1:5008"))
	if got := must[db.Host](t)(q.GetHost(ctx(t), byoc.ID)); got.TeamID != f.team.ID {
		t.Error("GetHost")
	}
	_, err = q.GetHost(ctx(t), store.NewUUID())
	mustIs(t, err, store.ErrNotFound)

	active := must[[]db.Host](t)(q.ListActiveHosts(ctx(t), 90))
	if len(active) != 2 || active[0].Name != "byoc-1" || active[1].Name != "node-1" {
		t.Errorf("active = %+v", active)
	}
	// Nothing beat in the last 0 seconds: all stale.
	stale := must[[]db.Host](t)(q.MarkStaleHostsUnreachable(ctx(t), 0))
	if len(stale) != 2 || stale[0].Status != store.HostUnreachable {
		t.Errorf("stale = %+v", stale)
	}
	if active := must[[]db.Host](t)(q.ListActiveHosts(ctx(t), 90)); len(active) != 0 {
		t.Errorf("unreachable hosts listed active: %d", len(active))
	}
	if again := must[[]db.Host](t)(q.MarkStaleHostsUnreachable(ctx(t), 0)); len(again) != 0 {
		t.Error("marked twice")
	}
	// A heartbeat brings it back; a draining host stays draining.
	hb := must[db.Host](t)(q.HeartbeatHost(ctx(t), h.ID))
	if hb.Status != store.HostOnline || !hb.LastHeartbeatAt.Time.After(h2.LastHeartbeatAt.Time) {
		t.Errorf("heartbeat = %+v", hb)
	}
	if active := must[[]db.Host](t)(q.ListActiveHosts(ctx(t), 90)); len(active) != 1 || active[0].ID != h.ID {
		t.Errorf("active after heartbeat = %d", len(active))
	}
	if _, err := f.st.Pool().Exec(ctx(t), "UPDATE hosts SET status = 'draining' WHERE id = $1", byoc.ID); err != nil {
		t.Fatal(err)
	}
	if d := must[db.Host](t)(q.HeartbeatHost(ctx(t), byoc.ID)); d.Status != store.HostDraining {
		t.Errorf("draining host became %s", d.Status)
	}
	if d := must[db.Host](t)(reg(f.team.ID, "byoc-1", "http://10.0.1.1:5008")); d.Status != store.HostDraining {
		t.Errorf("draining host re-registered as %s", d.Status)
	}
	_, err = q.HeartbeatHost(ctx(t), store.NewUUID())
	mustIs(t, err, store.ErrNotFound)
}

// TestAPIKeyCreatorMembership: a key authenticates only while its creator
// is a member of its team; RevokeAPIKeysOfCreator revokes exactly that
// creator's live keys in that team.
func TestAPIKeyCreatorMembership(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	q := f.q
	bob := f.mkUser(t, "bob@example.com")
	must[db.Membership](t)(q.AddTeamMember(ctx(t), db.AddTeamMemberParams{UserID: bob.ID, TeamID: f.team.ID, Role: store.RoleMember}))
	other := f.mkTeam(t, "Other", bob.ID)
	mk := func(team, creator pgtype.UUID, secret string) db.TeamAPIKey {
		return must[db.TeamAPIKey](t)(q.CreateAPIKey(ctx(t), db.CreateAPIKeyParams{
			TeamID: team, Name: secret, Prefix: "e2b_", KeyHash: keyHash(secret), CreatedBy: creator}))
	}
	ownerKey := mk(f.team.ID, f.user.ID, "owner's")
	bobKey := mk(f.team.ID, bob.ID, "bob's")
	bobOther := mk(other.ID, bob.ID, "bob's elsewhere")
	orphan := mk(f.team.ID, pgtype.UUID{}, "no creator")
	for _, k := range []db.TeamAPIKey{ownerKey, bobKey, bobOther} {
		must[db.AuthenticateAPIKeyRow](t)(q.AuthenticateAPIKey(ctx(t), k.KeyHash))
	}
	_, err := q.AuthenticateAPIKey(ctx(t), orphan.KeyHash)
	mustIs(t, err, store.ErrNotFound)

	// Bob leaves team A: his key there stops (the join), even before the
	// revocation.
	if n := must[int64](t)(q.RemoveTeamMember(ctx(t), db.RemoveTeamMemberParams{UserID: bob.ID, TeamID: f.team.ID})); n != 1 {
		t.Fatalf("removed %d", n)
	}
	_, err = q.AuthenticateAPIKey(ctx(t), bobKey.KeyHash)
	mustIs(t, err, store.ErrNotFound)
	revoked := must[[]db.TeamAPIKey](t)(q.RevokeAPIKeysOfCreator(ctx(t), db.RevokeAPIKeysOfCreatorParams{TeamID: f.team.ID, CreatedBy: bob.ID}))
	if len(revoked) != 1 || revoked[0].ID != bobKey.ID || !revoked[0].RevokedAt.Valid {
		t.Fatalf("revoked %+v, want bob's key of team A", revoked)
	}
	// Back in the team, the revoked key stays dead; the others live.
	must[db.Membership](t)(q.AddTeamMember(ctx(t), db.AddTeamMemberParams{UserID: bob.ID, TeamID: f.team.ID, Role: store.RoleMember}))
	_, err = q.AuthenticateAPIKey(ctx(t), bobKey.KeyHash)
	mustIs(t, err, store.ErrNotFound)
	for _, k := range []db.TeamAPIKey{ownerKey, bobOther} {
		must[db.AuthenticateAPIKeyRow](t)(q.AuthenticateAPIKey(ctx(t), k.KeyHash))
	}
}
