package controlplane

import (
	"os"
	"testing"

	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
)

// TestMain stops this process's PostgreSQL test server after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopTestServer()
	os.Exit(code)
}
