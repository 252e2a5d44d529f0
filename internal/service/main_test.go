package service

import (
	"os"
	"testing"

	"github.com/capsulehq/capsule/internal/pgembed"
)

// TestMain stops this process's PostgreSQL test server after the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	pgembed.StopTestServer()
	os.Exit(code)
}
