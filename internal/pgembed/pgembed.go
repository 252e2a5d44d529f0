package pgembed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Defaults of Config.
const (
	DefaultDatabase     = "capsule"
	DefaultRole         = "capsule"
	DefaultStartTimeout = 60 * time.Second
	DefaultStopTimeout  = 30 * time.Second

	// Port names the socket file (.s.PGSQL.5432); nothing listens on TCP.
	Port = 5432
	// Superuser is the cluster's bootstrap superuser.
	Superuser = "postgres"
)

// Config configures an embedded server.
type Config struct {
	// DataDir is Capsule's data directory; the cluster lives in
	// DataDir/postgres. Required.
	DataDir string
	// BinDir holds initdb and postgres. Empty: see FindBinDir.
	BinDir string
	// User is the OS user that runs postgres when Capsule runs as root
	// (default DefaultUser, created when missing). Ignored otherwise: postgres
	// then runs as the current user.
	User string
	// Database is the application database, owned by Role (defaults
	// DefaultDatabase, DefaultRole). Both are created when missing.
	Database string
	Role     string
	// Settings are extra server settings (postgres -c name=value). They
	// cannot change the listener settings.
	Settings map[string]string
	// Ephemeral trades durability for speed (initdb --no-sync, fsync off,
	// synchronous_commit off): for tests only.
	Ephemeral bool
	// StartTimeout bounds initdb and waiting for the server to accept
	// connections; StopTimeout bounds a fast shutdown before it is made
	// immediate. Zero: the defaults.
	StartTimeout time.Duration
	StopTimeout  time.Duration
	// Logger receives progress and the server's fatal errors (default
	// slog.Default()).
	Logger *slog.Logger
}

// Server is a running embedded PostgreSQL. Its methods are safe for
// concurrent use.
type Server struct {
	cfg     Config
	log     *slog.Logger
	root    string // DataDir/postgres
	pgdata  string
	sockDir string
	logPath string
	binDir  string
	version string
	id      identity

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error // set before done is closed

	closeOnce sync.Once
	closeErr  error
}

// Start initializes the cluster if needed (once), starts postgres, waits
// until it accepts connections and creates the application role and
// database. ctx bounds the start only; the server runs until Close.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.DataDir == "" {
		return nil, errors.New("pgembed: Config.DataDir is required")
	}
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	cfg.DataDir = dataDir
	if cfg.Database == "" {
		cfg.Database = DefaultDatabase
	}
	if cfg.Role == "" {
		cfg.Role = DefaultRole
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultStartTimeout
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	s := &Server{
		cfg:  cfg,
		log:  log.With("component", "pgembed"),
		root: filepath.Join(dataDir, "postgres"),
		done: make(chan struct{}),
	}
	s.pgdata = filepath.Join(s.root, "data")
	s.sockDir = filepath.Join(s.root, "run")
	s.logPath = filepath.Join(s.root, "postgres.log")
	// sun_path holds 107 bytes.
	if n := len(filepath.Join(s.sockDir, fmt.Sprintf(".s.PGSQL.%d.lock", Port))); n > 107 {
		return nil, fmt.Errorf("pgembed: data directory %s is too deep: the socket path would be %d bytes, the limit is 107", dataDir, n)
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.StartTimeout)
	defer cancel()

	if s.id, err = resolveIdentity(cfg.User, s.log); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	for _, d := range []string{s.root, s.sockDir} {
		if err := os.Mkdir(d, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("pgembed: %w", err)
		}
		if err := os.Chmod(d, 0o700); err != nil {
			return nil, fmt.Errorf("pgembed: %w", err)
		}
	}
	if err := checkSearchable(s.root, s.id); err != nil {
		return nil, err
	}
	if err := chownTree(s.root, s.id); err != nil {
		return nil, err
	}

	clusterVersion := ""
	if b, err := os.ReadFile(filepath.Join(s.pgdata, "PG_VERSION")); err == nil {
		clusterVersion = strings.TrimSpace(string(b))
	}
	if s.binDir, err = FindBinDir(cfg.BinDir, clusterVersion); err != nil {
		return nil, err
	}
	if s.version, err = BinVersion(s.binDir); err != nil {
		return nil, err
	}
	if clusterVersion != "" && clusterVersion != s.version {
		return nil, fmt.Errorf("pgembed: the cluster in %s was made by PostgreSQL %s, but %s has PostgreSQL %s", s.pgdata, clusterVersion, s.binDir, s.version)
	}
	if clusterVersion == "" {
		if err := s.initdb(ctx); err != nil {
			return nil, err
		}
	}
	if err := recoverStale(s.pgdata, s.sockDir, cfg.StopTimeout, s.log); err != nil {
		return nil, err
	}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	if err := s.setup(ctx); err != nil {
		_ = s.Close()
		return nil, err
	}
	s.log.Info("pgembed: PostgreSQL ready", "version", s.version, "dir", s.root, "database", cfg.Database)
	return s, nil
}

// initdb makes the cluster in a scratch directory and renames it into place,
// so an interrupted initdb is simply redone.
func (s *Server) initdb(ctx context.Context) error {
	tmp := s.pgdata + ".initdb"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	if err := os.RemoveAll(s.pgdata); err != nil { // a cluster without PG_VERSION is no cluster
		return fmt.Errorf("pgembed: %w", err)
	}
	s.log.Info("pgembed: initializing a PostgreSQL cluster", "dir", s.pgdata, "bin", s.binDir)
	args := []string{"-D", tmp, "-U", Superuser, "--auth-local=trust", "--auth-host=reject",
		"--encoding=UTF8", "--no-instructions"}
	if s.cfg.Ephemeral {
		args = append(args, "--no-sync")
	}
	var out []byte
	var err error
	for _, locale := range []string{"C.UTF-8", "C"} {
		cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, "initdb"), append(args, "--locale="+locale)...)
		s.prepare(cmd)
		if out, err = cmd.CombinedOutput(); err == nil {
			break
		}
		_ = os.RemoveAll(tmp)
		if !strings.Contains(string(out), "locale") {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("pgembed: initdb: %w: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, s.pgdata); err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	return nil
}

// prepare sets what every child process gets: a minimal environment, the
// cluster directory as working directory and the identity.
func (s *Server) prepare(cmd *exec.Cmd) {
	cmd.Dir = s.root
	cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin", "TZ=UTC", "HOME=" + s.root, "LC_ALL=C"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.id.cred}
}

// settings returns the server's -c settings: the caller's, then the fixed
// listener settings, which always win.
func (s *Server) settings() map[string]string {
	set := map[string]string{
		"log_min_messages": "warning",
		"log_timezone":     "UTC",
		"TimeZone":         "UTC",
		"log_line_prefix":  "%m [%p] ",
	}
	if s.cfg.Ephemeral {
		set["fsync"] = "off"
		set["synchronous_commit"] = "off"
		set["full_page_writes"] = "off"
	}
	maps.Copy(set, s.cfg.Settings)
	maps.Copy(set, map[string]string{
		"listen_addresses":        "",
		"port":                    fmt.Sprint(Port),
		"unix_socket_directories": s.sockDir,
		"unix_socket_permissions": "0700",
	})
	return set
}

func (s *Server) start(ctx context.Context) error {
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("pgembed: %w", err)
	}
	defer logFile.Close() // the child has its own descriptor
	set := s.settings()
	args := []string{"-D", s.pgdata}
	for _, k := range slices.Sorted(maps.Keys(set)) {
		args = append(args, "-c", k+"="+set[k])
	}
	cmd := exec.Command(filepath.Join(s.binDir, "postgres"), args...)
	s.prepare(cmd)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	// Own process group: a terminal's Ctrl-C reaches Capsule only, which
	// stops postgres after its own shutdown. Pdeathsig: if Capsule dies,
	// postgres shuts down fast.
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGINT
	s.cmd = cmd

	// The kernel sends Pdeathsig when the thread that forked the child exits,
	// not the process: fork from a locked thread that lives as long as the
	// child (a locked goroutine's thread ends with it).
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		s.waitErr = cmd.Wait()
		close(s.done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("pgembed: start postgres: %w", err)
	}
	s.log.Debug("pgembed: postgres started", "pid", cmd.Process.Pid)

	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		conn, err := pgconn.Connect(cctx, s.dsn(Superuser, "postgres"))
		cancel()
		if err == nil {
			_ = conn.Close(ctx)
			return nil
		}
		select {
		case <-s.done:
			return fmt.Errorf("pgembed: postgres exited during start (%v); its log %s ends with:\n%s", s.waitErr, s.logPath, s.logTail(20))
		case <-ctx.Done():
			_ = s.Close()
			return fmt.Errorf("pgembed: postgres not ready: %w (last error: %v); its log %s ends with:\n%s", ctx.Err(), err, s.logPath, s.logTail(20))
		case <-tick.C:
		}
	}
}

// setup creates the application role and database when missing.
func (s *Server) setup(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, s.dsn(Superuser, "postgres"))
	if err != nil {
		return fmt.Errorf("pgembed: connect: %w", err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", s.cfg.Role).Scan(&exists); err != nil {
		return fmt.Errorf("pgembed: look up role: %w", err)
	}
	if !exists {
		if _, err := conn.Exec(ctx, "CREATE ROLE "+pgx.Identifier{s.cfg.Role}.Sanitize()+" LOGIN"); err != nil && !isDuplicate(err) {
			return fmt.Errorf("pgembed: create role %s: %w", s.cfg.Role, err)
		}
	}
	return s.createDatabase(ctx, conn, s.cfg.Database, "", true)
}

func (s *Server) createDatabase(ctx context.Context, conn *pgx.Conn, name, template string, ifMissing bool) error {
	if ifMissing {
		var exists bool
		if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
			return fmt.Errorf("pgembed: look up database: %w", err)
		}
		if exists {
			return nil
		}
	}
	q := "CREATE DATABASE " + pgx.Identifier{name}.Sanitize() + " OWNER " + pgx.Identifier{s.cfg.Role}.Sanitize()
	if template != "" {
		q += " TEMPLATE " + pgx.Identifier{template}.Sanitize()
	}
	if _, err := conn.Exec(ctx, q); err != nil && !(ifMissing && isDuplicate(err)) {
		return fmt.Errorf("pgembed: create database %s: %w", name, err)
	}
	return nil
}

func isDuplicate(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "42710" || pgErr.Code == "23505")
}

// CreateDatabase creates database name owned by the application role, as a
// copy of template (empty: template1). No session may be connected to the
// template meanwhile.
func (s *Server) CreateDatabase(ctx context.Context, name, template string) error {
	conn, err := pgx.Connect(ctx, s.dsn(Superuser, "postgres"))
	if err != nil {
		return fmt.Errorf("pgembed: connect: %w", err)
	}
	defer conn.Close(context.Background())
	return s.createDatabase(ctx, conn, name, template, false)
}

// DropDatabase drops database name, disconnecting its sessions.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	conn, err := pgx.Connect(ctx, s.dsn(Superuser, "postgres"))
	if err != nil {
		return fmt.Errorf("pgembed: connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgembed: drop database %s: %w", name, err)
	}
	return nil
}

// DSN returns the connection string of the application database as the
// application role (key=value form, Unix socket).
func (s *Server) DSN() string { return s.dsn(s.cfg.Role, s.cfg.Database) }

// DatabaseDSN returns the connection string of another database, as the
// application role.
func (s *Server) DatabaseDSN(database string) string { return s.dsn(s.cfg.Role, database) }

// SuperuserDSN returns the connection string of database as the superuser.
func (s *Server) SuperuserDSN(database string) string { return s.dsn(Superuser, database) }

func (s *Server) dsn(user, database string) string {
	return fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable",
		quoteDSN(s.sockDir), Port, quoteDSN(user), quoteDSN(database))
}

// quoteDSN quotes a key=value connection string value.
func quoteDSN(v string) string {
	if v != "" && !strings.ContainsAny(v, ` '\`) {
		return v
	}
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(v) + "'"
}

// Dir returns the cluster directory (DataDir/postgres).
func (s *Server) Dir() string { return s.root }

// SocketDir returns the directory of the server's Unix socket.
func (s *Server) SocketDir() string { return s.sockDir }

// LogPath returns the server's log file.
func (s *Server) LogPath() string { return s.logPath }

// Version returns the server's major version ("15").
func (s *Server) Version() string { return s.version }

// PID returns the postmaster's process ID.
func (s *Server) PID() int { return s.cmd.Process.Pid }

// Done is closed when postgres has exited (after Close, or on its own).
func (s *Server) Done() <-chan struct{} { return s.done }

// Err returns how postgres exited; nil while it runs.
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.waitErr
	default:
		return nil
	}
}

// Close shuts postgres down: fast (SIGINT: sessions are ended, a checkpoint
// is written), then, after StopTimeout, immediate (SIGQUIT), then SIGKILL.
// It is idempotent and returns an error only if the server did not stop
// cleanly.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		select {
		case <-s.done:
			if s.waitErr != nil {
				s.closeErr = fmt.Errorf("pgembed: postgres had exited: %w", s.waitErr)
			}
			return
		default:
		}
		steps := []struct {
			sig  syscall.Signal
			wait time.Duration
		}{{syscall.SIGINT, s.cfg.StopTimeout}, {syscall.SIGQUIT, 5 * time.Second}, {syscall.SIGKILL, time.Minute}}
		for i, st := range steps {
			if err := s.cmd.Process.Signal(st.sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
				s.log.Warn("pgembed: signal postgres", "signal", st.sig, "err", err)
			}
			t := time.NewTimer(st.wait)
			select {
			case <-s.done:
				t.Stop()
				if i > 0 {
					s.closeErr = fmt.Errorf("pgembed: postgres did not shut down in %v; stopped with %v", s.cfg.StopTimeout, st.sig)
				} else if s.waitErr != nil {
					s.closeErr = fmt.Errorf("pgembed: postgres shutdown: %w", s.waitErr)
				}
				s.log.Info("pgembed: PostgreSQL stopped")
				return
			case <-t.C:
				s.log.Warn("pgembed: postgres is slow to stop", "signal", st.sig)
			}
		}
		s.closeErr = errors.New("pgembed: postgres does not exit")
	})
	return s.closeErr
}

// logTail returns the last n lines of the server's log.
func (s *Server) logTail(n int) string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	const limit = 16 << 10
	st, err := f.Stat()
	if err != nil {
		return ""
	}
	off := max(0, st.Size()-limit)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
