package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
)

// TestMain stops this process's PostgreSQL test server after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopTestServer()
	os.Exit(code)
}

func TestMigrateCommand(t *testing.T) {
	dsn := pgtest.EmptyDatabaseForTest(t)
	var out bytes.Buffer
	if err := runMigrate(t.Context(), []string{"status", "--database-url", dsn}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "schema version 0 (newest 1)") {
		t.Errorf("status: %q", out.String())
	}
	out.Reset()
	if err := runMigrate(t.Context(), []string{"--database-url", dsn}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "schema version 1 (newest 1)") {
		t.Errorf("up: %q", out.String())
	}
	if err := runMigrate(t.Context(), []string{"sideways"}, &out); err == nil {
		t.Error("an unknown argument was accepted")
	}
}

// With no database URL, `capsule migrate` runs the embedded server.
func TestMigrateCommandEmbedded(t *testing.T) {
	pgtest.TestServer(t) // skips without PostgreSQL binaries
	d := t.TempDir()
	for _, p := range []string{d, filepath.Dir(d)} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("DATABASE_URL", "")
	var out bytes.Buffer
	if err := runMigrate(t.Context(), []string{"up", "--data-dir", d}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "schema version 1 (newest 1)") {
		t.Errorf("up: %q", out.String())
	}
}
