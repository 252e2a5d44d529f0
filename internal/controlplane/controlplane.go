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
	"time"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/api"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/auth/oauth"
	"github.com/capsulehq/capsule/internal/builds"
	"github.com/capsulehq/capsule/internal/e2bapi"
	"github.com/capsulehq/capsule/internal/leader"
	"github.com/capsulehq/capsule/internal/proxy"
	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/telemetry"
	"github.com/capsulehq/capsule/internal/webui"
)

// Config is what the control plane is built from.
type Config struct {
	// DSN is the PostgreSQL URL; New migrates the database.
	DSN string
	// Secret is the server secret (sessions, OAuth state, envd and
	// traffic tokens derive from it).
	Secret []byte
	// Agents are static host agents' endpoints by host name (agents that
	// did not register: a bearer token, no heartbeat of their own),
	// registered once in the pool that the services and the proxy share;
	// each is a platform host of that name. Registered hosts need none:
	// the pool resolves them through the hosts table.
	Agents map[string]agentclient.Endpoint
	// EmbeddedHosts name the hosts whose agent runs in this process
	// (capsule serve's): Shutdown pauses their running sandboxes.
	EmbeddedHosts []string
	// Scheduler tunes where sandboxes go: the CPU overcommit ratio, the
	// template affinity weight.
	Scheduler scheduler.Config
	// Monitor tunes the host monitor (how long without a heartbeat makes
	// a host unreachable, how often it looks).
	Monitor service.MonitorConfig
	// HeartbeatInterval is how often registered agents are asked to beat
	// (hostapi.HeartbeatInterval when zero).
	HeartbeatInterval time.Duration
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
	// E2BTeamRateLimit bounds each team's requests to the E2B API and to
	// the /v1 routes that create sandboxes or change their lifecycle, one
	// bucket per team across both (zero: none; see
	// e2bapi.Config.TeamLimiter and api.Config.TeamLimiter).
	E2BTeamRateLimit auth.RateLimit
	// SingleReplica says that no other control plane can share the
	// database (capsule serve's embedded PostgreSQL): the background
	// loops' leadership is then taken without the grace period that
	// fences off a previous leader (package leader).
	SingleReplica bool
	// MetricsCacheFor is how long the sandboxes-by-state gauge keeps a
	// read of the table (default 5 s).
	MetricsCacheFor time.Duration
	// Builds configures template builds.
	Builds BuildsConfig
	Log    *slog.Logger
}

// BuildsConfig configures template builds (package builds): this
// replica's workers and the archive size limit (zero: the defaults).
type BuildsConfig struct {
	Workers         int
	MaxArchiveBytes int64
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
	// Builds runs template builds (its workers start with Start).
	Builds *builds.Service
	// SandboxDomain is the sandbox domain the E2B facade answers to the
	// SDKs (Domain with the sandbox listener's port when it names none).
	SandboxDomain string
	// Telemetry holds the control plane's Prometheus metrics (MetricsHandler
	// serves them).
	Telemetry *telemetry.ControlPlane

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
		Signup: cfg.Signup, Quotas: cfg.Quotas, Scheduler: cfg.Scheduler, EmbeddedHosts: cfg.EmbeddedHosts,
		HeartbeatInterval: cfg.HeartbeatInterval, Log: log})
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	hosts = svc.Hosts
	cp = &ControlPlane{Services: svc, cfg: cfg, log: log}
	cp.Telemetry = telemetry.NewControlPlane(func(ctx context.Context) ([]telemetry.StateCount, error) {
		counts, err := svc.Sandboxes.CountByTeamState(ctx)
		out := make([]telemetry.StateCount, len(counts))
		for i, c := range counts {
			out[i] = telemetry.StateCount{Team: c.Team, State: c.State, N: c.N}
		}
		return out, err
	}, cfg.MetricsCacheFor)
	if cp.Builds, err = builds.New(builds.Config{Store: st, Sandboxes: svc.Sandboxes, Audit: svc.Audit, Log: log,
		Workers: cfg.Builds.Workers, MaxArchiveBytes: cfg.Builds.MaxArchiveBytes, OnEnd: cp.Telemetry.ObserveBuild}); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	cp.Telemetry.RegisterBuildQueue(cp.Builds.Depth, cfg.MetricsCacheFor)
	providers, states, err := NewOAuth(cfg.OAuth, cfg.Secret)
	if err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	for _, name := range providers.Names() {
		log.InfoContext(ctx, "OAuth login enabled", "provider", name, "callback", cfg.OAuth.PublicURL+"/v1/auth/oauth/"+name+"/callback")
	}
	// One per-team limiter for the E2B API and the /v1 lifecycle routes.
	var teamLimiter *auth.Limiter
	if cfg.E2BTeamRateLimit != (auth.RateLimit{}) {
		if teamLimiter, err = auth.NewLimiter(auth.LimiterConfig{Limit: cfg.E2BTeamRateLimit}); err != nil {
			return nil, fmt.Errorf("controlplane: team rate limit: %w", err)
		}
	}
	if cp.API, err = api.New(api.Config{TeamLimiter: teamLimiter, Builds: cp.Builds, Accounts: svc.Accounts, Sandboxes: svc.Sandboxes, Stats: svc.Stats, Audit: svc.Audit, Teams: svc.Teams, Admin: svc.Admin, Hosts: svc.Hosts, Store: st,
		OAuth: providers, OAuthStates: states, TrustedProxies: cfg.TrustedProxies, Instrument: cp.Telemetry.Route, UI: webui.New(), Log: log}); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	if cp.Proxy, err = proxy.New(proxy.Config{Domain: bareDomain(cfg.Domain), Log: log, TrustedProxies: cfg.TrustedProxies,
		AgentTLS: svc.Hosts.AgentTLS(), Resolver: proxy.ServiceResolver{
			Sandboxes: svc.Sandboxes, Accounts: svc.Accounts, Agents: pool,
		}}); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	cp.SandboxDomain = advertisedDomain(cfg.Domain, cfg.SandboxAddr)
	if cp.E2B, err = e2bapi.New(e2bapi.Config{Accounts: svc.Accounts, Sandboxes: svc.Sandboxes, Domain: cp.SandboxDomain,
		Instrument: cp.Telemetry.Route, Log: log, Builds: cp.Builds, Secret: cfg.Secret, TeamLimiter: teamLimiter}); err != nil {
		return nil, fmt.Errorf("controlplane: %w", err)
	}
	return cp, nil
}

// APIHandler serves the API listener: the native API, the E2B facade,
// and a refusal of sandbox traffic.
func (cp *ControlPlane) APIHandler() http.Handler {
	return apiHandler(cp.Proxy, cp.E2B, cp.API, cp.SandboxDomain)
}

// SandboxHandler serves the sandbox listener: the traffic proxy alone
// (its requests and bytes counted).
func (cp *ControlPlane) SandboxHandler() http.Handler {
	return cp.Telemetry.Proxy(sandboxHandler(cp.Proxy))
}

// MetricsHandler serves the control plane's Prometheus metrics (and those
// of collectors registered on cp.Telemetry.Registry); with a token, only
// to scrapes bearing it.
func (cp *ControlPlane) MetricsHandler(token string) http.Handler {
	return telemetry.Handler(cp.Telemetry.Registry, token)
}

// BackgroundLeadership is the leadership (package leader) under which a
// control plane runs its background loops: of the replicas sharing a
// database, only its holder reconciles and reaps.
const BackgroundLeadership = "controlplane.background"

// UsageMaintenanceInterval is how often the leader rolls usage up and
// prunes the team stats (service.TeamStats.RunMaintenance).
const UsageMaintenanceInterval = time.Hour

// Start campaigns for the background loops' leadership until ctx ends,
// Shutdown or Close. Each term of this replica brings the sandbox records
// in line with what the agents run (after a crash of either, or of the
// previous leader) and then runs the TTL reaper and the host monitor
// (service.Monitor: hosts without a heartbeat become unreachable and their
// sandboxes missing; hosts that beat again are reconciled and online),
// the metrics pruner, the team stats sampler (every 10 s) and the usage
// rollup and team stats pruner (every hour). Start returns once the
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
			} // a later term's failure is logged; the loops run
			mcfg := cp.cfg.Monitor
			if mcfg.Log == nil {
				mcfg.Log = cp.log
			}
			var wg sync.WaitGroup
			wg.Add(4)
			go func() {
				defer wg.Done()
				service.NewMonitor(cp.Sandboxes, mcfg).Run(ctx)
			}()
			go func() {
				defer wg.Done()
				cp.pruneMetrics(ctx)
			}()
			go func() {
				defer wg.Done()
				cp.Stats.RunSampler(ctx)
			}()
			go func() {
				defer wg.Done()
				cp.Stats.RunMaintenance(ctx, UsageMaintenanceInterval)
			}()
			service.NewReaper(cp.Sandboxes, cp.cfg.Reaper).Run(ctx)
			wg.Wait()
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
	// Every replica works the build queue.
	if err := cp.Builds.Start(ctx); err != nil {
		cp.stopReaper()
		return fmt.Errorf("controlplane: %w", err)
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
	cp.stopBuilds(ctx)
	cp.Sandboxes.CloseTerminals()
	return cp.Sandboxes.PauseAll(ctx)
}

// stopBuilds stops this replica's build workers: the builds they run are
// interrupted after a short grace, their sandboxes destroyed and the
// builds requeued for another replica or the next start (package builds).
func (cp *ControlPlane) stopBuilds(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := cp.Builds.Stop(sctx); err != nil {
		cp.log.WarnContext(ctx, "stopping the build workers", "err", err)
	}
}

// Close stops the reaper and releases the agent pool and the store.
func (cp *ControlPlane) Close() {
	cp.stopReaper()
	cp.stopBuilds(context.Background())
	cp.Agents.Close()
	cp.Store.Close()
}

// pruneMetrics deletes stored metric points past their retention
// (service.MetricsRetention), and the stored consoles of destroyed
// sandboxes past theirs (service.LogsRetention), at start and then every
// hour, until ctx ends.
func (cp *ControlPlane) pruneMetrics(ctx context.Context) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		n, err := cp.Sandboxes.PruneMetrics(ctx, time.Now().Add(-service.MetricsRetention))
		switch {
		case err != nil && ctx.Err() == nil:
			cp.log.ErrorContext(ctx, "prune stored metrics", "err", err)
		case n > 0:
			cp.log.InfoContext(ctx, "stored metrics pruned", "points", n)
		}
		// The consoles kept of destroyed sandboxes (their logs) too.
		switch n, err := cp.Sandboxes.PruneLogs(ctx, time.Now().Add(-service.LogsRetention)); {
		case err != nil && ctx.Err() == nil:
			cp.log.ErrorContext(ctx, "prune stored sandbox logs", "err", err)
		case n > 0:
			cp.log.InfoContext(ctx, "stored sandbox logs pruned", "sandboxes", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
