package api

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/service/servicetest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Attacks on the API keys, the sign-up policy and the rate limits, each
// against the real API over a real PostgreSQL: every one must fail.

// testClock is a settable clock (invitation expiry).
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newAPIPolicy serves the API with the given sign-up policy and clock of
// invitation expiry.
func newAPIPolicy(t *testing.T, policy service.SignupPolicy, clock *testClock) (*apiEnv, *servicetest.Env) {
	t.Helper()
	se := servicetest.NewWith(t, "", "", func(c *service.ServicesConfig) { c.Signup, c.Now = policy, clock.Now })
	h, err := New(Config{Accounts: se.Accounts, Sandboxes: se.Sandboxes, Audit: se.Audit, Store: se.Store, Teams: se.Teams, Hosts: se.Hosts,
		SignupLimit: auth.RateLimit{Burst: 100, Interval: time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &apiEnv{st: se.Store, h: h, srv: srv}, se
}

// sessionIn returns a session token of u acting in team.
func (e *apiEnv) sessionIn(t *testing.T, u user, team string) string {
	t.Helper()
	var s sessionJSON
	if c := e.do(t, "POST", "/v1/auth/switch-team", u.jwt, map[string]string{"team_id": team}, &s); c != 200 {
		t.Fatalf("switch %s to %s: %d", u.email, team, c)
	}
	return s.Token
}

// newKey creates an API key with a session; it returns the key and its ID.
func (e *apiEnv) newKey(t *testing.T, jwt, name string) (key, id string) {
	t.Helper()
	var k apiKeyJSON
	if c := e.do(t, "POST", "/v1/api-keys", jwt, map[string]string{"name": name}, &k); c != 201 {
		t.Fatalf("create key %s: %d", name, c)
	}
	return k.Key, k.ID
}

func (e *apiEnv) keyCount(t *testing.T, jwt string) int {
	t.Helper()
	var list struct {
		APIKeys []apiKeyJSON `json:"api_keys"`
	}
	if c := e.do(t, "GET", "/v1/api-keys", jwt, nil, &list); c != 200 {
		t.Fatalf("list keys: %d", c)
	}
	return len(list.APIKeys)
}

// works reports whether an API key authenticates.
func (e *apiEnv) works(t *testing.T, key string) bool {
	t.Helper()
	switch c := e.do(t, "GET", "/v1/sandboxes", key, nil, nil); c {
	case 200:
		return true
	case 401:
		return false
	default:
		t.Fatalf("GET /v1/sandboxes with a key: %d", c)
		return false
	}
}

// TestAPIKeyRules: an API key neither creates nor revokes keys; a member
// revokes only the keys they created; a key dies with its creator's
// membership (removal, leaving, a deleted user) and does not come back
// when the creator is added again.
func TestAPIKeyRules(t *testing.T) {
	e := newAPI(t, "", "")
	owner := e.user(t, "owner@example.com")
	admin := e.user(t, "admin@example.com")
	member := e.user(t, "member@example.com")
	leaver := e.user(t, "leaver@example.com")
	e.join(t, admin, owner.team, "admin")
	e.join(t, member, owner.team, "member")
	e.join(t, leaver, owner.team, "member")
	adminJWT, memberJWT, leaverJWT := e.sessionIn(t, admin, owner.team), e.sessionIn(t, member, owner.team), e.sessionIn(t, leaver, owner.team)
	ownerKeyID := func() string {
		var list struct {
			APIKeys []apiKeyJSON `json:"api_keys"`
		}
		e.do(t, "GET", "/v1/api-keys", owner.jwt, nil, &list)
		for _, k := range list.APIKeys {
			if k.Name == "test" {
				return k.ID
			}
		}
		t.Fatal("the owner's key is not listed")
		return ""
	}()

	t.Run("an API key mints a key", func(t *testing.T) {
		before := e.keyCount(t, owner.jwt)
		var eb errorBody
		if c := e.do(t, "POST", "/v1/api-keys", owner.key, map[string]string{"name": "minted"}, &eb); c != 403 || !strings.Contains(eb.Message, "session") {
			t.Fatalf("create with an API key: %d %q, want 403 naming the session", c, eb.Message)
		}
		if n := e.keyCount(t, owner.jwt); n != before {
			t.Fatalf("keys: %d, want %d (none created)", n, before)
		}
	})
	t.Run("an API key revokes a key", func(t *testing.T) {
		memberKey, memberKeyID := e.newKey(t, memberJWT, "member's")
		for _, k := range []string{owner.key, memberKey} {
			if c := e.do(t, "DELETE", "/v1/api-keys/"+memberKeyID, k, nil, nil); c != 403 {
				t.Fatalf("revoke with an API key: %d, want 403", c)
			}
		}
		if !e.works(t, memberKey) {
			t.Fatal("the key was revoked")
		}
	})
	t.Run("a member revokes the owner's key", func(t *testing.T) {
		var eb errorBody
		if c := e.do(t, "DELETE", "/v1/api-keys/"+ownerKeyID, memberJWT, nil, &eb); c != 403 || !strings.Contains(eb.Message, "admin or owner") {
			t.Fatalf("member revokes the owner's key: %d %q, want 403", c, eb.Message)
		}
		if !e.works(t, owner.key) {
			t.Fatal("the owner's key stopped working")
		}
	})
	t.Run("a member revokes their own key", func(t *testing.T) {
		k, id := e.newKey(t, memberJWT, "own")
		if c := e.do(t, "DELETE", "/v1/api-keys/"+id, memberJWT, nil, nil); c != 204 {
			t.Fatalf("revoke own key: %d", c)
		}
		if e.works(t, k) {
			t.Fatal("a revoked key works")
		}
	})
	t.Run("an admin revokes a member's key", func(t *testing.T) {
		k, id := e.newKey(t, memberJWT, "to be revoked by the admin")
		if c := e.do(t, "DELETE", "/v1/api-keys/"+id, adminJWT, nil, nil); c != 204 {
			t.Fatalf("admin revokes: %d", c)
		}
		if e.works(t, k) {
			t.Fatal("a revoked key works")
		}
	})
	t.Run("a removed member's key", func(t *testing.T) {
		k, id := e.newKey(t, memberJWT, "removed with its creator")
		if !e.works(t, k) {
			t.Fatal("a new key does not work")
		}
		if c := e.do(t, "DELETE", "/v1/teams/"+owner.team+"/members/"+member.id, owner.jwt, nil, nil); c != 204 {
			t.Fatalf("remove: %d", c)
		}
		if e.works(t, k) {
			t.Fatal("the removed member's key still works")
		}
		// Adding the user back does not revive it.
		e.join(t, member, owner.team, "member")
		if e.works(t, k) {
			t.Fatal("the key came back with its creator")
		}
		if got := strings.Join(auditActions(t, e, owner.team), " "); !strings.Contains(got, "member.remove api_key.revoke") &&
			!strings.Contains(got, "api_key.revoke member.remove") {
			t.Fatalf("audit: %v, want member.remove with api_key.revoke", got)
		}
		var list struct {
			APIKeys []apiKeyJSON `json:"api_keys"`
		}
		e.do(t, "GET", "/v1/api-keys", owner.jwt, nil, &list)
		for _, lk := range list.APIKeys {
			if lk.ID == id {
				t.Fatal("the revoked key is still listed")
			}
		}
	})
	t.Run("a departed member's key", func(t *testing.T) {
		k, _ := e.newKey(t, leaverJWT, "left with its creator")
		if c := e.do(t, "POST", "/v1/teams/"+owner.team+"/leave", leaverJWT, nil, nil); c != 204 {
			t.Fatalf("leave: %d", c)
		}
		if e.works(t, k) {
			t.Fatal("the departed member's key still works")
		}
	})
	t.Run("a deleted creator's key", func(t *testing.T) {
		// A path that bypasses the member routes (the user row deleted):
		// the membership join at authentication still refuses the key.
		k, _ := e.newKey(t, adminJWT, "deleted creator")
		if _, err := e.st.Pool().Exec(context.Background(), "DELETE FROM users WHERE id = $1", mustUUID(t, wireid.User, admin.id)); err != nil {
			t.Fatal(err)
		}
		if e.works(t, k) {
			t.Fatal("the deleted user's key still works")
		}
	})
	if !e.works(t, owner.key) {
		t.Fatal("the owner's key stopped working")
	}
}

// TestSignupPolicy: with the invite policy, sign-up takes a valid
// invitation (used once, unexpired, for its address, of a live team);
// closed refuses all; the bootstrap admin is created whatever the policy.
func TestSignupPolicy(t *testing.T) {
	clock := &testClock{t: time.Now()}
	e, se := newAPIPolicy(t, service.SignupInvite, clock)
	ctx := context.Background()
	pw := "correct horse battery"
	noUser := func(t *testing.T, email string) {
		t.Helper()
		if _, err := e.st.Queries().GetUserByEmail(ctx, email); !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("a user %s exists (%v)", email, err)
		}
	}
	signup := func(t *testing.T, email, invitation string, want int) accountJSON {
		t.Helper()
		var a accountJSON
		body := map[string]string{"email": email, "password": pw}
		if invitation != "" {
			body["invitation"] = invitation
		}
		if c := e.do(t, "POST", "/v1/auth/signup", "", body, &a); c != want {
			t.Fatalf("signup %s: %d, want %d", email, c, want)
		}
		return a
	}
	// The bootstrap admin, as capsule serve creates it.
	adm, err := se.Accounts.Signup(ctx, service.Signup{Email: "admin@capsule.local", Password: pw, Name: "Admin", IsAdmin: true})
	if err != nil {
		t.Fatalf("bootstrap admin under the invite policy: %v", err)
	}
	var sess sessionJSON
	if c := e.do(t, "POST", "/v1/auth/login", "", creds{"email": "admin@capsule.local", "password": pw}, &sess); c != 200 {
		t.Fatalf("admin login: %d", c)
	}
	admin := sess.Token
	team := adm.Team.ID.String()
	invite := func(t *testing.T, email, role string, hours int) invitationJSON {
		t.Helper()
		var inv invitationJSON
		body := map[string]any{"email": email, "role": role}
		if hours > 0 {
			body["expires_in_hours"] = hours
		}
		if c := e.do(t, "POST", "/v1/teams/"+team+"/invitations", admin, body, &inv); c != 201 || !strings.HasPrefix(inv.Token, auth.InvitationTokenPrefix) {
			t.Fatalf("invite %s: %d %+v", email, c, inv)
		}
		return inv
	}

	t.Run("no invitation", func(t *testing.T) {
		signup(t, "walk-in@example.com", "", 403)
		noUser(t, "walk-in@example.com")
	})
	t.Run("forged invitation", func(t *testing.T) {
		signup(t, "forger@example.com", auth.InvitationTokenPrefix+strings.Repeat("0", 64), 403)
		signup(t, "forger@example.com", "garbage", 403)
		noUser(t, "forger@example.com")
	})
	inv := invite(t, "Newcomer@Example.com", "admin", 0)
	t.Run("the token is stored hashed", func(t *testing.T) {
		var hashed, plain int
		if err := e.st.Pool().QueryRow(ctx, `SELECT count(*) FILTER (WHERE token_hash = sha256(convert_to($1, 'UTF8'))),
			count(*) FILTER (WHERE i::text LIKE '%' || $1 || '%') FROM team_invitations i`, inv.Token).Scan(&hashed, &plain); err != nil || hashed != 1 || plain != 0 {
			t.Fatalf("rows with the token's hash: %d, with the token: %d (%v); want 1, 0", hashed, plain, err)
		}
	})
	t.Run("another address", func(t *testing.T) {
		signup(t, "thief@example.com", inv.Token, 403)
		noUser(t, "thief@example.com")
	})
	t.Run("redeemed", func(t *testing.T) {
		a := signup(t, "newcomer@example.COM", inv.Token, 201)
		if a.Team == nil || a.Team.ID != team || a.Team.Role != "admin" {
			t.Fatalf("account %+v: want the invitation's team as admin", a)
		}
		var me meJSON
		var s sessionJSON
		if c := e.do(t, "POST", "/v1/auth/login", "", creds{"email": "newcomer@example.com", "password": pw}, &s); c != 200 {
			t.Fatalf("login: %d", c)
		}
		if c := e.do(t, "GET", "/v1/me", s.Token, nil, &me); c != 200 || len(me.Teams) != 1 || me.TeamID != team || me.Teams[0].Role != "admin" {
			t.Fatalf("me: %d %+v", c, me)
		}
	})
	t.Run("reused", func(t *testing.T) {
		// Even once the address is free again, the token is spent.
		if _, err := e.st.Pool().Exec(ctx, "DELETE FROM users WHERE lower(email) = 'newcomer@example.com'"); err != nil {
			t.Fatal(err)
		}
		var eb errorBody
		if c := e.do(t, "POST", "/v1/auth/signup", "", map[string]string{"email": "newcomer@example.com", "password": pw, "invitation": inv.Token}, &eb); c != 403 || !strings.Contains(eb.Message, "used") {
			t.Fatalf("reuse: %d %q", c, eb.Message)
		}
		noUser(t, "newcomer@example.com")
	})
	t.Run("concurrent redemptions", func(t *testing.T) {
		inv := invite(t, "racer@example.com", "member", 0)
		const n = 6
		codes := make(chan int, n)
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				codes <- e.do(t, "POST", "/v1/auth/signup", "", map[string]string{"email": "racer@example.com", "password": pw, "invitation": inv.Token}, nil)
			}()
		}
		wg.Wait()
		close(codes)
		won := 0
		for c := range codes {
			switch c {
			case 201:
				won++
			case 403, 409:
			default:
				t.Errorf("a racing sign-up: %d", c)
			}
		}
		if won != 1 {
			t.Fatalf("%d sign-ups won, want 1", won)
		}
	})
	t.Run("expired", func(t *testing.T) {
		inv := invite(t, "late@example.com", "member", 1)
		clock.Advance(time.Hour)
		signup(t, "late@example.com", inv.Token, 403)
		noUser(t, "late@example.com")
		var list struct {
			Invitations []invitationJSON `json:"invitations"`
		}
		if c := e.do(t, "GET", "/v1/teams/"+team+"/invitations", admin, nil, &list); c != 200 {
			t.Fatalf("list: %d", c)
		}
		status := map[string]string{}
		for _, i := range list.Invitations {
			if i.Token != "" {
				t.Fatal("a listing shows a token")
			}
			status[i.Email] = i.Status
		}
		if status["late@example.com"] != "expired" || status["racer@example.com"] != "redeemed" {
			t.Fatalf("statuses %v", status)
		}
	})
	t.Run("revoked", func(t *testing.T) {
		inv := invite(t, "revoked@example.com", "member", 0)
		if c := e.do(t, "DELETE", "/v1/teams/"+team+"/invitations/"+inv.ID, admin, nil, nil); c != 204 {
			t.Fatalf("revoke: %d", c)
		}
		signup(t, "revoked@example.com", inv.Token, 403)
		noUser(t, "revoked@example.com")
	})
	t.Run("deleted team", func(t *testing.T) {
		var tm teamDetailJSON
		if c := e.do(t, "POST", "/v1/teams", admin, map[string]string{"name": "doomed"}, &tm); c != 201 {
			t.Fatalf("create team: %d", c)
		}
		var inv invitationJSON
		if c := e.do(t, "POST", "/v1/teams/"+tm.ID+"/invitations", admin, map[string]string{"email": "orphan@example.com"}, &inv); c != 201 {
			t.Fatalf("invite: %d", c)
		}
		if c := e.do(t, "DELETE", "/v1/teams/"+tm.ID, admin, nil, nil); c != 200 {
			t.Fatalf("delete team: %d", c)
		}
		signup(t, "orphan@example.com", inv.Token, 403)
		noUser(t, "orphan@example.com")
	})
	t.Run("audited", func(t *testing.T) {
		got := strings.Join(auditActions(t, e, team), " ")
		for _, a := range []string{"invitation.create", "invitation.redeem", "invitation.revoke"} {
			if !strings.Contains(got, a) {
				t.Errorf("audit %q lacks %s", got, a)
			}
		}
	})
}

// TestSignupClosed: nobody signs up, not even with an invitation.
func TestSignupClosed(t *testing.T) {
	clock := &testClock{t: time.Now()}
	e, se := newAPIPolicy(t, service.SignupClosed, clock)
	ctx := context.Background()
	adm, err := se.Accounts.Signup(ctx, service.Signup{Email: "admin@capsule.local", Password: "correct horse battery", IsAdmin: true})
	if err != nil {
		t.Fatalf("bootstrap admin under the closed policy: %v", err)
	}
	tok := auth.NewInvitationToken(clock.Now().Add(time.Hour))
	admTeam, _ := adm.Team.ID.UUID()
	if _, err := e.st.Pool().Exec(ctx, "INSERT INTO team_invitations (team_id, email, role, token_hash, expires_at) VALUES ($1, 'x@example.com', 'member', $2, $3)",
		pgtype.UUID{Bytes: admTeam, Valid: true}, tok.Hash, tok.ExpiresAt); err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]map[string]string{
		"no invitation":   {"email": "x@example.com", "password": "correct horse battery"},
		"with invitation": {"email": "x@example.com", "password": "correct horse battery", "invitation": tok.Plaintext},
	} {
		t.Run(name, func(t *testing.T) {
			if c := e.do(t, "POST", "/v1/auth/signup", "", body, nil); c != 403 {
				t.Fatalf("signup: %d, want 403", c)
			}
			if _, err := e.st.Queries().GetUserByEmail(ctx, "x@example.com"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("a user was created (%v)", err)
			}
		})
	}
}

// TestUserSearchRateLimit: the search is limited per user (429 with
// Retry-After), and one user's searches do not limit another's.
func TestUserSearchRateLimit(t *testing.T) {
	e := newAPIWith(t, "", "", func(c *Config) { c.SearchLimit = auth.RateLimit{Burst: 3, Interval: time.Hour} })
	a := e.user(t, "searcher@example.com")
	b := e.user(t, "other-searcher@example.com")
	for i := range 3 {
		if c := e.do(t, "GET", "/v1/users/search?email_prefix=sea", a.jwt, nil, nil); c != 200 {
			t.Fatalf("search %d: %d", i, c)
		}
	}
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/users/search?email_prefix=sea", nil)
	req.Header.Set("Authorization", "Bearer "+a.jwt)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("fourth search: %d, Retry-After %q; want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	// A new session of the same user shares the bucket.
	var s sessionJSON
	if c := e.do(t, "POST", "/v1/auth/login", "", creds{"email": a.email, "password": "correct horse battery"}, &s); c != 200 {
		t.Fatalf("login: %d", c)
	}
	if c := e.do(t, "GET", "/v1/users/search?email_prefix=sea", s.Token, nil, nil); c != 429 {
		t.Fatalf("a fresh session of the limited user: %d, want 429", c)
	}
	if c := e.do(t, "GET", "/v1/users/search?email_prefix=sea", b.jwt, nil, nil); c != 200 {
		t.Fatalf("another user: %d, want 200", c)
	}
}

// TestLoginLimitBehindProxies: X-Forwarded-For is believed only from a
// trusted proxy, and then its right-most untrusted entry is the client.
func TestLoginLimitBehindProxies(t *testing.T) {
	limit := auth.RateLimit{Burst: 2, Interval: time.Hour}
	n := 0
	login := func(t *testing.T, e *apiEnv, xff string) int {
		t.Helper()
		n++
		req, _ := http.NewRequest("POST", e.srv.URL+"/v1/auth/login",
			strings.NewReader(`{"email":"nobody`+strings.Repeat("x", n)+`@example.com","password":"wrong password"}`))
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	t.Run("spoofed from an untrusted peer", func(t *testing.T) {
		e := newAPIWith(t, "", "", func(c *Config) { c.LoginLimit = limit })
		for i, xff := range []string{"203.0.113.1", "203.0.113.2"} {
			if c := login(t, e, xff); c != 401 {
				t.Fatalf("attempt %d: %d, want 401", i, c)
			}
		}
		for _, xff := range []string{"203.0.113.3", "198.51.100.9, 203.0.113.4", ""} {
			if c := login(t, e, xff); c != 429 {
				t.Fatalf("X-Forwarded-For %q escaped the limit: %d, want 429", xff, c)
			}
		}
	})
	t.Run("behind a trusted proxy", func(t *testing.T) {
		e := newAPIWith(t, "", "", func(c *Config) {
			c.LoginLimit = limit
			c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
		})
		for i := range 2 {
			if c := login(t, e, "198.51.100.7"); c != 401 {
				t.Fatalf("attempt %d: %d, want 401", i, c)
			}
		}
		for _, xff := range []string{"198.51.100.7", "192.0.2.1, 198.51.100.7", "10.9.9.9,198.51.100.7, 127.0.0.1"} {
			if c := login(t, e, xff); c != 429 {
				t.Fatalf("the limited client with X-Forwarded-For %q: %d, want 429", xff, c)
			}
		}
		if c := login(t, e, "198.51.100.8"); c != 401 {
			t.Fatalf("another client behind the proxy: %d, want 401", c)
		}
	})
}
