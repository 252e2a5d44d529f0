package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/api"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/auth/oauth"
	"github.com/capsulehq/capsule/internal/e2bapi"
	"github.com/capsulehq/capsule/internal/leader"
	"github.com/capsulehq/capsule/internal/proxy"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/webui"
)

// Config is what the control plane is built from.
type Config struct {
	// DSN is the PostgreSQL URL; New migrates the database.
	DSN string
	// Secret is the server secret (sessions, OAuth state, envd and
	// traffic tokens derive from it).
	Secret []byte
	// Agents are the host agents' endpoints by host name, registered once
	// in the pool that the services and the proxy share.
	Agents map[string]agentclient.Endpoint
	// Hasher hashes passwords (default auth.DefaultArgon2Params).
	Hasher *auth.PasswordHasher
	// Signup is who may sign up (service.SignupInvite when empty).
	Signup service.SignupPolicy
	// Quotas are the default team quotas (service.DefaultQuotas when zero).
	Quotas service.Quotas
	// OAuth configures the login providers.
	OAuth OAuthConfig
	// TrustedProxies are the reverse proxies whose X-Forwarded-For the
	// API's and the proxy's rate limits believe.
	TrustedProxies []netip.Prefix
	// Domain is the sandbox domain ({port}-{sandbox}.{domain}); it may end
	// in :PORT, the port clients reach the sandbox listener at.
	Domain string
	// SandboxAddr is the sandbox listener's address: without a port in
	// Domain, the E2B facade advertises this one's (unless 80 or 443).
	SandboxAddr net.Addr
	// Reaper configures the TTL reaper.
	Reaper service.ReaperConfig
	// SingleReplica says that no other control plane can share the
	// database (capsule serve's embedded PostgreSQL): the background
	// loops' leadership is then taken without the grace period that
	// fences off a previous leader (package leader).
	SingleReplica bool
	Log           *slog.Logger
}

// OAuthConfig configures the OAuth login providers.
type OAuthConfig struct {
	// PublicURL is where browsers reach the API (the callbacks); the state
	// cookie is Secure unless it is plain http.
	PublicURL string
	// GitHubClientID and GitHubClientSecret turn GitHub login on when
	// both are set.
	GitHubClientID, GitHubClientSecret string
}

// NewOAuth registers the configured OAuth providers and the state
// manager of their flows.
func NewOAuth(c OAuthConfig, secret []byte) (*oauth.Registry, *oauth.StateManager, error) {
	reg := oauth.NewRegistry()
	states, err := oauth.NewStateManager(oauth.StateConfig{Secret: secret, Insecure: strings.HasPrefix(c.PublicURL, "http://")})
	if err != nil {
		return nil, nil, err
	}
	if c.GitHubClientID != "" {
		gh, err := oauth.NewGitHub(oauth.GitHubConfig{ClientID: c.GitHubClientID, ClientSecret: c.GitHubClientSecret,
			RedirectURL: c.PublicURL + "/v1/auth/oauth/github/callback"})
		if err != nil {
			return nil, nil, err
		}
		if err := reg.Register("github", gh); err != nil {
			return nil, nil, err
		}
	}
	return reg, states, nil
}

// ControlPlane is the assembled control plane.
type ControlPlane struct {
	*service.Services
	API   *api.Server
	Proxy *proxy.Handler
	E2B   *e2bapi.Handler
	// SandboxDomain is the sandbox domain the E2B facade answers to the
	// SDKs (Domain with the sandbox listener's port when it names none).
	SandboxDomain string

	cfg      Config
	log      *slog.Logger
	mu       sync.Mutex
	stopReap context.CancelFunc
	reapDone chan struct{}
}

// New builds the control plane of cfg. On error, what it opened is closed.
func New(ctx context.Context, cfg Config) (cp *ControlPlane, err error) {
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	if len(cfg.Agents) == 0 {
		return nil, errors.New("controlplane: no host agent")
	}
	if cfg.SandboxAddr == nil {
		return nil, errors.New("controlplane: no sandbox listener address")
	}
	st, err := store.Open(ctx, cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	// Registered hosts (by wire ID) resolve through the hosts table, with
	// mutual TLS from the internal CA; the services exist only below.
	var hosts *service.Hosts
	pool := agentclient.NewPool(agentclient.Options{Log: log, Resolve: func(ctx context.Context, id string) (agentclient.Endpoint, error) {
		if hosts == nil {
			return agentclient.Endpoint{}, fmt.Errorf("%w: %s", agentclient.ErrUnknownHost, id)
		}
		return hosts.Resolve(ctx, id)
	}})
	defer func() {
		if err != nil {
			pool.Close()
			st.Close()
		}
	}()
	st.SetLogger(log)
	if err := st.Migrate(ctx); err != nil {
		return nil, fmt.Errorf("controlplane: migrate: %w", err)
	}
	for host, ep := range cfg.Agents {
		if err := pool.Set(host, ep); err != nil {
			return nil, fmt.Errorf("controlplane: %w", err)
		}
	}
	svc, err := service.NewServices(ctx, service.ServicesConfig{Store: st, Agents: pool, Secret: cfg.Secret, Hasher: cfg.Hasher,
		Signup: cfg.Signup, Quotas: cfg.Quotas, Log: log})
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	hosts = svc.Hosts
	cp = &ControlPlane{Services: svc, cfg: cfg, log: log}
	providers, states, err := NewOAuth(cfg.OAuth, cfg.Secret)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	for _, name := range providers.Names() {
		log.InfoContext(ctx, "OAuth login enabled", "provider", name, "callback", cfg.OAuth.PublicURL+"/v1/auth/oauth/"+name+"/callback")
	}
	if cp.API, err = api.New(api.Config{Accounts: svc.Accounts, Sandboxes: svc.Sandboxes, Audit: svc.Audit, Teams: svc.Teams, Admin: svc.Admin, Hosts: svc.Hosts, Store: st,
		OAuth: providers, OAuthStates: states, TrustedProxies: cfg.TrustedProxies, UI: webui.New(), Log: log}); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	if cp.Proxy, err = proxy.New(proxy.Config{Domain: bareDomain(cfg.Domain), Log: log, TrustedProxies: cfg.TrustedProxies, Resolver: proxy.ServiceResolver{
		Sandboxes: svc.Sandboxes, Accounts: svc.Accounts, Agents: pool,
	}}); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	cp.SandboxDomain = advertisedDomain(cfg.Domain, cfg.SandboxAddr)
	if cp.E2B, err = e2bapi.New(e2bapi.Config{Accounts: svc.Accounts, Sandboxes: svc.Sandboxes, Domain: cp.SandboxDomain, Log: log}); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	return cp, nil
}

// APIHandler serves the API listener: the native API, the E2B facade,
// and a refusal of sandbox traffic.
func (cp *ControlPlane) APIHandler() http.Handler {
	return apiHandler(cp.Proxy, cp.E2B, cp.API, cp.SandboxDomain)
}

// SandboxHandler serves the sandbox listener: the traffic proxy alone.
func (cp *ControlPlane) SandboxHandler() http.Handler { return sandboxHandler(cp.Proxy) }

// BackgroundLeadership is the leadership (package leader) under which a
// control plane runs its background loops: of the replicas sharing a
// database, only its holder reconciles and reaps.
const BackgroundLeadership = "controlplane.background"

// Start campaigns for the background loops' leadership until ctx ends,
// Shutdown or Close. Each term of this replica brings the sandbox records
// in line with what the agents run (after a crash of either, or of the
// previous leader) and then runs the TTL reaper. Start returns once the
// first term's reconciliation is done (its error, if it failed), or at
// once when another replica leads.
func (cp *ControlPlane) Start(ctx context.Context) error {
	cp.mu.Lock()
	if cp.stopReap != nil {
		cp.mu.Unlock()
		return errors.New("controlplane: started twice")
	}
	first := make(chan error, 1)
	following := make(chan struct{})
	var followOnce sync.Once
	lcfg := leader.Config{Pool: cp.Store.Pool(), Log: cp.log,
		OnFollow: func(string) { followOnce.Do(func() { close(following) }) }}
	if cp.cfg.SingleReplica {
		lcfg.Grace = -1
	}
	el, err := leader.New(lcfg)
	if err != nil {
		cp.mu.Unlock()
		return fmt.Errorf("controlplane: %w", err)
	}
	runCtx, stop := context.WithCancel(ctx)
	cp.stopReap, cp.reapDone = stop, make(chan struct{})
	go func() {
		defer close(cp.reapDone)
		terms := 0 // the terms of one Run follow each other
		el.Run(runCtx, BackgroundLeadership, func(ctx context.Context) {
			terms++
			err := cp.reconcile(ctx)
			if terms == 1 {
				first <- err
				if err != nil {
					return // Start fails and stops the campaign
				}
			} // a later term's failure is logged; the reaper runs
			service.NewReaper(cp.Sandboxes, cp.cfg.Reaper).Run(ctx)
		})
	}()
	cp.mu.Unlock()
	select {
	case err := <-first:
		if err != nil {
			cp.stopReaper()
			cp.mu.Lock()
			cp.stopReap, cp.reapDone = nil, nil
			cp.mu.Unlock()
			return err
		}
	case <-following:
		cp.log.InfoContext(ctx, "another control plane runs the background loops; this one follows")
	case <-ctx.Done():
		return ctx.Err()
	}
	return nil
}

func (cp *ControlPlane) reconcile(ctx context.Context) error {
	rep, err := cp.Sandboxes.Reconcile(ctx)
	if err != nil {
		if ctx.Err() == nil {
			cp.log.ErrorContext(ctx, "reconciling the sandbox records with the agents failed", "err", err)
		}
		return fmt.Errorf("controlplane: %w", err)
	}
	if rep != (service.ReconcileReport{}) {
		cp.log.InfoContext(ctx, "sandbox records reconciled with the agent", "changed", rep.Changed, "orphans", rep.Orphans,
			"orphan_templates", rep.OrphanTemplates)
	}
	return nil
}

// stopReaper stops the background loops' campaign (and the reaper, when
// this replica leads) and waits for it (a no-op when it does not run).
func (cp *ControlPlane) stopReaper() {
	cp.mu.Lock()
	stop, done := cp.stopReap, cp.reapDone
	cp.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// Shutdown stops the reaper (it must not race the pauses) and pauses
// every running sandbox through the agent path, so that the database
// records them as paused. Call it once the listeners stopped.
func (cp *ControlPlane) Shutdown(ctx context.Context) error {
	cp.stopReaper()
	return cp.Sandboxes.PauseAll(ctx)
}

// Close stops the reaper and releases the agent pool and the store.
func (cp *ControlPlane) Close() {
	cp.stopReaper()
	cp.Agents.Close()
	cp.Store.Close()
}
