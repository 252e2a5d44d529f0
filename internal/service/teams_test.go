package service

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth/oauth"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

func newTeams(t *testing.T, e *env) *Teams {
	t.Helper()
	ts, err := NewTeams(TeamsConfig{Store: e.st, Sandboxes: e.sbx})
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

// addMember puts u into team with role, straight into the database.
func addMember(t *testing.T, e *env, u Principal, team pgtype.UUID, role string) Principal {
	t.Helper()
	if _, err := e.st.Queries().AddTeamMember(context.Background(), db.AddTeamMemberParams{UserID: pgUUID(u.UserID), TeamID: team, Role: role}); err != nil {
		t.Fatal(err)
	}
	return Principal{UserID: u.UserID, TeamID: teamIDOf(team), Role: role, ActorName: u.ActorName}
}

func TestTeamLifecycle(t *testing.T) {
	e := newEnv(t)
	ts := newTeams(t, e)
	ctx := context.Background()
	_, p := e.signup(t, "owner@example.com")
	_, stranger := e.signup(t, "stranger@example.com")

	tr, err := ts.Create(ctx, p, "  Research  ")
	if err != nil || tr.Team.Name != "Research" || tr.Role != RoleOwner || tr.Team.Slug == "" {
		t.Fatalf("Create = %+v, %v", tr, err)
	}
	id := tr.Team.ID
	for _, name := range []string{"", "   ", string(make([]byte, 129)), "a\x00b"} {
		if _, err := ts.Create(ctx, p, name); !errors.Is(err, ErrInvalid) {
			t.Errorf("Create(%q) = %v, want ErrInvalid", name, err)
		}
	}
	if _, err := ts.Create(ctx, Principal{TeamID: teamIDOf(id), APIKeyID: apiKeyIDOf(id)}, "x"); !errors.Is(err, ErrForbidden) {
		t.Errorf("Create by an API key: %v", err)
	}
	list, err := ts.List(ctx, p)
	if err != nil || len(list) != 2 || list[1].Team.ID != id {
		t.Fatalf("List = %+v, %v", list, err)
	}
	if _, err := ts.Get(ctx, stranger, teamIDOf(id)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get by a stranger: %v", err)
	}
	renamed, err := ts.Rename(ctx, p, teamIDOf(id), "Research & Development")
	if err != nil || renamed.Team.Name != "Research & Development" || renamed.Team.Slug != tr.Team.Slug {
		t.Fatalf("Rename = %+v, %v", renamed, err)
	}
	// The slug is immutable (a trigger), whatever a query tries.
	if _, err := e.st.Pool().Exec(ctx, "UPDATE teams SET slug = 'hijack' WHERE id = $1", id); err == nil {
		t.Fatal("the slug changed")
	}

	// Members: admin adds a member; the member cannot manage.
	_, admin := e.signup(t, "admin@example.com")
	_, member := e.signup(t, "member@example.com")
	if _, err := ts.AddMember(ctx, p, teamIDOf(id), "ADMIN@example.com", RoleAdmin); err != nil {
		t.Fatal(err)
	}
	admin.TeamID, member.TeamID = teamIDOf(id), teamIDOf(id)
	for _, tc := range []struct {
		name  string
		p     Principal
		email string
		role  string
		want  error
	}{
		{"admin adds a member", admin, "member@example.com", RoleMember, nil},
		{"already a member", admin, "member@example.com", RoleMember, ErrConflict},
		{"unknown address", admin, "ghost@example.com", RoleMember, ErrNotFound},
		{"bad role", admin, "stranger@example.com", "god", ErrInvalid},
		{"admin cannot add an owner", admin, "stranger@example.com", RoleOwner, ErrForbidden},
		{"member cannot add", member, "stranger@example.com", RoleMember, ErrForbidden},
		{"stranger cannot add", stranger, "stranger@example.com", RoleMember, ErrNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ts.AddMember(ctx, tc.p, teamIDOf(id), tc.email, tc.role)
			if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("AddMember = %v, want %v", err, tc.want)
			}
		})
	}
	ms, err := ts.Members(ctx, member, teamIDOf(id))
	if err != nil || len(ms) != 3 {
		t.Fatalf("Members = %+v, %v", ms, err)
	}
	if _, err := ts.Members(ctx, stranger, teamIDOf(id)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Members by a stranger: %v", err)
	}

	// Role changes and removals: the owner rules.
	for _, tc := range []struct {
		name   string
		p      Principal
		target Principal
		role   string
		want   error
	}{
		{"member cannot promote", member, member, RoleAdmin, ErrForbidden},
		{"admin cannot make an owner", admin, member, RoleOwner, ErrForbidden},
		{"admin cannot demote the owner", admin, p, RoleMember, ErrForbidden},
		{"the last owner cannot be demoted", p, p, RoleAdmin, ErrConflict},
		{"admin promotes a member", admin, member, RoleAdmin, nil},
		{"admin demotes an admin", admin, member, RoleMember, nil},
		{"not a member", p, stranger, RoleAdmin, ErrNotFound},
		{"owner makes an owner", p, admin, RoleOwner, nil},
		{"the second owner demotes the first", admin, p, RoleAdmin, nil},
		{"back", admin, p, RoleOwner, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ts.SetMemberRole(ctx, tc.p, teamIDOf(id), tc.target.UserID, tc.role)
			if (tc.want == nil) != (err == nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
				t.Fatalf("SetMemberRole = %v, want %v", err, tc.want)
			}
		})
	}
	// Now p and admin are owners, member a member. A member cannot remove
	// anyone; of two owners one may leave, the last one may not.
	if err := ts.RemoveMember(ctx, member, teamIDOf(id), p.UserID); !errors.Is(err, ErrForbidden) {
		t.Fatalf("member removes the owner: %v", err)
	}
	if err := ts.Leave(ctx, admin, teamIDOf(id)); err != nil {
		t.Fatalf("second owner leaves: %v", err)
	}
	if err := ts.Leave(ctx, p, teamIDOf(id)); !errors.Is(err, ErrConflict) {
		t.Fatalf("last owner leaves: %v", err)
	}
	if err := ts.RemoveMember(ctx, p, teamIDOf(id), p.UserID); !errors.Is(err, ErrConflict) {
		t.Fatalf("last owner removed: %v", err)
	}
	if err := ts.RemoveMember(ctx, p, teamIDOf(id), member.UserID); err != nil {
		t.Fatalf("owner removes a member: %v", err)
	}
	if err := ts.Leave(ctx, member, teamIDOf(id)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed member leaves: %v", err)
	}

	// The audit trail, in the team's log, oldest first.
	logs, _, err := e.acc.audit.List(ctx, Principal{UserID: p.UserID, TeamID: teamIDOf(id), Role: RoleOwner}, AuditFilter{Limit: 200})
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for i := len(logs) - 1; i >= 0; i-- {
		actions = append(actions, logs[i].Action)
	}
	want := "[team.create team.rename member.add member.add member.role_change member.role_change member.role_change member.role_change member.role_change member.leave member.remove]"
	if fmt.Sprint(actions) != want {
		t.Fatalf("audit actions:\n%v\nwant\n%s", actions, want)
	}
}

// TestOwnerInvariantRace: the two owners of a team demote each other, or
// both leave, at the same time, many times over: the team always keeps
// an owner (LockTeam serializes the checks).
func TestOwnerInvariantRace(t *testing.T) {
	e := newEnv(t)
	ts := newTeams(t, e)
	ctx := context.Background()
	_, a := e.signup(t, "a@example.com")
	_, b := e.signup(t, "b@example.com")
	for round := range 10 {
		tr, err := ts.Create(ctx, a, fmt.Sprint("race ", round))
		if err != nil {
			t.Fatal(err)
		}
		id := tr.Team.ID
		pa := Principal{UserID: a.UserID, TeamID: teamIDOf(id)}
		pb := addMember(t, e, b, id, RoleOwner)
		var wg sync.WaitGroup
		errs := make([]error, 2)
		start := make(chan struct{})
		op := func(i int, f func() error) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs[i] = f()
			}()
		}
		if round%2 == 0 {
			op(0, func() error { _, err := ts.SetMemberRole(ctx, pa, teamIDOf(id), b.UserID, RoleMember); return err })
			op(1, func() error { _, err := ts.SetMemberRole(ctx, pb, teamIDOf(id), a.UserID, RoleMember); return err })
		} else {
			op(0, func() error { return ts.Leave(ctx, pa, teamIDOf(id)) })
			op(1, func() error { return ts.Leave(ctx, pb, teamIDOf(id)) })
		}
		close(start)
		wg.Wait()
		n, err := e.st.Queries().CountTeamOwners(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			} else if !errors.Is(err, ErrForbidden) && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
				t.Fatalf("round %d: unexpected error %v", round, err)
			}
		}
		if n != 1 || ok != 1 {
			t.Fatalf("round %d: %d owners left, %d of 2 changes succeeded (%v); want 1 and 1", round, n, ok, errs)
		}
	}
}

func TestTeamDelete(t *testing.T) {
	e := newEnv(t)
	ts := newTeams(t, e)
	ctx := context.Background()
	acc, p := e.signup(t, "del@example.com")
	_, admin := e.signup(t, "adm@example.com")
	tr, err := ts.Create(ctx, p, "doomed")
	if err != nil {
		t.Fatal(err)
	}
	id := tr.Team.ID
	addMember(t, e, admin, id, RoleAdmin)
	tp := Principal{UserID: p.UserID, TeamID: teamIDOf(id), Role: RoleOwner}
	key, err := e.acc.CreateAPIKey(ctx, tp, "ci")
	if err != nil {
		t.Fatal(err)
	}
	// The doomed team is the owner's default team.
	if _, err := e.acc.SwitchTeam(ctx, p, teamIDOf(id)); err != nil {
		t.Fatal(err)
	}
	// A stopped sandbox only: nothing to destroy on the (unreachable) agent.
	if _, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: id, Template: "base", State: store.SandboxStopped, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}

	if _, err := ts.Delete(ctx, admin, teamIDOf(id)); !errors.Is(err, ErrForbidden) {
		t.Fatalf("admin deletes: %v", err)
	}
	_, stranger := e.signup(t, "x@example.com")
	if _, err := ts.Delete(ctx, stranger, teamIDOf(id)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("stranger deletes: %v", err)
	}
	res, err := ts.Delete(ctx, p, teamIDOf(id))
	if err != nil || res != (TeamDeletion{}) {
		t.Fatalf("Delete = %+v, %v", res, err)
	}
	if _, err := e.acc.AuthenticateAPIKey(ctx, key.Plaintext); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("the deleted team's key still works: %v", err)
	}
	if _, err := ts.Get(ctx, p, teamIDOf(id)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get a deleted team: %v", err)
	}
	if _, err := ts.Delete(ctx, p, teamIDOf(id)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete: %v", err)
	}
	// The login falls back to the user's other team.
	sess, err := e.acc.Login(ctx, "del@example.com", "correct horse battery")
	if err != nil || sess.Account.Team.ID != acc.Team.ID {
		t.Fatalf("login after delete lands in %+v, %v; want the first team", sess.Account.Team, err)
	}

	// The platform team cannot be deleted, even by an owner of it.
	plat := addMember(t, e, p, store.PlatformTeamID, RoleOwner)
	if _, err := ts.Delete(ctx, plat, teamIDOf(store.PlatformTeamID)); !errors.Is(err, ErrForbidden) {
		t.Fatalf("delete the platform team: %v", err)
	}
}

func TestMeSwitchAndSearch(t *testing.T) {
	e := newEnv(t)
	ts := newTeams(t, e)
	ctx := context.Background()
	acc, p := e.signup(t, "me@example.com")
	for _, email := range []string{"a%b@example.com", "a_c@example.com", "axb@example.com", "abc@example.com", "ab_d@example.com"} {
		e.signup(t, email)
	}
	hits := func(prefix string) string {
		t.Helper()
		hs, err := e.acc.SearchUsers(ctx, p, prefix)
		if err != nil {
			t.Fatalf("SearchUsers(%q): %v", prefix, err)
		}
		var out []string
		for _, h := range hs {
			out = append(out, h.Email)
		}
		return fmt.Sprint(out)
	}
	for _, tc := range []struct{ prefix, want string }{
		{"a%b", "[a%b@example.com]"},
		{"A_C", "[a_c@example.com]"},
		{"ab_", "[ab_d@example.com]"},
		{"abc@", "[abc@example.com]"},
		{"me@e", "[me@example.com]"},
		{"zzz", "[]"},
	} {
		if got := hits(tc.prefix); got != tc.want {
			t.Errorf("search %q = %s, want %s", tc.prefix, got, tc.want)
		}
	}
	for i := range 12 {
		e.signup(t, fmt.Sprintf("many%02d@example.com", i))
	}
	if hs, err := e.acc.SearchUsers(ctx, p, "many"); err != nil || len(hs) != MaxUserSearchResult {
		t.Fatalf("search capped: %d, %v", len(hs), err)
	}
	if _, err := e.acc.SearchUsers(ctx, p, "ab"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("short prefix: %v", err)
	}
	// A plain member of the session's team may not search.
	_, m := e.signup(t, "plain@example.com")
	if _, err := e.acc.SearchUsers(ctx, addMember(t, e, m, acc.Team.ID, RoleMember), "many"); !errors.Is(err, ErrForbidden) {
		t.Fatalf("member searches: %v", err)
	}

	// Display name.
	if u, err := e.acc.SetName(ctx, p, "  Ada Lovelace  "); err != nil || u.Name != "Ada Lovelace" {
		t.Fatalf("SetName = %+v, %v", u, err)
	}
	if _, err := e.acc.SetName(ctx, p, string(make([]rune, 129))); !errors.Is(err, ErrInvalid) {
		t.Fatalf("long name: %v", err)
	}

	// Switch team: membership from the database; the default team moves.
	tr, err := ts.Create(ctx, p, "second")
	if err != nil {
		t.Fatal(err)
	}
	sess, err := e.acc.SwitchTeam(ctx, p, teamIDOf(tr.Team.ID))
	if err != nil || sess.Account.Team.ID != tr.Team.ID || sess.Account.Role != RoleOwner {
		t.Fatalf("SwitchTeam = %+v, %v", sess.Account, err)
	}
	sp, err := e.acc.AuthenticateJWT(ctx, sess.Token)
	if err != nil || sp.TeamID != teamIDOf(tr.Team.ID) {
		t.Fatalf("switched session: %+v, %v", sp, err)
	}
	if u, _ := e.st.Queries().GetUser(ctx, pgUUID(p.UserID)); u.DefaultTeamID != tr.Team.ID {
		t.Fatal("default team not moved")
	}
	_, other := e.signup(t, "other@example.com")
	if _, err := e.acc.SwitchTeam(ctx, p, other.TeamID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("switch to a foreign team: %v", err)
	}
	me, err := e.acc.Me(ctx, p)
	if err != nil || me.User.Name != "Ada Lovelace" || len(me.Teams) != 2 {
		t.Fatalf("Me = %+v, %v", me, err)
	}

	// AuthenticateUser keeps a session alive once its team is gone, with no
	// team; AuthenticateJWT refuses it.
	if _, err := ts.Delete(ctx, p, teamIDOf(tr.Team.ID)); err != nil {
		t.Fatal(err)
	}
	up, err := e.acc.AuthenticateUser(ctx, sess.Token)
	if err != nil || !up.TeamID.IsZero() || up.UserID != p.UserID {
		t.Fatalf("AuthenticateUser after the team's deletion = %+v, %v", up, err)
	}
	if _, err := e.acc.AuthenticateJWT(ctx, sess.Token); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("AuthenticateJWT after the team's deletion: %v", err)
	}
}

func ghProfile(id, email string) oauth.Profile {
	return oauth.Profile{ProviderUserID: id, Email: email, EmailVerified: true, Name: "Octo Cat", Login: "octocat"}
}

func TestOAuthLoginService(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	none := pgtype.UUID{}

	// A new identity registers a user with a default team.
	r, err := e.acc.OAuthLogin(ctx, "github", ghProfile("1", "octo@example.com"), none)
	if err != nil || !r.Created || r.Session.Account.Role != RoleOwner || r.Session.Account.User.Name != "Octo Cat" || r.Session.Account.User.PasswordHash.Valid {
		t.Fatalf("register: %+v, %v", r, err)
	}
	uid := r.Session.Account.User.ID
	// The same identity logs in, even with a new address at the provider.
	r, err = e.acc.OAuthLogin(ctx, "github", ghProfile("1", "renamed@example.com"), none)
	if err != nil || r.Created || r.Linked || r.Session.Account.User.ID != uid {
		t.Fatalf("login: %+v, %v", r, err)
	}
	// An unverified address is refused.
	prof := ghProfile("2", "new@example.com")
	prof.EmailVerified = false
	if _, err := e.acc.OAuthLogin(ctx, "github", prof, none); !errors.Is(err, ErrForbidden) {
		t.Fatalf("unverified: %v", err)
	}
	// A password account's address is not auto-linked...
	_, pw := e.signup(t, "pw@example.com")
	if _, err := e.acc.OAuthLogin(ctx, "github", ghProfile("3", "PW@example.com"), none); !errors.Is(err, ErrConflict) {
		t.Fatalf("password account: %v", err)
	}
	// ...its owner links it from a session instead.
	r, err = e.acc.OAuthLogin(ctx, "github", ghProfile("3", "elsewhere@example.com"), pgUUID(pw.UserID))
	if err != nil || !r.Linked || userIDOf(r.Session.Account.User.ID) != pw.UserID {
		t.Fatalf("link: %+v, %v", r, err)
	}
	if r, err = e.acc.OAuthLogin(ctx, "github", ghProfile("3", "x@example.com"), pgUUID(pw.UserID)); err != nil || r.Linked {
		t.Fatalf("link again: %+v, %v", r, err)
	}
	if _, err := e.acc.OAuthLogin(ctx, "github", ghProfile("1", "x@example.com"), pgUUID(pw.UserID)); !errors.Is(err, ErrConflict) {
		t.Fatalf("link someone else's identity: %v", err)
	}
	if _, err := e.acc.OAuthLogin(ctx, "github", ghProfile("4", "x@example.com"), pgUUID(pw.UserID)); !errors.Is(err, ErrConflict) {
		t.Fatalf("link a second identity of the provider: %v", err)
	}
	// An OAuth-only account (no password) with the verified address is
	// linked to another provider's identity.
	r, err = e.acc.OAuthLogin(ctx, "gitlab", ghProfile("1", "octo@example.com"), none)
	if err != nil || !r.Linked || r.Session.Account.User.ID != uid {
		t.Fatalf("auto-link: %+v, %v", r, err)
	}
}

// TestOAuthRegistrationRace: concurrent callbacks for one new identity
// create exactly one user.
func TestOAuthRegistrationRace(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const n = 8
	for round := range 3 {
		prof := ghProfile(fmt.Sprint(100+round), fmt.Sprintf("race%d@example.com", round))
		var wg sync.WaitGroup
		ids := make([]pgtype.UUID, n)
		errs := make([]error, n)
		created := make([]bool, n)
		start := make(chan struct{})
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				r, err := e.acc.OAuthLogin(ctx, "github", prof, pgtype.UUID{})
				ids[i], errs[i], created[i] = r.Session.Account.User.ID, err, r.Created
			}()
		}
		close(start)
		wg.Wait()
		nCreated := 0
		for i := range n {
			if errs[i] != nil {
				t.Fatalf("round %d, callback %d: %v", round, i, errs[i])
			}
			if ids[i] != ids[0] {
				t.Fatalf("round %d: callbacks signed in different users", round)
			}
			if created[i] {
				nCreated++
			}
		}
		if nCreated != 1 {
			t.Fatalf("round %d: %d callbacks report a new user, want 1", round, nCreated)
		}
	}
	if c, _ := e.st.Queries().CountUsers(ctx); c != 3 {
		t.Fatalf("%d users, want 3", c)
	}
}
