package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/auth/oauth"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

// OAuth login and linking through the providers of Config.OAuth.
//
//	GET  /v1/auth/oauth/{provider}/login?redirect=/path  → 302 to the provider
//	POST /v1/auth/oauth/{provider}/link?redirect=/path   → {"url": …} (session only)
//	GET  /v1/auth/oauth/{provider}/callback?code&state  → 302 to the redirect
//	DELETE /v1/me/oauth/{provider}                      → 204 (session only; teams.go's unlinkOAuth:
//	     404 when not linked, 409 when the user has no password)
//
// The state cookie (oauth.StateManager: signed, single use, 10 minutes)
// carries, under its MAC, where to go afterwards and, for a linking flow,
// the user whose session started it: a link can only be completed in the
// browser that the signed-in user started it from, and only for that
// user. Linking starts with a POST carrying the bearer token (no cookie
// authenticates it, so another site cannot start it for the user).
//
// Outcomes. Success: 302 to the redirect (a front-end path of the
// allow-list frontendPaths, "/" by default; never an API route, a file URL
// or a path with a query string) with the session in the URL fragment, never in the query (the
// fragment is not sent to servers, nor in Referer):
// "#token=…&expires_at=<RFC 3339>" (and "&linked=<provider>" after a
// link). An unknown provider is a 404, an invalid redirect a 400, and a
// state that does not verify (missing, forged, expired, replayed) a JSON
// 400: there is no trustworthy redirect to send the browser to. Any later
// failure is a 302 to the redirect with "#error=<code>&error_description=
// <message>", code one of access_denied, invalid_request, invalid_code,
// unverified_email, provider_error, unauthorized, forbidden, conflict,
// server_error.

// oauthFlow is the data bound to a login's state.
type oauthFlow struct {
	// Redirect is the validated relative path to land on.
	Redirect string `json:"r"`
	// Link is the wire ID of the user linking the identity ("" for a
	// login).
	Link string `json:"l,omitempty"`
}

const maxRedirectLen = 512

// frontendPaths are where a login may land (the session token follows in
// the URL fragment): "/", and these paths and those under them. Nothing
// else of this origin — an API route, a file URL, a path with a query
// string — may receive a fresh session.
var frontendPaths = []string{"/dashboard", "/settings", "/login"}

var errBadRedirect = &service.Error{Kind: service.ErrInvalid, Msg: "redirect: a front-end path: / or " + strings.Join(frontendPaths, ", ") + " and paths under them (letters, digits, - _ . ~ only; no query string or fragment)"}

// frontendSegment is a path segment of a front-end path.
var frontendSegment = regexp.MustCompile(`^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$`)

// safeRedirect validates a post-login redirect against the allow-list of
// front-end paths ("/" when empty): "/" itself, or one of frontendPaths
// optionally followed by more segments of letters, digits and - _ . ~
// (no "." or ".." segment, no query string, fragment, scheme or host).
func safeRedirect(s string) (string, error) {
	if s == "" || s == "/" {
		return "/", nil
	}
	if len(s) > maxRedirectLen {
		return "", errBadRedirect
	}
	for _, p := range frontendPaths {
		rest, ok := strings.CutPrefix(s, p)
		if !ok || (rest != "" && rest[0] != '/') {
			continue
		}
		if rest == "" {
			return s, nil
		}
		segs := strings.Split(rest[1:], "/")
		for i, seg := range segs {
			if seg == "" && i == len(segs)-1 {
				continue // a trailing slash
			}
			if !frontendSegment.MatchString(seg) || seg == "." || seg == ".." {
				return "", errBadRedirect
			}
		}
		return s, nil
	}
	return "", errBadRedirect
}

// oauthProvider resolves the path's provider, answering 404 when unknown.
func (s *Server) oauthProvider(w http.ResponseWriter, r *http.Request) (string, oauth.Provider, bool) {
	name := r.PathValue("provider")
	p, err := s.oauth.Get(name)
	if err != nil {
		writeProblem(w, http.StatusNotFound, "unknown OAuth provider")
		return "", nil, false
	}
	return name, p, true
}

// oauthStart sets the state cookie bound to flow and returns the
// provider's authorization URL.
func (s *Server) oauthStart(w http.ResponseWriter, name string, p oauth.Provider, flow oauthFlow) (string, error) {
	data, err := json.Marshal(flow)
	if err != nil {
		return "", err
	}
	state, err := s.cfg.OAuthStates.SetWith(w, name, data)
	if err != nil {
		return "", err
	}
	return p.AuthCodeURL(state), nil
}

func (s *Server) oauthLogin(w http.ResponseWriter, r *http.Request) {
	name, p, ok := s.oauthProvider(w, r)
	if !ok {
		return
	}
	redirect, err := safeRedirect(r.URL.Query().Get("redirect"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	to, err := s.oauthStart(w, name, p, oauthFlow{Redirect: redirect})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	found(w, to)
}

// oauthLink starts linking the provider to the session's user: it sets
// the state cookie (bound to the user) and answers the URL to send the
// browser to.
func (s *Server) oauthLink(w http.ResponseWriter, r *http.Request, pr service.Principal) {
	name, p, ok := s.oauthProvider(w, r)
	if !ok {
		return
	}
	redirect, err := safeRedirect(r.URL.Query().Get("redirect"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	to, err := s.oauthStart(w, name, p, oauthFlow{Redirect: redirect, Link: pr.UserID.String()})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, map[string]string{"url": to})
}

var errOAuthState = &service.Error{Kind: service.ErrInvalid,
	Msg: "the login could not be verified (expired, already used, or started in another browser): start it again"}

func (s *Server) oauthCallback(w http.ResponseWriter, r *http.Request) {
	name, p, ok := s.oauthProvider(w, r)
	if !ok {
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Referrer-Policy", "no-referrer")
	ctx := r.Context()
	// The state is checked (and consumed) whatever the callback says.
	code, _, perr := oauth.ParseCallback(r)
	data, err := s.cfg.OAuthStates.VerifyWith(w, r, name)
	if err != nil {
		s.log.InfoContext(ctx, "oauth callback refused", "provider", name, "err", err)
		s.writeError(w, r, errOAuthState)
		return
	}
	var flow oauthFlow
	if err := json.Unmarshal(data, &flow); err != nil {
		s.writeError(w, r, errOAuthState)
		return
	}
	if flow.Redirect, err = safeRedirect(flow.Redirect); err != nil {
		flow.Redirect = "/"
	}
	fail := func(code, msg string) {
		frag := url.Values{"error": {code}, "error_description": {msg}}
		found(w, flow.Redirect+"#"+frag.Encode())
	}
	if perr != nil {
		if errors.Is(perr, oauth.ErrAccessDenied) {
			fail("access_denied", "the authorization was declined")
		} else {
			fail("invalid_request", "the provider sent no authorization code")
		}
		return
	}
	prof, err := p.Exchange(ctx, code)
	switch {
	case errors.Is(err, oauth.ErrInvalidCode):
		fail("invalid_code", "the authorization code is invalid or expired: start again")
		return
	case errors.Is(err, oauth.ErrNoVerifiedEmail):
		fail("unverified_email", "your account at the provider has no verified e-mail address (or does not let Capsule read it)")
		return
	case err != nil:
		s.log.WarnContext(ctx, "oauth exchange", "provider", name, "err", err)
		fail("provider_error", "the provider could not be reached or answered wrongly: try again later")
		return
	}
	var link service.UserID
	if flow.Link != "" {
		if link, err = wireid.ParseUserID(flow.Link); err != nil {
			fail("invalid_request", "invalid linking request")
			return
		}
	}
	res, err := s.cfg.Accounts.OAuthLogin(ctx, name, prof, link)
	if err != nil {
		msg, public := service.PublicMessage(err)
		code := "server_error"
		switch st := StatusOf(err); {
		case !public || st >= 500:
			s.log.ErrorContext(ctx, "oauth login", "provider", name, "err", err)
			msg = "internal error"
		case st == http.StatusBadRequest:
			code = "invalid_request"
		case st == http.StatusUnauthorized:
			code = "unauthorized"
		case st == http.StatusForbidden:
			code = "forbidden"
		case st == http.StatusConflict:
			code = "conflict"
		}
		fail(code, msg)
		return
	}
	frag := url.Values{"token": {res.Session.Token}, "expires_at": {res.Session.ExpiresAt.UTC().Format(time.RFC3339)}}
	if !link.IsZero() {
		frag.Set("linked", name)
	}
	found(w, flow.Redirect+"#"+frag.Encode())
}

// found answers 302 to loc as is (http.Redirect would clean the path,
// fragment included).
func found(w http.ResponseWriter, loc string) {
	w.Header().Set("Location", loc)
	w.WriteHeader(http.StatusFound)
}
