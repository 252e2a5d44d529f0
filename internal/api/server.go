package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/auth/oauth"
	"github.com/capsulehq/capsule/internal/builds"
	"github.com/capsulehq/capsule/internal/logctx"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
)

// maxBody bounds a request body.
const maxBody = 1 << 20

// Config configures New.
type Config struct {
	// Builds runs template builds (a new, unstarted one over Store and
	// Sandboxes when nil: it queues builds for the workers of any replica).
	Builds    *builds.Service
	Accounts  *service.Accounts
	Sandboxes *service.Sandboxes
	Audit     *service.Audit
	// Stats answers the team stats and usage (a new one over Store and
	// Sandboxes, on the real clock, when nil).
	Stats *service.TeamStats
	// Teams manages teams and members (a new one over Store, Sandboxes
	// and Audit when nil).
	Teams *service.Teams
	// Admin serves /v1/admin (a new one over Store, Teams, Sandboxes and
	// Audit when nil).
	Admin *service.Admin
	// Hosts manages the host records and answers the agents'
	// registration, refresh and heartbeat (required).
	Hosts *service.Hosts
	// OAuth holds the login providers (none when nil); OAuthStates, which
	// guards their flows, is required with it.
	OAuth       *oauth.Registry
	OAuthStates *oauth.StateManager
	// Store answers /healthz (a ping).
	Store *store.Store
	// UI, when set, serves the GET and HEAD requests that no route matches
	// outside /v1 (the dashboard, internal/webui, with its SPA fallback);
	// everything else unmatched is the JSON 404.
	UI http.Handler
	// TrustedProxies are the reverse proxies whose X-Forwarded-For is
	// believed (see auth.ClientIP): the per-client rate limits see the
	// real client behind them. Empty: the peer address is the client.
	TrustedProxies []netip.Prefix
	// LoginLimit, LoginEmailLimit, SignupLimit and SearchLimit (user
	// search, per user) default to the auth package's suggestions.
	LoginLimit, LoginEmailLimit, SignupLimit, SearchLimit auth.RateLimit
	// TeamLimiter bounds each team's requests to the routes that create
	// sandboxes or change their lifecycle (create, fork, destroy, pause,
	// resume, timeout, network, snapshots; keys auth.TeamKey): past it 429
	// with Retry-After. The control plane shares it with the E2B API.
	// Nil: no limit.
	TeamLimiter *auth.Limiter
	// Instrument, when set, wraps each route's handler with the pattern
	// it is registered with (Prometheus, package telemetry).
	Instrument func(pattern string, h http.Handler) http.Handler
	Log        *slog.Logger
}

// Server is the /v1 API's http.Handler.
type Server struct {
	cfg        Config
	log        *slog.Logger
	mux        *http.ServeMux
	loginIP    *auth.Limiter
	loginEmail *auth.Limiter
	signupIP   *auth.Limiter
	searchUser *auth.Limiter
	teams      *service.Teams
	admin      *service.Admin
	builds     *builds.Service
	stats      *service.TeamStats
	oauth      *oauth.Registry
	// routes are the registered patterns ("METHOD /path"), in order.
	routes []string
}

// New returns the API handler.
func New(cfg Config) (*Server, error) {
	if cfg.Accounts == nil || cfg.Sandboxes == nil || cfg.Audit == nil || cfg.Store == nil || cfg.Hosts == nil {
		return nil, errors.New("api: accounts, sandboxes, audit, hosts and store are required")
	}
	s := &Server{cfg: cfg, log: cfg.Log, mux: http.NewServeMux(), teams: cfg.Teams, admin: cfg.Admin, builds: cfg.Builds, oauth: cfg.OAuth}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.oauth == nil {
		s.oauth = oauth.NewRegistry()
	} else if cfg.OAuthStates == nil {
		return nil, errors.New("api: OAuth providers need a state manager")
	}
	var err error
	if s.teams == nil {
		if s.teams, err = service.NewTeams(service.TeamsConfig{Store: cfg.Store, Sandboxes: cfg.Sandboxes, Audit: cfg.Audit, Log: s.log}); err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
	}
	if s.admin == nil {
		if s.admin, err = service.NewAdmin(service.AdminConfig{Store: cfg.Store, Teams: s.teams, Sandboxes: cfg.Sandboxes, Audit: cfg.Audit, Log: s.log}); err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
	}
	if s.stats = cfg.Stats; s.stats == nil {
		s.stats = service.NewTeamStats(cfg.Store, cfg.Sandboxes, nil, s.log)
	}
	if s.builds == nil {
		if s.builds, err = builds.New(builds.Config{Store: cfg.Store, Sandboxes: cfg.Sandboxes, Audit: cfg.Audit, Log: s.log}); err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
	}
	s.log = s.log.With("component", "api")
	for _, l := range []struct {
		dst *(*auth.Limiter)
		lim auth.RateLimit
		def auth.RateLimit
	}{
		{&s.loginIP, cfg.LoginLimit, auth.LoginLimitPerIP},
		{&s.loginEmail, cfg.LoginEmailLimit, auth.LoginLimitPerEmail},
		{&s.signupIP, cfg.SignupLimit, auth.SignupLimitPerIP},
		{&s.searchUser, cfg.SearchLimit, auth.UserSearchLimitPerUser},
	} {
		if l.lim == (auth.RateLimit{}) {
			l.lim = l.def
		}
		if *l.dst, err = auth.NewLimiter(auth.LimiterConfig{Limit: l.lim}); err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
	}
	s.register()
	return s, nil
}

// ServeHTTP implements http.Handler. Every request gets a request ID in
// its context (the client's well-formed X-Request-Id, else a fresh one),
// echoed in the response's X-Request-Id; every log line of the request,
// here and on the host agent, carries it (logctx).
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, id := logctx.FromHTTP(r)
	w.Header().Set(logctx.Header, id)
	s.mux.ServeHTTP(w, r.WithContext(ctx))
}

// handler is an authenticated handler.
type handler func(w http.ResponseWriter, r *http.Request, p service.Principal)

// register registers every route through handle, then the JSON 404 for
// everything else (the mux's fallback, not a route).
func (s *Server) register() {
	ip := auth.IPKeyFunc(s.cfg.TrustedProxies)
	s.handle("GET /healthz", http.HandlerFunc(s.healthz))
	s.handle("GET /openapi.yaml", http.HandlerFunc(serveOpenAPIYAML))
	s.handle("GET /openapi.json", http.HandlerFunc(s.serveOpenAPIJSON))
	s.handle("GET /docs", http.HandlerFunc(s.serveDocs))
	s.handle("GET /docs/{file...}", http.HandlerFunc(s.serveDocs))
	s.handle("POST /v1/auth/signup", s.signupIP.Middleware(ip)(http.HandlerFunc(s.signup)))
	s.handle("POST /v1/auth/login", s.loginIP.Middleware(ip)(http.HandlerFunc(s.login)))
	s.handle("POST /v1/auth/session", s.loginIP.Middleware(ip)(http.HandlerFunc(s.createSession)))
	s.handle("DELETE /v1/auth/session", http.HandlerFunc(s.deleteSession))
	s.handle("GET /v1/auth/config", http.HandlerFunc(s.authConfig))
	s.handle("GET /v1/api-keys", s.authed(s.listKeys))
	s.handle("POST /v1/api-keys", s.authed(s.createKey))
	s.handle("DELETE /v1/api-keys/{id}", s.authed(s.revokeKey))
	s.handle("POST /v1/sandboxes", s.authed(s.teamLimited(s.createSandbox)))
	s.handle("GET /v1/sandboxes", s.authed(s.listSandboxes))
	s.handle("GET /v1/sandboxes/stats", s.authed(s.teamStats))
	s.handle("GET /v1/sandboxes/usage", s.authed(s.teamUsage))
	s.handle("GET /v1/sandboxes/{id}", s.authed(s.getSandbox))
	s.handle("DELETE /v1/sandboxes/{id}", s.authed(s.teamLimited(s.destroySandbox)))
	s.handle("POST /v1/sandboxes/{id}/pause", s.authed(s.teamLimited(s.pauseSandbox)))
	s.handle("POST /v1/sandboxes/{id}/resume", s.authed(s.teamLimited(s.resumeSandbox)))
	s.handle("POST /v1/sandboxes/{id}/fork", s.authed(s.teamLimited(s.forkSandbox)))
	s.handle("GET /v1/audit-logs", s.userAuthed(s.listAuditLogs))
	s.handle("POST /v1/sandboxes/{id}/ping", s.authed(s.pingSandbox))
	s.handle("GET /v1/sandboxes/{id}/metrics", s.authed(s.sandboxMetrics))
	s.handle("GET /v1/sandboxes/{id}/logs", s.authed(s.sandboxLogs))
	s.handle("POST /v1/sandboxes/{id}/timeout", s.authed(s.teamLimited(s.setSandboxTimeout)))
	s.handle("GET /v1/sandboxes/{id}/network", s.authed(s.getSandboxNetwork))
	s.handle("PUT /v1/sandboxes/{id}/network", s.authed(s.teamLimited(s.setSandboxNetwork)))
	s.handle("POST /v1/snapshots", s.authed(s.teamLimited(s.createSnapshot)))
	s.handle("GET /v1/snapshots", s.authed(s.listSnapshots))
	s.handle("GET /v1/snapshots/{name}", s.authed(s.getSnapshot))
	s.handle("DELETE /v1/snapshots/{name}", s.authed(s.teamLimited(s.deleteSnapshot)))
	s.handle("POST /v1/sandboxes/{id}/exec", s.authed(s.execSync))
	s.handle("GET /v1/sandboxes/{id}/exec/stream", s.wsAuthed(s.execStream))
	s.handle("PUT /v1/sandboxes/{id}/files", s.authed(s.uploadFile))
	s.handle("POST /v1/sandboxes/{id}/files", s.authed(s.uploadFiles))
	s.handle("GET /v1/sandboxes/{id}/files", s.authed(s.downloadFile))
	s.handle("DELETE /v1/sandboxes/{id}/files", s.authed(s.removeFile))
	s.handle("GET /v1/sandboxes/{id}/files/list", s.authed(s.listFiles))
	s.handle("GET /v1/sandboxes/{id}/files/watch", s.authed(s.watchFiles))
	s.handle("POST /v1/sandboxes/{id}/files/mkdir", s.authed(s.makeDir))
	s.handle("POST /v1/teams", s.userAuthed(s.createTeam))
	s.handle("GET /v1/teams", s.userAuthed(s.listTeams))
	s.handle("GET /v1/teams/{id}", s.userAuthed(s.getTeam))
	s.handle("PATCH /v1/teams/{id}", s.userAuthed(s.renameTeam))
	s.handle("DELETE /v1/teams/{id}", s.userAuthed(s.deleteTeam))
	s.handle("GET /v1/teams/{id}/members", s.userAuthed(s.listMembers))
	s.handle("POST /v1/teams/{id}/members", s.userAuthed(s.addMember))
	s.handle("PATCH /v1/teams/{id}/members/{user_id}", s.userAuthed(s.setMemberRole))
	s.handle("DELETE /v1/teams/{id}/members/{user_id}", s.userAuthed(s.removeMember))
	s.handle("POST /v1/teams/{id}/leave", s.userAuthed(s.leaveTeam))
	s.handle("POST /v1/teams/{id}/invitations", s.userAuthed(s.createInvitation))
	s.handle("GET /v1/teams/{id}/invitations", s.userAuthed(s.listInvitations))
	s.handle("DELETE /v1/teams/{id}/invitations/{invitation_id}", s.userAuthed(s.revokeInvitation))
	s.handle("POST /v1/auth/switch-team", s.userAuthed(s.switchTeam))
	s.handle("GET /v1/me", s.userAuthed(s.getMe))
	s.handle("PATCH /v1/me", s.userAuthed(s.updateMe))
	s.handle("POST /v1/me/password", s.loginIP.Middleware(ip)(s.userAuthed(s.changePassword)))
	s.handle("DELETE /v1/me/oauth/{provider}", s.userAuthed(s.unlinkOAuth))
	s.handle("GET /v1/users/search", s.userAuthed(s.searchUsers))
	s.registerAdmin()
	s.registerBuilds()
	s.handle("GET /v1/auth/oauth/{provider}/login", http.HandlerFunc(s.oauthLogin))
	s.handle("POST /v1/auth/oauth/{provider}/link", s.userAuthed(s.oauthLink))
	// A callback costs calls to the provider: limited as logins are.
	s.handle("GET /v1/auth/oauth/{provider}/callback", s.loginIP.Middleware(ip)(http.HandlerFunc(s.oauthCallback)))
	s.registerHostRoutes()
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.UI != nil && (r.Method == http.MethodGet || r.Method == http.MethodHead) &&
			r.URL.Path != "/v1" && !strings.HasPrefix(r.URL.Path, "/v1/") {
			s.cfg.UI.ServeHTTP(w, r)
			return
		}
		writeProblem(w, http.StatusNotFound, "no such route")
	})
}

// handle registers a route: pattern is "METHOD /path" (net/http's pattern
// syntax, always with a method). Every route must be documented in
// openapi.yaml (TestOpenAPICoversRoutes walks Routes).
func (s *Server) handle(pattern string, h http.Handler) {
	if method, _, ok := strings.Cut(pattern, " "); !ok || method == "" || strings.ToUpper(method) != method {
		panic("api: route pattern without a method: " + pattern)
	}
	s.routes = append(s.routes, pattern)
	if s.cfg.Instrument != nil {
		h = s.cfg.Instrument(pattern, h)
	}
	s.mux.Handle(pattern, h)
}

// Routes returns the registered route patterns ("METHOD /path/{param}").
func (s *Server) Routes() []string { return slices.Clone(s.routes) }

// authed authenticates the request (X-API-Key, else a Bearer session
// token) before calling h.
func (s *Server) authed(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		p, err := s.authenticate(r)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r.WithContext(logctx.WithTeam(r.Context(), p.TeamID.String())), p)
	}
}

// teamLimited takes a token of the principal's team from the shared team
// limiter (Config.TeamLimiter) before h runs: past the limit 429 with
// Retry-After, the same answer as the E2B API's.
func (s *Server) teamLimited(h handler) handler {
	if s.cfg.TeamLimiter == nil {
		return h
	}
	return func(w http.ResponseWriter, r *http.Request, p service.Principal) {
		if ok, wait := s.cfg.TeamLimiter.Allow(auth.TeamKey(p.TeamID.String())); !ok {
			auth.WriteTooManyRequests(w, wait)
			return
		}
		h(w, r, p)
	}
}

var errNoCredentials = &service.Error{Kind: service.ErrUnauthorized, Msg: "authentication required: send X-API-Key or Authorization: Bearer <session token>"}

func (s *Server) authenticate(r *http.Request) (service.Principal, error) {
	return s.authenticateWith(r, s.cfg.Accounts.AuthenticateJWT)
}

// authenticateWith authenticates X-API-Key, else a Bearer session token
// with session, else the dashboard's session cookie (with session too, after
// the CSRF checks of session.go).
func (s *Server) authenticateWith(r *http.Request, session func(context.Context, string) (service.Principal, error)) (service.Principal, error) {
	key, err := auth.APIKeyFromHeader(r.Header)
	switch {
	case err == nil:
		return s.cfg.Accounts.AuthenticateAPIKey(r.Context(), key)
	case !errors.Is(err, auth.ErrNoAPIKey):
		return service.Principal{}, &service.Error{Kind: service.ErrUnauthorized, Msg: "invalid API key"}
	}
	if tok, ok := auth.BearerToken(r.Header); ok {
		return session(r.Context(), tok)
	}
	// The dashboard's cookie (session.go), with its CSRF checks.
	if c, err := r.Cookie(sessionCookie); err == nil && c.Value != "" {
		if err := checkCookieRequest(r, c.Value); err != nil {
			return service.Principal{}, err
		}
		return session(r.Context(), c.Value)
	}
	return service.Principal{}, errNoCredentials
}

// decode reads a JSON body into v (whatever the Content-Type, so that a
// plain curl -d works): unknown fields and trailing data are refused.
func decode(r *http.Request, w http.ResponseWriter, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &service.Error{Kind: service.ErrInvalid, Msg: "invalid JSON body: " + jsonProblem(err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &service.Error{Kind: service.ErrInvalid, Msg: "invalid JSON body: trailing data"}
	}
	return nil
}

// jsonProblem describes a decoding error without echoing Go internals.
func jsonProblem(err error) string {
	var mbe *http.MaxBytesError
	var ute *json.UnmarshalTypeError
	var se *json.SyntaxError
	switch {
	case errors.As(err, &mbe):
		return "too large"
	case errors.As(err, &ute):
		return fmt.Sprintf("field %q has the wrong type", ute.Field)
	case errors.As(err, &se):
		return "syntax error"
	case errors.Is(err, io.EOF):
		return "empty"
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		return strings.TrimPrefix(err.Error(), "json: ")
	}
	return "malformed"
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 2e9)
	defer cancel()
	if err := s.cfg.Store.Ping(ctx); err != nil {
		s.log.WarnContext(ctx, "health check", "err", err)
		writeProblem(w, http.StatusServiceUnavailable, "database unavailable")
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}
