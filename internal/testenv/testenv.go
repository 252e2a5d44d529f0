// Package testenv lets tests declare what they need from the machine. A
// missing requirement skips the test with the reason, unless
// CAPSULE_TEST_STRICT=1 (set by CI), which turns the skip into a failure:
// in CI every test must really run.
//
// It also runs a long test as named steps (Step) through the environment
// the test built, which must then report to the step that runs.
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

// Step runs fn as the subtest name of *t and reports whether it passed.
// While it runs, *t is the subtest: helpers that hold the test (a test
// environment's methods) fail the step, as a subtest must, and not its
// parent; *t is the parent again afterwards. Steps usually build on each
// other, so callers stop at the first that fails:
//
//	if !testenv.Step(&e.t, "boot", func(t *testing.T) { … }) {
//		return
//	}
func Step(t **testing.T, name string, fn func(t *testing.T)) bool {
	parent := *t
	defer func() { *t = parent }()
	return parent.Run(name, func(st *testing.T) {
		*t = st
		fn(st)
	})
}
