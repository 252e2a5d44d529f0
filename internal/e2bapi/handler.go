package e2bapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"

	"github.com/capsulehq/capsule/internal/api"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/builds"
	"github.com/capsulehq/capsule/internal/logctx"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

// maxBody bounds a request body.
const maxBody = 1 << 20

// e2bDomains are E2B's own sandbox domains: returned as `domain`, they
// would send the SDK to E2B's cloud (spec §2).
var e2bDomains = []string{"e2b.app", "e2b.dev", "e2b.pro", "e2b-staging.dev"}

// Config configures New.
type Config struct {
	Accounts  *service.Accounts
	Sandboxes *service.Sandboxes
	// Domain is the sandbox domain the traffic proxy serves
	// ({port}-{id}.{Domain}), returned to the SDK as `domain` (null when
	// empty); it may end in the sandbox listener's :PORT, which the SDK's
	// getHost then carries. E2B's own domains are refused.
	Domain string
	// Instrument, when set, wraps each route's handler with the pattern
	// it is registered with (Prometheus, package telemetry).
	Instrument func(pattern string, h http.Handler) http.Handler
	// Builds runs E2B's template builds (nil: their routes answer 501);
	// Secret signs their upload URLs.
	Builds *builds.Service
	Secret []byte
	// TeamRateLimit bounds each team's authenticated requests (a token
	// bucket per team; zero: no limit). Past it the answer is 429 with
	// Retry-After, which the SDKs wait for and retry.
	TeamRateLimit auth.RateLimit
	// TeamLimiter, when set, is used instead of one of TeamRateLimit's: a
	// limiter shared with the /v1 API's sandbox lifecycle routes (keys
	// auth.TeamKey), so that a team's requests count once whichever API
	// they use.
	TeamLimiter *auth.Limiter
	Log         *slog.Logger
}

// Handler serves E2B's control-plane paths.
type Handler struct {
	cfg Config
	// teams is the per-team rate limiter (nil: none).
	teams  *auth.Limiter
	log    *slog.Logger
	mux    *http.ServeMux
	domain *string
	routes []string
}

// New returns the E2B facade's handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Accounts == nil || cfg.Sandboxes == nil {
		return nil, errors.New("e2bapi: accounts and sandboxes are required")
	}
	d := cfg.Domain
	if host, _, err := net.SplitHostPort(d); err == nil {
		d = host
	}
	d = strings.ToLower(strings.TrimSuffix(d, "."))
	for _, e := range e2bDomains {
		if d == e || strings.HasSuffix(d, "."+e) {
			return nil, fmt.Errorf("e2bapi: the sandbox domain %q is E2B's: the SDK would send sandbox traffic to E2B", cfg.Domain)
		}
	}
	h := &Handler{cfg: cfg, log: cfg.Log, mux: http.NewServeMux()}
	if h.teams = cfg.TeamLimiter; h.teams == nil && cfg.TeamRateLimit != (auth.RateLimit{}) {
		l, err := auth.NewLimiter(auth.LimiterConfig{Limit: cfg.TeamRateLimit})
		if err != nil {
			return nil, fmt.Errorf("e2bapi: team rate limit: %w", err)
		}
		h.teams = l
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	h.log = h.log.With("component", "e2bapi")
	if cfg.Domain != "" {
		h.domain = &cfg.Domain
	}
	h.register()
	return h, nil
}

// prefixes are the first path segments of E2B's routes; none is one of the
// native API's (/v1, /healthz, /docs, /openapi.*).
var prefixes = []string{"sandboxes", "v2", "v3", "snapshots", "templates", "volumes", "health"}

// Matches reports whether r is for the E2B facade (by its first path
// segment), so that one listener serves it beside the native API.
func (h *Handler) Matches(r *http.Request) bool {
	first, _, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
	return slices.Contains(prefixes, first)
}

// ServeHTTP implements http.Handler, with a request ID in the context
// (logctx.FromHTTP) echoed in the response's X-Request-Id.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, id := logctx.FromHTTP(r)
	w.Header().Set(logctx.Header, id)
	h.mux.ServeHTTP(w, r.WithContext(ctx))
}

// Routes returns the registered route patterns ("METHOD /path/{param}").
func (h *Handler) Routes() []string { return slices.Clone(h.routes) }

// handler is an authenticated handler.
type handler func(w http.ResponseWriter, r *http.Request, p service.Principal)

func (h *Handler) register() {
	h.handle("GET /health", http.HandlerFunc(h.health))
	h.handle("POST /v2/sandboxes", h.authed(h.createV2))
	h.handle("POST /sandboxes", h.authed(h.createV1))
	h.handle("POST /v2/sandboxes/{id}/connect", h.authed(h.connectV2))
	h.handle("POST /sandboxes/{id}/connect", h.authed(h.connectV1))
	h.handle("GET /sandboxes/{id}", h.authed(h.getSandbox))
	h.handle("GET /v2/sandboxes", h.authed(h.listV2))
	h.handle("GET /sandboxes", h.authed(h.listV1))
	h.handle("DELETE /sandboxes/{id}", h.authed(h.kill))
	h.handle("POST /sandboxes/{id}/timeout", h.authed(h.setTimeout))
	h.handle("POST /sandboxes/{id}/pause", h.authed(h.pause))
	h.handle("POST /sandboxes/{id}/resume", h.authed(h.resume))
	h.handle("POST /sandboxes/{id}/refreshes", h.authed(h.refresh))
	h.handle("GET /sandboxes/{id}/metrics", h.authed(h.metrics))
	h.handle("GET /sandboxes/metrics", h.authed(h.metricsMany))
	h.handle("PUT /sandboxes/{id}/network", h.authed(h.updateNetwork))
	h.handle("POST /sandboxes/{id}/snapshots", h.authed(h.createSnapshot))
	h.handle("POST /sandboxes/{id}/fork", h.authed(h.fork))
	h.handle("GET /snapshots", h.authed(h.listSnapshots))
	h.handle("GET /sandboxes/{id}/logs", h.authed(h.logs))
	h.handle("GET /v2/sandboxes/{id}/logs", h.authed(h.logsV2))
	h.handle("DELETE /templates/{templateID}", h.authed(h.deleteTemplate))
	h.handle("GET /templates", h.authed(h.listTemplates))
	// GET /templates/aliases/{alias} and GET /templates/{templateID}/tags
	// overlap for Go's mux: one pattern, dispatched (tags.go).
	h.handle("GET /templates/{templateID}/{what}", h.authed(h.templateAliasOrTags))
	h.handle("POST /templates/tags", h.authed(h.assignTags))
	h.handle("DELETE /templates/tags", h.authed(h.removeTags))
	// E2B features this server does not have: a clear 501 rather than a
	// 404 the SDK would read as "sandbox not found".
	// Volumes (E2B's Volume: named storage mounted into sandboxes) are
	// not built: with a 404, the SDK's Volume.getInfo would say "volume
	// not found" and Volume.destroy "false", as if the call had worked.
	unsupported := []string{"POST /volumes", "GET /volumes", "GET /volumes/{volumeID}", "DELETE /volumes/{volumeID}"}
	if h.cfg.Builds != nil && len(h.cfg.Secret) > 0 {
		h.handle("POST /v3/templates", h.authed(h.createTemplateV3))
		h.handle("GET /templates/{templateID}/files/{hash}", h.authed(h.templateFile))
		h.handle("PUT /templates/{templateID}/files/{hash}/upload", http.HandlerFunc(h.uploadTemplateFile))
		h.handle("POST /v2/templates/{templateID}/builds/{buildID}", h.authed(h.triggerBuild))
		h.handle("GET /templates/{templateID}/builds/{buildID}/status", h.authed(h.buildStatus))
	} else {
		unsupported = append(unsupported, "POST /v3/templates", "POST /v2/templates/{templateID}/builds/{buildID}")
	}
	for _, p := range unsupported {
		h.handle(p, h.authed(h.unsupported))
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such route")
	})
}

func (h *Handler) handle(pattern string, hd http.Handler) {
	h.routes = append(h.routes, pattern)
	if h.cfg.Instrument != nil {
		hd = h.cfg.Instrument(pattern, hd)
	}
	h.mux.Handle(pattern, hd)
}

// authed authenticates the request's API key (header X-API-KEY, any case).
func (h *Handler) authed(next handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key, err := auth.APIKeyFromHeader(r.Header)
		if errors.Is(err, auth.ErrNoAPIKey) {
			writeError(w, http.StatusUnauthorized, "authentication required: send your API key in the X-API-KEY header")
			return
		}
		if err != nil {
			writeError(w, http.StatusUnauthorized, "invalid API key")
			return
		}
		p, err := h.cfg.Accounts.AuthenticateAPIKey(r.Context(), key)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if h.teams != nil {
			// 429 with Retry-After: the SDKs retry after it (JS: up to 3
			// times within the request's timeout), else RateLimitError.
			if ok, wait := h.teams.Allow(auth.TeamKey(p.TeamID.String())); !ok {
				auth.WriteTooManyRequests(w, wait)
				return
			}
		}
		next(w, r.WithContext(logctx.WithTeam(r.Context(), p.TeamID.String())), p)
	}
}

func (h *Handler) health(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusOK)
	_, _ = io.WriteString(w, "Health check successful\n")
}

func (h *Handler) unsupported(w http.ResponseWriter, _ *http.Request, _ service.Principal) {
	writeError(w, http.StatusNotImplemented, "not supported by this server")
}

// errorBody is E2B's error shape: Code equals the HTTP status.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Code: status, Message: msg})
}

// fail answers a service error as the native API does (api.Problem: its
// status, or 500 with only an error ID, logged).
func (h *Handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := api.Problem(h.log, r, err)
	writeError(w, status, msg)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func invalid(format string, args ...any) error {
	return &service.Error{Kind: service.ErrInvalid, Msg: fmt.Sprintf(format, args...)}
}

var errSandboxNotFound = &service.Error{Kind: service.ErrNotFound, Msg: "sandbox not found"}

// decode reads an optional JSON body into v: an empty body leaves v as it
// is; unknown fields are ignored (the SDKs send more than this server
// uses); a malformed body is a 400.
func decode(w http.ResponseWriter, r *http.Request, v any) (present bool, err error) {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return false, invalid("request body too large")
		}
		return false, invalid("cannot read the request body")
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		var ute *json.UnmarshalTypeError
		if errors.As(err, &ute) {
			return true, invalid("invalid JSON body: field %q has the wrong type", ute.Field)
		}
		return true, invalid("invalid JSON body")
	}
	return true, nil
}

// sandboxID parses the {id} path value: a sandbox ID, or E2B's legacy
// composite "{id}-{clientID}" (the part before '-' counts). A malformed ID
// names no sandbox: 404.
func sandboxID(r *http.Request) (service.SandboxID, error) {
	raw, _, _ := strings.Cut(r.PathValue("id"), "-")
	id, err := wireid.ParseSandboxID(raw)
	if err != nil {
		return service.SandboxID{}, errSandboxNotFound
	}
	return id, nil
}
