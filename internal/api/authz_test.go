package api

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// publicRoutes need no credentials.
var publicRoutes = map[string]bool{
	"GET /healthz": true, "GET /openapi.yaml": true, "GET /openapi.json": true,
	"GET /docs": true, "GET /docs/{file...}": true,
	"POST /v1/auth/signup": true, "POST /v1/auth/login": true,
	// sign-in of the dashboard; sign-out without a session only clears cookies
	"POST /v1/auth/session": true, "DELETE /v1/auth/session": true, "GET /v1/auth/config": true,
	"GET /v1/auth/oauth/{provider}/login": true, "GET /v1/auth/oauth/{provider}/callback": true,
}

// validBodies are well-formed bodies of the sandbox routes that take one.
var validBodies = map[string]any{
	"POST /v1/sandboxes/{id}/timeout":     map[string]any{"timeout_sec": 60},
	"POST /v1/sandboxes/{id}/exec":        map[string]any{"cmd": "true"},
	"POST /v1/sandboxes/{id}/files/mkdir": map[string]any{"path": "/tmp/x"},
}

// TestEveryRouteAuthorization walks the router: every route but the
// public ones answers 401 without credentials and with a wrong API key,
// and every route of a sandbox answers 404 to another team (its API key
// and its owner's session) for a sandbox that exists — whatever its state,
// before anything else is checked or done.
func TestEveryRouteAuthorization(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	_, _, teamA := e.account(t, "owner@example.com")
	jwtB, keyB, _ := e.account(t, "other@example.com")
	tid, err := wireid.Parse(wireid.Team, teamA)
	if err != nil {
		t.Fatal(err)
	}
	row, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
		TeamID: tid, Template: "minimal", State: store.SandboxRunning, VCPUs: 1, MemoryMB: 256,
		AllowInternetAccess: true, Metadata: json.RawMessage(`{}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	sbID := wireid.Format(wireid.Sandbox, row.ID)
	sandboxRoutes := 0
	for _, route := range e.h.Routes() {
		method, pattern, _ := strings.Cut(route, " ")
		if publicRoutes[route] {
			continue
		}
		path := strings.NewReplacer("{id}", sbID, "{name}", "some-name", "{user_id}", "usr-00000000000000000000000000000000",
			"{provider}", "github", "{invitation_id}", "inv-00000000000000000000000000000000").Replace(pattern)
		// Plausible queries and bodies: the refusal must come first anyway.
		if strings.Contains(path, "/files") {
			path += "?path=/tmp/x&dir=/tmp"
		}
		body := any(map[string]any{})
		if method == "GET" || method == "DELETE" {
			body = nil
		}
		if b, ok := validBodies[route]; ok {
			body = b
		}
		t.Run(route, func(t *testing.T) {
			if c := e.do(t, method, path, "", body, nil); c != 401 {
				t.Errorf("no credentials: %d, want 401", c)
			}
			if c := e.do(t, method, path, "e2b_"+strings.Repeat("0", 40), body, nil); c != 401 {
				t.Errorf("unknown API key: %d, want 401", c)
			}
		})
		if !strings.HasPrefix(pattern, "/v1/sandboxes/{id}") {
			continue
		}
		sandboxRoutes++
		t.Run(route+" other team", func(t *testing.T) {
			// The answer for another team's sandbox is the answer for one
			// that does not exist (no existence oracle): 404 when the
			// request is well formed (a multipart upload without its
			// body is refused as malformed first, whoever asks).
			want := 404
			if route == "POST /v1/sandboxes/{id}"+"/files" {
				want = 400
			}
			missing := strings.Replace(path, sbID, strings.Repeat("f", 32), 1)
			for _, cred := range []string{keyB, jwtB} {
				c, cm := e.do(t, method, path, cred, body, nil), e.do(t, method, missing, cred, body, nil)
				if c != want || cm != c {
					t.Errorf("another team: %d, a missing sandbox: %d, want both %d", c, cm, want)
				}
			}
		})
	}
	if sandboxRoutes < 12 {
		t.Fatalf("only %d sandbox routes walked", sandboxRoutes)
	}
	// Nothing changed: the sandbox is as it was.
	after, err := e.st.Queries().GetSandboxByID(ctx, row.ID)
	if err != nil || after.State != store.SandboxRunning || !after.UpdatedAt.Equal(row.UpdatedAt) {
		t.Fatalf("the sandbox changed: %+v, %v", after, err)
	}
}

// TestAdminRouteAuthorization walks the router's /v1/admin routes: only an
// active platform admin's session gets through. The team's owner, admin
// and member, an outsider, the platform admin's own API key, a disabled admin and an
// admin demoted in the database after logging in all get 403 (never 404:
// the admin routes are documented), before anything else is checked (a
// malformed ID too), and nothing changes; then the platform admin's
// session succeeds.
func TestAdminRouteAuthorization(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	q := e.st.Queries()
	root := e.platformAdmin(t, "root@example.com")
	owner := e.user(t, "owner@example.com")
	teamAdmin := e.user(t, "team-admin@example.com")
	member := e.user(t, "member@example.com")
	outsider := e.user(t, "outsider@example.com")
	e.join(t, teamAdmin, owner.team, "admin")
	e.join(t, member, owner.team, "member")
	disabled := e.platformAdmin(t, "disabled@example.com")
	if _, err := q.SetUserDisabled(ctx, db.SetUserDisabledParams{Disabled: true, ID: mustUUID(t, wireid.User, disabled.id)}); err != nil {
		t.Fatal(err)
	}
	demoted := e.platformAdmin(t, "demoted@example.com")
	if c := e.do(t, "GET", "/v1/admin/teams", demoted.jwt, nil, nil); c != 200 {
		t.Fatalf("the admin before demotion: %d", c)
	}
	e.setAdmin(t, demoted, false)

	// A platform build (queued, never run here) for the build routes.
	pub, err := q.InsertBuild(ctx, db.InsertBuildParams{ID: mustUUID(t, wireid.Build, "bld-"+strings.Repeat("a", 32)),
		TeamID: store.PlatformTeamID, TemplateName: "pub", Recipe: "FROM base", Kind: store.TemplateImage, VCPUs: 1,
		MemoryMB: 512, MaxAttempts: 1, Metadata: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	pubBuild := wireid.Format(wireid.Build, pub.ID)
	refused := []struct {
		name, cred string
	}{
		{"team owner", owner.jwt}, {"team admin", teamAdmin.jwt}, {"team member", member.jwt}, {"outsider", outsider.jwt},
		{"platform admin's API key", root.key}, {"disabled admin", disabled.jwt}, {"demoted admin", demoted.jwt},
	}
	cases := map[string]struct {
		path string
		body any
		want int
	}{
		"GET /v1/admin/teams":               {"/v1/admin/teams", nil, 200},
		"PUT /v1/admin/teams/{id}/byoc":     {"/v1/admin/teams/" + owner.team + "/byoc", map[string]any{"enabled": true}, 200},
		"DELETE /v1/admin/teams/{id}":       {"/v1/admin/teams/" + owner.team, nil, 200},
		"GET /v1/admin/users":               {"/v1/admin/users?email_prefix=member", nil, 200},
		"PUT /v1/admin/users/{id}/disabled": {"/v1/admin/users/" + member.id + "/disabled", map[string]any{"disabled": true}, 200},
		"GET /v1/admin/hosts":               {"/v1/admin/hosts", nil, 200},
		"GET /v1/admin/audit-logs":          {"/v1/admin/audit-logs?team_id=" + owner.team, nil, 200},
		"GET /v1/admin/sandboxes":           {"/v1/admin/sandboxes", nil, 200},
		"POST /v1/admin/builds":             {"/v1/admin/builds", map[string]any{"template": "pub", "recipe": "FROM base\nRUN true"}, 202},
		"GET /v1/admin/builds":              {"/v1/admin/builds", nil, 200},
		"GET /v1/admin/builds/{id}":         {"/v1/admin/builds/" + pubBuild, nil, 200},
		"POST /v1/admin/builds/{id}/cancel": {"/v1/admin/builds/" + pubBuild + "/cancel", nil, 202},
		"GET /v1/admin/builds/{id}/logs":    {"/v1/admin/builds/" + pubBuild + "/logs", nil, 200},
	}
	junk := strings.NewReplacer(owner.team, "team-x", member.id, "usr-x")
	// state is what an admin route may change: the team's BYOC flag and
	// liveness, the member's disabled state, the admin events recorded.
	type state struct {
		byoc, teamDeleted, memberDisabled bool
		adminEvents                       int
	}
	snapshot := func(t *testing.T) state {
		t.Helper()
		var s state
		if err := e.st.Pool().QueryRow(ctx, `SELECT is_byoc, deleted_at IS NOT NULL FROM teams WHERE id = $1`,
			mustUUID(t, wireid.Team, owner.team)).Scan(&s.byoc, &s.teamDeleted); err != nil {
			t.Fatal(err)
		}
		if err := e.st.Pool().QueryRow(ctx, `SELECT disabled_at IS NOT NULL FROM users WHERE id = $1`,
			mustUUID(t, wireid.User, member.id)).Scan(&s.memberDisabled); err != nil {
			t.Fatal(err)
		}
		if err := e.st.Pool().QueryRow(ctx, `SELECT count(*) FROM audit_logs WHERE action IN
			('team.byoc_enable', 'team.byoc_disable', 'team.delete', 'user.disable', 'user.enable')`).Scan(&s.adminEvents); err != nil {
			t.Fatal(err)
		}
		return s
	}
	walked := 0
	// Deleting the team goes last: the other routes act on it.
	routes := e.h.Routes()
	slices.SortStableFunc(routes, func(a, b string) int {
		return cmpBool(a == "DELETE /v1/admin/teams/{id}", b == "DELETE /v1/admin/teams/{id}")
	})
	for _, route := range routes {
		method, pattern, _ := strings.Cut(route, " ")
		if !strings.HasPrefix(pattern, "/v1/admin/") {
			continue
		}
		walked++
		tc, ok := cases[route]
		if !ok {
			t.Errorf("admin route %s has no case in this test", route)
			continue
		}
		t.Run(route, func(t *testing.T) {
			before := snapshot(t)
			for _, r := range refused {
				if c := e.do(t, method, tc.path, r.cred, tc.body, nil); c != 403 {
					t.Errorf("%s: %d, want 403", r.name, c)
				}
				if c := e.do(t, method, junk.Replace(tc.path), r.cred, tc.body, nil); c != 403 {
					t.Errorf("%s, a malformed ID: %d, want 403", r.name, c)
				}
			}
			if after := snapshot(t); after != before {
				t.Fatalf("refused requests changed %+v to %+v", before, after)
			}
			if c := e.do(t, method, tc.path, root.jwt, tc.body, nil); c != tc.want {
				t.Errorf("platform admin: %d, want %d", c, tc.want)
			}
		})
	}
	if walked != len(cases) {
		t.Fatalf("walked %d admin routes, the cases name %d", walked, len(cases))
	}
	// The platform admin's calls did what the refused ones did not.
	if got, want := snapshot(t), (state{byoc: true, teamDeleted: true, memberDisabled: true, adminEvents: 3}); got != want {
		t.Fatalf("after the platform admin's calls: %+v, want %+v", got, want)
	}
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// TestHostAuthorizationMatrix: who may do what to which host. Regular
// hosts are the platform administrators'; a BYOC host is its team's
// (owners and admins manage, members see); anyone else gets 404 for it,
// and a refused request changes nothing.
func TestHostAuthorizationMatrix(t *testing.T) {
	e := newHostAPI(t)
	adminJWT, _ := e.admin(t, "root@example.com")
	ownerJWT, ownerKey, byocTeam := e.account(t, "owner@example.com")
	e.enableBYOC(t, byocTeam)
	teamAdminJWT := e.member(t, ownerJWT, byocTeam, "teamadmin@example.com", "admin")
	memberJWT := e.member(t, ownerJWT, byocTeam, "member@example.com", "member")
	outsiderJWT, _, outsiderTeam := e.account(t, "outsider@example.com")
	e.enableBYOC(t, outsiderTeam)
	plainJWT, _, _ := e.account(t, "plain@example.com") // a team without BYOC

	create := func(t *testing.T, jwt, name, typ string) (createdHostJSON, int) {
		t.Helper()
		var c createdHostJSON
		code := e.do(t, "POST", "/v1/hosts", jwt, map[string]any{"name": name, "type": typ, "address": "192.0.2.1:7443"}, &c)
		return c, code
	}
	t.Run("create", func(t *testing.T) {
		for _, tc := range []struct {
			who, jwt, typ string
			want          int
		}{
			{"owner regular", ownerJWT, "regular", 403},
			{"outsider regular", outsiderJWT, "regular", 403},
			{"member byoc", memberJWT, "byoc", 403},
			{"team without BYOC", plainJWT, "byoc", 403},
			{"bad type", ownerJWT, "other", 400},
			{"API key", ownerKey, "byoc", 403},
		} {
			if _, c := create(t, tc.jwt, "refused-"+strings.ToLower(strings.ReplaceAll(tc.who, " ", "-")), tc.typ); c != tc.want {
				t.Errorf("%s: %d, want %d", tc.who, c, tc.want)
			}
		}
		var n int
		if err := e.st.Pool().QueryRow(context.Background(), "SELECT count(*) FROM hosts WHERE name LIKE 'refused-%'").Scan(&n); err != nil || n != 0 {
			t.Fatalf("refused creates made %d hosts (%v)", n, err)
		}
		if _, c := create(t, teamAdminJWT, "byoc-by-admin", "byoc"); c != 201 {
			t.Fatalf("team admin byoc: %d", c)
		}
	})
	regular, c := create(t, adminJWT, "regular-1", "regular")
	if c != 201 {
		t.Fatalf("admin regular: %d", c)
	}
	byoc, c := create(t, ownerJWT, "byoc-1", "byoc")
	if c != 201 || byoc.Host.Type != "byoc" || byoc.Host.TeamID != byocTeam {
		t.Fatalf("owner byoc: %d %+v", c, byoc.Host)
	}
	if _, c := create(t, ownerJWT, "byoc-1", "byoc"); c != 409 {
		t.Fatalf("a second host of the same name: %d, want 409", c)
	}

	t.Run("list", func(t *testing.T) {
		names := func(jwt string) string {
			var l struct {
				Hosts []hostJSON `json:"hosts"`
			}
			if c := e.do(t, "GET", "/v1/hosts", jwt, nil, &l); c != 200 {
				t.Fatalf("list: %d", c)
			}
			var out []string
			for _, h := range l.Hosts {
				out = append(out, h.Name)
			}
			return strings.Join(out, ",")
		}
		for _, tc := range []struct{ who, jwt, want string }{
			{"admin", adminJWT, "byoc-1,byoc-by-admin,local,regular-1"},
			{"owner", ownerJWT, "byoc-1,byoc-by-admin"},
			{"member", memberJWT, "byoc-1,byoc-by-admin"},
			{"outsider", outsiderJWT, ""},
		} {
			if got := names(tc.jwt); got != tc.want {
				t.Errorf("%s sees %q, want %q", tc.who, got, tc.want)
			}
		}
		if c := e.do(t, "GET", "/v1/hosts", ownerKey, nil, nil); c != 403 {
			t.Errorf("API key: %d, want 403", c)
		}
	})

	// The routes of one host, walked from the live route table (a new
	// route is covered the day it is added): a member of the host's team
	// may only read it; everyone else of another team, and anyone but an
	// administrator for a regular host, gets the answer of a missing host.
	type call struct {
		route, method, suffix string
		memberReads           bool
	}
	var calls []call
	for _, route := range e.h.Routes() {
		method, pattern, _ := strings.Cut(route, " ")
		suffix, ok := strings.CutPrefix(pattern, "/v1/hosts/{id}")
		if !ok {
			continue
		}
		calls = append(calls, call{route: route, method: method, suffix: suffix, memberReads: route == "GET /v1/hosts/{id}"})
	}
	if len(calls) < 5 {
		t.Fatalf("only %d host routes walked", len(calls))
	}
	bodies := map[string]any{"PATCH /v1/hosts/{id}": map[string]any{"tags": []string{"x"}}}
	for _, tc := range []struct {
		host string
		who  string
		jwt  string
		// want is the answer to every route, member the answer to the
		// routes a member may use (0: want).
		want, member int
	}{
		{regular.Host.ID, "owner on regular", ownerJWT, 404, 0},
		{regular.Host.ID, "member on regular", memberJWT, 404, 0},
		{byoc.Host.ID, "outsider on byoc", outsiderJWT, 404, 0},
		{byoc.Host.ID, "owner of a team without BYOC on byoc", plainJWT, 404, 0},
		{byoc.Host.ID, "member on byoc", memberJWT, 403, 200},
		{byoc.Host.ID, "API key on byoc", ownerKey, 403, 0},
	} {
		t.Run(tc.who, func(t *testing.T) {
			before := e.hostRow(t, tc.host)
			missing := "host-" + strings.Repeat("f", 32)
			for _, cl := range calls {
				want := tc.want
				if cl.memberReads && tc.member != 0 {
					want = tc.member
				}
				if c := e.do(t, cl.method, "/v1/hosts/"+tc.host+cl.suffix, tc.jwt, bodies[cl.route], nil); c != want {
					t.Errorf("%s: %d, want %d", cl.route, c, want)
				}
				if want == 404 {
					if c := e.do(t, cl.method, "/v1/hosts/"+missing+cl.suffix, tc.jwt, bodies[cl.route], nil); c != 404 {
						t.Errorf("%s on a missing host: %d, want the same 404", cl.route, c)
					}
				}
			}
			after := e.hostRow(t, tc.host)
			if !after.UpdatedAt.Equal(before.UpdatedAt) || string(after.RegistrationTokenHash) != string(before.RegistrationTokenHash) {
				t.Fatal("refused requests changed the host")
			}
		})
	}
	for _, tc := range []struct {
		host, who, jwt string
	}{
		{byoc.Host.ID, "team admin on byoc", teamAdminJWT},
		{byoc.Host.ID, "owner on byoc", ownerJWT},
		{byoc.Host.ID, "platform admin on byoc", adminJWT},
		{regular.Host.ID, "platform admin on regular", adminJWT},
	} {
		t.Run(tc.who, func(t *testing.T) {
			if c := e.do(t, "GET", "/v1/hosts/"+tc.host, tc.jwt, nil, nil); c != 200 {
				t.Errorf("GET: %d", c)
			}
			if c := e.do(t, "PATCH", "/v1/hosts/"+tc.host, tc.jwt, map[string]any{"tags": []string{"by-" + strings.Fields(tc.who)[0]}}, nil); c != 200 {
				t.Errorf("PATCH: %d", c)
			}
			if c := e.do(t, "GET", "/v1/hosts/"+tc.host+"/delete-preview", tc.jwt, nil, nil); c != 200 {
				t.Errorf("delete-preview: %d", c)
			}
			if c := e.do(t, "POST", "/v1/hosts/"+tc.host+"/token", tc.jwt, nil, nil); c != 201 {
				t.Errorf("token: %d", c)
			}
		})
	}
	t.Run("delete", func(t *testing.T) {
		if c := e.do(t, "DELETE", "/v1/hosts/"+byoc.Host.ID, ownerJWT, nil, nil); c != 200 {
			t.Fatalf("owner deletes the BYOC host: %d", c)
		}
		if c := e.do(t, "DELETE", "/v1/hosts/"+regular.Host.ID, adminJWT, nil, nil); c != 200 {
			t.Fatalf("admin deletes the regular host: %d", c)
		}
		var local struct {
			Hosts []hostJSON `json:"hosts"`
		}
		e.do(t, "GET", "/v1/hosts", adminJWT, nil, &local)
		for _, h := range local.Hosts {
			if h.Name == service.LocalHost {
				if c := e.do(t, "DELETE", "/v1/hosts/"+h.ID+"?force=true", adminJWT, nil, nil); c != 409 {
					t.Fatalf("delete the embedded host: %d, want 409", c)
				}
			}
		}
	})
}
