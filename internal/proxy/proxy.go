package proxy

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/capsulehq/capsule/internal/agentapi"
	"github.com/capsulehq/capsule/internal/agentproxy"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/errdefs"
	"github.com/capsulehq/capsule/internal/logctx"
)

// EnvdPort is envd's port in every guest.
const EnvdPort = 49983

// E2B's routing and access headers.
const (
	HeaderSandboxID    = "E2b-Sandbox-Id"
	HeaderSandboxPort  = "E2b-Sandbox-Port"
	HeaderTrafficToken = "E2b-Traffic-Access-Token"
	HeaderAccessToken  = "X-Access-Token"
	HeaderAPIKey       = "X-Api-Key"
)

// ErrNotFound: no such sandbox, or it is not running (and cannot be
// resumed): 502 "The sandbox was not found".
var ErrNotFound = errdefs.Sentinel("sandbox not found", errdefs.ErrNotFound)

// Route is where a sandbox's traffic goes and who may send it.
type Route struct {
	// SandboxID is the sandbox's ID as the client named it.
	SandboxID string
	// AgentURL and AgentToken reach the host agent running the sandbox.
	AgentURL   string
	AgentToken string
	// EnvdAccessToken is what envd's port requires.
	EnvdAccessToken string
	// TrafficToken guards the other ports ("" when public).
	TrafficToken string
	// Public opens the other ports to anyone.
	Public bool
	// Team owns the sandbox: its API keys may reach every port.
	Team string
	// Asleep: the sandbox is paused and was created with auto-resume. The
	// request is authorized against this route first; only then does
	// Resolver.Wake resume it (AgentURL is not used before).
	Asleep bool
}

// Resolver finds the sandbox behind an ID.
type Resolver interface {
	// Resolve returns the sandbox's route from its record and changes
	// nothing: a paused sandbox created with auto-resume is Asleep;
	// ErrNotFound when it is unknown, stopped, or paused without
	// auto-resume.
	Resolve(ctx context.Context, sandboxID string) (Route, error)
	// Wake resumes a sandbox that Resolve found Asleep (the request is
	// authorized already) and returns its running route.
	Wake(ctx context.Context, sandboxID string) (Route, error)
	// APIKeyTeam returns the team of a live API key ("" and an error when
	// it is not one).
	APIKeyTeam(ctx context.Context, key string) (string, error)
	// Touch records traffic as activity (for the TTL); cheap, may be
	// rate-limited by the implementation.
	Touch(ctx context.Context, sandboxID string)
	// RunningSandboxes lists the IDs of the running sandboxes: the
	// candidates of a signed file URL that names no sandbox (the proxy's
	// signer index asks at a bounded rate, never per request).
	RunningSandboxes(ctx context.Context) ([]string, error)
	// EnvdToken returns a sandbox's envd access token (an HMAC: the signer
	// index computes it once per sandbox).
	EnvdToken(sandboxID string) string
}

// Config configures New.
type Config struct {
	// Domain is the sandbox domain: hosts are {port}-{id}.{Domain}.
	Domain   string
	Resolver Resolver
	// AgentTLS is the TLS of https:// agents (registered hosts: the
	// internal CA as the root, the control plane's client certificate);
	// nil: the system's roots, no client certificate.
	AgentTLS *tls.Config
	// RouteTTL is how long a resolved route is reused (default 2 s; a
	// negative value: never). Routes only change when a sandbox stops
	// running, and the agent answers for a sandbox it no longer runs, so a
	// short reuse saves a database round trip per request safely.
	RouteTTL time.Duration
	// SignerTTL is how long the signer index (the running sandboxes' envd
	// tokens, for signed file URLs that name no sandbox) is used before it
	// is reloaded (default 2 s); SignerRefresh is the least time between
	// two reloads (default 250 ms): a URL that matches no sandbox waits
	// for the next reload allowed, and is looked up once more.
	SignerTTL, SignerRefresh time.Duration
	// ScanLimit bounds, per client address, the signed file URLs whose
	// signature the proxy has not seen match before (each costs a pass
	// over the running sandboxes' tokens); default a burst of 64, then 20
	// a second. Past it the client gets 429.
	ScanLimit auth.RateLimit
	// TrustedProxies are the reverse proxies whose X-Forwarded-For names
	// the client (auth.ClientIP).
	TrustedProxies []netip.Prefix
	// Now is the clock (default time.Now).
	Now func() time.Time
	Log *slog.Logger
}

// Handler is the proxy's http.Handler.
type Handler struct {
	cfg   Config
	log   *slog.Logger
	proxy *httputil.ReverseProxy

	mu     sync.Mutex
	routes map[string]cachedRoute

	signers *signerIndex
	scans   *auth.Limiter
}

type cachedRoute struct {
	route   Route
	expires time.Time
}

// New returns the proxy handler.
func New(cfg Config) (*Handler, error) {
	if cfg.Resolver == nil {
		return nil, errors.New("proxy: a resolver is required")
	}
	if cfg.RouteTTL == 0 {
		cfg.RouteTTL = 2 * time.Second
	}
	if cfg.SignerTTL <= 0 {
		cfg.SignerTTL = 2 * time.Second
	}
	if cfg.SignerRefresh <= 0 {
		cfg.SignerRefresh = 250 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ScanLimit == (auth.RateLimit{}) {
		cfg.ScanLimit = auth.RateLimit{Burst: 64, Interval: 50 * time.Millisecond}
	}
	scans, err := auth.NewLimiter(auth.LimiterConfig{Limit: cfg.ScanLimit, Now: cfg.Now})
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	h := &Handler{cfg: cfg, log: cfg.Log, routes: map[string]cachedRoute{}, scans: scans}
	h.signers = &signerIndex{res: cfg.Resolver, now: cfg.Now, ttl: cfg.SignerTTL, refresh: cfg.SignerRefresh}
	if h.log == nil {
		h.log = slog.Default()
	}
	h.log = h.log.With("component", "proxy")
	h.proxy = &httputil.ReverseProxy{
		Rewrite:       h.rewrite,
		Transport:     newTransport(cfg.AgentTLS),
		FlushInterval: -1,
		BufferPool:    copyBuffers{},
		ErrorHandler:  h.forwardError,
		// The agent's "sandbox not found" means the route went stale.
		ModifyResponse: func(resp *http.Response) error {
			if resp.StatusCode == http.StatusBadGateway && resp.Header.Get(agentproxy.ErrorHeader) == agentproxy.ErrorNotFound {
				h.forget(resp.Request.Header.Get(agentproxy.SandboxHeader))
			}
			if resp.Header.Get(logctx.Header) == "" {
				resp.Header.Set(logctx.Header, logctx.RequestID(resp.Request.Context()))
			}
			if rt, ok := resp.Request.Context().Value(routeKey{}).(*routed); ok && rt.files {
				hardenFileResponse(resp.Header, rt.filePath)
			}
			return nil
		},
	}
	return h, nil
}

// Matches reports whether r is sandbox traffic for this proxy: it carries
// E2B's routing headers, or its Host is {port}-{id}.{domain}. The API
// server sends such requests here and serves the rest itself.
func (h *Handler) Matches(r *http.Request) bool {
	if r.Header.Get(HeaderSandboxID) != "" || r.Header.Get(HeaderSandboxPort) != "" {
		return true
	}
	if isSignedFileURL(r) {
		return true
	}
	host := hostname(r.Host)
	if h.cfg.Domain == "" || !strings.HasSuffix(host, "."+h.cfg.Domain) {
		return false
	}
	label := strings.TrimSuffix(host, "."+h.cfg.Domain)
	return !strings.Contains(label, ".") && strings.Contains(label, "-")
}

var sandboxIDRe = regexp.MustCompile(`^[a-z0-9]+$`)

// target parses the sandbox ID and port of r (spec §3.1 steps 1–3); the
// error text is the plain-text 400 body E2B's proxy sends.
func target(r *http.Request) (id string, port int, errText string) {
	host := hostname(r.Host)
	hdrID, hdrPort := r.Header.Get(HeaderSandboxID), r.Header.Get(HeaderSandboxPort)
	_, ipErr := netip.ParseAddr(host)
	byHeader := host == "localhost" || ipErr == nil || (strings.HasPrefix(host, "sandbox.") && len(host) > len("sandbox."))
	if byHeader && (hdrID != "" || hdrPort != "") {
		if hdrID == "" || hdrPort == "" {
			return "", 0, "missing header"
		}
		id, portText := hdrID, hdrPort
		p, err := strconv.Atoi(portText)
		if err != nil || p < 1 || p > 65535 {
			return "", 0, "Invalid sandbox port"
		}
		port = p
		if !sandboxIDRe.MatchString(id) {
			return "", 0, "Invalid sandbox ID"
		}
		return id, port, ""
	}
	label, _, ok := strings.Cut(host, ".")
	if !ok {
		return "", 0, "Invalid host"
	}
	parts := strings.Split(label, "-")
	if len(parts) < 2 {
		return "", 0, "Invalid host"
	}
	p, err := strconv.Atoi(parts[0])
	if err != nil || p < 1 || p > 65535 {
		return "", 0, "Invalid sandbox port"
	}
	if !sandboxIDRe.MatchString(parts[1]) {
		return "", 0, "Invalid sandbox ID"
	}
	return parts[1], p, ""
}

func hostname(hostport string) string {
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		return strings.ToLower(h)
	}
	return strings.ToLower(strings.Trim(hostport, "[]"))
}

// isSignedFileURL: a request to envd's /files with a v1 signature and no
// routing headers: what the SDKs' downloadUrl/uploadUrl become with
// E2B_SANDBOX_URL set (spec §2, §7.6). A host of the {port}-{id} form still
// routes it; any other host (localhost, an IP, my-server.example.com)
// leaves it to the signature.
func isSignedFileURL(r *http.Request) bool {
	if r.Header.Get(HeaderSandboxID) != "" || r.Header.Get(HeaderSandboxPort) != "" {
		return false
	}
	if r.URL.Path != "/files" || (r.Method != http.MethodGet && r.Method != http.MethodPost) {
		return false
	}
	return strings.HasPrefix(r.URL.Query().Get("signature"), "v1_")
}

// signedFileTarget finds the running sandbox whose envd token made the
// request's signature (the one sandbox it can be for) in the signer index:
// no database query and no HMAC per request ("" when none did). When the
// client has used up its scans, it returns "" and how long until the next
// one is allowed.
func (h *Handler) signedFileTarget(r *http.Request) (id string, retryAfter time.Duration) {
	q := r.URL.Query()
	exp, ok := signatureExpiration(q)
	if !ok {
		return "", 0
	}
	sig, ok := newFileSig(q.Get("path"), fileOperation(r.Method), q.Get("username"), exp, q.Get("signature"))
	if !ok {
		return "", 0
	}
	allowScan := func() bool {
		var ok bool
		ok, retryAfter = h.scans.Allow(auth.IPKey(auth.ClientIP(r, h.cfg.TrustedProxies)))
		return ok
	}
	id, err := h.signers.lookup(r.Context(), sig, allowScan)
	if errors.Is(err, errScanLimited) {
		return "", max(retryAfter, time.Second)
	}
	if err != nil && !errors.Is(err, ErrNotFound) && r.Context().Err() == nil {
		h.log.WarnContext(r.Context(), "signed file URL: running sandboxes", "err", err)
	}
	return id, 0
}

// fileOperation is the signature's operation of a /files request.
func fileOperation(method string) string {
	if method == http.MethodPost {
		return "write"
	}
	return "read"
}

// signatureExpiration parses signature_expiration (nil when absent; false
// when it is not a number).
func signatureExpiration(q url.Values) (*int64, bool) {
	v := q.Get("signature_expiration")
	if v == "" {
		return nil, true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return nil, false
	}
	return &n, true
}

func isFilesPath(p string) bool { return path.Clean("/"+p) == "/files" }

// hardenFileResponse makes an answer of envd's /files inert in a browser:
// a download (never rendered inline, whatever its type; named as envd
// named it, else by the requested path), not sniffed, and
// sandboxed by CSP should it be rendered anyway. Signed file URLs share the
// sandbox listener's origin across sandboxes; nothing a sandbox wrote may
// run there.
func hardenFileResponse(hdr http.Header, filePath string) {
	disp := "attachment"
	name := path.Base(filePath)
	if _, params, err := mime.ParseMediaType(hdr.Get("Content-Disposition")); err == nil && params["filename"] != "" {
		name = params["filename"] // envd's own name for the file
	}
	if name != "" && name != "." && name != "/" {
		if d := mime.FormatMediaType("attachment", map[string]string{"filename": name}); d != "" {
			disp = d
		}
	}
	hdr.Set("Content-Disposition", disp)
	hdr.Set("X-Content-Type-Options", "nosniff")
	hdr.Set("Content-Security-Policy", "sandbox; default-src 'none'")
}

// internalRoutes of envd are for the control plane only (spec §3.1 step 4).
var internalRoutes = map[string]bool{
	"/init": true, "/freeze": true, "/unfreeze": true, "/fsfreeze": true, "/fsthaw": true, "/collapse": true, "/upgrade": true,
}

type routeKey struct{}

type routed struct {
	route Route
	port  int
	// files: a request to envd's /files (its answer is hardened), for
	// the file filePath.
	files    bool
	filePath string
}

// ServeHTTP implements http.Handler.
//
// Every request gets a request ID in its context (logctx.FromHTTP), sent
// on to the agent (agentapi.RequestIDHeader) and echoed in the response's
// X-Request-Id unless the sandbox's server sets its own.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, reqID := logctx.FromHTTP(r)
	r = r.WithContext(ctx)
	w.Header().Set(logctx.Header, reqID)
	// Bodies stream both ways at once: a sandbox may answer while its
	// request body still arrives (Go's HTTP/1 server would otherwise end
	// the body's reads at the answer's first bytes).
	_ = http.NewResponseController(w).EnableFullDuplex()
	id, port, bad := target(r)
	if bad != "" && isSignedFileURL(r) {
		var retryAfter time.Duration
		if id, retryAfter = h.signedFileTarget(r); retryAfter > 0 {
			auth.WriteTooManyRequests(w, retryAfter)
			return
		}
		if id == "" {
			// No running sandbox signed it: E2B's answer for a sandbox it
			// cannot find.
			agentproxy.WriteError(w, http.StatusBadGateway, "", 0, agentproxy.MsgSandboxNotFound)
			return
		}
		port, bad = EnvdPort, ""
	}
	if bad != "" {
		http.Error(w, bad, http.StatusBadRequest)
		return
	}
	if port == EnvdPort && internalRoutes[path.Clean("/"+r.URL.Path)] {
		writeJSON(w, http.StatusNotFound, map[string]any{
			"message": "This endpoint is reserved for the E2B control plane and is not reachable through the sandbox URL",
			"path":    r.URL.Path, "code": http.StatusNotFound,
		})
		return
	}
	// A reused route may be stale (the sandbox was paused since): a
	// request without a body is then sent again on a fresh route (which
	// resumes an auto-resume sandbox); one with a body always resolves
	// afresh, since its body cannot be sent twice.
	reuse := r.ContentLength == 0 && (r.Body == nil || r.Body == http.NoBody)
	for attempt := 0; ; attempt++ {
		rt, cached, err := h.resolve(r.Context(), id, reuse && attempt == 0)
		if err != nil {
			if !errors.Is(err, ErrNotFound) {
				h.log.WarnContext(r.Context(), "resolve sandbox", "sandbox", id, "err", err)
			}
			agentproxy.WriteError(w, http.StatusBadGateway, id, 0, agentproxy.MsgSandboxNotFound)
			return
		}
		if status, body := h.authorize(r, rt, port); status != 0 {
			writeJSON(w, status, body)
			return
		}
		if rt.Asleep && port == EnvdPort && r.Header.Get(HeaderAccessToken) == "" && !isFilesPath(r.URL.Path) {
			// envd's open /health (the SDKs' liveness probe) is no reason
			// to resume a sandbox: it is not running.
			agentproxy.WriteError(w, http.StatusBadGateway, id, 0, agentproxy.MsgSandboxNotFound)
			return
		}
		if rt.Asleep {
			// Authorized against the record: only now may it be resumed.
			if rt, err = h.wake(r.Context(), id); err != nil {
				if !errors.Is(err, ErrNotFound) {
					h.log.WarnContext(r.Context(), "resume sandbox for traffic", "sandbox", id, "err", err)
				}
				agentproxy.WriteError(w, http.StatusBadGateway, id, 0, agentproxy.MsgSandboxNotFound)
				return
			}
		}
		// Traffic is activity, but not envd's health checks (the SDKs'
		// isRunning polls would keep an idle sandbox alive forever).
		if port != EnvdPort || path.Clean("/"+r.URL.Path) != "/health" {
			h.cfg.Resolver.Touch(r.Context(), id)
		}
		rw := w
		var sw *staleWriter
		if cached {
			sw = &staleWriter{w: w}
			rw = sw
		}
		// The response's X-Request-Id: ModifyResponse sets it unless the
		// sandbox's server sent its own, forwardError sets it on errors.
		w.Header().Del(logctx.Header)
		h.proxy.ServeHTTP(rw, r.WithContext(context.WithValue(logctx.WithSandbox(r.Context(), id), routeKey{}, &routed{
			route: rt, port: port, files: port == EnvdPort && isFilesPath(r.URL.Path), filePath: r.URL.Query().Get("path"),
		})))
		if sw == nil || !sw.stale {
			return
		}
		w.Header().Set(logctx.Header, reqID)
		// The stale route is forgotten already (ModifyResponse); the next
		// attempt resolves afresh.
	}
}

// staleWriter passes a response on unless it is the agent's "sandbox not
// found" (the reused route was stale), which it swallows, headers and
// all, so that the request can be sent again.
type staleWriter struct {
	w       http.ResponseWriter
	header  http.Header
	stale   bool
	decided bool
}

func (s *staleWriter) Header() http.Header {
	if s.header == nil {
		s.header = http.Header{}
	}
	return s.header
}

func (s *staleWriter) WriteHeader(code int) {
	if s.decided {
		if !s.stale {
			s.w.WriteHeader(code)
		}
		return
	}
	s.decided = true
	h := s.Header()
	if code == http.StatusBadGateway && h.Get(agentproxy.ErrorHeader) == agentproxy.ErrorNotFound {
		s.stale = true
		return
	}
	h.Del(agentproxy.ErrorHeader)
	dst := s.w.Header()
	for k, v := range h {
		dst[k] = v
	}
	s.w.WriteHeader(code)
}

func (s *staleWriter) Write(b []byte) (int, error) {
	if !s.decided {
		s.WriteHeader(http.StatusOK)
	}
	if s.stale {
		return len(b), nil
	}
	return s.w.Write(b)
}

// FlushError flushes a response that is passed on (the reverse proxy
// flushes after every write).
func (s *staleWriter) FlushError() error {
	if !s.decided || s.stale {
		return nil
	}
	return http.NewResponseController(s.w).Flush()
}

// Unwrap lets http.ResponseController reach the real writer (upgrades).
func (s *staleWriter) Unwrap() http.ResponseWriter { return s.w }

// resolve returns the route of sandbox id, reusing (when reuse) one
// resolved less than RouteTTL ago; cached tells which it did.
func (h *Handler) resolve(ctx context.Context, id string, reuse bool) (rt Route, cached bool, err error) {
	now := h.cfg.Now()
	if reuse {
		h.mu.Lock()
		c, ok := h.routes[id]
		h.mu.Unlock()
		if ok && now.Before(c.expires) {
			return c.route, true, nil
		}
	}
	rt, err = h.cfg.Resolver.Resolve(ctx, id)
	if err != nil || rt.Asleep {
		return rt, false, err
	}
	h.remember(id, rt)
	return rt, false, nil
}

// wake resumes an asleep sandbox and remembers its running route.
func (h *Handler) wake(ctx context.Context, id string) (Route, error) {
	rt, err := h.cfg.Resolver.Wake(ctx, id)
	if err != nil {
		return Route{}, err
	}
	if rt.Asleep {
		return Route{}, ErrNotFound
	}
	h.remember(id, rt)
	return rt, nil
}

// remember keeps a running route for RouteTTL.
func (h *Handler) remember(id string, rt Route) {
	if h.cfg.RouteTTL < 0 {
		return
	}
	now := h.cfg.Now()
	h.mu.Lock()
	if len(h.routes) >= 10000 {
		for k, v := range h.routes {
			if now.After(v.expires) {
				delete(h.routes, k)
			}
		}
	}
	h.routes[id] = cachedRoute{route: rt, expires: now.Add(h.cfg.RouteTTL)}
	h.mu.Unlock()
}

// forget drops the reused route of id (the agent no longer runs it).
func (h *Handler) forget(id string) {
	h.mu.Lock()
	delete(h.routes, id)
	h.mu.Unlock()
}

// authorize applies the access rules; a zero status lets r through.
func (h *Handler) authorize(r *http.Request, rt Route, port int) (int, any) {
	if port == EnvdPort {
		if tok, ok := r.Header[http.CanonicalHeaderKey(HeaderAccessToken)]; ok {
			if len(tok) == 1 && rt.EnvdAccessToken != "" && equal(tok[0], rt.EnvdAccessToken) {
				return 0, nil
			}
			return http.StatusUnauthorized, map[string]any{"code": 401, "message": "access token present in header but does not match"}
		}
		p := path.Clean("/" + r.URL.Path)
		switch {
		case r.Method == http.MethodGet && p == "/health":
			return 0, nil
		case (r.Method == http.MethodGet || r.Method == http.MethodPost) && p == "/files" && r.URL.Query().Get("signature") != "":
			// envd verifies the signature again; checked here against
			// the record so that a forged one never resumes a sandbox.
			if msg := h.checkSignature(r, rt); msg != "" {
				return http.StatusUnauthorized, map[string]any{"code": 401, "message": msg}
			}
			return 0, nil
		}
		return http.StatusUnauthorized, map[string]any{"code": 401, "message": "unauthorized access, please provide a valid access token or method signing if supported"}
	}
	if rt.Public {
		return 0, nil
	}
	if key := r.Header.Get(HeaderAPIKey); key != "" {
		if team, err := h.cfg.Resolver.APIKeyTeam(r.Context(), key); err == nil && team != "" && team == rt.Team {
			return 0, nil
		}
	}
	tok, ok := r.Header[http.CanonicalHeaderKey(HeaderTrafficToken)]
	if !ok {
		return http.StatusForbidden, map[string]any{"sandboxId": rt.SandboxID, "code": 403,
			"message": "Sandbox is secured with traffic access token. Token header 'e2b-traffic-access-token' is missing"}
	}
	if len(tok) != 1 || rt.TrafficToken == "" || !equal(tok[0], rt.TrafficToken) {
		return http.StatusForbidden, map[string]any{"sandboxId": rt.SandboxID, "code": 403,
			"message": "Sandbox is secured with traffic access token. Provided token in header 'e2b-traffic-access-token' is invalid"}
	}
	return 0, nil
}

// checkSignature verifies a signed /files request as envd does (same
// messages); "" when it is valid for rt's envd token.
func (h *Handler) checkSignature(r *http.Request, rt Route) string {
	q := r.URL.Query()
	exp, ok := signatureExpiration(q)
	if !ok {
		return "invalid signature expiration"
	}
	if rt.EnvdAccessToken == "" || !equal(q.Get("signature"), envdapi.FileSignature(q.Get("path"), fileOperation(r.Method), q.Get("username"), rt.EnvdAccessToken, exp)) {
		return "invalid signature"
	}
	if exp != nil && *exp < h.cfg.Now().Unix() {
		return "signature is already expired"
	}
	return ""
}

func equal(a, b string) bool { return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1 }

// rewrite sends the request to the agent with the proxy headers; the
// client's API key stays here.
func (h *Handler) rewrite(pr *httputil.ProxyRequest) {
	rt := pr.In.Context().Value(routeKey{}).(*routed)
	u, err := url.Parse(rt.route.AgentURL)
	if err != nil {
		u = &url.URL{Scheme: "http", Host: "invalid."}
	}
	pr.SetURL(u)
	pr.Out.Host = pr.In.Host
	pr.Out.Header.Del(HeaderAPIKey)
	pr.Out.Header.Set(agentproxy.SandboxHeader, rt.route.SandboxID)
	pr.Out.Header.Set(agentproxy.PortHeader, strconv.Itoa(rt.port))
	if rt.route.AgentToken != "" {
		pr.Out.Header.Set(agentproxy.TokenHeader, "Bearer "+rt.route.AgentToken)
	} else {
		pr.Out.Header.Del(agentproxy.TokenHeader) // mutual TLS: none of the client's
	}
	pr.Out.Header.Set(agentapi.RequestIDHeader, logctx.RequestID(pr.In.Context()))
	pr.SetXForwarded()
}

func (h *Handler) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	rt := r.Context().Value(routeKey{}).(*routed)
	if r.Context().Err() != nil {
		return
	}
	h.log.WarnContext(r.Context(), "forward to the agent", "sandbox", rt.route.SandboxID, "port", rt.port, "err", err)
	w.Header().Set(logctx.Header, logctx.RequestID(r.Context()))
	agentproxy.WriteError(w, http.StatusBadGateway, rt.route.SandboxID, 0, agentproxy.MsgSandboxNotFound)
}

func newTransport(tlsCfg *tls.Config) *http.Transport {
	return &http.Transport{
		TLSClientConfig:     tlsCfg,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
		// HTTP/1.1 to the agent: upgrades (WebSocket) need it.
		ForceAttemptHTTP2: false,
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// copyBuffers lends the reverse proxy 256 KiB copy buffers instead of its
// 32 KiB default: with FlushInterval -1 every read is a write and a flush,
// and a large file moves in eight times fewer of them.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }
