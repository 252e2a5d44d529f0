package api

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// platformAdmin signs up a platform admin the way `capsule serve`'s
// bootstrap does (service.Signup with IsAdmin) and logs it in.
func (e *apiEnv) platformAdmin(t *testing.T, email string) user {
	t.Helper()
	acc, err := e.h.cfg.Accounts.Signup(context.Background(), service.Signup{Email: email, Password: "correct horse battery", IsAdmin: true})
	if err != nil {
		t.Fatal(err)
	}
	var s sessionJSON
	if c := e.do(t, "POST", "/v1/auth/login", "", creds{"email": email, "password": "correct horse battery"}, &s); c != 200 || !s.User.IsAdmin {
		t.Fatalf("admin login: %d %+v", c, s)
	}
	var k apiKeyJSON
	if c := e.do(t, "POST", "/v1/api-keys", s.Token, map[string]string{"name": "admin"}, &k); c != 201 {
		t.Fatalf("admin key: %d", c)
	}
	return user{jwt: s.Token, key: k.Key, team: acc.Team.ID.String(), id: wireid.Format(wireid.User, acc.User.ID), email: email}
}

// setAdmin sets or clears users.is_admin straight in the database.
func (e *apiEnv) setAdmin(t *testing.T, u user, admin bool) {
	t.Helper()
	if err := e.st.Queries().SetUserAdmin(context.Background(), db.SetUserAdminParams{IsAdmin: admin, ID: mustUUID(t, wireid.User, u.id)}); err != nil {
		t.Fatal(err)
	}
}

// sandboxRow inserts a sandbox of team in state straight into the
// database (no VM).
func (e *apiEnv) sandboxRow(t *testing.T, team, state string) db.Sandbox {
	t.Helper()
	// On the static agent's host, as a create would have put it.
	host, err := e.st.Queries().GetHostByName(context.Background(), service.LocalHost)
	if err != nil {
		t.Fatal(err)
	}
	row, err := e.st.Queries().InsertSandbox(context.Background(), db.InsertSandboxParams{
		TeamID: mustUUID(t, wireid.Team, team), HostID: host.ID, Template: "minimal", State: state, VCPUs: 1, MemoryMB: 256, Metadata: json.RawMessage(`{}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	return row
}

// adminAudit returns the platform-wide audit log's events of team
// (oldest first) through the admin route, as "action actor_id scope".
func adminAudit(t *testing.T, e *apiEnv, admin user, team string) []string {
	t.Helper()
	var page struct {
		Items []adminAuditLogJSON `json:"audit_logs"`
	}
	if c := e.do(t, "GET", "/v1/admin/audit-logs?limit=200&team_id="+team, admin.jwt, nil, &page); c != 200 {
		t.Fatalf("admin audit: %d", c)
	}
	var out []string
	for i := len(page.Items) - 1; i >= 0; i-- {
		it := page.Items[i]
		if it.TeamID != team {
			t.Fatalf("team_id filter: event of %s", it.TeamID)
		}
		out = append(out, it.Action+" "+it.ActorID+" "+it.Scope)
	}
	return out
}

// TestAdminTeamRoutes: listing every team with its counts, the BYOC
// switch (seen by the team's own GET /v1/teams/{id}), and deleting a team
// as an admin, with their refusals and audit events.
func TestAdminTeamRoutes(t *testing.T) {
	e := newAPI(t, "", "")
	admin := e.platformAdmin(t, "root@example.com")
	owner := e.user(t, "owner@example.com")
	member := e.user(t, "member@example.com")
	e.join(t, member, owner.team, "member")
	e.sandboxRow(t, owner.team, store.SandboxRunning)
	e.sandboxRow(t, owner.team, store.SandboxStopped)
	platform := wireid.Format(wireid.Team, store.PlatformTeamID)

	type teamPage struct {
		Teams []adminTeamJSON `json:"teams"`
		Next  string          `json:"next_cursor"`
	}
	t.Run("list", func(t *testing.T) {
		var p teamPage
		if c := e.do(t, "GET", "/v1/admin/teams", admin.jwt, nil, &p); c != 200 || p.Next != "" {
			t.Fatalf("list: %d %+v", c, p)
		}
		byID := map[string]adminTeamJSON{}
		for _, tm := range p.Teams {
			byID[tm.ID] = tm
		}
		if len(byID) != 4 {
			t.Fatalf("teams: %+v, want the platform's, the admin's, the owner's and the member's", p.Teams)
		}
		if got := byID[owner.team]; got.MemberCount != 2 || got.SandboxCount != 1 || got.IsBYOC || got.Name == "" {
			t.Errorf("owner's team: %+v, want 2 members and 1 sandbox that is not stopped", got)
		}
		if got := byID[platform]; got.Slug != "platform" || got.MemberCount != 0 {
			t.Errorf("platform team: %+v", got)
		}
	})
	t.Run("pages", func(t *testing.T) {
		var seen []string
		cursor := ""
		for range 10 {
			var p teamPage
			if c := e.do(t, "GET", "/v1/admin/teams?limit=1&cursor="+url.QueryEscape(cursor), admin.jwt, nil, &p); c != 200 || len(p.Teams) > 1 {
				t.Fatalf("page: %d %+v", c, p)
			}
			for _, tm := range p.Teams {
				seen = append(seen, tm.ID)
			}
			if cursor = p.Next; cursor == "" {
				break
			}
		}
		if len(seen) != 4 || len(slices.Compact(slices.Sorted(slices.Values(seen)))) != 4 {
			t.Fatalf("paged through %v, want 4 distinct teams", seen)
		}
		for _, bad := range []string{"limit=0", "limit=201", "limit=x", "cursor=%21%21"} {
			if c := e.do(t, "GET", "/v1/admin/teams?"+bad, admin.jwt, nil, nil); c != 400 {
				t.Errorf("%s: %d, want 400", bad, c)
			}
		}
	})
	t.Run("byoc", func(t *testing.T) {
		isBYOC := func() bool {
			var d teamDetailJSON
			if c := e.do(t, "GET", "/v1/teams/"+owner.team, owner.jwt, nil, &d); c != 200 {
				t.Fatalf("get team: %d", c)
			}
			return d.IsBYOC
		}
		for _, step := range []struct {
			name string
			body any
			want int
			byoc bool
		}{
			{"enable", map[string]any{"enabled": true}, 200, true},
			{"enable again", map[string]any{"enabled": true}, 200, true},
			{"missing field", map[string]any{}, 400, true},
			{"unknown field", map[string]any{"enabled": false, "x": 1}, 400, true},
			{"wrong type", `{"enabled":"no"}`, 400, true},
			{"disable", map[string]any{"enabled": false}, 200, false},
		} {
			t.Run(step.name, func(t *testing.T) {
				var got teamBYOCJSON
				c := e.do(t, "PUT", "/v1/admin/teams/"+owner.team+"/byoc", admin.jwt, step.body, &got)
				if c != step.want || (c == 200 && (got.ID != owner.team || got.IsBYOC != step.byoc)) {
					t.Fatalf("%d %+v, want %d", c, got, step.want)
				}
				if b := isBYOC(); b != step.byoc {
					t.Fatalf("GET /v1/teams/{id}: is_byoc %v, want %v", b, step.byoc)
				}
			})
		}
		if c := e.do(t, "PUT", "/v1/admin/teams/"+platform+"/byoc", admin.jwt, map[string]any{"enabled": true}, nil); c != 400 {
			t.Errorf("platform team BYOC: %d, want 400", c)
		}
		for _, missing := range []string{"team-" + strings.Repeat("f", 32), "team-x", "nope"} {
			if c := e.do(t, "PUT", "/v1/admin/teams/"+missing+"/byoc", admin.jwt, map[string]any{"enabled": true}, nil); c != 404 {
				t.Errorf("%s: %d, want 404", missing, c)
			}
		}
	})
	t.Run("delete", func(t *testing.T) {
		if c := e.do(t, "DELETE", "/v1/admin/teams/"+platform, admin.jwt, nil, nil); c != 403 {
			t.Errorf("delete the platform team: %d, want 403", c)
		}
		if c := e.do(t, "DELETE", "/v1/admin/teams/team-"+strings.Repeat("f", 32), admin.jwt, nil, nil); c != 404 {
			t.Errorf("delete a missing team: %d, want 404", c)
		}
		// No agent here (a closed port): the team is deleted, and its
		// sandbox that is not stopped is counted as not destroyed (the
		// real agent's case is TestAdminDeleteTeamDestroysSandboxes).
		var del struct {
			ID           string `json:"id"`
			Deleted      bool   `json:"deleted"`
			Destroyed    int    `json:"sandboxes_destroyed"`
			NotDestroyed int    `json:"sandboxes_not_destroyed"`
		}
		if c := e.do(t, "DELETE", "/v1/admin/teams/"+owner.team, admin.jwt, nil, &del); c != 200 || !del.Deleted || del.ID != owner.team ||
			del.Destroyed != 0 || del.NotDestroyed != 1 {
			t.Fatalf("delete: %d %+v", c, del)
		}
		if c := e.do(t, "GET", "/v1/teams/"+owner.team, owner.jwt, nil, nil); c != 404 {
			t.Errorf("the owner's GET of the deleted team: %d, want 404", c)
		}
		if c := e.do(t, "GET", "/v1/sandboxes", owner.key, nil, nil); c != 401 {
			t.Errorf("the deleted team's API key: %d, want 401", c)
		}
		if c := e.do(t, "DELETE", "/v1/admin/teams/"+owner.team, admin.jwt, nil, nil); c != 404 {
			t.Errorf("delete again: %d, want 404", c)
		}
		var p teamPage
		e.do(t, "GET", "/v1/admin/teams", admin.jwt, nil, &p)
		for _, tm := range p.Teams {
			if tm.ID == owner.team {
				t.Errorf("the deleted team is still listed")
			}
		}
	})
	t.Run("audit", func(t *testing.T) {
		got := adminAudit(t, e, admin, owner.team)
		var mine []string
		for _, ev := range got {
			if strings.Contains(ev, admin.id) {
				mine = append(mine, ev)
			}
		}
		a := " " + admin.id + " admin"
		want := []string{"team.byoc_enable" + a, "team.byoc_enable" + a, "team.byoc_disable" + a, "team.delete" + a}
		if !slices.Equal(mine, want) {
			t.Fatalf("the admin's events in the team's log: %q, want %q", mine, want)
		}
		// The team's own owners saw it too (their log, admin scope).
		if acts := auditActions(t, e, owner.team); !slices.Contains(acts, "team.delete") {
			t.Fatalf("team log: %v", acts)
		}
	})
}

// TestAdminUserRoutes: listing users; disabling a user refuses their
// login, session and API key on the next call, re-enabling restores them;
// an admin cannot disable themselves; every change is audited.
func TestAdminUserRoutes(t *testing.T) {
	e := newAPIWith(t, "", "", func(c *Config) { c.LoginEmailLimit = auth.RateLimit{Burst: 100, Interval: time.Hour} })
	admin := e.platformAdmin(t, "root@example.com")
	ada := e.user(t, "ada@example.com")
	e.user(t, "adam@example.com")
	e.user(t, "a_b@example.com")
	e.user(t, "bob@example.com")

	type userPage struct {
		Users []adminUserJSON `json:"users"`
		Next  string          `json:"next_cursor"`
	}
	emails := func(p userPage) []string {
		var out []string
		for _, u := range p.Users {
			out = append(out, u.Email)
		}
		return out
	}
	t.Run("search", func(t *testing.T) {
		for _, tc := range []struct {
			query string
			want  []string
		}{
			{"", []string{"a_b@example.com", "ada@example.com", "adam@example.com", "bob@example.com", "root@example.com"}},
			{"email_prefix=AD", []string{"ada@example.com", "adam@example.com"}},
			{"email_prefix=ada@", []string{"ada@example.com"}},
			{"email_prefix=a_", []string{"a_b@example.com"}}, // _ is literal
			{"email_prefix=%25", nil}, // so is %
			{"email_prefix=zzz", nil},
		} {
			t.Run(tc.query, func(t *testing.T) {
				var p userPage
				if c := e.do(t, "GET", "/v1/admin/users?"+tc.query, admin.jwt, nil, &p); c != 200 || !slices.Equal(emails(p), tc.want) || p.Next != "" {
					t.Fatalf("%d %v, want %v", c, emails(p), tc.want)
				}
			})
		}
		var p userPage
		e.do(t, "GET", "/v1/admin/users?email_prefix=root", admin.jwt, nil, &p)
		if len(p.Users) != 1 || !p.Users[0].IsAdmin || p.Users[0].Disabled || p.Users[0].TeamCount != 1 || p.Users[0].ID != admin.id {
			t.Fatalf("the admin: %+v", p.Users)
		}
	})
	t.Run("pages", func(t *testing.T) {
		var got []string
		cursor := ""
		for range 10 {
			var p userPage
			if c := e.do(t, "GET", "/v1/admin/users?limit=2&cursor="+url.QueryEscape(cursor), admin.jwt, nil, &p); c != 200 || len(p.Users) > 2 {
				t.Fatalf("page: %d %+v", c, p)
			}
			got = append(got, emails(p)...)
			if cursor = p.Next; cursor == "" {
				break
			}
		}
		if want := []string{"a_b@example.com", "ada@example.com", "adam@example.com", "bob@example.com", "root@example.com"}; !slices.Equal(got, want) {
			t.Fatalf("paged: %v, want %v", got, want)
		}
		if c := e.do(t, "GET", "/v1/admin/users?cursor=***", admin.jwt, nil, nil); c != 400 {
			t.Errorf("bad cursor: %d, want 400", c)
		}
	})

	disable := func(t *testing.T, who string, disabled bool) int {
		t.Helper()
		var st userStateJSON
		c := e.do(t, "PUT", "/v1/admin/users/"+who+"/disabled", admin.jwt, map[string]any{"disabled": disabled}, &st)
		if c == 200 && (st.ID != who || st.Disabled != disabled || (st.DisabledAt != nil) != disabled) {
			t.Fatalf("answer: %+v", st)
		}
		return c
	}
	login := func(password string) int {
		return e.do(t, "POST", "/v1/auth/login", "", creds{"email": ada.email, "password": password}, nil)
	}
	type access struct{ me, sandboxesJWT, sandboxesKey, login, wrongPassword int }
	check := func(t *testing.T, want access) {
		t.Helper()
		got := access{
			me:            e.do(t, "GET", "/v1/me", ada.jwt, nil, nil),
			sandboxesJWT:  e.do(t, "GET", "/v1/sandboxes", ada.jwt, nil, nil),
			sandboxesKey:  e.do(t, "GET", "/v1/sandboxes", ada.key, nil, nil),
			login:         login("correct horse battery"),
			wrongPassword: login("wrong horse battery"),
		}
		if got != want {
			t.Fatalf("access %+v, want %+v", got, want)
		}
	}
	enabled := access{200, 200, 200, 200, 401}
	t.Run("disable", func(t *testing.T) {
		check(t, enabled)
		if c := disable(t, ada.id, true); c != 200 {
			t.Fatalf("disable: %d", c)
		}
		check(t, access{403, 403, 403, 403, 401})
		if c := disable(t, ada.id, true); c != 200 {
			t.Fatalf("disable again: %d", c)
		}
		var p userPage
		e.do(t, "GET", "/v1/admin/users?email_prefix=ada@", admin.jwt, nil, &p)
		if len(p.Users) != 1 || !p.Users[0].Disabled || p.Users[0].DisabledAt == nil {
			t.Fatalf("listed: %+v", p.Users)
		}
	})
	t.Run("enable", func(t *testing.T) {
		if c := disable(t, ada.id, false); c != 200 {
			t.Fatalf("enable: %d", c)
		}
		check(t, enabled)
	})
	t.Run("refusals", func(t *testing.T) {
		for _, tc := range []struct {
			name, id string
			body     any
			want     int
		}{
			{"self", admin.id, map[string]any{"disabled": true}, 409},
			{"missing user", "usr-" + strings.Repeat("f", 32), map[string]any{"disabled": true}, 404},
			{"malformed ID", "usr-x", map[string]any{"disabled": true}, 404},
			{"missing field", ada.id, map[string]any{}, 400},
			{"null", ada.id, map[string]any{"disabled": nil}, 400},
			{"not JSON", ada.id, "disabled", 400},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if c := e.do(t, "PUT", "/v1/admin/users/"+tc.id+"/disabled", admin.jwt, tc.body, nil); c != tc.want {
					t.Fatalf("%d, want %d", c, tc.want)
				}
			})
		}
		check(t, enabled)
		if c := e.do(t, "GET", "/v1/admin/users", admin.jwt, nil, nil); c != 200 {
			t.Fatalf("the admin after refusing to disable themselves: %d", c)
		}
	})
	t.Run("audit", func(t *testing.T) {
		got := adminAudit(t, e, admin, wireid.Format(wireid.Team, store.PlatformTeamID))
		a := " " + admin.id + " admin"
		want := []string{"user.disable" + a, "user.disable" + a, "user.enable" + a}
		if !slices.Equal(got, want) {
			t.Fatalf("platform log: %q, want %q", got, want)
		}
	})
}

// TestAdminsDisablingEachOther: two admins disabling each other at the
// same moment never leave the platform without an active admin: exactly
// one wins, the other is refused (it is no admin any more once it gets
// the lock).
func TestAdminsDisablingEachOther(t *testing.T) {
	e := newAPI(t, "", "")
	a := e.platformAdmin(t, "a@example.com")
	b := e.platformAdmin(t, "b@example.com")
	q := e.st.Queries()
	for round := range 5 {
		t.Run(fmt.Sprint("round ", round), func(t *testing.T) {
			var wg sync.WaitGroup
			codes := make([]int, 2)
			for i, pair := range [][2]user{{a, b}, {b, a}} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					codes[i] = e.do(t, "PUT", "/v1/admin/users/"+pair[1].id+"/disabled", pair[0].jwt, map[string]any{"disabled": true}, nil)
				}()
			}
			wg.Wait()
			slices.Sort(codes)
			if codes[0] != 200 || codes[1] == 200 || (codes[1] != 403 && codes[1] != 409) {
				t.Fatalf("answers %v, want one 200 and one 403 or 409", codes)
			}
			active, err := q.LockActiveAdmins(context.Background())
			if err != nil || len(active) != 1 {
				t.Fatalf("active admins after the race: %d, %v", len(active), err)
			}
			for _, u := range []user{a, b} {
				if _, err := q.SetUserDisabled(context.Background(), db.SetUserDisabledParams{Disabled: false, ID: mustUUID(t, wireid.User, u.id)}); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestAdminListRoutes: the hosts with their teams' names, the
// platform-wide audit log with /v1/audit-logs' filters and paging, and
// the platform team's sandboxes.
func TestAdminListRoutes(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	admin := e.platformAdmin(t, "root@example.com")
	owner := e.user(t, "owner@example.com")
	other := e.user(t, "other@example.com")
	q := e.st.Queries()
	platform := wireid.Format(wireid.Team, store.PlatformTeamID)

	// Host records as an agent's registration leaves them (the hosts API
	// owns them; raw SQL keeps this test apart from its queries).
	var byocHost, platformHost pgtype.UUID
	for _, h := range []struct {
		dst  *pgtype.UUID
		team pgtype.UUID
		name string
	}{
		{&byocHost, mustUUID(t, wireid.Team, owner.team), "byoc-1"},
		{&platformHost, store.PlatformTeamID, "platform-1"},
	} {
		if err := e.st.Pool().QueryRow(ctx, `INSERT INTO hosts (team_id, name, address, status, version, arch, total_vcpus,
			total_memory_mb, total_disk_mb, last_heartbeat_at) VALUES ($1, $2, 'http://10.0.0.2:7070', 'online', 'v1', 'x86_64', 4, 8192, 100000, now())
			RETURNING id`, h.team, h.name).Scan(h.dst); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := q.InsertSandbox(ctx, db.InsertSandboxParams{TeamID: mustUUID(t, wireid.Team, owner.team), HostID: byocHost, Template: "minimal",
		State: store.SandboxRunning, VCPUs: 1, MemoryMB: 256, Metadata: json.RawMessage(`{}`)}); err != nil {
		t.Fatal(err)
	}
	ownerTeam, err := q.GetTeam(ctx, mustUUID(t, wireid.Team, owner.team))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("hosts", func(t *testing.T) {
		type page struct {
			Hosts []adminHostJSON `json:"hosts"`
			Next  string          `json:"next_cursor"`
		}
		// Every host: these two and the services' own local host.
		var n int
		if err := e.st.Pool().QueryRow(ctx, "SELECT count(*) FROM hosts").Scan(&n); err != nil {
			t.Fatal(err)
		}
		var p page
		if c := e.do(t, "GET", "/v1/admin/hosts", admin.jwt, nil, &p); c != 200 || len(p.Hosts) != n || n < 2 || p.Next != "" {
			t.Fatalf("hosts: %d %+v, want %d", c, p, n)
		}
		got := map[string]adminHostJSON{}
		for _, h := range p.Hosts {
			if !strings.HasPrefix(h.ID, wireid.Host) {
				t.Errorf("host ID %q", h.ID)
			}
			got[h.Name] = h
		}
		if h := got["byoc-1"]; h.ID != wireid.Format(wireid.Host, byocHost) || h.TeamID != owner.team || h.TeamName != ownerTeam.Name || !h.BYOC || h.SandboxCount != 1 ||
			h.TotalVCPUs != 4 || h.Status != "online" || h.LastHeartbeatAt == nil {
			t.Errorf("BYOC host: %+v", h)
		}
		if h := got["platform-1"]; h.ID != wireid.Format(wireid.Host, platformHost) || h.TeamID != platform || h.TeamName != "Platform" || h.BYOC || h.SandboxCount != 0 {
			t.Errorf("platform host: %+v", h)
		}
		var walked []adminHostJSON
		cursor := ""
		for range 10 {
			var pg page
			if c := e.do(t, "GET", "/v1/admin/hosts?limit=1&cursor="+url.QueryEscape(cursor), admin.jwt, nil, &pg); c != 200 || len(pg.Hosts) > 1 {
				t.Fatalf("page: %d %+v", c, pg)
			}
			walked = append(walked, pg.Hosts...)
			if cursor = pg.Next; cursor == "" {
				break
			}
		}
		if !slices.EqualFunc(walked, p.Hosts, func(a, b adminHostJSON) bool { return a.ID == b.ID }) {
			t.Fatalf("paged %+v, want %+v", walked, p.Hosts)
		}
	})
	t.Run("audit logs", func(t *testing.T) {
		type page struct {
			Items []adminAuditLogJSON `json:"audit_logs"`
			Next  string              `json:"next_cursor"`
		}
		var all page
		if c := e.do(t, "GET", "/v1/admin/audit-logs?limit=200", admin.jwt, nil, &all); c != 200 {
			t.Fatalf("all: %d", c)
		}
		teams := map[string]bool{}
		for _, it := range all.Items {
			teams[it.TeamID] = true
			if it.Action == "api_key.create" && it.Scope != "admin" {
				t.Errorf("event %+v", it)
			}
		}
		if !teams[owner.team] || !teams[other.team] || !teams[admin.team] {
			t.Fatalf("teams in the platform-wide log: %v", teams)
		}
		var keys page
		if c := e.do(t, "GET", "/v1/admin/audit-logs?action=api_key.create&resource_type=api_key,team", admin.jwt, nil, &keys); c != 200 || len(keys.Items) != 3 {
			t.Fatalf("filtered: %d %d events, want the 3 accounts' keys", c, len(keys.Items))
		}
		var one page
		if c := e.do(t, "GET", "/v1/admin/audit-logs?team_id="+other.team, admin.jwt, nil, &one); c != 200 || len(one.Items) == 0 {
			t.Fatalf("one team: %d %+v", c, one)
		}
		for _, it := range one.Items {
			if it.TeamID != other.team {
				t.Fatalf("team filter: %+v", it)
			}
		}
		var walked []string
		cursor := ""
		for range 50 {
			var p page
			if c := e.do(t, "GET", "/v1/admin/audit-logs?limit=2&cursor="+url.QueryEscape(cursor), admin.jwt, nil, &p); c != 200 || len(p.Items) > 2 {
				t.Fatalf("page: %d", c)
			}
			for _, it := range p.Items {
				walked = append(walked, it.ID)
			}
			if cursor = p.Next; cursor == "" {
				break
			}
		}
		var want []string
		for _, it := range all.Items {
			want = append(want, it.ID)
		}
		if !slices.Equal(walked, want) {
			t.Fatalf("paged %d events, want the %d of one page", len(walked), len(want))
		}
		for _, bad := range []string{"limit=0", "limit=500", "team_id=nope", "action=DROP", "cursor=zz"} {
			if c := e.do(t, "GET", "/v1/admin/audit-logs?"+bad, admin.jwt, nil, nil); c != 400 {
				t.Errorf("%s: %d, want 400", bad, c)
			}
		}
	})
	t.Run("sandboxes", func(t *testing.T) {
		mine := e.sandboxRow(t, platform, store.SandboxRunning)
		paused := e.sandboxRow(t, platform, store.SandboxPaused)
		e.sandboxRow(t, other.team, store.SandboxRunning)
		type page struct {
			Sandboxes []sandboxJSON `json:"sandboxes"`
			Next      string        `json:"next_cursor"`
		}
		var p page
		if c := e.do(t, "GET", "/v1/admin/sandboxes", admin.jwt, nil, &p); c != 200 || len(p.Sandboxes) != 2 ||
			p.Sandboxes[0].ID != service.ID(paused.ID) || p.Sandboxes[1].ID != service.ID(mine.ID) {
			t.Fatalf("platform sandboxes: %d %+v", c, p)
		}
		if c := e.do(t, "GET", "/v1/admin/sandboxes?state=running", admin.jwt, nil, &p); c != 200 || len(p.Sandboxes) != 1 || p.Sandboxes[0].ID != service.ID(mine.ID) {
			t.Fatalf("running: %d %+v", c, p)
		}
		if c := e.do(t, "GET", "/v1/admin/sandboxes?state=bogus", admin.jwt, nil, nil); c != 400 {
			t.Fatalf("bad state: %d", c)
		}
		// The admin's own team's listing is unchanged: not the platform's.
		if c := e.do(t, "GET", "/v1/sandboxes", admin.key, nil, &p); c != 200 || len(p.Sandboxes) != 0 {
			t.Fatalf("the admin's team: %d %+v", c, p)
		}
	})
}

// TestDisabledUserOAuthLogin: a disabled user's OAuth login issues no
// session (the callback lands with error=forbidden); once re-enabled, the
// same identity logs in again.
func TestDisabledUserOAuthLogin(t *testing.T) {
	e := newOAuthAPI(t)
	admin := e.platformAdmin(t, "root@example.com")
	first := e.login(t, "", "octocat")
	me := e.me(t, first.frag.Get("token"))
	for _, step := range []struct {
		name     string
		disabled bool
		want     string // the landing's error ("" : a session)
	}{
		{"disabled", true, "forbidden"},
		{"re-enabled", false, ""},
	} {
		t.Run(step.name, func(t *testing.T) {
			if c := e.do(t, "PUT", "/v1/admin/users/"+me.User.ID+"/disabled", admin.jwt, map[string]any{"disabled": step.disabled}, nil); c != 200 {
				t.Fatalf("set disabled: %d", c)
			}
			l := e.login(t, "", "octocat")
			if l.frag.Get("error") != step.want || (l.frag.Get("token") != "") != (step.want == "") {
				t.Fatalf("landing %+v, want error %q", l, step.want)
			}
			wantMe := 200
			if step.disabled {
				wantMe = 403
			}
			if c := e.do(t, "GET", "/v1/me", first.frag.Get("token"), nil, nil); c != wantMe {
				t.Fatalf("the first session: %d, want %d", c, wantMe)
			}
		})
	}
}
