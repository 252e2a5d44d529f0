package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/pki"
	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/store"
)

// ServicesConfig is what the control plane's services share.
type ServicesConfig struct {
	Store *store.Store
	// Agents reaches the host agents; their endpoints are registered in
	// it once, and everything else (the traffic proxy) reads them there.
	Agents *agentclient.Pool
	// Secret is the server secret: sessions, envd and traffic tokens
	// derive from it.
	Secret []byte
	// Hasher hashes passwords (default auth.DefaultArgon2Params, one
	// hash per CPU at a time).
	Hasher *auth.PasswordHasher
	// Signup is who may sign up (SignupInvite when empty).
	Signup SignupPolicy
	// Quotas are the platform's default team quotas (DefaultQuotas when
	// zero).
	Quotas Quotas
	// BuiltinTemplates, when set, are the host's built-in template names
	// known in advance (tests whose agent is unreachable); otherwise the
	// service learns them from the agent (GetHostInfo) when it first
	// needs them.
	BuiltinTemplates []string
	// Scheduler tunes where sandboxes go (zero: the defaults).
	Scheduler scheduler.Config
	// EmbeddedHosts name the hosts whose agent stops with this process
	// (SandboxesConfig.EmbeddedHosts).
	EmbeddedHosts []string
	// HeartbeatInterval is how often the agents are asked to beat
	// (HostsConfig.HeartbeatInterval).
	HeartbeatInterval time.Duration
	// Now is the clock of sessions, API keys, invitations, sandbox
	// activity and team stats and usage (time.Now when nil).
	Now func() time.Time
	Log *slog.Logger
}

// Services are the control plane's services over one store and one agent
// pool, wired once: the composition root (internal/controlplane) and the
// test fixtures (servicetest, this package's tests) build them here.
type Services struct {
	Store     *store.Store
	Agents    *agentclient.Pool
	Sessions  *auth.SessionManager
	Audit     *Audit
	Accounts  *Accounts
	Sandboxes *Sandboxes
	Teams     *Teams
	Admin     *Admin
	// Hosts are the host records, their agents' registration,
	// credentials and heartbeats (hosts.go); CA is the internal CA.
	Hosts *Hosts
	CA    *pki.CA
	// Stats are the team stats (the 10 s sampler, GET /v1/sandboxes/stats)
	// and usage (its daily rollup, GET /v1/sandboxes/usage).
	Stats *TeamStats
}

// NewServices builds the services of cfg.
func NewServices(ctx context.Context, cfg ServicesConfig) (*Services, error) {
	if cfg.Store == nil || cfg.Agents == nil {
		return nil, errors.New("service: the services need a store and an agent pool")
	}
	hasher := cfg.Hasher
	if hasher == nil {
		var err error
		if hasher, err = auth.NewPasswordHasher(auth.DefaultArgon2Params, runtime.NumCPU()); err != nil {
			return nil, fmt.Errorf("service: %w", err)
		}
	}
	sessions, err := auth.NewSessionManager(auth.SessionConfig{Secret: cfg.Secret})
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	s := &Services{Store: cfg.Store, Agents: cfg.Agents, Sessions: sessions, Audit: NewAudit(cfg.Store, cfg.Log)}
	if s.Accounts, err = NewAccounts(AccountsConfig{Store: cfg.Store, Hasher: hasher, Sessions: sessions, Audit: s.Audit,
		Signup: cfg.Signup, Now: cfg.Now, Log: cfg.Log}); err != nil {
		return nil, err
	}
	if s.Sandboxes, err = NewSandboxes(ctx, SandboxesConfig{Store: cfg.Store, Agents: cfg.Agents, Secret: cfg.Secret,
		Quotas: cfg.Quotas, BuiltinTemplates: cfg.BuiltinTemplates, Now: cfg.Now, Audit: s.Audit, Log: cfg.Log,
		Scheduler: cfg.Scheduler, EmbeddedHosts: cfg.EmbeddedHosts}); err != nil {
		return nil, err
	}
	s.Stats = NewTeamStats(cfg.Store, s.Sandboxes, cfg.Now, cfg.Log)
	if s.CA, err = pki.Load(ctx, cfg.Store.Queries(), cfg.Secret, pki.Options{Now: cfg.Now}); err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	if s.Hosts, err = NewHosts(HostsConfig{Store: cfg.Store, Agents: cfg.Agents, Secret: cfg.Secret, CA: s.CA, Audit: s.Audit,
		HeartbeatInterval: cfg.HeartbeatInterval, Now: cfg.Now, Log: cfg.Log}); err != nil {
		return nil, err
	}
	if s.Teams, err = NewTeams(TeamsConfig{Store: cfg.Store, Sandboxes: s.Sandboxes, Audit: s.Audit, Now: cfg.Now, Log: cfg.Log}); err != nil {
		return nil, err
	}
	if s.Admin, err = NewAdmin(AdminConfig{Store: cfg.Store, Teams: s.Teams, Sandboxes: s.Sandboxes, Audit: s.Audit, Log: cfg.Log}); err != nil {
		return nil, err
	}
	return s, nil
}
