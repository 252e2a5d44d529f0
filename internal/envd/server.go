package envd

import (
	"errors"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/capsulehq/capsule/gen/envd/filesystem/filesystemconnect"
	"github.com/capsulehq/capsule/gen/envd/process/processconnect"
	"github.com/capsulehq/capsule/internal/envdapi"
)

// Version is the envd protocol version this agent implements and advertises
// (envdapi.Version, where clients read it).
const Version = envdapi.Version

// DefaultPort is the TCP port envd listens on in every sandbox
// (envdapi.DefaultPort).
const DefaultPort = envdapi.DefaultPort

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
	// NotInSandbox marks an envd running outside a sandbox VM, as E2B's
	// envd with -isnotfc (the SDKs' debug mode runs against that):
	// E2B_SANDBOX is "false" instead of "true".
	NotInSandbox bool
	// RunDir, when set, is where New writes E2B's sandbox metadata files
	// (.E2B_SANDBOX, and .E2B_SANDBOX_ID / .E2B_TEMPLATE_ID when known),
	// which processes may read instead of the environment. E2B uses
	// /run/e2b.
	RunDir string
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
	s.sysEnv = map[string]string{"E2B_SANDBOX": strconv.FormatBool(!cfg.NotInSandbox)}
	if cfg.SandboxID != "" {
		s.sysEnv["E2B_SANDBOX_ID"] = cfg.SandboxID
	}
	if cfg.TemplateID != "" {
		s.sysEnv["E2B_TEMPLATE_ID"] = cfg.TemplateID
	}
	if cfg.RunDir != "" {
		if err := writeRunFiles(cfg.RunDir, s.sysEnv); err != nil {
			s.log.Warn("cannot write sandbox metadata files", "dir", cfg.RunDir, "err", err)
		}
	}
	s.procs = newProcessManager(s)
	s.watchers = newWatcherRegistry()
	return s
}

// writeRunFiles writes each of E2B_SANDBOX, E2B_SANDBOX_ID and
// E2B_TEMPLATE_ID that env holds to dir/.<name>, readable by every user, as
// E2B's envd does in /run/e2b.
func writeRunFiles(dir string, env map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, name := range []string{"E2B_SANDBOX", "E2B_SANDBOX_ID", "E2B_TEMPLATE_ID"} {
		if v, ok := env[name]; ok {
			errs = append(errs, writeFileAtomic(filepath.Join(dir, "."+name), []byte(v), 0o444))
		}
	}
	return errors.Join(errs...)
}

// writeFileAtomic replaces p with a file holding data: written next to it,
// then renamed over it, so that a read-only file left by an earlier run is
// no obstacle and readers never see a partial file.
func writeFileAtomic(p string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(p), "."+filepath.Base(p)+".tmp-*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(perm), f.Close())
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
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
