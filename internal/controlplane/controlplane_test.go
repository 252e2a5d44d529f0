package controlplane

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

var testSecret = []byte("0123456789abcdef0123456789abcdef-controlplane")

func testConfig(t *testing.T) Config {
	t.Helper()
	hasher, err := auth.NewPasswordHasher(auth.Argon2Params{Memory: 8192, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}, 2)
	if err != nil {
		t.Fatal(err)
	}
	return Config{
		DSN: pgtest.StartForTest(t), Secret: testSecret, Hasher: hasher, Signup: service.SignupOpen,
		// An agent that does not answer: these tests stop before any
		// agent call.
		Agents:      map[string]agentclient.Endpoint{service.LocalHost: {URL: "http://127.0.0.1:1", Token: "agent-token"}},
		OAuth:       OAuthConfig{PublicURL: "http://localhost:8080"},
		Domain:      "localhost",
		SandboxAddr: net.TCPAddrFromAddrPort(netip.MustParseAddrPort("127.0.0.1:8081")),
	}
}

// TestNewRefusesIncompleteConfig: without the sandbox listener's address
// or a long enough secret there is no control plane (agents are optional:
// registered hosts need no configuration).
func TestNewRefusesIncompleteConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*Config)
	}{
		{"no sandbox listener", func(c *Config) { c.SandboxAddr = nil }},
		{"short secret", func(c *Config) { c.Secret = []byte("short") }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(t)
			tc.edit(&cfg)
			if cp, err := New(context.Background(), cfg); err == nil {
				cp.Close()
				t.Fatal("New accepted the configuration")
			}
		})
	}
}

// TestNewWiresOneServer: the agent's address is registered once, in the
// pool the services and the proxy share; both listeners' handlers are
// the composed server (API with the E2B facade and the 421 refusal of
// sandbox traffic; the proxy alone); the E2B facade advertises the
// sandbox listener's port; Start fails when the agent cannot be reached
// for reconciliation, and Close after it is clean.
func TestNewWiresOneServer(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t)
	cp, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	if ep, err := cp.Agents.Endpoint(ctx, service.LocalHost); err != nil || ep != cfg.Agents[service.LocalHost] {
		t.Fatalf("pool endpoint = %+v, %v; want %+v", ep, err, cfg.Agents[service.LocalHost])
	}
	// A host created through the hosts service resolves by its wire ID to
	// its declared address, with the internal CA's mutual TLS.
	admin, err := cp.Accounts.Signup(ctx, service.Signup{Email: "root@example.com", Password: "correct horse battery", IsAdmin: true})
	if err != nil {
		t.Fatal(err)
	}
	h, err := cp.Hosts.Create(ctx, admin.Principal(),
		service.CreateHost{Name: "host-a", Type: service.HostRegular, Address: "192.0.2.7:7443"})
	if err != nil {
		t.Fatal(err)
	}
	ep, err := cp.Agents.Endpoint(ctx, wireid.Format(wireid.Host, h.ID))
	if err != nil || ep.URL != "https://192.0.2.7:7443" || ep.TLS == nil || ep.TLS.RootCAs == nil || ep.TLS.GetClientCertificate == nil {
		t.Fatalf("a registered host's endpoint = %+v, %v", ep, err)
	}
	if _, err := cp.Agents.Endpoint(ctx, "host-"+strings.Repeat("0", 32)); !errors.Is(err, agentclient.ErrUnknownHost) {
		t.Fatalf("an unknown host's endpoint: %v", err)
	}
	if cp.SandboxDomain != "localhost:8081" {
		t.Fatalf("sandbox domain %q, want localhost:8081", cp.SandboxDomain)
	}
	for _, tc := range []struct {
		name    string
		h       http.Handler
		host    string
		path    string
		headers map[string]string
		code    int
		body    string
	}{
		{"native API", cp.APIHandler(), "localhost:8080", "/healthz", nil, 200, ""},
		{"E2B facade", cp.APIHandler(), "localhost:8080", "/health", nil, 200, "Health check successful"},
		{"sandbox traffic refused on the API", cp.APIHandler(), "localhost:8080", "/",
			map[string]string{"E2b-Sandbox-Id": "abc", "E2b-Sandbox-Port": "49983"}, 421, "sandbox listener"},
		{"API not on the sandbox listener", cp.SandboxHandler(), "localhost:8081", "/healthz", nil, 400, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			req := httptest.NewRequest("GET", "http://"+tc.host+tc.path, nil)
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			w := httptest.NewRecorder()
			tc.h.ServeHTTP(w, req)
			if w.Code != tc.code || !strings.Contains(w.Body.String(), tc.body) {
				t.Fatalf("GET %s%s = %d %.200q; want %d with %q", tc.host, tc.path, w.Code, w.Body.String(), tc.code, tc.body)
			}
		})
	}
	// A host whose agent does not answer is skipped by the reconciliation
	// (the host monitor marks it unreachable once its heartbeat is stale):
	// the control plane starts all the same.
	if err := cp.Start(ctx); err != nil {
		t.Fatalf("Start with an agent that does not answer = %v, want nil", err)
	}
}
