package controlplane

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
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

// TestListenerDispatch: the API listener serves E2B's control-plane paths
// and the native API, and refuses sandbox traffic (421, nothing
// forwarded); the sandbox listener is the proxy alone.
func TestListenerDispatch(t *testing.T) {
	px, err := proxy.New(proxy.Config{Domain: "localhost", Resolver: noSandboxes{}})
	if err != nil {
		t.Fatal(err)
	}
	// The routes exercised here answer before touching the services.
	e2b, err := e2bapi.New(e2bapi.Config{Accounts: &service.Accounts{}, Sandboxes: &service.Sandboxes{}, Domain: "localhost:8081"})
	if err != nil {
		t.Fatal(err)
	}
	native := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusTeapot) })
	api, sandbox := apiHandler(px, e2b, native, "localhost:8081"), sandboxHandler(px)
	e2bHeaders := map[string]string{"E2b-Sandbox-Id": "abc", "E2b-Sandbox-Port": "49983"}
	for _, tc := range []struct {
		name, host, path string
		headers          map[string]string
		api              int
		apiBody          string
		sandbox          int
		sandboxBody      string
	}{
		{"E2B health", "localhost:8080", "/health", nil, 200, "Health check successful", 400, "Invalid host"},
		{"E2B route without a key", "localhost:8080", "/v2/sandboxes", nil, 401, `"code":401`, 400, "Invalid host"},
		{"native API", "localhost:8080", "/v1/sandboxes", nil, http.StatusTeapot, "", 400, "Invalid host"},
		{"native health", "localhost:8080", "/healthz", nil, http.StatusTeapot, "", 400, "Invalid host"},
		{"sandbox traffic by headers", "localhost:8080", "/health", e2bHeaders, 421, "sandbox listener", 502, "The sandbox was not found"},
		{"sandbox traffic by host", "49983-abc.localhost:8080", "/sandboxes", nil, 421, "sandbox listener", 502, "The sandbox was not found"},
		{"a signed file URL", "localhost:8080", "/files?path=x&signature=v1_abc", nil, 421, "sandbox listener", 502, "The sandbox was not found"},
		{"/files without a signature", "localhost:8080", "/files?path=x", nil, http.StatusTeapot, "", 400, "Invalid host"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, l := range []struct {
				name   string
				h      http.Handler
				status int
				body   string
			}{{"API", api, tc.api, tc.apiBody}, {"sandbox", sandbox, tc.sandbox, tc.sandboxBody}} {
				req := httptest.NewRequest("GET", "http://"+tc.host+tc.path, nil)
				for k, v := range tc.headers {
					req.Header.Set(k, v)
				}
				req.Header.Set("X-Request-Id", "dispatch-1")
				rec := httptest.NewRecorder()
				l.h.ServeHTTP(rec, req)
				body, _ := io.ReadAll(rec.Body)
				if rec.Code != l.status || !strings.Contains(string(body), l.body) {
					t.Fatalf("%s listener: %d %s, want %d with %q", l.name, rec.Code, body, l.status, l.body)
				}
				// Every answer, refusals too, names the request.
				if got := rec.Header().Values("X-Request-Id"); len(got) != 1 || got[0] != "dispatch-1" {
					t.Errorf("%s listener: X-Request-Id %q, want [dispatch-1]", l.name, got)
				}
			}
		})
	}
}

// TestAdvertisedDomain: the domain answered to the E2B SDKs makes
// getHost(port) reach the sandbox listener.
func TestAdvertisedDomain(t *testing.T) {
	for _, tc := range []struct{ domain, addr, want string }{
		{"localhost", "0.0.0.0:8081", "localhost:8081"},
		{"capsule.test", "127.0.0.1:40123", "capsule.test:40123"},
		{"sandbox.example.com", "[::]:443", "sandbox.example.com"},
		{"sandbox.example.com", "10.0.0.1:80", "sandbox.example.com"},
		{"sandbox.example.com:443", "127.0.0.1:8081", "sandbox.example.com:443"},
		{"", "127.0.0.1:8081", ""},
	} {
		addr := net.TCPAddrFromAddrPort(netip.MustParseAddrPort(tc.addr))
		if got := advertisedDomain(tc.domain, addr); got != tc.want {
			t.Errorf("advertisedDomain(%q, %s) = %q, want %q", tc.domain, tc.addr, got, tc.want)
		}
	}
}
