package capsule_test

import (
	"context"
	"errors"
	"iter"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/controlplane/cptest"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// collect drains an iterator, failing t on its error.
func collect[T any](t *testing.T, seq iter.Seq2[T, error]) []T {
	t.Helper()
	var out []T
	for v, err := range seq {
		if err != nil {
			t.Fatalf("iteration: %v", err)
		}
		out = append(out, v)
	}
	return out
}

// iterErr returns the error an iterator ends with (nil if none).
func iterErr[T any](seq iter.Seq2[T, error]) error {
	for _, err := range seq {
		if err != nil {
			return err
		}
	}
	return nil
}

// TestTeamsAndAdminAgainstControlPlane drives every method of
// Client.Teams and Client.Admin against a real control plane and
// PostgreSQL (no sandbox host: none of them needs one), as users' and an
// admin's programs would: another team's resources are ErrNotFound, a
// member calling an admin method is ErrForbidden, and the paged listings
// walk more than one page.
func TestTeamsAndAdminAgainstControlPlane(t *testing.T) {
	s := cptest.StartControlPlane(t)
	ctx := context.Background()
	client := func(token string) *capsule.Client {
		t.Helper()
		c, err := capsule.New(s.URL, capsule.WithAPIKey(token))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ownerSess, ownerKey := s.Account(t, "owner@example.com")
	memberSess, _ := s.Account(t, "member@example.com")
	outsiderSess, _ := s.Account(t, "outsider@example.com")
	owner, withKey, member, outsider := client(ownerSess), client(ownerKey), client(memberSess), client(outsiderSess)
	admin := client(s.Admin(t, "admin@example.com"))

	var me, memberMe, outsiderMe capsule.Me
	t.Run("me: the session's user and team", func(t *testing.T) {
		var err error
		if me, err = owner.Teams.Me(ctx); err != nil {
			t.Fatal(err)
		}
		own, ok := me.Team()
		if !ok || own.Role != capsule.RoleOwner || me.User.Email != "owner@example.com" || me.User.Admin || len(me.Teams) != 1 {
			t.Fatalf("me = %+v", me)
		}
		if memberMe, err = member.Teams.Me(ctx); err != nil {
			t.Fatal(err)
		}
		if outsiderMe, err = outsider.Teams.Me(ctx); err != nil {
			t.Fatal(err)
		}
		adm, err := admin.Teams.Me(ctx)
		if err != nil || !adm.User.Admin {
			t.Fatalf("admin's me = %+v, %v", adm, err)
		}
	})
	t.Run("an API key is refused: ErrForbidden", func(t *testing.T) {
		if _, err := withKey.Teams.List(ctx); !errors.Is(err, capsule.ErrForbidden) {
			t.Fatalf("list with an API key: %v", err)
		}
		if _, err := withKey.Teams.Switch(ctx, me.TeamID); !errors.Is(err, capsule.ErrForbidden) {
			t.Fatalf("switch with an API key: %v", err)
		}
	})

	var team capsule.Team
	t.Run("create, get, rename, list", func(t *testing.T) {
		var err error
		team, err = owner.Teams.Create(ctx, "Research")
		if err != nil || team.Name != "Research" || team.Role != capsule.RoleOwner || team.Slug == "" || team.ID == me.TeamID {
			t.Fatalf("create = %+v, %v", team, err)
		}
		got, err := owner.Teams.Get(ctx, team.ID)
		if err != nil || got.ID != team.ID || got.Name != "Research" {
			t.Fatalf("get = %+v, %v", got, err)
		}
		renamed, err := owner.Teams.Rename(ctx, team.ID, "Research & Development")
		if err != nil || renamed.Name != "Research & Development" || renamed.Slug != team.Slug {
			t.Fatalf("rename = %+v, %v", renamed, err)
		}
		list, err := owner.Teams.List(ctx)
		if err != nil || len(list) != 2 || list[1].ID != team.ID {
			t.Fatalf("list = %+v, %v", list, err)
		}
	})
	if team.ID == "" {
		t.FailNow()
	}
	t.Run("bad input is ErrInvalid", func(t *testing.T) {
		for name, err := range map[string]error{
			"empty name":  func() error { _, err := owner.Teams.Rename(ctx, team.ID, "  "); return err }(),
			"bad address": func() error { _, err := owner.Teams.AddMember(ctx, team.ID, "not-an-address", ""); return err }(),
			"bad role":    func() error { _, err := owner.Teams.AddMember(ctx, team.ID, "member@example.com", "boss"); return err }(),
			"bad invitee": func() error {
				_, err := owner.Teams.Invite(ctx, team.ID, capsule.InviteOptions{Email: "@"})
				return err
			}(),
			"short prefix": func() error { _, err := owner.Teams.SearchUsers(ctx, "ow"); return err }(),
		} {
			if !errors.Is(err, capsule.ErrInvalid) {
				t.Errorf("%s: %v, want ErrInvalid", name, err)
			}
		}
	})
	t.Run("another team's is ErrNotFound", func(t *testing.T) {
		for name, err := range map[string]error{
			"get":        func() error { _, err := outsider.Teams.Get(ctx, team.ID); return err }(),
			"rename":     func() error { _, err := outsider.Teams.Rename(ctx, team.ID, "mine"); return err }(),
			"delete":     func() error { _, err := outsider.Teams.Delete(ctx, team.ID); return err }(),
			"members":    func() error { _, err := outsider.Teams.Members(ctx, team.ID); return err }(),
			"add member": func() error { _, err := outsider.Teams.AddMember(ctx, team.ID, "outsider@example.com", ""); return err }(),
			"set role":   func() error { _, err := outsider.Teams.SetRole(ctx, team.ID, me.User.ID, "member"); return err }(),
			"remove":     func() error { return outsider.Teams.RemoveMember(ctx, team.ID, me.User.ID) }(),
			"leave":      func() error { return outsider.Teams.Leave(ctx, team.ID) }(),
			"invite": func() error {
				_, err := outsider.Teams.Invite(ctx, team.ID, capsule.InviteOptions{Email: "x@example.com"})
				return err
			}(),
			"invitations": func() error { _, err := outsider.Teams.Invitations(ctx, team.ID); return err }(),
			"switch":      func() error { _, err := outsider.Teams.Switch(ctx, team.ID); return err }(),
		} {
			if !errors.Is(err, capsule.ErrNotFound) {
				t.Errorf("%s: %v, want ErrNotFound", name, err)
			}
		}
	})

	t.Run("members: add by e-mail, change role, remove, leave", func(t *testing.T) {
		m, err := owner.Teams.AddMember(ctx, team.ID, "member@example.com", "")
		if err != nil || m.UserID != memberMe.User.ID || m.Role != capsule.RoleMember || m.Email != "member@example.com" {
			t.Fatalf("add = %+v, %v", m, err)
		}
		if _, err := owner.Teams.AddMember(ctx, team.ID, "member@example.com", ""); !errors.Is(err, capsule.ErrConflict) {
			t.Fatalf("adding twice: %v, want ErrConflict", err)
		}
		if _, err := owner.Teams.AddMember(ctx, team.ID, "nobody@example.com", ""); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("adding an unknown address: %v, want ErrNotFound", err)
		}
		// A member sees the members but may not manage them.
		list, err := member.Teams.Members(ctx, team.ID)
		if err != nil || len(list) != 2 || list[0].UserID != me.User.ID || list[1].UserID != m.UserID {
			t.Fatalf("members = %+v, %v", list, err)
		}
		if _, err := member.Teams.Rename(ctx, team.ID, "Taken over"); !errors.Is(err, capsule.ErrForbidden) {
			t.Fatalf("a member renames: %v, want ErrForbidden", err)
		}
		if m, err = owner.Teams.SetRole(ctx, team.ID, m.UserID, capsule.RoleAdmin); err != nil || m.Role != capsule.RoleAdmin {
			t.Fatalf("set role = %+v, %v", m, err)
		}
		if _, err := owner.Teams.SetRole(ctx, team.ID, me.User.ID, capsule.RoleMember); !errors.Is(err, capsule.ErrConflict) {
			t.Fatalf("demoting the last owner: %v, want ErrConflict", err)
		}
		if err := owner.Teams.RemoveMember(ctx, team.ID, m.UserID); err != nil {
			t.Fatal(err)
		}
		if _, err := member.Teams.Get(ctx, team.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("a removed member gets the team: %v, want ErrNotFound", err)
		}
		if err := owner.Teams.RemoveMember(ctx, team.ID, m.UserID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("removing twice: %v, want ErrNotFound", err)
		}
		if _, err := owner.Teams.AddMember(ctx, team.ID, "member@example.com", capsule.RoleMember); err != nil {
			t.Fatal(err)
		}
		if err := member.Teams.Leave(ctx, team.ID); err != nil {
			t.Fatalf("leave: %v", err)
		}
		if err := owner.Teams.Leave(ctx, team.ID); !errors.Is(err, capsule.ErrConflict) {
			t.Fatalf("the last owner leaves: %v, want ErrConflict", err)
		}
	})

	t.Run("invitations: create, list, revoke", func(t *testing.T) {
		inv, err := owner.Teams.Invite(ctx, team.ID, capsule.InviteOptions{Email: "newcomer@example.com", Role: capsule.RoleAdmin, Expires: 2 * time.Hour})
		if err != nil || !strings.HasPrefix(inv.Token, "cinv_") || inv.Status != "pending" || inv.Role != capsule.RoleAdmin || inv.TeamID != team.ID ||
			inv.CreatedBy != me.User.ID || inv.ExpiresAt.Sub(inv.CreatedAt).Round(time.Minute) != 2*time.Hour {
			t.Fatalf("invite = %+v, %v", inv, err)
		}
		if _, err := owner.Teams.Invite(ctx, team.ID, capsule.InviteOptions{Email: "member@example.com"}); !errors.Is(err, capsule.ErrConflict) {
			t.Fatalf("inviting a registered address: %v, want ErrConflict", err)
		}
		list, err := owner.Teams.Invitations(ctx, team.ID)
		if err != nil || len(list) != 1 || list[0].ID != inv.ID || list[0].Token != "" {
			t.Fatalf("invitations = %+v, %v", list, err)
		}
		if err := outsider.Teams.RevokeInvitation(ctx, team.ID, inv.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("another team revokes: %v, want ErrNotFound", err)
		}
		if err := owner.Teams.RevokeInvitation(ctx, team.ID, inv.ID); err != nil {
			t.Fatal(err)
		}
		if err := owner.Teams.RevokeInvitation(ctx, team.ID, inv.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("revoking twice: %v, want ErrNotFound", err)
		}
	})

	t.Run("user search", func(t *testing.T) {
		users, err := owner.Teams.SearchUsers(ctx, "MEMBER@")
		if err != nil || len(users) != 1 || users[0].ID != memberMe.User.ID || users[0].Email != "member@example.com" {
			t.Fatalf("search = %+v, %v", users, err)
		}
	})

	var research *capsule.Client
	t.Run("switch: a session of the other team", func(t *testing.T) {
		sess, err := owner.Teams.Switch(ctx, team.ID)
		if err != nil || sess.Token == "" || sess.Team.ID != team.ID || sess.User.ID != me.User.ID || !sess.ExpiresAt.After(time.Now()) {
			t.Fatalf("switch = %+v, %v", sess, err)
		}
		research = client(sess.Token)
		got, err := research.Teams.Me(ctx)
		if err != nil || got.TeamID != team.ID {
			t.Fatalf("me after switch = %+v, %v", got, err)
		}
	})
	if research == nil {
		t.FailNow()
	}

	t.Run("audit log: filters, and cursor paging over many pages", func(t *testing.T) {
		all := collect(t, research.Teams.AuditLog(ctx, capsule.AuditLogOptions{PageSize: 100}))
		paged := collect(t, research.Teams.AuditLog(ctx, capsule.AuditLogOptions{PageSize: 2}))
		if len(all) < 8 {
			t.Fatalf("%d events, want at least 8 (create, rename, members, invitations): %+v", len(all), all)
		}
		if len(paged) != len(all) {
			t.Fatalf("pages of 2 gave %d events, one page %d", len(paged), len(all))
		}
		for i := range all {
			if paged[i].ID != all[i].ID {
				t.Fatalf("event %d: paged %s, unpaged %s", i, paged[i].ID, all[i].ID)
			}
			if i > 0 && all[i].CreatedAt.After(all[i-1].CreatedAt) {
				t.Fatalf("event %d is newer than event %d: not newest first", i, i-1)
			}
		}
		actions := map[string]bool{}
		for _, e := range all {
			actions[e.Action] = true
		}
		for _, want := range []string{"team.create", "team.rename", "member.add", "member.role_change", "member.remove",
			"member.leave", "invitation.create", "invitation.revoke"} {
			if !actions[want] {
				t.Errorf("no %s event in %v", want, actions)
			}
		}
		renames := collect(t, research.Teams.AuditLog(ctx, capsule.AuditLogOptions{Actions: []string{"team.rename"}}))
		if len(renames) != 1 || renames[0].ResourceID != team.ID || renames[0].ActorID != me.User.ID || renames[0].ActorName != "owner@example.com" {
			t.Fatalf("team.rename events = %+v", renames)
		}
		if err := iterErr(research.Teams.AuditLog(ctx, capsule.AuditLogOptions{Actions: []string{"Not A Word"}})); !errors.Is(err, capsule.ErrInvalid) {
			t.Fatalf("a malformed filter: %v, want ErrInvalid", err)
		}
		// Stopping the loop early stops fetching.
		n := 0
		for range research.Teams.AuditLog(ctx, capsule.AuditLogOptions{PageSize: 1}) {
			if n++; n == 3 {
				break
			}
		}
		if n != 3 {
			t.Fatalf("broke after %d events", n)
		}
	})

	t.Run("admin calls of a member: ErrForbidden; bad credentials: ErrUnauthorized", func(t *testing.T) {
		calls := map[string]error{
			"teams":       iterErr(member.Admin.Teams(ctx, capsule.PageOptions{})),
			"set byoc":    func() error { _, err := member.Admin.SetBYOC(ctx, memberMe.TeamID, true); return err }(),
			"delete team": func() error { _, err := member.Admin.DeleteTeam(ctx, outsiderMe.TeamID); return err }(),
			"users":       iterErr(member.Admin.Users(ctx, capsule.UserListOptions{})),
			"disable":     func() error { _, err := member.Admin.SetUserDisabled(ctx, me.User.ID, true); return err }(),
			"hosts":       iterErr(member.Admin.Hosts(ctx, capsule.PageOptions{})),
			"audit":       iterErr(member.Admin.AuditLog(ctx, capsule.AdminAuditLogOptions{})),
			"sandboxes":   iterErr(member.Admin.Sandboxes(ctx, capsule.ListOptions{})),
			"build": func() error {
				_, err := member.Admin.Build(ctx, "mine", capsule.BuildOptions{Recipe: "FROM minimal\n"})
				return err
			}(),
			"builds": iterErr(member.Admin.Builds(ctx, capsule.PageOptions{})),
		}
		for name, err := range calls {
			if !errors.Is(err, capsule.ErrForbidden) {
				t.Errorf("a member's %s: %v, want ErrForbidden", name, err)
			}
		}
		if err := iterErr(withKey.Admin.Teams(ctx, capsule.PageOptions{})); !errors.Is(err, capsule.ErrForbidden) {
			t.Errorf("an API key's admin call: %v, want ErrForbidden", err)
		}
		forged := client("eyJhbGciOiJIUzI1NiJ9.e30.bm90LWEtc2lnbmF0dXJl")
		if err := iterErr(forged.Admin.Teams(ctx, capsule.PageOptions{})); !errors.Is(err, capsule.ErrUnauthorized) {
			t.Errorf("a forged token's admin call: %v, want ErrUnauthorized", err)
		}
	})

	t.Run("admin: teams over several pages, BYOC", func(t *testing.T) {
		all := collect(t, admin.Admin.Teams(ctx, capsule.PageOptions{PageSize: 100}))
		paged := collect(t, admin.Admin.Teams(ctx, capsule.PageOptions{PageSize: 2}))
		// owner's, member's, outsider's, the admin's, Research, Platform.
		if len(all) < 6 || len(paged) != len(all) {
			t.Fatalf("teams: %d in one page, %d in pages of 2", len(all), len(paged))
		}
		i := slices.IndexFunc(paged, func(at capsule.AdminTeam) bool { return at.ID == team.ID })
		if i < 0 || paged[i].Name != "Research & Development" || paged[i].Members != 1 || paged[i].BYOC {
			t.Fatalf("Research among %+v", paged)
		}
		b, err := admin.Admin.SetBYOC(ctx, outsiderMe.TeamID, true)
		if err != nil || !b.BYOC || b.ID != outsiderMe.TeamID {
			t.Fatalf("set byoc = %+v, %v", b, err)
		}
		own, err := outsider.Teams.Get(ctx, outsiderMe.TeamID)
		if err != nil || !own.BYOC {
			t.Fatalf("the team after BYOC = %+v, %v", own, err)
		}
		if _, err := admin.Admin.SetBYOC(ctx, "team-"+strings.Repeat("1", 32), true); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("BYOC of no team: %v, want ErrNotFound", err)
		}
	})

	t.Run("admin: hosts of every team with its name", func(t *testing.T) {
		byoc, err := outsider.Hosts.Create(ctx, capsule.CreateHostOptions{Name: "outsider-node", Type: "byoc", Address: "127.0.0.1:7991"})
		if err != nil {
			t.Fatal(err)
		}
		defer outsider.Hosts.Delete(context.WithoutCancel(ctx), byoc.Host.ID, true)
		platform, err := admin.Hosts.Create(ctx, capsule.CreateHostOptions{Name: "platform-node", Type: "regular", Address: "127.0.0.1:7992"})
		if err != nil {
			t.Fatal(err)
		}
		defer admin.Hosts.Delete(context.WithoutCancel(ctx), platform.Host.ID, true)
		hosts := collect(t, admin.Admin.Hosts(ctx, capsule.PageOptions{PageSize: 1}))
		if len(hosts) != 2 {
			t.Fatalf("hosts = %+v, want the two", hosts)
		}
		// Newest first.
		if hosts[0].ID != platform.Host.ID || hosts[0].TeamName != "Platform" || hosts[0].BYOC || hosts[0].Status != "pending" ||
			hosts[1].ID != byoc.Host.ID || hosts[1].TeamID != outsiderMe.TeamID || !hosts[1].BYOC {
			t.Fatalf("hosts = %+v", hosts)
		}
		if own, _ := outsiderMe.Team(); hosts[1].TeamName != own.Name {
			t.Fatalf("the BYOC host's team is %q, want %q", hosts[1].TeamName, own.Name)
		}
		// The platform team cannot be deleted nor be a BYOC team.
		if _, err := admin.Admin.DeleteTeam(ctx, hosts[0].TeamID); !errors.Is(err, capsule.ErrForbidden) {
			t.Fatalf("deleting the platform team: %v, want ErrForbidden", err)
		}
		if _, err := admin.Admin.SetBYOC(ctx, hosts[0].TeamID, true); !errors.Is(err, capsule.ErrInvalid) {
			t.Fatalf("BYOC for the platform team: %v, want ErrInvalid", err)
		}
	})

	t.Run("admin: users, disable and enable", func(t *testing.T) {
		users := collect(t, admin.Admin.Users(ctx, capsule.UserListOptions{PageSize: 2}))
		emails := make([]string, len(users))
		for i, u := range users {
			emails[i] = u.Email
		}
		if want := []string{"admin@example.com", "member@example.com", "outsider@example.com", "owner@example.com"}; !slices.Equal(emails, want) {
			t.Fatalf("users = %v, want %v (by address)", emails, want)
		}
		found := collect(t, admin.Admin.Users(ctx, capsule.UserListOptions{EmailPrefix: "OWN"}))
		if len(found) != 1 || found[0].ID != me.User.ID || found[0].Teams != 2 || found[0].Admin || found[0].Disabled {
			t.Fatalf("users owner* = %+v", found)
		}
		u, err := admin.Admin.SetUserDisabled(ctx, memberMe.User.ID, true)
		if err != nil || !u.Disabled || u.DisabledAt == nil || u.Email != "member@example.com" {
			t.Fatalf("disable = %+v, %v", u, err)
		}
		if _, err := member.Teams.List(ctx); !errors.Is(err, capsule.ErrForbidden) {
			t.Fatalf("a disabled user's call: %v, want ErrForbidden", err)
		}
		if u, err = admin.Admin.SetUserDisabled(ctx, memberMe.User.ID, false); err != nil || u.Disabled {
			t.Fatalf("enable = %+v, %v", u, err)
		}
		if _, err := member.Teams.List(ctx); err != nil {
			t.Fatalf("an enabled user's call: %v", err)
		}
		adm, err := admin.Teams.Me(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Admin.SetUserDisabled(ctx, adm.User.ID, true); !errors.Is(err, capsule.ErrConflict) {
			t.Fatalf("an admin disables itself: %v, want ErrConflict", err)
		}
		if _, err := admin.Admin.SetUserDisabled(ctx, "usr-"+strings.Repeat("0", 32), true); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("disabling no user: %v, want ErrNotFound", err)
		}
	})

	t.Run("admin: the platform-wide audit log", func(t *testing.T) {
		all := collect(t, admin.Admin.AuditLog(ctx, capsule.AdminAuditLogOptions{AuditLogOptions: capsule.AuditLogOptions{PageSize: 100}}))
		paged := collect(t, admin.Admin.AuditLog(ctx, capsule.AdminAuditLogOptions{AuditLogOptions: capsule.AuditLogOptions{PageSize: 3}}))
		if len(all) < 10 {
			t.Fatalf("platform audit log: %d events", len(all))
		}
		// The platform may log more meanwhile: the pages hold every event
		// of the single page, in its order, once.
		seen := map[string]bool{}
		var kept []string
		for _, e := range paged {
			if seen[e.ID] {
				t.Fatalf("event %s twice in the pages", e.ID)
			}
			seen[e.ID] = true
			if slices.ContainsFunc(all, func(a capsule.AuditEvent) bool { return a.ID == e.ID }) {
				kept = append(kept, e.ID)
			}
		}
		if len(kept) != len(all) {
			t.Fatalf("pages of 3 hold %d of the %d events", len(kept), len(all))
		}
		for i := range all {
			if kept[i] != all[i].ID {
				t.Fatalf("event %d: paged %s, unpaged %s", i, kept[i], all[i].ID)
			}
		}
		byoc := collect(t, admin.Admin.AuditLog(ctx, capsule.AdminAuditLogOptions{TeamID: outsiderMe.TeamID,
			AuditLogOptions: capsule.AuditLogOptions{Actions: []string{"team.byoc_enable"}}}))
		if len(byoc) != 1 || byoc[0].TeamID != outsiderMe.TeamID || byoc[0].Scope != "admin" || byoc[0].ActorName != "admin@example.com" {
			t.Fatalf("team.byoc_enable events = %+v", byoc)
		}
		users := collect(t, admin.Admin.AuditLog(ctx, capsule.AdminAuditLogOptions{AuditLogOptions: capsule.AuditLogOptions{ResourceTypes: []string{"user"}}}))
		if len(users) != 2 || users[0].Action != "user.enable" || users[1].Action != "user.disable" || users[0].ResourceID != memberMe.User.ID {
			t.Fatalf("user events = %+v", users)
		}
	})

	t.Run("admin: the platform team's sandboxes", func(t *testing.T) {
		if list := collect(t, admin.Admin.Sandboxes(ctx, capsule.ListOptions{States: []capsule.State{capsule.StateRunning}, PageSize: 5})); len(list) != 0 {
			t.Fatalf("platform sandboxes = %+v, want none (no host)", list)
		}
		if err := iterErr(admin.Admin.Sandboxes(ctx, capsule.ListOptions{States: []capsule.State{"sleepy"}})); !errors.Is(err, capsule.ErrInvalid) {
			t.Fatalf("a bad state: %v, want ErrInvalid", err)
		}
	})

	t.Run("delete: an owner's team, and any team by an admin", func(t *testing.T) {
		if _, err := admin.Admin.DeleteTeam(ctx, outsiderMe.TeamID); err != nil {
			t.Fatal(err)
		}
		if _, err := outsider.Teams.Get(ctx, outsiderMe.TeamID); !errors.Is(err, capsule.ErrNotFound) && !errors.Is(err, capsule.ErrUnauthorized) {
			t.Fatalf("a deleted team: %v", err)
		}
		if _, err := admin.Admin.DeleteTeam(ctx, outsiderMe.TeamID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("deleting twice: %v, want ErrNotFound", err)
		}
		d, err := owner.Teams.Delete(ctx, team.ID)
		if err != nil || d.ID != team.ID || d.SandboxesDestroyed != 0 {
			t.Fatalf("delete = %+v, %v", d, err)
		}
		if _, err := owner.Teams.Get(ctx, team.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("get a deleted team: %v, want ErrNotFound", err)
		}
	})
}

// TestAdminBuildsAgainstRealStack builds public templates through the
// admin routes on a real host (a build needs one online): with an archive
// as Templates.Build sends it, listed page by page, its log read, a slow
// one cancelled; a team's build is not reachable through them, nor a
// public one through a team's.
func TestAdminBuildsAgainstRealStack(t *testing.T) {
	s := cptest.Start(t, hosttest.SDKPool)
	ctx := context.Background()
	ownerSess, _ := s.Account(t, "builder@example.com")
	admin, err := capsule.New(s.URL, capsule.WithAPIKey(s.Admin(t, "build-admin@example.com")))
	if err != nil {
		t.Fatal(err)
	}
	owner, err := capsule.New(s.URL, capsule.WithAPIKey(ownerSess))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello.txt"), []byte("hello from the archive\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	var built capsule.Build
	t.Run("build with an archive, follow its log", func(t *testing.T) {
		b, err := admin.Admin.Build(ctx, "sdk-public", capsule.BuildOptions{Recipe: "FROM minimal\nCOPY hello.txt /hello.txt\nRUN cat /hello.txt\n",
			Context: capsule.ArchiveDir(dir), VCPUs: 1, MemoryMB: 256})
		if err != nil || b.Template != "sdk-public" || b.ID == "" {
			t.Fatalf("build = %+v, %v", b, err)
		}
		var lines []capsule.BuildLogLine
		waitFor(t, 10*time.Minute, "the build to end", func() bool {
			next := 0
			if len(lines) > 0 {
				next = lines[len(lines)-1].Offset
			}
			page, err := admin.Admin.BuildLog(ctx, b.ID, next, 2)
			if err != nil {
				t.Fatalf("log: %v", err)
			}
			lines = append(lines, page.Lines...)
			return len(page.Lines) == 0 && (page.Status == "success" || page.Status == "failed" || page.Status == "cancelled")
		})
		text := ""
		for i, l := range lines {
			if l.Offset != i+1 {
				t.Fatalf("line %d has offset %d (pages of 2 must not skip or repeat)", i+1, l.Offset)
			}
			text += l.Line + "\n"
		}
		if built, err = admin.Admin.GetBuild(ctx, b.ID); err != nil || built.Status != "success" {
			t.Fatalf("build ended %+v, %v; log:\n%s", built, err, text)
		}
		if !strings.Contains(text, "hello from the archive") {
			t.Fatalf("the archive's file is not in the log:\n%s", text)
		}
	})
	t.Run("every team sees the public template", func(t *testing.T) {
		list, err := owner.Templates.List(ctx)
		if err != nil || !hasSnapshot(list, "sdk-public") {
			t.Fatalf("templates = %+v, %v", list, err)
		}
	})
	t.Run("a slow build runs in a platform sandbox, is cancelled; an ended one is ErrConflict", func(t *testing.T) {
		b, err := admin.Admin.Build(ctx, "sdk-public-slow", capsule.BuildOptions{Recipe: "FROM minimal\nRUN sleep 600\n", MemoryMB: 256})
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Minute, "the slow build's RUN step", func() bool {
			b, err = admin.Admin.GetBuild(ctx, b.ID)
			return err != nil || b.Done() || (b.Status == "running" && b.CurrentStep >= 1)
		})
		if err != nil || b.Status != "running" {
			t.Fatalf("slow build = %+v, %v", b, err)
		}
		// Its sandbox is the platform team's: listed for admins, not for a team.
		mine := capsule.ListOptions{Metadata: map[string]string{"capsule_build": b.ID}, PageSize: 1}
		sbxs := collect(t, admin.Admin.Sandboxes(ctx, mine))
		if len(sbxs) != 1 || sbxs[0].State != capsule.StateRunning {
			t.Fatalf("the build's sandbox among the platform's = %+v", sbxs)
		}
		if theirs := collect(t, owner.Sandboxes.List(ctx, mine)); len(theirs) != 0 {
			t.Fatalf("a team lists the platform's build sandbox: %+v", theirs)
		}
		if c, err := admin.Admin.CancelBuild(ctx, b.ID); err != nil || c.ID != b.ID {
			t.Fatalf("cancel = %+v, %v", c, err)
		}
		var end capsule.Build
		waitFor(t, 3*time.Minute, "the cancelled build to end", func() bool {
			end, err = admin.Admin.GetBuild(ctx, b.ID)
			return err != nil || end.Done()
		})
		if err != nil || end.Status != "cancelled" {
			t.Fatalf("after cancel: %+v, %v", end, err)
		}
		if _, err := admin.Admin.CancelBuild(ctx, built.ID); !errors.Is(err, capsule.ErrConflict) {
			t.Fatalf("cancelling an ended build: %v, want ErrConflict", err)
		}
	})
	t.Run("listed newest first, page by page", func(t *testing.T) {
		builds := collect(t, admin.Admin.Builds(ctx, capsule.PageOptions{PageSize: 1}))
		if len(builds) != 2 || builds[0].Template != "sdk-public-slow" || builds[1].ID != built.ID {
			t.Fatalf("builds (pages of 1) = %+v", builds)
		}
	})
	t.Run("a team's build is not reachable through the admin routes, nor a public one through a team's", func(t *testing.T) {
		own, err := owner.Templates.Build(ctx, "owners", capsule.BuildOptions{Recipe: "FROM minimal\nRUN sleep 600\n", MemoryMB: 256})
		if err != nil {
			t.Fatal(err)
		}
		defer owner.Templates.CancelBuild(context.WithoutCancel(ctx), "owners", own.ID)
		if _, err := admin.Admin.GetBuild(ctx, own.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("get: %v, want ErrNotFound", err)
		}
		if _, err := admin.Admin.CancelBuild(ctx, own.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("cancel: %v, want ErrNotFound", err)
		}
		if _, err := admin.Admin.BuildLog(ctx, own.ID, 0, 0); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("log: %v, want ErrNotFound", err)
		}
		if _, err := owner.Templates.GetBuild(ctx, "sdk-public", built.ID); !errors.Is(err, capsule.ErrNotFound) {
			t.Fatalf("a public build through a team's route: %v, want ErrNotFound", err)
		}
		if _, err := owner.Admin.GetBuild(ctx, built.ID); !errors.Is(err, capsule.ErrForbidden) {
			t.Fatalf("a member's admin call: %v, want ErrForbidden", err)
		}
	})
}
