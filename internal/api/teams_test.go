package api

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// user is a signed-up, logged-in account.
type user struct {
	jwt, key, team, id, email string
}

func (e *apiEnv) user(t *testing.T, email string) user {
	t.Helper()
	jwt, key, team := e.account(t, email)
	var me meJSON
	if c := e.do(t, "GET", "/v1/me", jwt, nil, &me); c != 200 {
		t.Fatalf("me: %d", c)
	}
	return user{jwt: jwt, key: key, team: team, id: me.User.ID, email: email}
}

func mustUUID(t *testing.T, prefix, id string) pgtype.UUID {
	t.Helper()
	u, err := wireid.Parse(prefix, id)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// join puts u into team with role, straight into the database.
func (e *apiEnv) join(t *testing.T, u user, team, role string) {
	t.Helper()
	if _, err := e.st.Queries().AddTeamMember(context.Background(), db.AddTeamMemberParams{
		UserID: mustUUID(t, wireid.User, u.id), TeamID: mustUUID(t, wireid.Team, team), Role: role,
	}); err != nil {
		t.Fatal(err)
	}
}

// teamKey makes an API key of team created by creator (a member of it),
// straight into the database.
func (e *apiEnv) teamKey(t *testing.T, team string, creator user) string {
	t.Helper()
	k := auth.GenerateAPIKey()
	if _, err := e.st.Queries().CreateAPIKey(context.Background(), db.CreateAPIKeyParams{
		TeamID: mustUUID(t, wireid.Team, team), Name: "matrix", Prefix: k.DisplayPrefix, KeyHash: k.Hash,
		CreatedBy: mustUUID(t, wireid.User, creator.id),
	}); err != nil {
		t.Fatal(err)
	}
	return k.Plaintext
}

// invite has u invite email into team (as a member); it returns the
// invitation's ID.
func (e *apiEnv) invite(t *testing.T, team string, u user, email string) string {
	t.Helper()
	var inv invitationJSON
	if c := e.do(t, "POST", "/v1/teams/"+team+"/invitations", u.jwt, map[string]string{"email": email}, &inv); c != 201 || inv.Token == "" {
		t.Fatalf("invite %s: %d %+v", email, c, inv)
	}
	return inv.ID
}

func (e *apiEnv) raw(t *testing.T, method, path, jwt string) string {
	t.Helper()
	req, _ := http.NewRequest(method, e.srv.URL+path, nil)
	req.Header.Set("Authorization", "Bearer "+jwt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func auditActions(t *testing.T, e *apiEnv, team string) []string {
	t.Helper()
	rows, err := e.st.Queries().ListAuditLogs(context.Background(), db.ListAuditLogsParams{
		TeamID: mustUUID(t, wireid.Team, team), Scopes: []string{}, ResourceTypes: []string{}, Actions: []string{}, PageSize: 200,
	})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for i := len(rows) - 1; i >= 0; i-- {
		out = append(out, rows[i].Action)
	}
	return out
}

// TestTeamRoutes walks every team, member and user route through a
// team's life.
func TestTeamRoutes(t *testing.T) {
	e := newAPI(t, "", "")
	owner := e.user(t, "owner@example.com")
	bob := e.user(t, "bob@example.com")

	var team teamDetailJSON
	if c := e.do(t, "POST", "/v1/teams", owner.jwt, map[string]string{"name": " Research "}, &team); c != 201 ||
		team.Name != "Research" || team.Role != "owner" || team.Slug == "" || !strings.HasPrefix(team.ID, wireid.Team) {
		t.Fatalf("create: %d %+v", c, team)
	}
	tp := "/v1/teams/" + team.ID
	var list struct {
		Teams []teamDetailJSON `json:"teams"`
	}
	if c := e.do(t, "GET", "/v1/teams", owner.jwt, nil, &list); c != 200 || len(list.Teams) != 2 || list.Teams[1].ID != team.ID {
		t.Fatalf("list: %d %+v", c, list)
	}
	var got teamDetailJSON
	if c := e.do(t, "PATCH", tp, owner.jwt, map[string]string{"name": "R&D"}, &got); c != 200 || got.Name != "R&D" || got.Slug != team.Slug {
		t.Fatalf("rename: %d %+v", c, got)
	}
	if c := e.do(t, "GET", tp, owner.jwt, nil, &got); c != 200 || got.Name != "R&D" || got.Slug != team.Slug {
		t.Fatalf("get: %d %+v", c, got)
	}
	var m memberJSON
	if c := e.do(t, "POST", tp+"/members", owner.jwt, map[string]string{"email": "BOB@example.com"}, &m); c != 201 || m.Role != "member" || m.UserID != bob.id || m.Email != bob.email {
		t.Fatalf("add: %d %+v", c, m)
	}
	if c := e.do(t, "PATCH", tp+"/members/"+bob.id, owner.jwt, map[string]string{"role": "admin"}, &m); c != 200 || m.Role != "admin" {
		t.Fatalf("promote: %d %+v", c, m)
	}
	var members struct {
		Members []memberJSON `json:"members"`
	}
	if c := e.do(t, "GET", tp+"/members", bob.jwt, nil, &members); c != 200 || len(members.Members) != 2 ||
		members.Members[0].Role != "owner" || members.Members[1].Role != "admin" {
		t.Fatalf("members: %d %+v", c, members)
	}

	// Switch team: a session for the team, shaped as login's answer.
	var sess sessionJSON
	if c := e.do(t, "POST", "/v1/auth/switch-team", bob.jwt, map[string]string{"team_id": team.ID}, &sess); c != 200 ||
		sess.Token == "" || sess.Team == nil || sess.Team.ID != team.ID || sess.Team.Role != "admin" || sess.User.Email != bob.email {
		t.Fatalf("switch: %d %+v", c, sess)
	}
	var me meJSON
	if c := e.do(t, "GET", "/v1/me", sess.Token, nil, &me); c != 200 || me.TeamID != team.ID || len(me.Teams) != 2 {
		t.Fatalf("me: %d %+v", c, me)
	}
	// The switched session acts in the team: its API keys are the team's.
	var k apiKeyJSON
	if c := e.do(t, "POST", "/v1/api-keys", sess.Token, map[string]string{"name": "team key"}, &k); c != 201 {
		t.Fatalf("team key: %d", c)
	}
	for _, tc := range []struct {
		body any
		want int
	}{
		{map[string]string{"team_id": owner.team}, 404}, // not bob's
		{map[string]string{"team_id": "team-nope"}, 404},
		{`{"team":"x"}`, 400},
	} {
		if c := e.do(t, "POST", "/v1/auth/switch-team", bob.jwt, tc.body, nil); c != tc.want {
			t.Errorf("switch %v: %d, want %d", tc.body, c, tc.want)
		}
	}

	// Profile.
	var u userJSON
	if c := e.do(t, "PATCH", "/v1/me", bob.jwt, map[string]string{"name": "  Bob B.  "}, &u); c != 200 || u.Name != "Bob B." {
		t.Fatalf("set name: %d %+v", c, u)
	}
	if c := e.do(t, "PATCH", "/v1/me", bob.jwt, map[string]string{"name": strings.Repeat("é", 65)}, nil); c != 400 {
		t.Fatalf("long name: %d", c)
	}
	if c := e.do(t, "GET", "/v1/me", bob.jwt, nil, &me); c != 200 || me.User.Name != "Bob B." {
		t.Fatalf("me after rename: %d %+v", c, me)
	}

	// Leave and remove.
	carol := e.user(t, "carol@example.com")
	if c := e.do(t, "POST", tp+"/members", bob.jwt, map[string]string{"email": carol.email, "role": "member"}, nil); c != 201 {
		t.Fatalf("admin adds: %d", c)
	}
	if c := e.do(t, "POST", tp+"/leave", carol.jwt, nil, nil); c != 204 {
		t.Fatalf("leave: %d", c)
	}
	var eb errorBody
	if c := e.do(t, "POST", tp+"/leave", owner.jwt, nil, &eb); c != 409 || !strings.Contains(eb.Message, "last owner") {
		t.Fatalf("last owner leaves: %d %+v", c, eb)
	}
	if c := e.do(t, "DELETE", tp+"/members/"+bob.id, owner.jwt, nil, nil); c != 204 {
		t.Fatalf("remove: %d", c)
	}
	// bob's switched session lost its team: team-scoped routes refuse it,
	// the user routes still serve it (to switch elsewhere).
	if c := e.do(t, "GET", "/v1/api-keys", sess.Token, nil, nil); c != 401 {
		t.Fatalf("team route, removed member: %d", c)
	}
	if c := e.do(t, "GET", "/v1/me", sess.Token, nil, &me); c != 200 || me.TeamID != "" || len(me.Teams) != 1 {
		t.Fatalf("me, removed member: %d %+v", c, me)
	}

	// Delete: the team's key dies, the team is gone.
	var del struct {
		Deleted            bool `json:"deleted"`
		SandboxesDestroyed int  `json:"sandboxes_destroyed"`
	}
	if c := e.do(t, "DELETE", tp, owner.jwt, nil, &del); c != 200 || !del.Deleted {
		t.Fatalf("delete: %d %+v", c, del)
	}
	if c := e.do(t, "GET", "/v1/sandboxes", k.Key, nil, nil); c != 401 {
		t.Fatalf("the deleted team's key: %d", c)
	}
	if c := e.do(t, "GET", tp, owner.jwt, nil, nil); c != 404 {
		t.Fatalf("get deleted: %d", c)
	}
	// Bob's key was revoked with his removal, in its transaction (one
	// timestamp: the two records come in either order).
	want := "[team.create team.rename member.add member.role_change api_key.create member.add member.leave member.remove+api_key.revoke team.delete]"
	acts := auditActions(t, e, team.ID)
	for i := range len(acts) - 1 {
		if pair := acts[i] + "+" + acts[i+1]; pair == "api_key.revoke+member.remove" || pair == "member.remove+api_key.revoke" {
			acts = slices.Replace(acts, i, i+2, "member.remove+api_key.revoke")
			break
		}
	}
	if fmt.Sprint(acts) != want {
		t.Fatalf("audit:\n%s\nwant\n%s", acts, want)
	}
}

// TestTeamAuthorizationMatrix: every team route for every kind of caller,
// each row on a fresh team owned by owner, with admin, member and three
// members to act on (victims, one per caller that may succeed).
func TestTeamAuthorizationMatrix(t *testing.T) {
	e := newAPI(t, "", "")
	owner := e.user(t, "o@example.com")
	admin := e.user(t, "a@example.com")
	member := e.user(t, "m@example.com")
	outsider := e.user(t, "x@example.com")
	victims := map[string]user{}
	for _, who := range []string{"member", "admin", "owner"} {
		victims[who] = e.user(t, "victim-"+who+"@example.com")
		e.user(t, "new-"+who+"@example.com") // to be added
	}
	// victim is the member caller who acts on (callers that cannot succeed
	// share the member's).
	victim := func(who string) user {
		if v, ok := victims[who]; ok {
			return v
		}
		return victims["member"]
	}
	callers := []string{"none", "api key", "outsider", "member", "admin", "owner"}
	n := 0
	for _, row := range []struct {
		name   string
		method string
		path   func(team, who string) string
		body   func(who string) any
		// want per caller, in the order of callers.
		want [6]int
	}{
		{"get team", "GET", func(tm, _ string) string { return "/v1/teams/" + tm }, nil, [6]int{401, 403, 404, 200, 200, 200}},
		{"rename", "PATCH", func(tm, _ string) string { return "/v1/teams/" + tm }, func(string) any { return map[string]string{"name": "renamed"} }, [6]int{401, 403, 404, 403, 200, 200}},
		{"delete team", "DELETE", func(tm, _ string) string { return "/v1/teams/" + tm }, nil, [6]int{401, 403, 404, 403, 403, 200}},
		{"list members", "GET", func(tm, _ string) string { return "/v1/teams/" + tm + "/members" }, nil, [6]int{401, 403, 404, 200, 200, 200}},
		{"add a member", "POST", func(tm, _ string) string { return "/v1/teams/" + tm + "/members" },
			func(who string) any {
				return map[string]string{"email": "new-" + who + "@example.com", "role": "member"}
			}, [6]int{401, 403, 404, 403, 201, 201}},
		{"add a member twice", "POST", func(tm, _ string) string { return "/v1/teams/" + tm + "/members" },
			func(string) any { return map[string]string{"email": member.email, "role": "member"} }, [6]int{401, 403, 404, 403, 409, 409}},
		{"add an unknown address", "POST", func(tm, _ string) string { return "/v1/teams/" + tm + "/members" },
			func(string) any { return map[string]string{"email": "ghost@example.com", "role": "member"} }, [6]int{401, 403, 404, 403, 404, 404}},
		{"add an owner", "POST", func(tm, _ string) string { return "/v1/teams/" + tm + "/members" },
			func(string) any { return map[string]string{"email": outsider.email, "role": "owner"} }, [6]int{401, 403, 404, 403, 403, 201}},
		{"promote to admin", "PATCH", func(tm, who string) string { return "/v1/teams/" + tm + "/members/" + victim(who).id },
			func(string) any { return map[string]string{"role": "admin"} }, [6]int{401, 403, 404, 403, 200, 200}},
		{"promote to owner", "PATCH", func(tm, who string) string { return "/v1/teams/" + tm + "/members/" + victim(who).id },
			func(string) any { return map[string]string{"role": "owner"} }, [6]int{401, 403, 404, 403, 403, 200}},
		{"demote the last owner", "PATCH", func(tm, _ string) string { return "/v1/teams/" + tm + "/members/" + owner.id },
			func(string) any { return map[string]string{"role": "member"} }, [6]int{401, 403, 404, 403, 403, 409}},
		{"remove a member", "DELETE", func(tm, who string) string { return "/v1/teams/" + tm + "/members/" + victim(who).id }, nil, [6]int{401, 403, 404, 403, 204, 204}},
		{"remove an admin", "DELETE", func(tm, _ string) string { return "/v1/teams/" + tm + "/members/" + admin.id }, nil, [6]int{401, 403, 404, 403, 403, 204}},
		{"remove the last owner", "DELETE", func(tm, _ string) string { return "/v1/teams/" + tm + "/members/" + owner.id }, nil, [6]int{401, 403, 404, 403, 403, 409}},
		{"remove a non-member", "DELETE", func(tm, _ string) string { return "/v1/teams/" + tm + "/members/" + outsider.id }, nil, [6]int{401, 403, 404, 403, 404, 404}},
		{"leave", "POST", func(tm, _ string) string { return "/v1/teams/" + tm + "/leave" }, nil, [6]int{401, 403, 404, 204, 204, 409}},
		{"invite a member", "POST", func(tm, _ string) string { return "/v1/teams/" + tm + "/invitations" },
			func(who string) any {
				return map[string]string{"email": "invited-" + strings.ReplaceAll(who, " ", "-") + "@example.com"}
			}, [6]int{401, 403, 404, 403, 201, 201}},
		{"invite an owner", "POST", func(tm, _ string) string { return "/v1/teams/" + tm + "/invitations" },
			func(who string) any {
				return map[string]string{"email": "invited-" + strings.ReplaceAll(who, " ", "-") + "@example.com", "role": "owner"}
			}, [6]int{401, 403, 404, 403, 403, 201}},
		{"invite a registered address", "POST", func(tm, _ string) string { return "/v1/teams/" + tm + "/invitations" },
			func(string) any { return map[string]string{"email": outsider.email} }, [6]int{401, 403, 404, 403, 409, 409}},
		{"invite, bad role", "POST", func(tm, _ string) string { return "/v1/teams/" + tm + "/invitations" },
			func(string) any { return map[string]string{"email": "z@example.com", "role": "god"} }, [6]int{401, 403, 400, 400, 400, 400}},
		{"list invitations", "GET", func(tm, _ string) string { return "/v1/teams/" + tm + "/invitations" }, nil, [6]int{401, 403, 404, 403, 200, 200}},
		{"revoke an invitation", "DELETE", func(tm, who string) string {
			return "/v1/teams/" + tm + "/invitations/" + e.invite(t, tm, owner, "revoked-"+strings.ReplaceAll(who, " ", "-")+"@example.com")
		},
			nil, [6]int{401, 403, 404, 403, 204, 204}},
		{"revoke an unknown invitation", "DELETE", func(tm, _ string) string {
			return "/v1/teams/" + tm + "/invitations/inv-00000000000000000000000000000001"
		},
			nil, [6]int{401, 403, 404, 403, 404, 404}},
	} {
		t.Run(row.name, func(t *testing.T) {
			n++
			var team teamDetailJSON
			if c := e.do(t, "POST", "/v1/teams", owner.jwt, map[string]string{"name": fmt.Sprint("matrix ", n)}, &team); c != 201 {
				t.Fatalf("create: %d", c)
			}
			e.join(t, admin, team.ID, "admin")
			e.join(t, member, team.ID, "member")
			for _, v := range victims {
				e.join(t, v, team.ID, "member")
			}
			authz := map[string]string{"none": "", "api key": e.teamKey(t, team.ID, owner), "outsider": outsider.jwt,
				"member": member.jwt, "admin": admin.jwt, "owner": owner.jwt}
			for i, who := range callers {
				var body any
				if row.body != nil {
					body = row.body(who)
				}
				if c := e.do(t, row.method, row.path(team.ID, who), authz[who], body, nil); c != row.want[i] {
					t.Errorf("%s: %d, want %d", who, c, row.want[i])
				}
			}
		})
	}
	// A malformed or unknown team or user ID is a 404 too.
	for _, r := range []struct{ method, path string }{
		{"GET", "/v1/teams/nope"},
		{"GET", "/v1/teams/team-00000000000000000000000000000001"},
		{"DELETE", "/v1/teams/" + owner.team + "/members/usr-x"},
		{"DELETE", "/v1/teams/" + owner.team + "/members/usr-00000000000000000000000000000001"},
	} {
		if c := e.do(t, r.method, r.path, owner.jwt, nil, nil); c != 404 {
			t.Errorf("%s %s: %d, want 404", r.method, r.path, c)
		}
	}
	// The user routes: a session, never an API key.
	for _, r := range []struct{ method, path string }{
		{"GET", "/v1/teams"}, {"POST", "/v1/teams"}, {"GET", "/v1/me"}, {"PATCH", "/v1/me"}, {"POST", "/v1/me/password"},
		{"POST", "/v1/auth/switch-team"}, {"GET", "/v1/users/search?email_prefix=abc"},
	} {
		if c := e.do(t, r.method, r.path, "", nil, nil); c != 401 {
			t.Errorf("%s %s, no auth: %d, want 401", r.method, r.path, c)
		}
		if c := e.do(t, r.method, r.path, owner.key, nil, nil); c != 403 {
			t.Errorf("%s %s, API key: %d, want 403", r.method, r.path, c)
		}
		if c := e.do(t, r.method, r.path, "not.a.jwt", nil, nil); c != 401 {
			t.Errorf("%s %s, bad token: %d, want 401", r.method, r.path, c)
		}
	}
}

func TestUserSearch(t *testing.T) {
	e := newAPI(t, "", "")
	owner := e.user(t, "owner@example.com")
	for _, email := range []string{"a%b@example.com", "a_c@example.com", "axb@example.com", "abc@example.com"} {
		e.user(t, email)
	}
	type hits struct {
		Users []map[string]any `json:"users"`
	}
	search := func(jwt, prefix string) (int, []string) {
		var h hits
		c := e.do(t, "GET", "/v1/users/search?email_prefix="+prefix, jwt, nil, &h)
		var out []string
		for _, u := range h.Users {
			if len(u) != 3 || u["id"] == nil || u["name"] == nil {
				t.Fatalf("hit fields: %v", u)
			}
			out = append(out, u["email"].(string))
		}
		return c, out
	}
	for _, tc := range []struct{ prefix, want string }{
		{"a%25b", "[a%b@example.com]"}, // '%' literally
		{"a_c", "[a_c@example.com]"},   // '_' literally
		{"A%25B", "[a%b@example.com]"},
		{"ab", ""},
		{"", ""},
	} {
		c, got := search(owner.jwt, tc.prefix)
		if tc.want == "" {
			if c != 400 {
				t.Errorf("%q: %d, want 400", tc.prefix, c)
			}
			continue
		}
		if c != 200 || fmt.Sprint(got) != tc.want {
			t.Errorf("%q: %d %v, want %s", tc.prefix, c, got, tc.want)
		}
	}
	for i := range 12 {
		e.user(t, fmt.Sprintf("bulk%02d@example.com", i))
	}
	if c, got := search(owner.jwt, "bulk"); c != 200 || len(got) != 10 {
		t.Fatalf("capped: %d, %d hits", c, len(got))
	}
	if body := e.raw(t, "GET", "/v1/users/search?email_prefix=bulk", owner.jwt); strings.Contains(body, "argon2") || strings.Contains(body, "password") {
		t.Fatalf("search leaks: %s", body)
	}
	// A plain member of the session's team may not search.
	var team teamDetailJSON
	if c := e.do(t, "POST", "/v1/teams", owner.jwt, map[string]string{"name": "t"}, &team); c != 201 {
		t.Fatal(c)
	}
	plain := e.user(t, "plain@example.com")
	e.join(t, plain, team.ID, "member")
	var sess sessionJSON
	if c := e.do(t, "POST", "/v1/auth/switch-team", plain.jwt, map[string]string{"team_id": team.ID}, &sess); c != 200 {
		t.Fatal(c)
	}
	if c, _ := search(sess.Token, "bulk"); c != 403 {
		t.Fatalf("member searches: %d, want 403", c)
	}
}

// TestChangePassword: the current password must match (a wrong one is 403
// and the old password keeps working); the new one follows the policy; an
// API key cannot change it; after a change only the new one signs in.
func TestChangePassword(t *testing.T) {
	e := newAPIWith(t, "", "", func(c *Config) { c.LoginEmailLimit = auth.RateLimit{Burst: 100, Interval: time.Hour} })
	u := e.user(t, "pw@example.com")
	const old, next = "correct horse battery", "a new and long password"
	login := func(pw string) int {
		return e.do(t, "POST", "/v1/auth/login", "", creds{"email": u.email, "password": pw}, nil)
	}
	for _, tc := range []struct {
		name, authz string
		body        any
		want        int
	}{
		{"wrong current password", u.jwt, map[string]string{"current_password": "not it at all", "new_password": next}, 403},
		{"new password too short", u.jwt, map[string]string{"current_password": old, "new_password": "short"}, 400},
		{"unknown field", u.jwt, map[string]string{"current_password": old, "new_password": next, "user_id": "usr-x"}, 400},
		{"API key", u.key, map[string]string{"current_password": old, "new_password": next}, 403},
		{"no auth", "", map[string]string{"current_password": old, "new_password": next}, 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := e.do(t, "POST", "/v1/me/password", tc.authz, tc.body, nil); c != tc.want {
				t.Fatalf("change: %d, want %d", c, tc.want)
			}
		})
	}
	if c := login(old); c != 200 {
		t.Fatalf("the old password after the refused changes: login %d", c)
	}
	t.Run("changed", func(t *testing.T) {
		if c := e.do(t, "POST", "/v1/me/password", u.jwt, map[string]string{"current_password": old, "new_password": next}, nil); c != 204 {
			t.Fatalf("change: %d", c)
		}
		if c := login(old); c != 401 {
			t.Errorf("the old password: login %d, want 401", c)
		}
		if c := login(next); c != 200 {
			t.Errorf("the new password: login %d, want 200", c)
		}
	})
}
