// Package pgtest is the PostgreSQL of Capsule's tests: one embedded server
// (package pgembed) per test process, started on first use in a temporary
// directory with durability off, and a database per test, cloned from a
// template migrated once (db/migrations).
//
// It is test support and links the testing package, so production code
// never imports it (internal/deptest checks that the binaries do not link
// testing); tests and the test helpers (service/servicetest) do.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/capsulehq/capsule/db/migrations"
	"github.com/capsulehq/capsule/internal/pgembed"
	"github.com/capsulehq/capsule/internal/testenv"
)

// The test server: one per test process (per package's test binary), started
// on first use in a temporary directory, with durability off. Each test gets
// its own database, cloned from a template database migrated once.
var shared struct {
	once sync.Once
	srv  *pgembed.Server
	dir  string
	err  error

	tmplOnce sync.Once
	tmplErr  error

	seq atomic.Int64
}

const testTemplateDB = "capsule_test_template"

// TestServer returns this test process's PostgreSQL server, starting it on
// first use. Without PostgreSQL server binaries the test is skipped (failed
// under CAPSULE_TEST_STRICT=1).
func TestServer(t testing.TB) *pgembed.Server {
	t.Helper()
	if _, err := pgembed.FindBinDir(os.Getenv("CAPSULE_PG_BIN_DIR"), ""); err != nil {
		testenv.Skip(t, "needs PostgreSQL server binaries (apt-get install postgresql-15): "+err.Error())
	}
	shared.once.Do(startShared)
	if shared.err != nil {
		t.Fatalf("pgtest: test server: %v", shared.err)
	}
	return shared.srv
}

func startShared() {
	sweepTestDirs()
	dir, err := os.MkdirTemp("", "capsule-pgtest-")
	if err != nil {
		shared.err = err
		return
	}
	shared.dir = dir
	// postgres may run as another user (when tests run as root): let it
	// reach its directory.
	if err := os.Chmod(dir, 0o711); err != nil {
		shared.err = err
		return
	}
	if err := os.WriteFile(filepath.Join(dir, "owner"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		shared.err = err
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	shared.srv, shared.err = pgembed.Start(ctx, pgembed.Config{
		DataDir:   dir,
		BinDir:    os.Getenv("CAPSULE_PG_BIN_DIR"),
		Ephemeral: true,
		Settings:  map[string]string{"max_connections": "300"},
		Logger:    slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
}

// sweepTestDirs removes the directories of test servers whose test process
// is gone (their postgres stopped by Pdeathsig when it died).
func sweepTestDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "capsule-pgtest-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "owner"))
		if err != nil {
			if st, err := os.Stat(d); err == nil && time.Since(st.ModTime()) > time.Hour {
				_ = os.RemoveAll(d)
			}
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err == nil && pid > 0 {
			if err := syscall.Kill(pid, 0); err == nil || errors.Is(err, syscall.EPERM) {
				continue // still running
			}
		}
		if pgembed.Running(filepath.Join(d, "postgres", "data")) {
			continue // its postgres is still shutting down
		}
		_ = os.RemoveAll(d)
	}
}

// StopTestServer stops this process's test server, if started, and removes
// its directory. For a TestMain that wants to leave nothing behind:
//
//	func TestMain(m *testing.M) {
//		code := m.Run()
//		pgtest.StopTestServer()
//		os.Exit(code)
//	}
//
// Without it the server stops when the test process exits (Pdeathsig) and a
// later test run removes the directory.
func StopTestServer() {
	if shared.srv != nil {
		_ = shared.srv.Close()
	}
	if shared.dir != "" {
		_ = os.RemoveAll(shared.dir)
	}
}

// StartForTest returns the DSN of a new database for t that holds Capsule's
// migrated schema (db/migrations), on this process's test server. The
// database is a copy of a template migrated once per process, so this costs
// one CREATE DATABASE (tens of milliseconds); it is dropped when t ends.
func StartForTest(t testing.TB) string {
	t.Helper()
	srv := TestServer(t)
	shared.tmplOnce.Do(func() { shared.tmplErr = migrateTemplate(srv) })
	if shared.tmplErr != nil {
		t.Fatalf("pgtest: template database: %v", shared.tmplErr)
	}
	return newTestDatabase(t, srv, testTemplateDB)
}

// EmptyDatabaseForTest returns the DSN of a new empty database for t (no
// schema), dropped when t ends.
func EmptyDatabaseForTest(t testing.TB) string {
	t.Helper()
	return newTestDatabase(t, TestServer(t), "")
}

func newTestDatabase(t testing.TB, srv *pgembed.Server, template string) string {
	t.Helper()
	name := fmt.Sprintf("t%d_%s", shared.seq.Add(1), dbNamePart(t.Name()))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.CreateDatabase(ctx, name, template); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.DropDatabase(ctx, name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return srv.DatabaseDSN(name)
}

// dbNamePart makes a short identifier-safe fragment of a test name.
func dbNamePart(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		if b.Len() >= 40 {
			break
		}
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

func migrateTemplate(srv *pgembed.Server) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := srv.CreateDatabase(ctx, testTemplateDB, ""); err != nil {
		return err
	}
	cfg, err := pgx.ParseConfig(srv.DatabaseDSN(testTemplateDB))
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	db := stdlib.OpenDB(*cfg)
	_, err = migrations.Up(ctx, db, nil)
	// No session may stay connected to a template that is copied.
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	return err
}
