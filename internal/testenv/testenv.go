// Package testenv lets tests declare what they need from the machine. A
// missing requirement skips the test with the reason, unless
// CAPSULE_TEST_STRICT=1 (set by CI), which turns the skip into a failure:
// in CI every test must really run.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// Strict reports whether skips are failures (CAPSULE_TEST_STRICT=1).
func Strict() bool { return os.Getenv("CAPSULE_TEST_STRICT") == "1" }

// Skip skips t with reason, or fails it in strict mode.
func Skip(t testing.TB, reason string) {
	t.Helper()
	if Strict() {
		t.Fatalf("CAPSULE_TEST_STRICT=1 and this test cannot run: %s", reason)
	}
	t.Skip(reason)
}

// RequireRoot needs uid 0 (network namespaces, mounts, other users).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Getuid() != 0 {
		Skip(t, "needs root")
	}
}

// RequireCommand needs an executable on PATH and returns its path.
func RequireCommand(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, "needs "+name+" on PATH")
	}
	return p
}
