package oauth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// fakeUser is an account on the fake GitHub.
type fakeUser struct {
	id     int64
	login  string
	name   *string // JSON null when nil
	email  *string // the public e-mail of /user; JSON null when nil
	emails []githubEmail
	// emailsStatus, when not 0, is the status /user/emails answers with
	// (403 = the token lacks the user:email scope).
	emailsStatus int
}

// grant is an issued authorization code.
type grant struct {
	login       string
	redirectURI string
}

// fakeGitHub is a local stand-in for github.com and api.github.com that
// implements the parts of the OAuth web flow and REST API that the
// provider uses, with GitHub's quirks (token errors with status 200).
type fakeGitHub struct {
	t            *testing.T
	srv          *httptest.Server
	clientID     string
	clientSecret string

	mu     sync.Mutex
	users  map[string]*fakeUser
	signIn string // the login of the user who "signs in" at /authorize
	deny   bool   // the user presses "Cancel" at /authorize
	codes  map[string]grant
	tokens map[string]string // access token → login
	serial int
	// userStatus, when not 0, makes /user fail with that status.
	userStatus int
	// tokenStatus, when not 0, makes the token endpoint fail with that
	// status and an HTML body.
	tokenStatus int
}

func newFakeGitHub(t *testing.T) *fakeGitHub {
	f := &fakeGitHub{
		t: t, clientID: "Iv1.client", clientSecret: "client-secret",
		users: map[string]*fakeUser{}, codes: map[string]grant{}, tokens: map[string]string{},
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/oauth/authorize", f.authorize)
	mux.HandleFunc("POST /login/oauth/access_token", f.accessToken)
	mux.HandleFunc("GET /api/user", f.user)
	mux.HandleFunc("GET /api/user/emails", f.userEmails)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeGitHub) addUser(u *fakeUser) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.users[u.login] = u
}

// config returns a provider configuration pointing at the fake.
func (f *fakeGitHub) config() GitHubConfig {
	return GitHubConfig{
		ClientID:     f.clientID,
		ClientSecret: f.clientSecret,
		RedirectURL:  "https://capsule.test/v1/auth/oauth/github/callback",
		AuthURL:      f.srv.URL + "/login/oauth/authorize",
		TokenURL:     f.srv.URL + "/login/oauth/access_token",
		APIURL:       f.srv.URL + "/api",
		HTTPClient:   f.srv.Client(),
	}
}

// issueCode mints an authorization code for login, as /authorize would.
func (f *fakeGitHub) issueCode(login, redirectURI string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.serial++
	code := fmt.Sprintf("code%d", f.serial)
	f.codes[code] = grant{login: login, redirectURI: redirectURI}
	return code
}

func (f *fakeGitHub) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if q.Get("client_id") != f.clientID || err != nil || q.Get("state") == "" || !strings.Contains(q.Get("scope"), "user:email") {
		http.Error(w, "bad authorization request", http.StatusBadRequest)
		return
	}
	back := url.Values{"state": {q.Get("state")}}
	f.mu.Lock()
	deny, login := f.deny, f.signIn
	f.mu.Unlock()
	if deny {
		back.Set("error", "access_denied")
		back.Set("error_description", "The user has denied your application access.")
	} else {
		back.Set("code", f.issueCode(login, q.Get("redirect_uri")))
	}
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (f *fakeGitHub) accessToken(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.tokenStatus != 0 {
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(f.tokenStatus)
		fmt.Fprint(w, "<html>unicorn</html>")
		return
	}
	if err := r.ParseForm(); err != nil || r.Header.Get("Accept") != "application/json" {
		http.Error(w, "bad request", http.StatusBadRequest)
		return
	}
	reply := func(v any) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
	if r.PostForm.Get("client_id") != f.clientID || r.PostForm.Get("client_secret") != f.clientSecret {
		reply(map[string]string{"error": "incorrect_client_credentials", "error_description": "The client_id and/or client_secret passed are incorrect."})
		return
	}
	g, ok := f.codes[r.PostForm.Get("code")]
	delete(f.codes, r.PostForm.Get("code")) // codes are single use
	if !ok || g.redirectURI != r.PostForm.Get("redirect_uri") {
		// GitHub answers 200 with an error member.
		reply(map[string]string{"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."})
		return
	}
	f.serial++
	token := fmt.Sprintf("gho_token%d", f.serial)
	f.tokens[token] = g.login
	reply(map[string]string{"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"})
}

// authUser returns the user of the request's bearer token, or answers 401.
func (f *fakeGitHub) authUser(w http.ResponseWriter, r *http.Request) *fakeUser {
	f.mu.Lock()
	defer f.mu.Unlock()
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	login, known := f.tokens[token]
	if !ok || !known || r.Header.Get("X-GitHub-Api-Version") == "" || r.Header.Get("User-Agent") == "" {
		http.Error(w, `{"message":"Bad credentials"}`, http.StatusUnauthorized)
		return nil
	}
	return f.users[login]
}

func (f *fakeGitHub) user(w http.ResponseWriter, r *http.Request) {
	u := f.authUser(w, r)
	if u == nil {
		return
	}
	f.mu.Lock()
	status := f.userStatus
	f.mu.Unlock()
	if status != 0 {
		http.Error(w, `{"message":"Server Error"}`, status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"id": u.id, "login": u.login, "name": u.name, "email": u.email, "type": "User"})
}

func (f *fakeGitHub) userEmails(w http.ResponseWriter, r *http.Request) {
	u := f.authUser(w, r)
	if u == nil {
		return
	}
	if u.emailsStatus != 0 {
		http.Error(w, `{"message":"Resource not accessible by integration"}`, u.emailsStatus)
		return
	}
	type email struct {
		Email      string  `json:"email"`
		Primary    bool    `json:"primary"`
		Verified   bool    `json:"verified"`
		Visibility *string `json:"visibility"`
	}
	out := []email{}
	for _, e := range u.emails {
		out = append(out, email{Email: e.Email, Primary: e.Primary, Verified: e.Verified})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
