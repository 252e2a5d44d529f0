package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/service/servicetest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

var testSecret = servicetest.Secret

type apiEnv struct {
	st  *store.Store
	h   *Server
	srv *httptest.Server
	// header is the last answer's (do).
	header http.Header
}

// newAPI serves the API over a fresh database. agentURL/token name the
// host agent ("" : a closed port, for tests that never reach it).
func newAPI(t *testing.T, agentURL, agentToken string) *apiEnv {
	t.Helper()
	return newAPIWith(t, agentURL, agentToken, nil)
}

// newAPIWith is newAPI with edit applied to the API's configuration.
func newAPIWith(t *testing.T, agentURL, agentToken string, edit func(*Config)) *apiEnv {
	t.Helper()
	se := servicetest.New(t, agentURL, agentToken)
	st, acc, sbx := se.Store, se.Accounts, se.Sandboxes
	cfg := Config{Accounts: acc, Sandboxes: sbx, Audit: se.Audit, Store: st, Hosts: se.Hosts,
		LoginEmailLimit: auth.RateLimit{Burst: 3, Interval: time.Hour}, SignupLimit: auth.RateLimit{Burst: 100, Interval: time.Hour}}
	if edit != nil {
		edit(&cfg)
	}
	h, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &apiEnv{st: st, h: h, srv: srv}
}

type creds map[string]string

// do sends a request; auth is an API key (e2b_…), a JWT, or "".
func (e *apiEnv) do(t *testing.T, method, path, authz string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		buf, _ := json.Marshal(b)
		rd = bytes.NewReader(buf)
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, rd)
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	switch {
	case strings.HasPrefix(authz, auth.APIKeyPrefix):
		req.Header.Set("X-API-Key", authz)
	case authz != "":
		req.Header.Set("Authorization", "Bearer "+authz)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	e.header = resp.Header
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 400 {
		var eb errorBody
		if err := json.Unmarshal(data, &eb); err != nil || eb.Code != resp.StatusCode || eb.Message == "" {
			t.Fatalf("%s %s: %d with a body not in the error shape: %s", method, path, resp.StatusCode, data)
		}
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, data)
		}
	}
	return resp.StatusCode
}

// account signs up and logs in; it returns the session token and an API key.
func (e *apiEnv) account(t *testing.T, email string) (jwt, key, teamID string) {
	t.Helper()
	var a accountJSON
	if c := e.do(t, "POST", "/v1/auth/signup", "", creds{"email": email, "password": "correct horse battery"}, &a); c != 201 {
		t.Fatalf("signup: %d", c)
	}
	var s sessionJSON
	if c := e.do(t, "POST", "/v1/auth/login", "", creds{"email": email, "password": "correct horse battery"}, &s); c != 200 || s.Token == "" {
		t.Fatalf("login: %d %+v", c, s)
	}
	var k apiKeyJSON
	if c := e.do(t, "POST", "/v1/api-keys", s.Token, map[string]string{"name": "test"}, &k); c != 201 || k.Key == "" {
		t.Fatalf("create key: %d %+v", c, k)
	}
	return s.Token, k.Key, a.Team.ID
}

func TestAccountsAndKeys(t *testing.T) {
	e := newAPI(t, "", "")
	if c := e.do(t, "GET", "/healthz", "", nil, nil); c != 200 {
		t.Fatalf("healthz: %d", c)
	}
	jwt, key, team := e.account(t, "ada@example.com")
	if !strings.HasPrefix(team, wireid.Team) {
		t.Fatalf("team ID %q", team)
	}
	var list struct {
		APIKeys []apiKeyJSON `json:"api_keys"`
	}
	if c := e.do(t, "GET", "/v1/api-keys", key, nil, &list); c != 200 || len(list.APIKeys) != 1 || list.APIKeys[0].Key != "" {
		t.Fatalf("list keys: %d %+v", c, list)
	}
	id := list.APIKeys[0].ID
	if !strings.HasPrefix(id, wireid.APIKey) {
		t.Fatalf("key ID %q", id)
	}
	// Another team cannot revoke it; its owner can, and then it is dead.
	jwt2, _, _ := e.account(t, "bob@example.com")
	if c := e.do(t, "DELETE", "/v1/api-keys/"+id, jwt2, nil, nil); c != 404 {
		t.Fatalf("revoke by another team: %d", c)
	}
	if c := e.do(t, "DELETE", "/v1/api-keys/"+id, jwt, nil, nil); c != 204 {
		t.Fatalf("revoke: %d", c)
	}
	if c := e.do(t, "GET", "/v1/api-keys", key, nil, nil); c != 401 {
		t.Fatalf("revoked key: %d", c)
	}

	for _, tc := range []struct {
		name         string
		method, path string
		authz        string
		body         any
		want         int
	}{
		{"duplicate signup", "POST", "/v1/auth/signup", "", creds{"email": "ADA@example.com", "password": "correct horse battery"}, 409},
		{"signup, bad JSON", "POST", "/v1/auth/signup", "", "{", 400},
		{"signup, unknown field", "POST", "/v1/auth/signup", "", `{"email":"x@example.com","password":"correct horse battery","admin":true}`, 400},
		{"signup, weak password", "POST", "/v1/auth/signup", "", creds{"email": "c@example.com", "password": "x"}, 400},
		{"login, wrong password", "POST", "/v1/auth/login", "", creds{"email": "ada@example.com", "password": "nope nope nope"}, 401},
		{"keys, no auth", "GET", "/v1/api-keys", "", nil, 401},
		{"keys, malformed key", "GET", "/v1/api-keys", "e2b_xyz", nil, 401},
		{"keys, bad JWT", "GET", "/v1/api-keys", "a.b.c", nil, 401},
		{"create key, no name", "POST", "/v1/api-keys", jwt, map[string]string{"name": ""}, 400},
		{"revoke, malformed ID", "DELETE", "/v1/api-keys/nope", jwt, nil, 404},
		{"unknown route", "GET", "/v1/nope", jwt, nil, 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := e.do(t, tc.method, tc.path, tc.authz, tc.body, nil); c != tc.want {
				t.Fatalf("%d, want %d", c, tc.want)
			}
		})
	}
	// Login per e-mail address is rate limited (burst 3 here; one wrong
	// attempt and one login so far).
	codes := []int{}
	for range 3 {
		codes = append(codes, e.do(t, "POST", "/v1/auth/login", "", creds{"email": "ada@example.com", "password": "nope nope nope"}, nil))
	}
	if codes[len(codes)-1] != 429 {
		t.Fatalf("login attempts: %v, want the last refused with 429", codes)
	}
}

func TestSandboxAuthorization(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	_, keyA, teamA := e.account(t, "a@example.com")
	_, keyB, _ := e.account(t, "b@example.com")
	tid, err := wireid.Parse(wireid.Team, teamA)
	if err != nil {
		t.Fatal(err)
	}
	// A paused sandbox of team A, straight into the database.
	row, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
		TeamID: tid, Template: "base", State: store.SandboxPaused, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{"app":"x"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	id := service.ID(row.ID)
	var got sandboxJSON
	if c := e.do(t, "GET", "/v1/sandboxes/"+id, keyA, nil, &got); c != 200 || got.ID != id || got.State != "paused" || got.Metadata["app"] != "x" {
		t.Fatalf("get: %d %+v", c, got)
	}
	var page struct {
		Sandboxes  []sandboxJSON `json:"sandboxes"`
		NextCursor string        `json:"next_cursor"`
	}
	if c := e.do(t, "GET", "/v1/sandboxes?state=paused,running&metadata=app=x", keyA, nil, &page); c != 200 || len(page.Sandboxes) != 1 || page.Sandboxes[0].EnvdAccessToken != "" {
		t.Fatalf("list: %d %+v", c, page)
	}
	if c := e.do(t, "GET", "/v1/sandboxes", keyB, nil, &page); c != 200 || len(page.Sandboxes) != 0 {
		t.Fatalf("another team's list: %d %+v", c, page)
	}
	for _, tc := range []struct {
		name         string
		method, path string
		authz        string
		body         any
		want         int
	}{
		{"no auth, list", "GET", "/v1/sandboxes", "", nil, 401},
		{"no auth, create", "POST", "/v1/sandboxes", "", map[string]any{}, 401},
		{"no auth, get", "GET", "/v1/sandboxes/" + id, "", nil, 401},
		{"no auth, destroy", "DELETE", "/v1/sandboxes/" + id, "", nil, 401},
		{"other team, get", "GET", "/v1/sandboxes/" + id, keyB, nil, 404},
		{"other team, destroy", "DELETE", "/v1/sandboxes/" + id, keyB, nil, 404},
		{"other team, pause", "POST", "/v1/sandboxes/" + id + "/pause", keyB, nil, 404},
		{"other team, resume", "POST", "/v1/sandboxes/" + id + "/resume", keyB, nil, 404},
		{"malformed ID", "GET", "/v1/sandboxes/sb-123", keyA, nil, 404},
		{"bad template", "POST", "/v1/sandboxes", keyA, map[string]any{"template": "../x"}, 400},
		{"bad vcpus type", "POST", "/v1/sandboxes", keyA, `{"vcpus":"two"}`, 400},
		{"unknown field", "POST", "/v1/sandboxes", keyA, `{"cpus":2}`, 400},
		{"pause without memory, no auto-pause", "POST", "/v1/sandboxes", keyA, map[string]any{"auto_pause": false, "auto_pause_memory": false}, 400},
		{"pause without memory, auto-resume", "POST", "/v1/sandboxes", keyA, map[string]any{"auto_pause_memory": false, "auto_resume": true}, 400},
		{"over quota", "POST", "/v1/sandboxes", keyA, map[string]any{"vcpus": 64}, 429},
		{"bad state filter", "GET", "/v1/sandboxes?state=zombie", keyA, nil, 400},
		{"bad limit", "GET", "/v1/sandboxes?limit=-1", keyA, nil, 400},
		{"bad cursor", "GET", "/v1/sandboxes?cursor=%21", keyA, nil, 400},
		{"pause a paused sandbox", "POST", "/v1/sandboxes/" + id + "/pause", keyA, nil, 409},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := e.do(t, tc.method, tc.path, tc.authz, tc.body, nil); c != tc.want {
				t.Fatalf("%d, want %d", c, tc.want)
			}
			// Nothing changed.
			after, err := e.st.Queries().GetSandboxByID(ctx, row.ID)
			if err != nil || after.State != store.SandboxPaused || !after.UpdatedAt.Equal(row.UpdatedAt) {
				t.Fatalf("sandbox changed: %+v, %v", after, err)
			}
			if n, _ := e.st.Queries().CountTeamSandboxUsage(ctx, db.CountTeamSandboxUsageParams{TeamID: tid, States: []string{"starting", "running", "error", "stopped"}}); n.Sandboxes != 0 {
				t.Fatalf("a refused request left %d sandboxes", n.Sandboxes)
			}
		})
	}
}

// TestAgentDownIsAClassifiedError: an agent that cannot be reached is a 503
// with a plain message; nothing of the dial error reaches the client.
func TestAgentDownIsAClassifiedError(t *testing.T) {
	e := newAPI(t, "", "")
	_, key, _ := e.account(t, "d@example.com")
	req, _ := http.NewRequest("POST", e.srv.URL+"/v1/sandboxes", strings.NewReader(`{}`))
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 503 || strings.Contains(string(body), "127.0.0.1") || strings.Contains(string(body), "connect") {
		t.Fatalf("%d %s", resp.StatusCode, body)
	}
}

func TestStatusMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{&service.Error{Kind: service.ErrInvalid}, 400},
		{&service.Error{Kind: service.ErrUnauthorized}, 401},
		{&service.Error{Kind: service.ErrForbidden}, 403},
		{&service.Error{Kind: service.ErrNotFound}, 404},
		{&service.Error{Kind: service.ErrConflict}, 409},
		{&service.Error{Kind: service.ErrQuota}, 429},
		{&service.Error{Kind: service.ErrUnavailable}, 503},
		{&service.Error{Kind: service.ErrInsufficientStorage}, 507},
		{io.ErrUnexpectedEOF, 500},
	} {
		if got := StatusOf(tc.err); got != tc.want {
			t.Errorf("StatusOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
	// An internal error is answered generically.
	s := &Server{log: discardLogger()}
	rec := httptest.NewRecorder()
	s.writeError(rec, httptest.NewRequest("GET", "/x", nil), io.ErrUnexpectedEOF)
	var eb errorBody
	if err := json.Unmarshal(rec.Body.Bytes(), &eb); err != nil || rec.Code != 500 || eb.Code != 500 || strings.Contains(eb.Message, "EOF") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
}
