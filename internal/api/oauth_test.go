package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/auth/oauth"
	"github.com/capsulehq/capsule/internal/auth/oauth/oauthtest"
)

func ptr(s string) *string { return &s }

// The callback URL registered with the fake's OAuth app: the browser
// (the test) sends what the fake redirects to there to the API server.
const testCallback = "https://capsule.test/v1/auth/oauth/github/callback"

type oauthEnv struct {
	*apiEnv
	gh *oauthtest.GitHub
}

func newOAuthAPI(t *testing.T) *oauthEnv {
	t.Helper()
	gh := oauthtest.NewGitHub(t)
	for _, u := range []*oauthtest.User{
		{ID: 1, Login: "octocat", Name: ptr("The Octocat"), PublicEmail: ptr("octocat@example.com"),
			Emails: []oauthtest.Email{{Email: "octocat@example.com", Primary: true, Verified: true}}},
		{ID: 2, Login: "unverified", Emails: []oauthtest.Email{{Email: "u@example.com", Primary: true}}},
		{ID: 3, Login: "pwowner", Emails: []oauthtest.Email{{Email: "pw@example.com", Primary: true, Verified: true}}},
		{ID: 4, Login: "racer", Emails: []oauthtest.Email{{Email: "racer@example.com", Primary: true, Verified: true}}},
	} {
		gh.AddUser(u)
	}
	provider, err := oauth.NewGitHub(oauth.GitHubConfig{ClientID: oauthtest.ClientID, ClientSecret: oauthtest.ClientSecret,
		RedirectURL: testCallback, AuthURL: gh.AuthURL(), TokenURL: gh.TokenURL(), APIURL: gh.APIURL(), HTTPClient: gh.Client()})
	if err != nil {
		t.Fatal(err)
	}
	reg := oauth.NewRegistry()
	if err := reg.Register("github", provider); err != nil {
		t.Fatal(err)
	}
	states, err := oauth.NewStateManager(oauth.StateConfig{Secret: testSecret})
	if err != nil {
		t.Fatal(err)
	}
	e := newAPIWith(t, "", "", func(c *Config) {
		c.OAuth, c.OAuthStates = reg, states
		c.LoginLimit = auth.RateLimit{Burst: 1000, Interval: time.Millisecond}
	})
	return &oauthEnv{apiEnv: e, gh: gh}
}

var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// flow is one browser's login in progress: the state cookie and the
// provider's authorization URL.
type flow struct {
	cookies []*http.Cookie
	authURL string
}

func (e *oauthEnv) send(t *testing.T, req *http.Request) *http.Response {
	t.Helper()
	resp, err := noFollow.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// start begins a login (GET …/login), or a linking flow when jwt is set
// (POST …/link).
func (e *oauthEnv) start(t *testing.T, provider, redirect, jwt string) flow {
	t.Helper()
	q := ""
	if redirect != "" {
		q = "?redirect=" + url.QueryEscape(redirect)
	}
	if jwt != "" {
		var out struct {
			URL string `json:"url"`
		}
		req, _ := http.NewRequest("POST", e.srv.URL+"/v1/auth/oauth/"+provider+"/link"+q, nil)
		req.Header.Set("Authorization", "Bearer "+jwt)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("link start: %d", resp.StatusCode)
		}
		if err := decodeBody(resp, &out); err != nil {
			t.Fatal(err)
		}
		return flow{cookies: resp.Cookies(), authURL: out.URL}
	}
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/auth/oauth/"+provider+"/login"+q, nil)
	resp := e.send(t, req)
	if resp.StatusCode != http.StatusFound || len(resp.Cookies()) != 1 {
		t.Fatalf("login start: %d, %d cookies", resp.StatusCode, len(resp.Cookies()))
	}
	ck := resp.Cookies()[0]
	if !ck.HttpOnly || !ck.Secure || ck.SameSite != http.SameSiteLaxMode {
		t.Fatalf("state cookie %+v", ck)
	}
	return flow{cookies: resp.Cookies(), authURL: resp.Header.Get("Location")}
}

// authorize has login sign in at the provider (or refuse) and returns
// the callback request the provider redirects the browser to, with the
// flow's cookies.
func (e *oauthEnv) authorize(t *testing.T, f flow, login string, deny bool) *http.Request {
	t.Helper()
	e.gh.SignIn(login, deny)
	req, _ := http.NewRequest("GET", f.authURL, nil)
	resp := e.send(t, req)
	loc, err := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode != http.StatusFound || err != nil || !strings.HasPrefix(loc.String(), testCallback) {
		t.Fatalf("authorize: %d %s", resp.StatusCode, loc)
	}
	cb, _ := http.NewRequest("GET", e.srv.URL+loc.Path+"?"+loc.RawQuery, nil)
	for _, c := range f.cookies {
		cb.AddCookie(c)
	}
	return cb
}

// landing is where a callback sent the browser.
type landing struct {
	path string
	frag url.Values
}

func (e *oauthEnv) callback(t *testing.T, cb *http.Request) landing {
	t.Helper()
	resp := e.send(t, cb)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("callback: %d", resp.StatusCode)
	}
	loc := resp.Header.Get("Location")
	path, frag, _ := strings.Cut(loc, "#")
	if strings.Contains(path, "token") || strings.Contains(path, "?") && strings.Contains(path, "error") {
		t.Fatalf("callback put the outcome in the query: %s", loc)
	}
	vals, err := url.ParseQuery(frag)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatal("callback answer cacheable")
	}
	return landing{path: path, frag: vals}
}

func (e *oauthEnv) login(t *testing.T, redirect, ghLogin string) landing {
	t.Helper()
	return e.callback(t, e.authorize(t, e.start(t, "github", redirect, ""), ghLogin, false))
}

func (e *oauthEnv) me(t *testing.T, token string) meJSON {
	t.Helper()
	var me meJSON
	if c := e.do(t, "GET", "/v1/me", token, nil, &me); c != 200 {
		t.Fatalf("me: %d", c)
	}
	return me
}

func TestOAuthLoginFlow(t *testing.T) {
	e := newOAuthAPI(t)

	// A new identity: a user and a default team are registered.
	l := e.login(t, "/dashboard/sandboxes", "octocat")
	if l.path != "/dashboard/sandboxes" || l.frag.Get("token") == "" || l.frag.Get("expires_at") == "" {
		t.Fatalf("landing %+v", l)
	}
	if _, err := time.Parse(time.RFC3339, l.frag.Get("expires_at")); err != nil {
		t.Fatalf("expires_at: %v", err)
	}
	me := e.me(t, l.frag.Get("token"))
	if me.User.Email != "octocat@example.com" || me.User.Name != "The Octocat" || len(me.Teams) != 1 || me.Teams[0].Role != "owner" || me.TeamID != me.Teams[0].ID {
		t.Fatalf("new user: %+v", me)
	}
	// The session acts in the team like a password login's.
	if c := e.do(t, "GET", "/v1/api-keys", l.frag.Get("token"), nil, nil); c != 200 {
		t.Fatalf("team route: %d", c)
	}
	// The same identity logs in again, to the same user; default redirect.
	l2 := e.login(t, "", "octocat")
	if l2.path != "/" || e.me(t, l2.frag.Get("token")).User.ID != me.User.ID {
		t.Fatalf("second login: %+v", l2)
	}

	// The user refuses at the provider.
	if l := e.callback(t, e.authorize(t, e.start(t, "github", "/settings/keys", ""), "octocat", true)); l.path != "/settings/keys" || l.frag.Get("error") != "access_denied" || l.frag.Get("token") != "" {
		t.Fatalf("denied: %+v", l)
	}
	// No verified address: refused, nobody registered.
	if l := e.login(t, "", "unverified"); l.frag.Get("error") != "unverified_email" || l.frag.Get("token") != "" {
		t.Fatalf("unverified: %+v", l)
	}
	var none struct {
		Users []userHitJSON `json:"users"`
	}
	octoToken := l.frag.Get("token") // the first login's
	if c := e.do(t, "GET", "/v1/users/search?email_prefix=u@e", octoToken, nil, &none); c != 200 || len(none.Users) != 0 {
		t.Fatalf("the unverified user was registered: %d %+v", c, none)
	}
}

func TestOAuthStateChecks(t *testing.T) {
	e := newOAuthAPI(t)
	ok := e.authorize(t, e.start(t, "github", "", ""), "octocat", false)

	// Replayed: the same callback (cookie and state) a second time.
	if l := e.callback(t, ok.Clone(context.Background())); l.frag.Get("token") == "" {
		t.Fatalf("first use: %+v", l)
	}
	if c := e.send(t, ok.Clone(context.Background())).StatusCode; c != 400 {
		t.Fatalf("replayed state: %d, want 400", c)
	}

	bad := func(edit func(r *http.Request)) int {
		t.Helper()
		r := e.authorize(t, e.start(t, "github", "", ""), "octocat", false)
		edit(r)
		return e.send(t, r).StatusCode
	}
	for name, edit := range map[string]func(*http.Request){
		"no cookie": func(r *http.Request) { r.Header.Del("Cookie") },
		"other state": func(r *http.Request) {
			q := r.URL.Query()
			q.Set("state", strings.Repeat("A", 43))
			r.URL.RawQuery = q.Encode()
		},
		"no state": func(r *http.Request) {
			q := r.URL.Query()
			q.Del("state")
			r.URL.RawQuery = q.Encode()
		},
		"another browser's cookie": func(r *http.Request) {
			other := e.start(t, "github", "", "")
			r.Header.Del("Cookie")
			r.AddCookie(other.cookies[0])
		},
	} {
		if c := bad(edit); c != 400 {
			t.Errorf("%s: %d, want 400", name, c)
		}
	}
	// A state of one provider is refused by another's callback (404 here:
	// only github is registered), and an unknown provider is a 404
	// everywhere.
	for _, r := range []struct{ method, path string }{
		{"GET", "/v1/auth/oauth/gitlab/login"},
		{"GET", "/v1/auth/oauth/gitlab/callback?code=x&state=y"},
		{"POST", "/v1/auth/oauth/gitlab/link"},
	} {
		req, _ := http.NewRequest(r.method, e.srv.URL+r.path, nil)
		if r.method == "POST" {
			jwt, _, _ := e.account(t, "linker@example.com")
			req.Header.Set("Authorization", "Bearer "+jwt)
		}
		if c := e.send(t, req).StatusCode; c != 404 {
			t.Errorf("%s %s: %d, want 404", r.method, r.path, c)
		}
	}
	// Redirects must be front-end paths of the allow-list: a fresh session
	// in the fragment never lands on an API route, a sandbox file URL
	// (which, served on this origin, would be an attacker's page) or a
	// path with a query string.
	for _, redirect := range []string{"//evil.example", "https://evil.example/", "/\\evil.example", "evil", "/a#b", "/a b", "javascript:alert(1)",
		"/files?path=/home/user/x.html&signature=v1_abc", "/files", "/dashboard?tab=1", "/dashboard/../files", "/dashboard/./x",
		"/dashboardx", "/settings//evil.example", "/v1/me", "/docs", "/openapi.json", "/dashboard/%2e%2e/files", "/dashboard\t"} {
		t.Run("redirect "+redirect, func(t *testing.T) {
			if c := e.do(t, "GET", "/v1/auth/oauth/github/login?redirect="+url.QueryEscape(redirect), "", nil, nil); c != 400 {
				t.Errorf("redirect %q: %d, want 400", redirect, c)
			}
		})
	}
	for _, redirect := range []string{"/", "/dashboard", "/dashboard/", "/dashboard/sandboxes/abc123", "/settings/api-keys", "/login"} {
		t.Run("redirect "+redirect, func(t *testing.T) {
			// It lands there after the provider.
			if l := e.callback(t, e.authorize(t, e.start(t, "github", redirect, ""), "octocat", false)); l.path != redirect || l.frag.Get("token") == "" {
				t.Errorf("redirect %q: landed %+v", redirect, l)
			}
		})
	}
}

func TestOAuthLink(t *testing.T) {
	e := newOAuthAPI(t)
	pw := e.user(t, "pw@example.com")

	// A new identity with a password account's address is not linked
	// automatically.
	if l := e.login(t, "", "pwowner"); l.frag.Get("error") != "conflict" || l.frag.Get("token") != "" {
		t.Fatalf("auto-link of a password account: %+v", l)
	}
	// Its owner links it from a session: bound to that session's user.
	f := e.start(t, "github", "/settings", pw.jwt)
	l := e.callback(t, e.authorize(t, f, "pwowner", false))
	if l.path != "/settings" || l.frag.Get("linked") != "github" || e.me(t, l.frag.Get("token")).User.ID != pw.id {
		t.Fatalf("link: %+v", l)
	}
	// Now GitHub logs into that account.
	if l := e.login(t, "", "pwowner"); e.me(t, l.frag.Get("token")).User.ID != pw.id {
		t.Fatalf("login after link: %+v", l)
	}
	// An identity linked to someone else cannot be linked.
	other := e.user(t, "other@example.com")
	if l := e.callback(t, e.authorize(t, e.start(t, "github", "", other.jwt), "pwowner", false)); l.frag.Get("error") != "conflict" {
		t.Fatalf("link a taken identity: %+v", l)
	}
	// Linking needs a session, not an API key.
	for _, authz := range []struct {
		value string
		want  int
	}{{"", 401}, {pw.key, 403}} {
		if c := e.do(t, "POST", "/v1/auth/oauth/github/link", authz.value, nil, nil); c != authz.want {
			t.Errorf("link with %q: %d, want %d", authz.value, c, authz.want)
		}
	}
}

// TestOAuthRegistrationRaceHTTP: concurrent callbacks for one new
// identity, each from its own browser, register exactly one user.
func TestOAuthRegistrationRaceHTTP(t *testing.T) {
	e := newOAuthAPI(t)
	before, err := e.st.Queries().CountUsers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	const n = 6
	cbs := make([]*http.Request, n)
	for i := range cbs {
		cbs[i] = e.authorize(t, e.start(t, "github", "", ""), "racer", false)
	}
	landings := make([]landing, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := noFollow.Do(cbs[i])
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			_, frag, _ := strings.Cut(resp.Header.Get("Location"), "#")
			v, _ := url.ParseQuery(frag)
			landings[i] = landing{frag: v}
		}()
	}
	close(start)
	wg.Wait()
	var id string
	for i, l := range landings {
		if l.frag.Get("token") == "" {
			t.Fatalf("callback %d: %v", i, l.frag)
		}
		me := e.me(t, l.frag.Get("token"))
		if id == "" {
			id = me.User.ID
		} else if me.User.ID != id {
			t.Fatalf("callback %d signed in %s, another %s", i, me.User.ID, id)
		}
	}
	if after, _ := e.st.Queries().CountUsers(context.Background()); after != before+1 {
		t.Fatalf("%d users registered, want 1", after-before)
	}
}

func decodeBody(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }

// TestOAuthUnlink: DELETE /v1/me/oauth/github removes a linked identity
// (GitHub no longer signs that user in, the session's team audits it);
// not linked is 404; a user without a password (made by GitHub sign-in)
// is refused with 409 and keeps its identity.
func TestOAuthUnlink(t *testing.T) {
	e := newOAuthAPI(t)
	pw := e.user(t, "pw@example.com")
	if l := e.callback(t, e.authorize(t, e.start(t, "github", "", pw.jwt), "pwowner", false)); l.frag.Get("linked") != "github" {
		t.Fatalf("link: %+v", l)
	}
	oc := e.login(t, "", "octocat") // a new account: no password
	ocJWT := oc.frag.Get("token")
	if ocJWT == "" {
		t.Fatalf("octocat sign-in: %+v", oc)
	}

	t.Run("me shows the link", func(t *testing.T) {
		me := e.me(t, pw.jwt)
		if !me.HasPassword || len(me.OAuth) != 1 || me.OAuth[0].Provider != "github" || me.OAuth[0].Email != "pw@example.com" {
			t.Fatalf("me: %+v", me)
		}
		if me := e.me(t, ocJWT); me.HasPassword || len(me.OAuth) != 1 {
			t.Fatalf("octocat me: %+v", me)
		}
	})
	t.Run("no password: 409, nothing changes", func(t *testing.T) {
		var p errorBody
		if c := e.do(t, "DELETE", "/v1/me/oauth/github", ocJWT, nil, &p); c != 409 || !strings.Contains(p.Message, "password") {
			t.Fatalf("unlink without a password: %d %+v", c, p)
		}
		if me := e.me(t, ocJWT); len(me.OAuth) != 1 {
			t.Fatalf("identity gone: %+v", me)
		}
		if l := e.login(t, "", "octocat"); e.me(t, l.frag.Get("token")).User.ID != e.me(t, ocJWT).User.ID {
			t.Fatalf("GitHub no longer signs octocat in: %+v", l)
		}
	})
	t.Run("an API key cannot unlink", func(t *testing.T) {
		if c := e.do(t, "DELETE", "/v1/me/oauth/github", pw.key, nil, nil); c != 403 {
			t.Fatalf("API key: %d, want 403", c)
		}
	})
	t.Run("unlink works", func(t *testing.T) {
		if c := e.do(t, "DELETE", "/v1/me/oauth/github", pw.jwt, nil, nil); c != 204 {
			t.Fatalf("unlink: %d", c)
		}
		if me := e.me(t, pw.jwt); len(me.OAuth) != 0 {
			t.Fatalf("still linked: %+v", me)
		}
		// GitHub no longer signs into the account: the address belongs to a
		// password account, so the login is the auto-link conflict again.
		if l := e.login(t, "", "pwowner"); l.frag.Get("error") != "conflict" || l.frag.Get("token") != "" {
			t.Fatalf("login after unlink: %+v", l)
		}
		var audit struct {
			Items []struct {
				Action     string         `json:"action"`
				ResourceID string         `json:"resource_id"`
				Metadata   map[string]any `json:"metadata"`
			} `json:"audit_logs"`
		}
		if c := e.do(t, "GET", "/v1/audit-logs?action=user.oauth_unlink", pw.jwt, nil, &audit); c != 200 ||
			len(audit.Items) != 1 || audit.Items[0].ResourceID != pw.id || audit.Items[0].Metadata["provider"] != "github" {
			t.Fatalf("audit: %d %+v", c, audit)
		}
	})
	t.Run("not linked: 404", func(t *testing.T) {
		for _, path := range []string{"/v1/me/oauth/github", "/v1/me/oauth/gitlab", "/v1/me/oauth/NOT%20A%20NAME"} {
			if c := e.do(t, "DELETE", path, pw.jwt, nil, nil); c != 404 {
				t.Errorf("%s: %d, want 404", path, c)
			}
		}
	})
}
