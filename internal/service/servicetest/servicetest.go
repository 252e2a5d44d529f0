// Package servicetest builds the control plane's services over a fresh,
// migrated PostgreSQL (pgtest.StartForTest) for the tests of the packages
// above the service layer (api, proxy, e2bapi), with test-speed password
// hashing. The wiring itself is service.NewServices, the one the control
// plane's composition root (internal/controlplane) uses; those packages'
// own tests cannot import that root, which imports them.
package servicetest

import (
	"context"
	"testing"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
)

// Secret is the server secret of the services (envd and traffic tokens
// derive from it).
var Secret = []byte("0123456789abcdef0123456789abcdef-servicetest")

// Env is the services over one database.
type Env struct {
	*service.Services
	// Agent is the host agent's endpoint (a closed port when none),
	// registered in Agents as service.LocalHost.
	Agent agentclient.Endpoint
}

// New returns the services; agentURL and agentToken name the host agent
// ("": a closed port, for tests that never reach one). Sign-up is open
// (the tests make accounts freely); NewWith changes that.
func New(t testing.TB, agentURL, agentToken string) *Env {
	t.Helper()
	return NewWith(t, agentURL, agentToken, nil)
}

// NewWith is New with edit applied to the services' configuration (for
// example another sign-up policy or clock).
func NewWith(t testing.TB, agentURL, agentToken string, edit func(*service.ServicesConfig)) *Env {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, pgtest.StartForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	hasher, err := auth.NewPasswordHasher(auth.Argon2Params{Memory: 8192, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}, 2)
	if err != nil {
		t.Fatal(err)
	}
	var builtin []string
	if agentURL == "" {
		// No agent to ask: the built-in templates an agent would report.
		agentURL, agentToken, builtin = "http://127.0.0.1:1", "unused", image.Templates()
	}
	ep := agentclient.Endpoint{URL: agentURL, Token: agentToken}
	pool := agentclient.NewPool(agentclient.Options{})
	t.Cleanup(pool.Close)
	if err := pool.Set(service.LocalHost, ep); err != nil {
		t.Fatal(err)
	}
	cfg := service.ServicesConfig{Store: st, Agents: pool, Secret: Secret, Hasher: hasher, Signup: service.SignupOpen,
		BuiltinTemplates: builtin}
	if edit != nil {
		edit(&cfg)
	}
	s, err := service.NewServices(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &Env{Services: s, Agent: ep}
}

// Account signs a user up and returns its principal (the owner of its
// new team) and an API key of that team.
func (e *Env) Account(t testing.TB, email string) (service.Principal, string) {
	t.Helper()
	ctx := context.Background()
	a, err := e.Accounts.Signup(ctx, service.Signup{Email: email, Password: "correct horse battery"})
	if err != nil {
		t.Fatal(err)
	}
	p := a.Principal()
	p.ActorName = email
	k, err := e.Accounts.CreateAPIKey(ctx, p, "test")
	if err != nil {
		t.Fatal(err)
	}
	return p, k.Plaintext
}
