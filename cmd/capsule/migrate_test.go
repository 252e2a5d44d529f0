package main

import (
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/db/migrations"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
)

// TestMain stops this process's PostgreSQL test server after the tests.
func TestMigrateCommand(t *testing.T) {
	dsn := pgtest.EmptyDatabaseForTest(t)
	var out bytes.Buffer
	if err := runMigrate(t.Context(), []string{"status", "--database-url", dsn}, &out); err != nil {
		t.Fatal(err)
	}
	newest := newestMigration(t)
	if !strings.Contains(out.String(), fmt.Sprintf("schema version 0 (newest %d)", newest)) {
		t.Errorf("status: %q", out.String())
	}
	out.Reset()
	if err := runMigrate(t.Context(), []string{"--database-url", dsn}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), fmt.Sprintf("schema version %d (newest %d)", newest, newest)) {
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
	if n := newestMigration(t); !strings.Contains(out.String(), fmt.Sprintf("schema version %d (newest %d)", n, n)) {
		t.Errorf("up: %q", out.String())
	}
}

// newestMigration is the version of the newest embedded migration.
func newestMigration(t *testing.T) int {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("embedded migrations: %v, %v", files, err)
	}
	var v int
	if _, err := fmt.Sscanf(files[len(files)-1], "%05d_", &v); err != nil {
		t.Fatalf("migration file name %q: %v", files[len(files)-1], err)
	}
	return v
}
