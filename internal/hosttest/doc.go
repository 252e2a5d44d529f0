// Package hosttest is the one host test kit: what a test needs to run
// real sandboxes on this machine, for every package whose tests do (the
// sandbox manager's, the agent's, the control plane's VM tests, the
// commands').
//
//   - Images: the image store shared by every package's VM tests
//     ($TMPDIR/capsule-test-store, content-addressed and locked, so an
//     unchanged envd reuses everything) holding the minimal template built
//     from this tree's envd; Envd builds that envd for a test of its own.
//   - Driver: the QEMU driver, probed once per process with the minimal
//     image's kernel.
//   - Pool and NewSlots: a network slot pool of the caller's own. go test
//     runs packages in parallel, so each package's tests use a pool of
//     the one table in pools.go (SandboxPool, AgentPool, ServicePool…),
//     whose names, interface prefixes and address ranges a test
//     (TestPoolsDisjoint) keeps apart.
//   - StartAgent: a sandbox.Manager over those, and the host agent serving
//     it over h2c (httptest) with AgentToken; cleanup shuts it down and
//     checks that no VMM, network namespace or interface of the pool is
//     left (AssertNoVMM, AssertNoSlots).
//
// It is test support: it links testing and host code by design
// (internal/deptest exempts it), and only tests import it.
package hosttest
