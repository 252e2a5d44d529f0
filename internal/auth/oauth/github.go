package oauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// GitHub's public endpoints, the defaults of GitHubConfig.
const (
	GitHubAuthURL  = "https://github.com/login/oauth/authorize"
	GitHubTokenURL = "https://github.com/login/oauth/access_token"
	GitHubAPIURL   = "https://api.github.com"
)

// maxResponseBytes bounds every response body read from the provider.
const maxResponseBytes = 1 << 20

// GitHubConfig configures the GitHub provider. The URLs can point at a
// fake server in tests, or at a GitHub Enterprise Server.
type GitHubConfig struct {
	// ClientID and ClientSecret are the OAuth app's credentials.
	ClientID     string
	ClientSecret string
	// RedirectURL is the callback URL registered with the OAuth app,
	// e.g. "https://capsule.example.com/v1/auth/oauth/github/callback".
	RedirectURL string
	// Scopes requested; default "read:user" and "user:email" (the second
	// is needed to read the verified addresses).
	Scopes []string
	// AuthURL is the authorization endpoint; GitHubAuthURL when empty.
	AuthURL string
	// TokenURL is the token endpoint; GitHubTokenURL when empty.
	TokenURL string
	// APIURL is the REST API base URL; GitHubAPIURL when empty.
	APIURL string
	// HTTPClient makes the requests; a client with a 15 s timeout when
	// nil.
	HTTPClient *http.Client
}

// GitHub is the GitHub OAuth provider.
type GitHub struct {
	cfg     GitHubConfig
	authURL *url.URL
	client  *http.Client
}

// NewGitHub checks cfg and fills its defaults. ClientID, ClientSecret and
// RedirectURL are required; every URL must be absolute http(s).
func NewGitHub(cfg GitHubConfig) (*GitHub, error) {
	if cfg.ClientID == "" || cfg.ClientSecret == "" || cfg.RedirectURL == "" {
		return nil, errors.New("oauth: github needs a client ID, a client secret and a redirect URL")
	}
	if len(cfg.Scopes) == 0 {
		cfg.Scopes = []string{"read:user", "user:email"}
	}
	if cfg.AuthURL == "" {
		cfg.AuthURL = GitHubAuthURL
	}
	if cfg.TokenURL == "" {
		cfg.TokenURL = GitHubTokenURL
	}
	if cfg.APIURL == "" {
		cfg.APIURL = GitHubAPIURL
	}
	cfg.APIURL = strings.TrimRight(cfg.APIURL, "/")
	var authURL *url.URL
	for _, s := range []string{cfg.RedirectURL, cfg.AuthURL, cfg.TokenURL, cfg.APIURL} {
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("oauth: github: %q is not an absolute http(s) URL", s)
		}
		if s == cfg.AuthURL {
			authURL = u
		}
	}
	client := cfg.HTTPClient
	if client == nil {
		client = &http.Client{Timeout: 15 * time.Second}
	}
	return &GitHub{cfg: cfg, authURL: authURL, client: client}, nil
}

// AuthCodeURL returns the authorization URL for state: AuthURL with
// client_id, redirect_uri, scope and state (RFC 6749 §4.1.1;
// response_type=code is implied at GitHub and sent for other servers).
func (g *GitHub) AuthCodeURL(state string) string {
	u := *g.authURL
	q := u.Query()
	q.Set("client_id", g.cfg.ClientID)
	q.Set("redirect_uri", g.cfg.RedirectURL)
	q.Set("response_type", "code")
	q.Set("scope", strings.Join(g.cfg.Scopes, " "))
	q.Set("state", state)
	u.RawQuery = q.Encode()
	return u.String()
}

// Exchange trades code for an access token, then reads GET /user (ID,
// login, name, public e-mail) and GET /user/emails to find a verified
// address: the primary one if verified, else the public one if verified,
// else the first verified one. /user alone cannot be trusted for this: it
// carries no verification flag. With no verified address (or no
// permission to read the addresses) it fails with ErrNoVerifiedEmail, so
// the returned profile always has EmailVerified set. A refused or
// expired code is ErrInvalidCode; anything else going wrong upstream is
// ErrProvider. The access token is used only for these two calls and is
// not returned.
func (g *GitHub) Exchange(ctx context.Context, code string) (Profile, error) {
	if code == "" {
		return Profile{}, ErrInvalidCode
	}
	token, err := g.exchangeCode(ctx, code)
	if err != nil {
		return Profile{}, err
	}
	var user struct {
		ID    int64   `json:"id"`
		Login string  `json:"login"`
		Name  *string `json:"name"`
		Email *string `json:"email"`
	}
	if status, err := g.getJSON(ctx, token, "/user", &user); err != nil {
		return Profile{}, fmt.Errorf("%w: github /user: %w", ErrProvider, err)
	} else if status != http.StatusOK {
		return Profile{}, fmt.Errorf("%w: github /user answered %d", ErrProvider, status)
	}
	if user.ID <= 0 || user.Login == "" {
		return Profile{}, fmt.Errorf("%w: github /user returned no user ID", ErrProvider)
	}
	p := Profile{ProviderUserID: strconv.FormatInt(user.ID, 10), Login: user.Login}
	if user.Name != nil {
		p.Name = *user.Name
	}
	public := ""
	if user.Email != nil {
		public = *user.Email
	}

	var emails []githubEmail
	status, err := g.getJSON(ctx, token, "/user/emails?per_page=100", &emails)
	switch {
	case err != nil:
		return Profile{}, fmt.Errorf("%w: github /user/emails: %w", ErrProvider, err)
	case status == http.StatusForbidden || status == http.StatusNotFound:
		// The token lacks the user:email scope (or the app the e-mail
		// permission): no address can be trusted.
		return Profile{}, fmt.Errorf("%w: github refused /user/emails (%d)", ErrNoVerifiedEmail, status)
	case status != http.StatusOK:
		return Profile{}, fmt.Errorf("%w: github /user/emails answered %d", ErrProvider, status)
	}
	pick := chooseEmail(emails, public)
	if pick < 0 {
		return Profile{}, ErrNoVerifiedEmail
	}
	p.Email, p.EmailVerified = emails[pick].Email, true
	return p, nil
}

// exchangeCode posts the code to the token endpoint (RFC 6749 §4.1.3) and
// returns the access token. GitHub reports errors with status 200 and an
// "error" member, other servers with 400; both are handled.
func (g *GitHub) exchangeCode(ctx context.Context, code string) (string, error) {
	form := url.Values{
		"client_id":     {g.cfg.ClientID},
		"client_secret": {g.cfg.ClientSecret},
		"code":          {code},
		"redirect_uri":  {g.cfg.RedirectURL},
		"grant_type":    {"authorization_code"},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, g.cfg.TokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrProvider, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "capsule")
	resp, err := g.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%w: token request: %w", ErrProvider, err)
	}
	defer resp.Body.Close()
	var tr struct {
		AccessToken      string `json:"access_token"`
		TokenType        string `json:"token_type"`
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return "", fmt.Errorf("%w: token response: %w", ErrProvider, err)
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return "", fmt.Errorf("%w: token endpoint answered %d with no JSON", ErrProvider, resp.StatusCode)
	}
	switch {
	case tr.Error == "bad_verification_code" || tr.Error == "invalid_grant":
		return "", fmt.Errorf("%w: %s", ErrInvalidCode, tr.Error)
	case tr.Error != "":
		// incorrect_client_credentials, redirect_uri_mismatch, …: our
		// configuration, not the user.
		return "", fmt.Errorf("%w: token endpoint: %s: %s", ErrProvider, tr.Error, tr.ErrorDescription)
	case resp.StatusCode != http.StatusOK:
		return "", fmt.Errorf("%w: token endpoint answered %d", ErrProvider, resp.StatusCode)
	case tr.AccessToken == "":
		return "", fmt.Errorf("%w: token endpoint returned no access token", ErrProvider)
	case tr.TokenType != "" && !strings.EqualFold(tr.TokenType, "bearer"):
		return "", fmt.Errorf("%w: unexpected token type %q", ErrProvider, tr.TokenType)
	}
	return tr.AccessToken, nil
}

// getJSON GETs APIURL+path with the access token and decodes a 200
// response into v. It returns the status; the body of other statuses is
// discarded.
func (g *GitHub) getJSON(ctx context.Context, token, path string, v any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.cfg.APIURL+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/vnd.github+json")
	req.Header.Set("X-GitHub-Api-Version", "2022-11-28")
	req.Header.Set("User-Agent", "capsule")
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBytes))
		return resp.StatusCode, nil
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxResponseBytes)).Decode(v); err != nil {
		return resp.StatusCode, fmt.Errorf("decoding %s: %w", path, err)
	}
	return resp.StatusCode, nil
}

// githubEmail is one element of GET /user/emails.
type githubEmail struct {
	Email    string `json:"email"`
	Primary  bool   `json:"primary"`
	Verified bool   `json:"verified"`
}

// chooseEmail returns the index of the address to use: the primary one if
// it is verified, else the public one (from /user) if verified, else the
// first verified one; -1 when none is verified.
func chooseEmail(emails []githubEmail, public string) int {
	first, pub := -1, -1
	for i, e := range emails {
		if !e.Verified || e.Email == "" {
			continue
		}
		if e.Primary {
			return i
		}
		if first < 0 {
			first = i
		}
		if pub < 0 && public != "" && strings.EqualFold(e.Email, public) {
			pub = i
		}
	}
	if pub >= 0 {
		return pub
	}
	return first
}
