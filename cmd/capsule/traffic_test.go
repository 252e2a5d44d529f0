package main

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/e2bapi"
	"github.com/capsulehq/capsule/internal/proxy"
	"github.com/capsulehq/capsule/internal/service"
)

// noSandboxes resolves no sandbox.
type noSandboxes struct{}

func (noSandboxes) Resolve(context.Context, string) (proxy.Route, error) {
	return proxy.Route{}, proxy.ErrNotFound
}
func (noSandboxes) APIKeyTeam(context.Context, string) (string, error) {
	return "", errors.New("no keys")
}
func (noSandboxes) Touch(context.Context, string) {}
func (noSandboxes) Wake(context.Context, string) (proxy.Route, error) {
	return proxy.Route{}, proxy.ErrNotFound
}
func (noSandboxes) RunningSandboxes(context.Context) ([]string, error) { return nil, nil }
func (noSandboxes) EnvdToken(string) string                            { return "" }

// TestRootHandlerDispatch: sandbox traffic (by Host or E2B's routing
// headers) goes to the proxy first, E2B's control-plane paths to the E2B
// facade, everything else to the native API.
func TestRootHandlerDispatch(t *testing.T) {
	px, err := proxy.New(proxy.Config{Domain: "localhost", Resolver: noSandboxes{}})
	if err != nil {
		t.Fatal(err)
	}
	// The routes exercised here answer before touching the services.
	e2b, err := e2bapi.New(e2bapi.Config{Accounts: &service.Accounts{}, Sandboxes: &service.Sandboxes{}, Domain: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	native := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	h := rootHandler(px, e2b, native)
	for _, tc := range []struct {
		name, host, path string
		headers          map[string]string
		status           int
		body             string
	}{
		{"E2B health", "localhost:8080", "/health", nil, 200, "Health check successful"},
		{"E2B route without a key", "localhost:8080", "/v2/sandboxes", nil, 401, `"code":401`},
		{"native API", "localhost:8080", "/v1/sandboxes", nil, http.StatusTeapot, ""},
		{"native health", "localhost:8080", "/healthz", nil, http.StatusTeapot, ""},
		{"proxy by headers", "localhost:8080", "/health", map[string]string{"E2b-Sandbox-Id": "abc", "E2b-Sandbox-Port": "49983"},
			502, "The sandbox was not found"},
		{"proxy by host", "49983-abc.localhost:8080", "/sandboxes", nil, 502, "The sandbox was not found"},
		{"proxy: a signed file URL", "localhost:8080", "/files?path=x&signature=v1_abc", nil, 502, "The sandbox was not found"},
		{"native: /files without a signature", "localhost:8080", "/files?path=x", nil, http.StatusTeapot, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "http://"+tc.host+tc.path, nil)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			body, _ := io.ReadAll(rec.Body)
			if rec.Code != tc.status || !strings.Contains(string(body), tc.body) {
				t.Fatalf("%d %s, want %d with %q", rec.Code, body, tc.status, tc.body)
			}
		})
	}
}
