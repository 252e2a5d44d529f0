package pgembed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/capsulehq/capsule/internal/testenv"
)

func requireBinaries(t *testing.T) {
	t.Helper()
	if _, err := FindBinDir(os.Getenv("CAPSULE_PG_BIN_DIR"), ""); err != nil {
		testenv.Skip(t, "needs PostgreSQL server binaries (apt-get install postgresql-15): "+err.Error())
	}
}

// dataDir returns a fresh data directory that postgres can reach when the
// tests run as root (t.TempDir's directories are 0700).
func dataDir(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	for _, p := range []string{d, filepath.Dir(d)} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

func testConfig(dir string) Config {
	return Config{
		DataDir:   dir,
		BinDir:    os.Getenv("CAPSULE_PG_BIN_DIR"),
		Ephemeral: true,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func connect(t *testing.T, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func queryString(t *testing.T, c *pgx.Conn, q string, args ...any) string {
	t.Helper()
	var s string
	if err := c.QueryRow(context.Background(), q, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return s
}

func TestStartRestartAndClose(t *testing.T) {
	requireBinaries(t)
	dir := dataDir(t)
	// Debris of an initdb that was interrupted: redone.
	for _, d := range []string{"postgres/data.initdb/base", "postgres/data/global"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	s := start(t, testConfig(dir))

	c := connect(t, s.DSN())
	for q, want := range map[string]string{
		"SHOW listen_addresses":        "",
		"SHOW unix_socket_permissions": "0700",
		"SELECT current_user":          DefaultRole,
		"SELECT current_database()":    DefaultDatabase,
		"SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user": "false",
		"SHOW server_encoding": "UTF8",
		"SHOW TimeZone":        "UTC",
		"SELECT (gen_random_uuid()::text ~ '^[0-9a-f-]{36}$')::text": "true",
	} {
		if got := queryString(t, c, q); got != want {
			t.Errorf("%s = %q, want %q", q, got, want)
		}
	}
	if _, err := c.Exec(context.Background(), "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')"); err != nil {
		t.Fatal(err)
	}
	_ = c.Close(context.Background())

	for _, p := range []string{s.Dir(), s.SocketDir(), filepath.Join(s.Dir(), "data")} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o700 {
			t.Errorf("%s has mode %o, want 0700", p, st.Mode().Perm())
		}
		if os.Geteuid() == 0 {
			if uid := st.Sys().(*syscall.Stat_t).Uid; uid == 0 {
				t.Errorf("%s belongs to root; postgres's user should own it", p)
			}
		}
	}
	if os.Geteuid() == 0 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.PID()))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "\nUid:\t0\t") {
			t.Error("postgres runs as root")
		}
	}

	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case <-s.Done():
	default:
		t.Fatal("Done not closed after Close")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "postgres", "data", "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid after a clean stop: %v", err)
	}

	// A restart reuses the cluster (no second initdb) and keeps the data.
	verBefore, _ := os.Stat(filepath.Join(dir, "postgres", "data", "PG_VERSION"))
	s2 := start(t, testConfig(dir))
	verAfter, _ := os.Stat(filepath.Join(dir, "postgres", "data", "PG_VERSION"))
	if !verBefore.ModTime().Equal(verAfter.ModTime()) {
		t.Error("the cluster was initialized again on restart")
	}
	c2 := connect(t, s2.DSN())
	if got := queryString(t, c2, "SELECT v FROM kept"); got != "hello" {
		t.Errorf("kept = %q", got)
	}
}

// A crash leaves postmaster.pid behind, and in a container its PID is soon
// another process's: Start must not be fooled by either.
func TestStalePostmasterPID(t *testing.T) {
	requireBinaries(t)
	dir := dataDir(t)
	s := start(t, testConfig(dir))
	pidFile := filepath.Join(dir, "postgres", "data", "postmaster.pid")
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-s.Done()
	if _, err := os.Stat(pidFile); err != nil {
		t.Fatalf("no postmaster.pid after SIGKILL: %v", err)
	}
	// Point the lock file at a live process that is not postgres (this test).
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitN(string(b), "\n", 2)
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"+lines[1]), 0o600); err != nil {
		t.Fatal(err)
	}
	waitNoPostgres(t, filepath.Join(dir, "postgres", "data"))

	s2 := start(t, testConfig(dir))
	c := connect(t, s2.DSN())
	if got := queryString(t, c, "SELECT 'up'"); got != "up" {
		t.Fatal(got)
	}
}

// A postmaster of a previous run that is still alive (its parent died and
// it has not finished shutting down, or Pdeathsig could not be delivered) is
// shut down by the next Start.
func TestLeftoverPostmaster(t *testing.T) {
	requireBinaries(t)
	dir := dataDir(t)
	old := start(t, testConfig(dir))
	s := start(t, testConfig(dir))
	select {
	case <-old.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the leftover postmaster still runs")
	}
	c := connect(t, s.DSN())
	if got := queryString(t, c, "SELECT 'up'"); got != "up" {
		t.Fatal(got)
	}
}

func waitNoPostgres(t *testing.T, pgdata string) {
	t.Helper()
	if !waitGone(pgdata, 10*time.Second) {
		t.Fatalf("postgres processes still in %s: %v", pgdata, processesIn(pgdata))
	}
}

func TestMain(m *testing.M) {
	if dir := os.Getenv("PGEMBED_PDEATHSIG_DIR"); dir != "" {
		pdeathsigHelper(dir)
	}
	os.Exit(m.Run())
}

// pdeathsigHelper is the child of TestParentDeath: it starts a server,
// prints its PID and waits to be killed.
func pdeathsigHelper(dir string) {
	s, err := Start(context.Background(), testConfig(dir))
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("PID", s.PID())
	select {}
}

// When Capsule dies without Close (SIGKILL), postgres must stop by itself.
func TestParentDeath(t *testing.T) {
	requireBinaries(t)
	dir := dataDir(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PGEMBED_PDEATHSIG_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	sc := bufio.NewScanner(out)
	pid := 0
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "PID "); ok {
			pid, _ = strconv.Atoi(rest)
			break
		}
		if strings.HasPrefix(line, "ERROR") {
			t.Fatal(line)
		}
	}
	if pid == 0 {
		t.Fatal("the helper did not report a PID")
	}
	pgdata := filepath.Join(dir, "postgres", "data")
	if !processIn(pid, pgdata) {
		t.Fatalf("postmaster %d is not running", pid)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	waitNoPostgres(t, pgdata)
	// It shut down cleanly (fast shutdown removes the lock file).
	if _, err := os.Stat(filepath.Join(pgdata, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid after the parent's death: %v", err)
	}
}

// A cluster of a version whose binaries are missing is not touched.
func TestClusterVersionMismatch(t *testing.T) {
	requireBinaries(t)
	dir := dataDir(t)
	pgdata := filepath.Join(dir, "postgres", "data")
	if err := os.MkdirAll(pgdata, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pgdata, "PG_VERSION"), []byte("9.6\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), testConfig(dir))
	if err == nil || !strings.Contains(err.Error(), "PostgreSQL 9.6") {
		t.Fatalf("err = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(pgdata, "PG_VERSION")); string(b) != "9.6\n" {
		t.Error("the cluster was changed")
	}
}

// As root, postgres runs as another user, which must be able to reach the
// data directory: Start says which directory is in the way.
func TestUnreachableDataDir(t *testing.T) {
	if os.Geteuid() != 0 {
		return // postgres runs as the current user: nothing can be in the way
	}
	requireBinaries(t)
	d := dataDir(t)
	private := filepath.Join(d, "private")
	if err := os.Mkdir(private, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), testConfig(filepath.Join(private, "capsule")))
	if err == nil || !strings.Contains(err.Error(), "chmod o+x "+private) {
		t.Fatalf("err = %v", err)
	}
}

func TestSocketPathTooLong(t *testing.T) {
	_, err := Start(context.Background(), Config{DataDir: "/" + strings.Repeat("d", 100)})
	if err == nil || !strings.Contains(err.Error(), "too deep") {
		t.Fatalf("err = %v", err)
	}
}

func TestFindBinDir(t *testing.T) {
	requireBinaries(t)
	if _, err := FindBinDir(t.TempDir(), ""); !errors.Is(err, ErrNoBinaries) {
		t.Errorf("empty configured dir: err = %v", err)
	}
	d, err := FindBinDir("", "")
	if err != nil {
		t.Fatal(err)
	}
	v, err := BinVersion(d)
	if err != nil {
		t.Fatal(err)
	}
	if d2, err := FindBinDir("", v); err != nil || d2 != d {
		t.Errorf("FindBinDir(%q) = %q, %v; want %q", v, d2, err, d)
	}
	if _, err := FindBinDir("", "7.1"); err == nil || !strings.Contains(err.Error(), "pg_upgrade") {
		t.Errorf("missing version: err = %v", err)
	}
	if d2, err := FindBinDir(d, ""); err != nil || d2 != d {
		t.Errorf("configured: %q, %v", d2, err)
	}
}

func TestVersionOrder(t *testing.T) {
	a, _ := parseVersion("9.6")
	b, _ := parseVersion("15")
	c, _ := parseVersion("16")
	if !versionLess(a, b) || !versionLess(b, c) || versionLess(c, b) {
		t.Error("version order")
	}
	if _, ok := parseVersion("main"); ok {
		t.Error("parsed a non-version")
	}
}

func TestQuoteDSN(t *testing.T) {
	for in, want := range map[string]string{
		"/var/lib/capsule/postgres/run": "/var/lib/capsule/postgres/run",
		"/tmp/a b":                      `'/tmp/a b'`,
		`it's`:                          `'it\'s'`,
		`a\b`:                           `'a\\b'`,
		"":                              `''`,
	} {
		if got := quoteDSN(in); got != want {
			t.Errorf("quoteDSN(%q) = %s, want %s", in, got, want)
		}
	}
	// The quoted form parses back.
	cfg, err := pgx.ParseConfig("host=" + quoteDSN("/tmp/a b'c") + " user=x dbname=y")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Host != "/tmp/a b'c" {
		t.Errorf("host = %q", cfg.Host)
	}
}
