// Package oauthtest is a local fake of GitHub's OAuth web flow and of the
// parts of its REST API the oauth package's provider uses, with GitHub's
// quirks (token errors answered with status 200), for the tests of the
// oauth package and of the API routes that use it. It does not import the
// oauth package, so that package's own tests can use it.
package oauthtest

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

// The fake's OAuth app credentials.
const (
	ClientID     = "Iv1.client"
	ClientSecret = "client-secret"
)

// Email is an element of GET /user/emails.
type Email struct {
	Email    string
	Primary  bool
	Verified bool
}

// User is an account on the fake GitHub.
type User struct {
	ID    int64
	Login string
	// Name is the display name (JSON null when nil).
	Name *string
	// PublicEmail is the public address of /user (JSON null when nil).
	PublicEmail *string
	Emails      []Email
	// EmailsStatus, when not 0, is the status /user/emails answers with
	// (403 = the token lacks the user:email scope).
	EmailsStatus int
}

// grant is an issued authorization code.
type grant struct {
	login       string
	redirectURI string
}

// GitHub is a local stand-in for github.com (/login/oauth/…) and
// api.github.com (under /api).
type GitHub struct {
	srv *httptest.Server

	mu     sync.Mutex
	users  map[string]*User
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

// NewGitHub starts a fake GitHub, closed when t ends.
func NewGitHub(t testing.TB) *GitHub {
	f := &GitHub{users: map[string]*User{}, codes: map[string]grant{}, tokens: map[string]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /login/oauth/authorize", f.authorize)
	mux.HandleFunc("POST /login/oauth/access_token", f.accessToken)
	mux.HandleFunc("GET /api/user", f.user)
	mux.HandleFunc("GET /api/user/emails", f.userEmails)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

// AuthURL, TokenURL and APIURL are the fake's endpoints.
func (f *GitHub) AuthURL() string  { return f.srv.URL + "/login/oauth/authorize" }
func (f *GitHub) TokenURL() string { return f.srv.URL + "/login/oauth/access_token" }
func (f *GitHub) APIURL() string   { return f.srv.URL + "/api" }

// Client is an HTTP client for the fake.
func (f *GitHub) Client() *http.Client { return f.srv.Client() }

// AddUser adds (or replaces) an account.
func (f *GitHub) AddUser(u *User) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.users[u.Login] = u
}

// SignIn sets who signs in at /authorize, and whether they refuse.
func (f *GitHub) SignIn(login string, deny bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.signIn, f.deny = login, deny
}

// SetUserStatus makes /user fail with status (0: work again).
func (f *GitHub) SetUserStatus(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.userStatus = status
}

// SetTokenStatus makes the token endpoint fail with status and an HTML
// body (0: work again).
func (f *GitHub) SetTokenStatus(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenStatus = status
}

// IssueCode mints an authorization code for login, as /authorize would.
func (f *GitHub) IssueCode(login, redirectURI string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.serial++
	code := fmt.Sprintf("code%d", f.serial)
	f.codes[code] = grant{login: login, redirectURI: redirectURI}
	return code
}

func (f *GitHub) authorize(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	redirect, err := url.Parse(q.Get("redirect_uri"))
	if q.Get("client_id") != ClientID || err != nil || q.Get("state") == "" || !strings.Contains(q.Get("scope"), "user:email") {
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
		back.Set("code", f.IssueCode(login, q.Get("redirect_uri")))
	}
	redirect.RawQuery = back.Encode()
	http.Redirect(w, r, redirect.String(), http.StatusFound)
}

func (f *GitHub) accessToken(w http.ResponseWriter, r *http.Request) {
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
	if r.PostForm.Get("client_id") != ClientID || r.PostForm.Get("client_secret") != ClientSecret {
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
func (f *GitHub) authUser(w http.ResponseWriter, r *http.Request) *User {
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

func (f *GitHub) user(w http.ResponseWriter, r *http.Request) {
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
	_ = json.NewEncoder(w).Encode(map[string]any{"id": u.ID, "login": u.Login, "name": u.Name, "email": u.PublicEmail, "type": "User"})
}

func (f *GitHub) userEmails(w http.ResponseWriter, r *http.Request) {
	u := f.authUser(w, r)
	if u == nil {
		return
	}
	if u.EmailsStatus != 0 {
		http.Error(w, `{"message":"Resource not accessible by integration"}`, u.EmailsStatus)
		return
	}
	type email struct {
		Email      string  `json:"email"`
		Primary    bool    `json:"primary"`
		Verified   bool    `json:"verified"`
		Visibility *string `json:"visibility"`
	}
	out := []email{}
	for _, e := range u.Emails {
		out = append(out, email{Email: e.Email, Primary: e.Primary, Verified: e.Verified})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(out)
}
