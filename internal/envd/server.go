package envd

import (
	"log/slog"
	"maps"
	"net/http"
	"sync"
	"time"

	"github.com/capsulehq/capsule/gen/envd/filesystem/filesystemconnect"
	"github.com/capsulehq/capsule/gen/envd/process/processconnect"
)

// Version is the envd protocol version this agent implements and advertises
// (spec §8). 0.6.13 is the E2B reference; every SDK 2.51.0 feature gate
// (≤ 0.6.4) is implemented.
const Version = "0.6.13"

// DefaultPort is the TCP port envd listens on in every sandbox.
const DefaultPort = 49983

// Config configures a Server.
type Config struct {
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
	// DefaultUser is the user selected when a request names none, until
	// POST /init sets another. Empty means "root", as in E2B.
	DefaultUser string
	// Guest enables guest-only side effects of POST /init: setting the
	// system clock and installing CA bundles.
	Guest bool
	// CABundleDir is where POST /init writes caBundle certificates when
	// Guest is set; empty means /usr/local/share/ca-certificates.
	CABundleDir string
	// SandboxID and TemplateID are exported to every process as
	// E2B_SANDBOX_ID and E2B_TEMPLATE_ID when non-empty.
	SandboxID, TemplateID string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Children, when set, is told about every process envd spawns (the PID 1
	// reaper of a guest must not steal their exit status).
	Children ChildTracker
}

// Server is an envd instance. Create it with New and serve Handler().
type Server struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu             sync.RWMutex
	accessToken    string
	envVars        map[string]string // set by /init; replaced as a whole
	sysEnv         map[string]string // E2B_* variables envd owns
	defaultUser    string
	defaultWorkdir string
	lastInit       time.Time

	procs    *processManager
	watchers *watcherRegistry
	cpu      cpuSampler
}

// New returns a Server with no access token and an empty global environment.
func New(cfg Config) *Server {
	s := &Server{cfg: cfg, log: cfg.Logger, now: cfg.Now}
	if s.log == nil {
		s.log = slog.Default()
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.defaultUser = cfg.DefaultUser
	if s.defaultUser == "" {
		s.defaultUser = "root"
	}
	s.envVars = map[string]string{}
	s.sysEnv = map[string]string{"E2B_SANDBOX": "true"}
	if cfg.SandboxID != "" {
		s.sysEnv["E2B_SANDBOX_ID"] = cfg.SandboxID
	}
	if cfg.TemplateID != "" {
		s.sysEnv["E2B_TEMPLATE_ID"] = cfg.TemplateID
	}
	s.procs = newProcessManager(s)
	s.watchers = newWatcherRegistry()
	return s
}

// Handler returns the complete HTTP handler: CORS, the access-token check,
// the Connect services and the REST routes.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(processconnect.NewProcessHandler(&processService{s: s}))
	mux.Handle(filesystemconnect.NewFilesystemHandler(&filesystemService{s: s}))
	mux.HandleFunc("GET /health", s.handleHealth)
	mux.HandleFunc("POST /init", s.handleInit)
	mux.HandleFunc("GET /envs", s.handleEnvs)
	mux.HandleFunc("GET /metrics", s.handleMetrics)
	mux.HandleFunc("GET /files", s.handleDownload)
	mux.HandleFunc("POST /files", s.handleUpload)
	mux.HandleFunc("POST /files/compose", s.handleCompose)
	return withCORS(s.withAuth(mux))
}

// NewHTTPServer wraps Handler in an http.Server tuned for long-lived
// streams: no read or write timeouts, and an idle timeout longer than any
// proxy in front of it (E2B uses 640 s).
func (s *Server) NewHTTPServer(addr string) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           s.Handler(),
		IdleTimeout:       640 * time.Second,
		ReadHeaderTimeout: 30 * time.Second,
	}
}

// Close stops every process and watcher the server started.
func (s *Server) Close() {
	s.procs.killAll()
	s.watchers.closeAll()
}

// environ returns the global environment of new processes: envd's own
// E2B_* variables overlaid by the variables /init set.
func (s *Server) environ() map[string]string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	env := maps.Clone(s.sysEnv)
	maps.Copy(env, s.envVars)
	return env
}

func (s *Server) token() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.accessToken
}

func (s *Server) defaults() (user, workdir string) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.defaultUser, s.defaultWorkdir
}
