package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// publicRoutes need no credentials.
var publicRoutes = map[string]bool{
	"GET /healthz": true, "GET /openapi.yaml": true, "GET /openapi.json": true,
	"GET /docs": true, "GET /docs/{file...}": true,
	"POST /v1/auth/signup": true, "POST /v1/auth/login": true,
	"GET /v1/auth/oauth/{provider}/login": true, "GET /v1/auth/oauth/{provider}/callback": true,
}

// validBodies are well-formed bodies of the sandbox routes that take one.
var validBodies = map[string]any{
	"POST /v1/sandboxes/{id}/timeout":     map[string]any{"timeout_sec": 60},
	"POST /v1/sandboxes/{id}/exec":        map[string]any{"cmd": "true"},
	"POST /v1/sandboxes/{id}/files/mkdir": map[string]any{"path": "/tmp/x"},
}

// TestEveryRouteAuthorization walks the router: every route but the
// public ones answers 401 without credentials and with a wrong API key,
// and every route of a sandbox answers 404 to another team (its API key
// and its owner's session) for a sandbox that exists — whatever its state,
// before anything else is checked or done.
func TestEveryRouteAuthorization(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	_, _, teamA := e.account(t, "owner@example.com")
	jwtB, keyB, _ := e.account(t, "other@example.com")
	tid, err := wireid.Parse(wireid.Team, teamA)
	if err != nil {
		t.Fatal(err)
	}
	row, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
		TeamID: tid, Template: "minimal", State: store.SandboxRunning, VCPUs: 1, MemoryMB: 256,
		AllowInternetAccess: true, Metadata: json.RawMessage(`{}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	sbID := wireid.Format(wireid.Sandbox, row.ID)
	sandboxRoutes := 0
	for _, route := range e.h.Routes() {
		method, pattern, _ := strings.Cut(route, " ")
		if publicRoutes[route] {
			continue
		}
		path := strings.NewReplacer("{id}", sbID, "{name}", "some-name", "{user_id}", "usr-00000000000000000000000000000000",
			"{provider}", "github", "{invitation_id}", "inv-00000000000000000000000000000000").Replace(pattern)
		// Plausible queries and bodies: the refusal must come first anyway.
		if strings.Contains(path, "/files") {
			path += "?path=/tmp/x&dir=/tmp"
		}
		body := any(map[string]any{})
		if method == "GET" || method == "DELETE" {
			body = nil
		}
		if b, ok := validBodies[route]; ok {
			body = b
		}
		t.Run(route, func(t *testing.T) {
			if c := e.do(t, method, path, "", body, nil); c != 401 {
				t.Errorf("no credentials: %d, want 401", c)
			}
			if c := e.do(t, method, path, "e2b_"+strings.Repeat("0", 40), body, nil); c != 401 {
				t.Errorf("unknown API key: %d, want 401", c)
			}
		})
		if !strings.HasPrefix(pattern, "/v1/sandboxes/{id}") {
			continue
		}
		sandboxRoutes++
		t.Run(route+" other team", func(t *testing.T) {
			// The answer for another team's sandbox is the answer for one
			// that does not exist (no existence oracle): 404 when the
			// request is well formed (a multipart upload without its
			// body is refused as malformed first, whoever asks).
			want := 404
			if route == "POST /v1/sandboxes/{id}"+"/files" {
				want = 400
			}
			missing := strings.Replace(path, sbID, strings.Repeat("f", 32), 1)
			for _, cred := range []string{keyB, jwtB} {
				c, cm := e.do(t, method, path, cred, body, nil), e.do(t, method, missing, cred, body, nil)
				if c != want || cm != c {
					t.Errorf("another team: %d, a missing sandbox: %d, want both %d", c, cm, want)
				}
			}
		})
	}
	if sandboxRoutes < 12 {
		t.Fatalf("only %d sandbox routes walked", sandboxRoutes)
	}
	// Nothing changed: the sandbox is as it was.
	after, err := e.st.Queries().GetSandboxByID(ctx, row.ID)
	if err != nil || after.State != store.SandboxRunning || !after.UpdatedAt.Equal(row.UpdatedAt) {
		t.Fatalf("the sandbox changed: %+v, %v", after, err)
	}
}
