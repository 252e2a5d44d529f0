package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httputil"
	"runtime/debug"
	"time"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/agentapi"
	"github.com/capsulehq/capsule/internal/agentproxy"
	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/logctx"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/vmm"
)

// Revision is the revision of hostagent.v1 this agent implements (see
// GetHostInfoResponse.revision).
const Revision = 15

// MaxMessageBytes bounds one RPC message either way (file chunks are at
// most 4 MiB).
const MaxMessageBytes = 8 << 20

// Config configures an Agent.
type Config struct {
	// Manager runs the host's sandboxes. Required.
	Manager *sandbox.Manager
	// Token is the shared secret that callers present as a bearer token
	// (at least MinTokenLength characters). Required unless Verifier is set.
	Token string
	// Verifier, when set, replaces Token's StaticToken.
	Verifier Verifier
	// ClientCertAuth authenticates callers by their TLS client
	// certificate instead of a bearer token: every request (RPC or
	// traffic) must come over a TLS connection whose verified client
	// certificate is the control plane's (hostapi.VerifyControlPlane);
	// Token and Verifier are not used. The server's tls.Config must
	// require and verify client certificates against the internal CA
	// (agentreg.Client.TLSConfig); on any other connection every request
	// is refused.
	ClientCertAuth bool

	// Images, when set, lists the image store's templates ("minimal",
	// "base") in ListTemplates as built-in templates.
	Images *image.Store
	// Driver, when set, names the VMM and accelerator in GetHostInfo.
	Driver vmm.Driver
	// Capacity is reported by GetHostInfo: it should be the Manager's.
	Capacity sandbox.Capacity
	// Version is the agent's version (default: the binary's module
	// version).
	Version string

	// Log receives the agent's logs (default slog.Default()).
	Log *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Agent serves hostagent.v1 over HTTP. It is an http.Handler; serve it
// with NewServer (or with Protocols()) so that HTTP/2 works in cleartext.
type Agent struct {
	cfg     Config
	mgr     *sandbox.Manager
	log     *slog.Logger
	now     func() time.Time
	started time.Time
	mux     *http.ServeMux
	// verifier checks the control plane's token (RPCs and proxy).
	verifier Verifier
	proxy    *httputil.ReverseProxy
	// proxying cancels the proxied requests of each sandbox (streams,
	// WebSockets) when it stops: its machine is gone and would never
	// close their connections.
	proxying proxyCalls
}

// New returns the agent's handler.
func New(cfg Config) (*Agent, error) {
	if cfg.Manager == nil {
		return nil, errors.New("agent: Manager is required")
	}
	v := cfg.Verifier
	if cfg.ClientCertAuth {
		v = nil
	} else if v == nil {
		st, err := NewStaticToken(cfg.Token)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		v = st
	}
	a := &Agent{cfg: cfg, mgr: cfg.Manager, log: cfg.Log, now: cfg.Now, verifier: v}
	if a.log == nil {
		a.log = slog.Default()
	}
	a.log = a.log.With("component", "agent")
	if a.now == nil {
		a.now = time.Now
	}
	if a.cfg.Version == "" {
		a.cfg.Version = BinaryVersion()
	}
	a.started = a.now()
	opts := []connect.HandlerOption{
		connect.WithInterceptors(&authInterceptor{v: v, log: a.log, certAuth: cfg.ClientCertAuth}),
		connect.WithReadMaxBytes(MaxMessageBytes),
		connect.WithSendMaxBytes(MaxMessageBytes),
		connect.WithRecover(a.recovered),
	}
	path, h := hostagentv1connect.NewHostAgentHandler(&service{a}, opts...)
	// ExportTemplate streams GiBs of template files: gzip (which the
	// handler applies to every answer a client accepts it for) would make
	// the CPU, not the network, its bottleneck (measured: 5 MB/s on a
	// loaded 2-core host); its answers go uncompressed.
	_, raw := hostagentv1connect.NewHostAgentHandler(&service{a}, append(opts, connect.WithCompression("gzip", nil, nil))...)
	a.mux = http.NewServeMux()
	a.mux.Handle(path, h)
	a.mux.Handle(hostagentv1connect.HostAgentExportTemplateProcedure, raw)
	a.proxy = a.newReverseProxy()
	return a, nil
}

// ServeHTTP implements http.Handler: sandbox traffic (requests with
// agentproxy.SandboxHeader) goes to the proxy, the rest to the RPC handler.
// Both run with the control plane's request ID in the context
// (CarryRequestID).
func (a *Agent) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	r = r.WithContext(requestContext(r))
	if a.cfg.ClientCertAuth {
		if err := hostapi.VerifyControlPlane(r.TLS); err != nil {
			a.refuseConn(w, r, err)
			return
		}
	}
	if r.Header.Get(agentproxy.SandboxHeader) != "" {
		a.serveProxy(w, r)
		return
	}
	a.mux.ServeHTTP(w, r)
}

// CarryRequestID serves next with the control plane's request ID in the
// context (agentapi.RequestIDHeader when well-formed, else a fresh one), so
// that every log line of the call carries it (logctx). The Agent does it
// for every request; it is exported for servers that put the agent's
// handler behind their own.
func CarryRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(w, r.WithContext(requestContext(r)))
	})
}

func requestContext(r *http.Request) context.Context {
	id := r.Header.Get(agentapi.RequestIDHeader)
	if !logctx.ValidID(id) {
		id = logctx.NewID()
	}
	return logctx.WithRequestID(r.Context(), id)
}

// recovered turns a handler's panic into an internal error.
func (a *Agent) recovered(ctx context.Context, spec connect.Spec, _ http.Header, p any) error {
	id := errorID()
	a.log.ErrorContext(ctx, "handler panicked", "procedure", spec.Procedure, "error_id", id,
		"panic", p, "stack", string(debug.Stack()))
	return connect.NewError(connect.CodeInternal, fmt.Errorf("internal error (error id %s)", id))
}

// Protocols are what the agent serves: HTTP/1.1, HTTP/2 over TLS and
// cleartext HTTP/2 with prior knowledge (h2c), which streaming RPCs need on
// the host network.
func Protocols() *http.Protocols {
	p := new(http.Protocols)
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	return p
}

// NewServer returns an http.Server for h on addr that speaks Protocols.
// Its timeouts bound slow clients, not RPCs: streams may last long.
func NewServer(addr string, h http.Handler, log *slog.Logger) *http.Server {
	if log == nil {
		log = slog.Default()
	}
	return &http.Server{
		Addr:              addr,
		Handler:           h,
		Protocols:         Protocols(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// BinaryVersion is the VCS revision the binary was built from (with
// "-dirty" for a modified tree), else its module version, else "dev".
func BinaryVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "dev"
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	switch {
	case rev != "":
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if dirty {
			rev += "-dirty"
		}
		return rev
	case bi.Main.Version != "" && bi.Main.Version != "(devel)":
		return bi.Main.Version
	}
	return "dev"
}
