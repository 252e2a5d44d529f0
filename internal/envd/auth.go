package envd

import (
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"

	"github.com/capsulehq/capsule/internal/envdapi"
)

const msgUnauthorized = "unauthorized access, please provide a valid access token or method signing if supported"

// tokenExempt lists the routes reachable without X-Access-Token (spec §5.4).
// /files does its own check (header or signature) in checkFilesAuth, and
// /init in handleInit (the token is required there too once one is set).
var tokenExempt = map[string]bool{
	"GET /health": true,
	"GET /files":  true,
	"POST /files": true,
	"POST /init":  true,
}

// withAuth enforces the access token, when one is set, on every route that
// is not exempt. Failure answers 401 before anything else happens.
func (s *Server) withAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodOptions || tokenExempt[r.Method+" "+r.URL.Path] {
			next.ServeHTTP(w, r)
			return
		}
		tok := s.token()
		if tok != "" && !equalSecret(r.Header.Get("X-Access-Token"), tok) {
			writeJSONError(w, http.StatusUnauthorized, msgUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// equalSecret compares two secrets in constant time (for equal lengths; the
// length itself is not secret).
func equalSecret(got, want string) bool {
	return subtle.ConstantTimeCompare([]byte(got), []byte(want)) == 1
}

// errSignature is returned by checkFilesAuth with the exact message to send.
type authError struct{ msg string }

func (e *authError) Error() string { return e.msg }

// checkFilesAuth implements the /files rules: with a token set, a present
// X-Access-Token header must match; without the header the v1 signature in
// the query must (spec §7.6).
func (s *Server) checkFilesAuth(r *http.Request, operation string) error {
	tok := s.token()
	if tok == "" {
		return nil
	}
	if h, ok := r.Header["X-Access-Token"]; ok && len(h) > 0 {
		if !equalSecret(h[0], tok) {
			return &authError{"access token present in header but does not match"}
		}
		return nil
	}
	q := r.URL.Query()
	sig := q.Get("signature")
	if sig == "" {
		return &authError{"missing signature query parameter"}
	}
	var exp *int64
	if v := q.Get("signature_expiration"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return &authError{"invalid signature expiration"}
		}
		exp = &n
	}
	want := FileSignature(q.Get("path"), operation, q.Get("username"), tok, exp)
	if !equalSecret(sig, want) {
		return &authError{"invalid signature"}
	}
	if exp != nil && *exp < s.now().Unix() {
		return &authError{"signature is already expired"}
	}
	return nil
}

// FileSignature computes the v1 signature of a /files URL
// (envdapi.FileSignature, where clients find it).
func FileSignature(path, operation, username, token string, expiration *int64) string {
	return envdapi.FileSignature(path, operation, username, token, expiration)
}

// SignedFilesQuery returns the query string of a signed /files URL, as the
// SDK builds it (envdapi.SignedFilesQuery).
func SignedFilesQuery(path, operation, username, token string, expiration *int64) string {
	return envdapi.SignedFilesQuery(path, operation, username, token, expiration)
}

var errNoBasicUser = errors.New("no user in Authorization header")

// basicUser extracts the user name of an "Authorization: Basic" header
// (the password is ignored; E2B sends it empty).
func basicUser(h http.Header) (string, error) {
	v := h.Get("Authorization")
	if v == "" {
		return "", errNoBasicUser
	}
	scheme, rest, ok := strings.Cut(v, " ")
	if !ok || !strings.EqualFold(scheme, "Basic") {
		return "", errors.New("authorization header is not Basic")
	}
	raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(rest))
	if err != nil {
		return "", errors.New("authorization header is not valid base64")
	}
	name, _, _ := strings.Cut(string(raw), ":")
	if name == "" {
		return "", errNoBasicUser
	}
	return name, nil
}
