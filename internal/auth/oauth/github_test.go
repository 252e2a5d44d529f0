package oauth

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/auth/oauth/oauthtest"
)

func ptr(s string) *string { return &s }

var secret = []byte("0123456789abcdef0123456789abcdef")

// octocat has a public, verified, primary address.
var octocat = &oauthtest.User{ID: 583231, Login: "octocat", Name: ptr("The Octocat"), PublicEmail: ptr("octocat@github.com"),
	Emails: []oauthtest.Email{{Email: "octocat@github.com", Primary: true, Verified: true}}}

// privateEmail keeps its address private (/user has email null): the
// address must come from /user/emails.
var privateEmail = &oauthtest.User{ID: 2, Login: "private", PublicEmail: nil,
	Emails: []oauthtest.Email{{Email: "old@example.com", Verified: false}, {Email: "me@example.com", Primary: true, Verified: true}}}

// unverified has only unverified addresses, one of them public.
var unverified = &oauthtest.User{ID: 3, Login: "unverified", Name: ptr("U"), PublicEmail: ptr("u@example.com"),
	Emails: []oauthtest.Email{{Email: "u@example.com", Primary: true, Verified: false}}}

// noScope's token cannot read /user/emails.
var noScope = &oauthtest.User{ID: 4, Login: "noscope", PublicEmail: ptr("n@example.com"), EmailsStatus: http.StatusForbidden}

// secondary's primary address is unverified, its public one verified.
var secondary = &oauthtest.User{ID: 5, Login: "secondary", PublicEmail: ptr("public@example.com"),
	Emails: []oauthtest.Email{{Email: "first@example.com", Verified: true}, {Email: "primary@example.com", Primary: true}, {Email: "public@example.com", Verified: true}}}

// fakeConfig returns a provider configuration pointing at the fake.
func fakeConfig(f *oauthtest.GitHub) GitHubConfig {
	return GitHubConfig{
		ClientID:     oauthtest.ClientID,
		ClientSecret: oauthtest.ClientSecret,
		RedirectURL:  "https://capsule.test/v1/auth/oauth/github/callback",
		AuthURL:      f.AuthURL(),
		TokenURL:     f.TokenURL(),
		APIURL:       f.APIURL(),
		HTTPClient:   f.Client(),
	}
}

func newGitHubForTest(t *testing.T) (*oauthtest.GitHub, *GitHub) {
	t.Helper()
	f := oauthtest.NewGitHub(t)
	for _, u := range []*oauthtest.User{octocat, privateEmail, unverified, noScope, secondary} {
		f.AddUser(u)
	}
	g, err := NewGitHub(fakeConfig(f))
	if err != nil {
		t.Fatal(err)
	}
	return f, g
}

// TestGitHubLoginFlow runs the whole browser flow against the fake:
// start (state cookie + redirect), the provider's consent redirect, and
// the callback (state check, code exchange, profile).
func TestGitHubLoginFlow(t *testing.T) {
	f, g := newGitHubForTest(t)
	reg := NewRegistry()
	if err := reg.Register("github", g); err != nil {
		t.Fatal(err)
	}
	states, err := NewStateManager(StateConfig{Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	noRedirect := f.Client()
	noRedirect.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	login := func(t *testing.T, user string, deny bool) (Profile, error) {
		f.SignIn(user, deny)

		// 1. GET /v1/auth/oauth/github: set the cookie, redirect.
		p, err := reg.Get("github")
		if err != nil {
			t.Fatal(err)
		}
		start := httptest.NewRecorder()
		state, err := states.Set(start, "github")
		if err != nil {
			t.Fatal(err)
		}
		// 2. The browser follows it; the user consents (or not).
		resp, err := noRedirect.Get(p.AuthCodeURL(state))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("authorize answered %d", resp.StatusCode)
		}
		callback := httptest.NewRequest("GET", resp.Header.Get("Location"), nil)
		for _, c := range start.Result().Cookies() {
			callback.AddCookie(c)
		}
		// 3. GET /v1/auth/oauth/github/callback.
		code, gotState, err := ParseCallback(callback)
		if gotState != state {
			t.Fatalf("state lost in the round trip: %q", gotState)
		}
		if vErr := states.Verify(httptest.NewRecorder(), callback, "github"); vErr != nil {
			t.Fatalf("state: %v", vErr)
		}
		if err != nil {
			return Profile{}, err
		}
		return p.Exchange(context.Background(), code)
	}

	tests := []struct {
		user string
		deny bool
		want Profile
		err  error
	}{
		{"octocat", false, Profile{ProviderUserID: "583231", Email: "octocat@github.com", EmailVerified: true, Name: "The Octocat", Login: "octocat"}, nil},
		{"private", false, Profile{ProviderUserID: "2", Email: "me@example.com", EmailVerified: true, Login: "private"}, nil},
		{"secondary", false, Profile{ProviderUserID: "5", Email: "public@example.com", EmailVerified: true, Login: "secondary"}, nil},
		{"unverified", false, Profile{}, ErrNoVerifiedEmail},
		{"noscope", false, Profile{}, ErrNoVerifiedEmail},
		{"octocat", true, Profile{}, ErrAccessDenied},
	}
	for _, tt := range tests {
		t.Run(tt.user+map[bool]string{true: "/denied"}[tt.deny], func(t *testing.T) {
			got, err := login(t, tt.user, tt.deny)
			if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if got != tt.want {
				t.Fatalf("profile = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestGitHubExchangeErrors(t *testing.T) {
	f, g := newGitHubForTest(t)
	redirect := fakeConfig(f).RedirectURL
	ctx := context.Background()

	t.Run("bad code", func(t *testing.T) {
		if _, err := g.Exchange(ctx, "forged"); !errors.Is(err, ErrInvalidCode) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("empty code", func(t *testing.T) {
		if _, err := g.Exchange(ctx, ""); !errors.Is(err, ErrInvalidCode) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("code used twice", func(t *testing.T) {
		code := f.IssueCode("octocat", redirect)
		if _, err := g.Exchange(ctx, code); err != nil {
			t.Fatal(err)
		}
		if _, err := g.Exchange(ctx, code); !errors.Is(err, ErrInvalidCode) {
			t.Fatalf("replayed code: %v", err)
		}
	})
	t.Run("code issued for another redirect URI", func(t *testing.T) {
		code := f.IssueCode("octocat", "https://evil.test/callback")
		if _, err := g.Exchange(ctx, code); !errors.Is(err, ErrInvalidCode) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("wrong client secret", func(t *testing.T) {
		cfg := fakeConfig(f)
		cfg.ClientSecret = "wrong"
		bad, _ := NewGitHub(cfg)
		_, err := bad.Exchange(ctx, f.IssueCode("octocat", redirect))
		if !errors.Is(err, ErrProvider) || !strings.Contains(err.Error(), "incorrect_client_credentials") {
			t.Fatalf("err = %v", err)
		}
		if strings.Contains(err.Error(), "wrong") {
			t.Fatal("the client secret leaked into the error")
		}
	})
	t.Run("token endpoint down", func(t *testing.T) {
		f.SetTokenStatus(http.StatusBadGateway)
		defer f.SetTokenStatus(0)
		if _, err := g.Exchange(ctx, f.IssueCode("octocat", redirect)); !errors.Is(err, ErrProvider) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("api down", func(t *testing.T) {
		f.SetUserStatus(http.StatusInternalServerError)
		defer f.SetUserStatus(0)
		if _, err := g.Exchange(ctx, f.IssueCode("octocat", redirect)); !errors.Is(err, ErrProvider) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		cfg := fakeConfig(f)
		cfg.TokenURL = "http://127.0.0.1:1/token"
		dead, _ := NewGitHub(cfg)
		if _, err := dead.Exchange(ctx, "x"); !errors.Is(err, ErrProvider) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("cancelled context", func(t *testing.T) {
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		_, err := g.Exchange(cctx, f.IssueCode("octocat", redirect))
		if !errors.Is(err, ErrProvider) || !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	})
}

// TestGitHubTokenResponses covers token endpoint answers the fake does not
// produce: RFC 6749 style 400 errors, odd token types, non-JSON.
func TestGitHubTokenResponses(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   error
	}{
		{"rfc 6749 invalid_grant", 400, `{"error":"invalid_grant"}`, ErrInvalidCode},
		{"other error", 400, `{"error":"invalid_client"}`, ErrProvider},
		{"no token", 200, `{}`, ErrProvider},
		{"mac token", 200, `{"access_token":"t","token_type":"mac"}`, ErrProvider},
		{"not json", 200, `access_token=t&token_type=bearer`, ErrProvider},
		{"server error with token", 500, `{"access_token":"t"}`, ErrProvider},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			}))
			defer srv.Close()
			g, err := NewGitHub(GitHubConfig{ClientID: "id", ClientSecret: "s", RedirectURL: "https://x/cb", TokenURL: srv.URL, APIURL: srv.URL})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := g.Exchange(context.Background(), "code"); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestGitHubAuthCodeURL(t *testing.T) {
	g, err := NewGitHub(GitHubConfig{ClientID: "Iv1.abc", ClientSecret: "s", RedirectURL: "https://capsule.test/v1/auth/oauth/github/callback"})
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(g.AuthCodeURL("st&te="))
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	if u.Scheme+"://"+u.Host+u.Path != GitHubAuthURL || q.Get("client_id") != "Iv1.abc" || q.Get("state") != "st&te=" ||
		q.Get("scope") != "read:user user:email" || q.Get("redirect_uri") != "https://capsule.test/v1/auth/oauth/github/callback" || q.Get("response_type") != "code" {
		t.Fatalf("AuthCodeURL = %s", u)
	}
	// An authorization URL with its own query keeps it.
	g2, _ := NewGitHub(GitHubConfig{ClientID: "a", ClientSecret: "s", RedirectURL: "https://x/cb", AuthURL: "https://ghe.test/authorize?prompt=select_account"})
	if u2, _ := url.Parse(g2.AuthCodeURL("s")); u2.Query().Get("prompt") != "select_account" || u2.Query().Get("state") != "s" {
		t.Fatalf("AuthCodeURL = %s", u2)
	}
}

func TestNewGitHubConfig(t *testing.T) {
	ok := GitHubConfig{ClientID: "a", ClientSecret: "b", RedirectURL: "https://x/cb"}
	for name, edit := range map[string]func(*GitHubConfig){
		"no client ID":         func(c *GitHubConfig) { c.ClientID = "" },
		"no client secret":     func(c *GitHubConfig) { c.ClientSecret = "" },
		"no redirect":          func(c *GitHubConfig) { c.RedirectURL = "" },
		"relative redirect":    func(c *GitHubConfig) { c.RedirectURL = "/cb" },
		"ftp token URL":        func(c *GitHubConfig) { c.TokenURL = "ftp://x/token" },
		"api URL without host": func(c *GitHubConfig) { c.APIURL = "https://" },
	} {
		c := ok
		edit(&c)
		if _, err := NewGitHub(c); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	g, err := NewGitHub(ok)
	if err != nil {
		t.Fatal(err)
	}
	if g.cfg.TokenURL != GitHubTokenURL || g.cfg.APIURL != GitHubAPIURL || g.client.Timeout == 0 {
		t.Fatalf("defaults: %+v", g.cfg)
	}
}

func TestChooseEmail(t *testing.T) {
	e := func(addr string, primary, verified bool) githubEmail {
		return githubEmail{Email: addr, Primary: primary, Verified: verified}
	}
	tests := []struct {
		name   string
		emails []githubEmail
		public string
		want   int
	}{
		{"none", nil, "", -1},
		{"primary verified wins", []githubEmail{e("a", false, true), e("b", true, true)}, "a", 1},
		{"public verified next", []githubEmail{e("a", false, true), e("b", true, false), e("c", false, true)}, "C", 2},
		{"first verified last", []githubEmail{e("a", false, false), e("b", true, false), e("c", false, true)}, "", 2},
		{"public unverified", []githubEmail{e("a", true, false)}, "a", -1},
		{"empty address", []githubEmail{e("", true, true)}, "", -1},
	}
	for _, tt := range tests {
		if got := chooseEmail(tt.emails, tt.public); got != tt.want {
			t.Errorf("%s: chooseEmail = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestGitHubTimeout(t *testing.T) {
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-release // hang until the test is over
	}))
	defer srv.Close()
	defer close(release)
	g, _ := NewGitHub(GitHubConfig{ClientID: "id", ClientSecret: "s", RedirectURL: "https://x/cb", TokenURL: srv.URL, APIURL: srv.URL,
		HTTPClient: &http.Client{Timeout: 50 * time.Millisecond}})
	if _, err := g.Exchange(context.Background(), "code"); !errors.Is(err, ErrProvider) {
		t.Fatalf("err = %v", err)
	}
}
