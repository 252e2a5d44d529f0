package main

import (
	"os"
	"testing"

	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
)

// TestMain stops the shared test PostgreSQL and removes the binaries the
// crash tests built once every test has run.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopTestServer()
	if serveBinDir != "" {
		os.RemoveAll(serveBinDir)
	}
	os.Exit(code)
}
