package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// cookieClient is a browser's view of the dashboard's session: the cookies
// it holds and the Origin it sends.
type cookieClient struct {
	e       *apiEnv
	cookies map[string]*http.Cookie
}

// send sends a request with the client's cookies; hdr adds headers. It
// returns the status and the body, and keeps the cookies the answer sets.
func (c *cookieClient) send(t *testing.T, method, path string, hdr map[string]string, body any) (int, []byte, http.Header) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		buf, _ := json.Marshal(body)
		rd = bytes.NewReader(buf)
	}
	req, _ := http.NewRequest(method, c.e.srv.URL+path, rd)
	for _, ck := range c.cookies {
		req.AddCookie(ck)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	for _, ck := range resp.Cookies() {
		if ck.MaxAge < 0 {
			delete(c.cookies, ck.Name)
		} else {
			c.cookies[ck.Name] = ck
		}
	}
	return resp.StatusCode, data, resp.Header
}

func (c *cookieClient) origin() string { return c.e.srv.URL }

func (c *cookieClient) csrf() map[string]string {
	h := map[string]string{"Origin": c.origin()}
	if ck := c.cookies[csrfCookie]; ck != nil {
		h[csrfHeader] = ck.Value
	}
	return h
}

// TestDashboardCookieSession: the dashboard's sign-in sets an HttpOnly,
// SameSite=Strict cookie and no token in the body; the cookie works on
// safe methods; unsafe ones need the CSRF header derived from the session;
// cross-site requests (Origin, Sec-Fetch-Site) are refused, the exec
// WebSocket's handshake included; logout revokes the token on the server,
// so that a copy of the cookie no longer works; a team switch replaces the
// cookie and revokes the old token; a Bearer token can be revoked too.
func TestDashboardCookieSession(t *testing.T) {
	e := newAPI(t, "", "")
	bearer, _, _ := e.account(t, "cookie@example.com")
	c := &cookieClient{e: e, cookies: map[string]*http.Cookie{}}
	login := map[string]string{"email": "cookie@example.com", "password": "correct horse battery"}

	t.Run("cross-site sign-in is refused", func(t *testing.T) {
		code, _, _ := c.send(t, "POST", "/v1/auth/session", map[string]string{"Origin": "https://evil.example"}, login)
		if code != 403 || len(c.cookies) != 0 {
			t.Fatalf("cross-site sign-in: %d, cookies %v; want 403 and none", code, c.cookies)
		}
	})
	t.Run("sign in sets the cookies, not a token", func(t *testing.T) {
		code, body, _ := c.send(t, "POST", "/v1/auth/session", map[string]string{"Origin": c.origin()}, login)
		if code != 200 {
			t.Fatalf("sign-in: %d %s", code, body)
		}
		if bytes.Contains(body, []byte(`"token"`)) {
			t.Fatalf("the sign-in answer carries a token: %s", body)
		}
		s, x := c.cookies[sessionCookie], c.cookies[csrfCookie]
		if s == nil || !s.HttpOnly || s.SameSite != http.SameSiteStrictMode || s.Path != "/" || s.Secure {
			t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict, Path=/, not Secure over plain http", s)
		}
		if x == nil || x.HttpOnly || x.Value != csrfToken(s.Value) {
			t.Fatalf("csrf cookie %+v: want readable, derived from the session", x)
		}
	})
	t.Run("safe method with the cookie", func(t *testing.T) {
		if code, body, _ := c.send(t, "GET", "/v1/me", nil, nil); code != 200 {
			t.Fatalf("GET /v1/me with the cookie: %d %s", code, body)
		}
	})
	for _, tc := range []struct {
		name string
		hdr  map[string]string
		want int
	}{
		{"unsafe method without the CSRF header", map[string]string{"Origin": c.origin()}, 403},
		{"unsafe method with a planted CSRF value", map[string]string{"Origin": c.origin(), csrfHeader: csrfToken("attacker's")}, 403},
		{"unsafe method from another origin", map[string]string{"Origin": "https://evil.example"}, 403},
		{"unsafe method from a sibling site", map[string]string{"Sec-Fetch-Site": "same-site"}, 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := map[string]string{}
			for k, v := range tc.hdr {
				h[k] = v
			}
			if _, ok := h[csrfHeader]; !ok && tc.name == "unsafe method from another origin" {
				h[csrfHeader] = c.cookies[csrfCookie].Value // even with the right token
			}
			code, body, _ := c.send(t, "POST", "/v1/api-keys", h, map[string]string{"name": "csrf"})
			if code != tc.want {
				t.Fatalf("POST /v1/api-keys: %d %s, want %d", code, body, tc.want)
			}
		})
	}
	t.Run("no key was created by the refused requests", func(t *testing.T) {
		_, body, _ := c.send(t, "GET", "/v1/api-keys", nil, nil)
		if strings.Contains(string(body), "csrf") {
			t.Fatalf("a refused request created a key: %s", body)
		}
	})
	t.Run("unsafe method with the CSRF header", func(t *testing.T) {
		if code, body, _ := c.send(t, "POST", "/v1/api-keys", c.csrf(), map[string]string{"name": "dash"}); code != 201 {
			t.Fatalf("POST /v1/api-keys with the CSRF header: %d %s", code, body)
		}
	})
	t.Run("exec WebSocket from another origin is refused", func(t *testing.T) {
		url := "ws" + strings.TrimPrefix(e.srv.URL, "http") + "/v1/sandboxes/0123456789abcdef0123456789abcdef/exec/stream"
		hdr := http.Header{"Cookie": {sessionCookie + "=" + c.cookies[sessionCookie].Value}, "Origin": {"https://evil.example"}}
		_, resp, err := websocket.Dial(context.Background(), url, &websocket.DialOptions{HTTPHeader: hdr})
		if err == nil || resp == nil || resp.StatusCode != 403 {
			t.Fatalf("cross-origin exec WebSocket: %v %v; want 403", resp, err)
		}
		hdr.Set("Origin", c.origin())
		_, resp, err = websocket.Dial(context.Background(), url, &websocket.DialOptions{HTTPHeader: hdr})
		if err == nil || resp == nil || resp.StatusCode != 404 { // authenticated: the sandbox does not exist
			t.Fatalf("same-origin exec WebSocket of a missing sandbox: %v %v; want 404", resp, err)
		}
	})
	t.Run("team switch replaces the cookie and revokes the old one", func(t *testing.T) {
		var me meJSON
		_, body, _ := c.send(t, "GET", "/v1/me", nil, nil)
		if err := json.Unmarshal(body, &me); err != nil || len(me.Teams) == 0 {
			t.Fatalf("GET /v1/me: %s", body)
		}
		old := *c.cookies[sessionCookie]
		code, body, _ := c.send(t, "POST", "/v1/auth/switch-team", c.csrf(), map[string]string{"team_id": me.Teams[0].ID})
		if code != 200 || bytes.Contains(body, []byte(`"token"`)) || c.cookies[sessionCookie].Value == old.Value {
			t.Fatalf("switch-team with the cookie: %d %s (want a new cookie and no token in the body)", code, body)
		}
		stale := &cookieClient{e: e, cookies: map[string]*http.Cookie{sessionCookie: &old}}
		if code, _, _ := stale.send(t, "GET", "/v1/me", nil, nil); code != 401 {
			t.Fatalf("the replaced cookie still works: %d", code)
		}
	})
	t.Run("logout without the CSRF header is refused", func(t *testing.T) {
		if code, _, _ := c.send(t, "DELETE", "/v1/auth/session", map[string]string{"Origin": c.origin()}, nil); code != 403 {
			t.Fatalf("logout without CSRF: %d", code)
		}
		if code, _, _ := c.send(t, "GET", "/v1/me", nil, nil); code != 200 {
			t.Fatalf("the refused logout signed out: %d", code)
		}
	})
	t.Run("logout revokes the session on the server", func(t *testing.T) {
		copied := *c.cookies[sessionCookie]
		if code, _, _ := c.send(t, "DELETE", "/v1/auth/session", c.csrf(), nil); code != 204 {
			t.Fatalf("logout: %d", code)
		}
		if c.cookies[sessionCookie] != nil {
			t.Fatalf("logout did not clear the cookie")
		}
		thief := &cookieClient{e: e, cookies: map[string]*http.Cookie{sessionCookie: &copied}}
		if code, _, _ := thief.send(t, "GET", "/v1/me", nil, nil); code != 401 {
			t.Fatalf("a copy of the signed-out cookie still works: %d", code)
		}
	})
	t.Run("a session token moves into the cookie (OAuth landing)", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			body map[string]string
			want int
		}{
			{"garbage token", map[string]string{"token": "not-a-token"}, 401},
			{"token and password", map[string]string{"token": bearer, "email": "cookie@example.com", "password": "x"}, 400},
			{"valid token", map[string]string{"token": bearer}, 200},
		} {
			t.Run(tc.name, func(t *testing.T) {
				x := &cookieClient{e: e, cookies: map[string]*http.Cookie{}}
				code, body, _ := x.send(t, "POST", "/v1/auth/session", map[string]string{"Origin": x.origin()}, tc.body)
				if code != tc.want {
					t.Fatalf("exchange: %d %s, want %d", code, body, tc.want)
				}
				if tc.want != 200 {
					if len(x.cookies) != 0 {
						t.Fatalf("a refused exchange set cookies: %v", x.cookies)
					}
					return
				}
				if bytes.Contains(body, []byte(`"token"`)) || x.cookies[sessionCookie] == nil {
					t.Fatalf("exchange: %s, cookies %v", body, x.cookies)
				}
				if code, _, _ := x.send(t, "GET", "/v1/me", nil, nil); code != 200 {
					t.Fatalf("the exchanged cookie: %d", code)
				}
			})
		}
	})
	t.Run("a Bearer token is revoked by logout too", func(t *testing.T) {
		if code := e.do(t, "GET", "/v1/me", bearer, nil, nil); code != 200 {
			t.Fatalf("bearer before logout: %d", code)
		}
		if code := e.do(t, "DELETE", "/v1/auth/session", bearer, nil, nil); code != 204 {
			t.Fatalf("bearer logout: %d", code)
		}
		for _, path := range []string{"/v1/me", "/v1/sandboxes"} {
			if code := e.do(t, "GET", path, bearer, nil, nil); code != 401 {
				t.Fatalf("GET %s with the revoked bearer token: %d, want 401", path, code)
			}
		}
	})
}
