package api

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/service"
)

// The dashboard's session: a cookie, never a token in the page's storage.
//
// POST /v1/auth/session signs in like POST /v1/auth/login but answers the
// session token only in the HttpOnly cookie capsule_session, which the
// page's script can neither read nor leak; DELETE /v1/auth/session signs
// out: the token (cookie or Bearer) is revoked on the server
// (service.Accounts.RevokeSession) and the cookies are cleared.
//
// The cookie is SameSite=Strict: the dashboard is a single-page app on the
// API's own origin, so every request that needs the session comes from the
// dashboard's own pages, and a link followed from another site loads the
// (public) page, whose own requests then carry the cookie. Strict also keeps
// the cookie off a cross-site WebSocket handshake. It is Secure when the
// request came over HTTPS (TLS, or a trusted proxy's X-Forwarded-Proto).
//
// CSRF, for requests authenticated by the cookie (API keys and Bearer
// tokens are never sent by a browser on its own and are not concerned):
//   - a request whose Origin is not this host, or whose Sec-Fetch-Site is
//     cross-site, is refused (403), whatever its method: this covers the
//     exec WebSocket, whose handshake is a GET;
//   - an unsafe method (not GET, HEAD or OPTIONS) must carry X-CSRF-Token,
//     a value derived from the session token (csrfToken); the page reads it
//     from the cookie capsule_csrf (not HttpOnly). Being derived from the
//     HttpOnly token, it cannot be forged by a site that plants a
//     capsule_csrf cookie (a sibling subdomain can set cookies for the
//     parent domain: the sandbox domain must not be one, see DESIGN §4).
const (
	sessionCookie = "capsule_session"
	csrfCookie    = "capsule_csrf"
	csrfHeader    = "X-CSRF-Token"
)

// csrfToken is the anti-CSRF token of a session token.
func csrfToken(session string) string {
	sum := sha256.Sum256([]byte("capsule csrf v1\x00" + session))
	return hex.EncodeToString(sum[:16])
}

// viaCookie reports whether r's credential is the session cookie (no
// credential header; the cookie present).
func viaCookie(r *http.Request) bool {
	if r.Header.Get(auth.APIKeyHeader) != "" || r.Header.Get("Authorization") != "" {
		return false
	}
	c, err := r.Cookie(sessionCookie)
	return err == nil && c.Value != ""
}

var errCrossSite = &service.Error{Kind: service.ErrForbidden, Msg: "cross-site request refused"}
var errCSRF = &service.Error{Kind: service.ErrForbidden, Msg: "missing or wrong " + csrfHeader + " header (the dashboard sends the capsule_csrf cookie's value)"}

// sameOrigin reports whether r is not a cross-site request: its Origin,
// when present, names this host, and Sec-Fetch-Site, when present, is not
// cross-site or same-site (a sibling subdomain).
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "cross-site", "same-site":
		return false
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	u, err := url.Parse(o)
	return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
}

// checkCookieRequest applies the CSRF rules to a request authenticated by
// the session cookie whose value is token.
func checkCookieRequest(r *http.Request, token string) error {
	if !sameOrigin(r) {
		return errCrossSite
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return nil
	}
	got := r.Header.Get(csrfHeader)
	if got == "" || subtle.ConstantTimeCompare([]byte(got), []byte(csrfToken(token))) != 1 {
		return errCSRF
	}
	return nil
}

// isHTTPS reports whether the client reached us over HTTPS.
func (s *Server) isHTTPS(r *http.Request) bool {
	if r.TLS != nil {
		return true
	}
	peer := auth.ClientIP(&http.Request{RemoteAddr: r.RemoteAddr}, nil)
	for _, p := range s.cfg.TrustedProxies {
		if peer.IsValid() && p.Contains(peer) {
			return strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
		}
	}
	return false
}

// setSessionCookies sets the session cookie (token, until expires) and its
// CSRF cookie; an empty token clears both.
func (s *Server) setSessionCookies(w http.ResponseWriter, r *http.Request, token string, expires time.Time) {
	secure := s.isHTTPS(r)
	maxAge := int(time.Until(expires).Seconds())
	if token == "" || maxAge <= 0 {
		maxAge = -1
	}
	csrf := ""
	if token != "" {
		csrf = csrfToken(token)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: token, Path: "/", MaxAge: maxAge,
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode})
	http.SetCookie(w, &http.Cookie{Name: csrfCookie, Value: csrf, Path: "/", MaxAge: maxAge,
		Secure: secure, SameSite: http.SameSiteStrictMode})
	w.Header().Set("Cache-Control", "no-store")
}

type cookieSessionJSON struct {
	accountJSON
	ExpiresAt time.Time `json:"expires_at"`
}

// sessionRequest signs in with a password, or exchanges a session token
// (from an OAuth login's URL fragment) for the cookie.
type sessionRequest struct {
	Email    string `json:"email,omitempty"`
	Password string `json:"password,omitempty"`
	Token    string `json:"token,omitempty"`
}

// createSession: POST /v1/auth/session, the dashboard's sign-in.
func (s *Server) createSession(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) { // login CSRF: signing a victim into the attacker's account
		s.writeError(w, r, errCrossSite)
		return
	}
	var c sessionRequest
	if err := decode(r, w, &c); err != nil {
		s.writeError(w, r, err)
		return
	}
	if c.Token != "" {
		if c.Email != "" || c.Password != "" {
			s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "send email and password, or token"})
			return
		}
		s.exchangeSession(w, r, c.Token)
		return
	}
	if ok, wait := s.loginEmail.Allow(auth.EmailKey(c.Email)); !ok {
		auth.WriteTooManyRequests(w, wait)
		return
	}
	sess, err := s.cfg.Accounts.Login(r.Context(), c.Email, c.Password)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.setSessionCookies(w, r, sess.Token, sess.ExpiresAt)
	writeJSON(w, http.StatusOK, cookieSessionJSON{accountJSON: accountOf(sess.Account), ExpiresAt: sess.ExpiresAt})
}

// exchangeSession moves a valid session token into the cookie.
func (s *Server) exchangeSession(w http.ResponseWriter, r *http.Request, token string) {
	p, exp, err := s.cfg.Accounts.SessionExpiry(r.Context(), token)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	me, err := s.cfg.Accounts.Me(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := cookieSessionJSON{accountJSON: accountJSON{User: userOf(me.User)}, ExpiresAt: exp}
	for _, t := range me.Teams {
		if t.Team.ID == p.TeamID {
			out.Team = &teamJSON{ID: t.Team.ID.String(), Name: t.Team.Name, Slug: t.Team.Slug, Role: t.Role}
		}
	}
	s.setSessionCookies(w, r, token, exp)
	writeJSON(w, http.StatusOK, out)
}

// deleteSession: DELETE /v1/auth/session, sign out: the session token
// (the cookie's, else the Bearer one) is revoked, the cookies cleared.
// Without a session it only clears the cookies.
func (s *Server) deleteSession(w http.ResponseWriter, r *http.Request) {
	var token string
	if tok, ok := auth.BearerToken(r.Header); ok {
		token = tok
	} else if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		if err := checkCookieRequest(r, c.Value); err != nil {
			s.writeError(w, r, err)
			return
		}
		token = c.Value
	}
	if token != "" {
		if err := s.cfg.Accounts.RevokeSession(r.Context(), token); err != nil {
			s.writeError(w, r, err)
			return
		}
	}
	s.setSessionCookies(w, r, "", time.Time{})
	w.WriteHeader(http.StatusNoContent)
}

type authConfigJSON struct {
	// Signup is the sign-up policy: open, invite (an invitation's token
	// is required) or closed.
	Signup string `json:"signup"`
	// OAuthProviders are the configured login providers ("github").
	OAuthProviders []string `json:"oauth_providers"`
}

// authConfig: GET /v1/auth/config, what the sign-in page offers.
func (s *Server) authConfig(w http.ResponseWriter, r *http.Request) {
	names := s.oauth.Names()
	if names == nil {
		names = []string{}
	}
	writeJSON(w, http.StatusOK, authConfigJSON{Signup: string(s.cfg.Accounts.SignupPolicy()), OAuthProviders: names})
}
