// Package cptest runs the whole platform for the tests of its clients (the
// Go SDK, the command line): a real control plane built by the composition
// root `capsule serve` uses, over a real PostgreSQL (pgtest), with a real
// host agent running QEMU sandboxes (hosttest), on loopback listeners.
// Clients reach it only over HTTP, as a user's program would.
//
// StartControlPlane is the same platform without a host agent, for the
// tests of what needs no sandbox (teams, members, invitations, admin
// calls, the audit log): it starts in a second where Start boots a VM.
package cptest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/controlplane"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/service"
)

// Stack is a running platform.
type Stack struct {
	// URL is the API listener's base URL.
	URL string
	// SandboxURL is the sandbox traffic listener's.
	SandboxURL string

	cp       *controlplane.ControlPlane
	mu       sync.Mutex
	accounts int
}

// Start runs a platform for t whose agent uses the network slot pool p (the
// caller package's own, see hosttest's pool table); everything stops when
// t ends. Without root or QEMU the test is skipped (failed under
// CAPSULE_TEST_STRICT=1).
func Start(t testing.TB, p hosttest.Pool) *Stack {
	t.Helper()
	agent := hosttest.StartAgent(t, p)
	return start(t, map[string]agentclient.Endpoint{service.LocalHost: agent.Endpoint()})
}

// StartControlPlane runs a platform for t without any host agent: its API
// answers everything but what needs a running sandbox host; hosts added
// through the API stay pending. Without PostgreSQL
// the test is skipped (failed under CAPSULE_TEST_STRICT=1).
func StartControlPlane(t testing.TB) *Stack {
	t.Helper()
	return start(t, nil)
}

func start(t testing.TB, agents map[string]agentclient.Endpoint) *Stack {
	t.Helper()
	ctx := context.Background()
	hasher, err := auth.NewPasswordHasher(auth.Argon2Params{Memory: 8192, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}, 2)
	if err != nil {
		t.Fatal(err)
	}
	sbxLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cp, err := controlplane.New(ctx, controlplane.Config{
		DSN: pgtest.StartForTest(t), Secret: []byte("0123456789abcdef0123456789abcdef-cptest"), Hasher: hasher,
		Signup: service.SignupOpen, Agents: agents,
		OAuth: controlplane.OAuthConfig{PublicURL: "http://localhost"}, Domain: "localhost", SandboxAddr: sbxLn.Addr(),
		// The test is the reverse proxy: each Account signs up from an
		// address of its own, as distinct users do, so that the per-client
		// sign-up limit applies to each, not to the test.
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")},
		// The test's own database: no other replica (no leadership grace).
		SingleReplica: true,
	})
	if err != nil {
		sbxLn.Close()
		t.Fatal(err)
	}
	if err := cp.Start(ctx); err != nil {
		sbxLn.Close()
		cp.Close()
		t.Fatal(err)
	}
	api := httptest.NewServer(cp.APIHandler())
	sbx := httptest.NewUnstartedServer(cp.SandboxHandler())
	sbx.Listener.Close()
	sbx.Listener = sbxLn
	sbx.Start()
	t.Cleanup(func() {
		api.Close()
		sbx.Close()
		cp.Close()
	})
	return &Stack{URL: api.URL, SandboxURL: sbx.URL, cp: cp}
}

// Admin creates a platform admin (as `capsule serve` creates its first
// one at install, through the service) and returns a session token of
// the admin's team. Admin calls are then made over HTTP as any other.
func (s *Stack) Admin(t testing.TB, email string) (session string) {
	t.Helper()
	if _, err := s.cp.Accounts.Signup(context.Background(), service.Signup{Email: email, Password: Password, Name: "Admin", IsAdmin: true}); err != nil {
		t.Fatalf("admin %s: %v", email, err)
	}
	var sess struct {
		Token string `json:"token"`
	}
	s.post(t, "203.0.113.251", "/v1/auth/login", "", map[string]string{"email": email, "password": Password}, http.StatusOK, &sess)
	if sess.Token == "" {
		t.Fatalf("admin %s: no session token", email)
	}
	return sess.Token
}

// Password is every Account's password.
const Password = "correct horse battery"

// Account signs a user up over the API and returns a session token (a JWT
// of the user's new team, where the user is the owner) and an API key of
// that team.
func (s *Stack) Account(t testing.TB, email string) (session, apiKey string) {
	t.Helper()
	s.mu.Lock()
	s.accounts++
	client := fmt.Sprintf("203.0.113.%d", s.accounts%250+1)
	s.mu.Unlock()
	creds := map[string]string{"email": email, "password": Password}
	s.post(t, client, "/v1/auth/signup", "", creds, http.StatusCreated, nil)
	var sess struct {
		Token string `json:"token"`
	}
	s.post(t, client, "/v1/auth/login", "", creds, http.StatusOK, &sess)
	var k struct {
		Key string `json:"key"`
	}
	s.post(t, client, "/v1/api-keys", sess.Token, map[string]string{"name": "test"}, http.StatusCreated, &k)
	if sess.Token == "" || k.Key == "" {
		t.Fatalf("account %s: no session token or API key", email)
	}
	return sess.Token, k.Key
}

func (s *Stack) post(t testing.TB, client, path, bearer string, body any, want int, out any) {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(http.MethodPost, s.URL+path, bytes.NewReader(b))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Forwarded-For", client)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		t.Fatalf("POST %s: %d", path, resp.StatusCode)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatal(err)
		}
	}
}
