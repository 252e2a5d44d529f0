package hosttest

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/agent"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/vmm"
)

// AgentToken is the bearer token of the agents StartAgent runs.
const AgentToken = "hosttest-agent-token-0123456789"

// Agent is a host agent StartAgent runs.
type Agent struct {
	// URL is the agent's address (h2c).
	URL string
	// Driver is the agent's VMM driver.
	Driver vmm.Driver
	// DataDir and RunDir are the sandbox manager's directories.
	DataDir, RunDir string
	// Manager is the sandbox manager the agent serves (tests that drive
	// it directly, or serve it otherwise).
	Manager *sandbox.Manager
	// Logs holds everything the agent logged (at debug level); it is
	// printed when the test fails.
	Logs *SyncBuffer
}

// Endpoint is the agent's address and token.
func (a *Agent) Endpoint() agentclient.Endpoint {
	return agentclient.Endpoint{URL: a.URL, Token: AgentToken}
}

// Client returns a client of the agent, closed when t ends.
func (a *Agent) Client(t testing.TB) *agentclient.Client {
	t.Helper()
	c, err := agentclient.New(a.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// StartAgent runs an agent for t (skipped without root or QEMU, failed
// under CAPSULE_TEST_STRICT=1) over the test images and a network slot
// pool p of the caller's own (8 slots); the agent stops when t ends, and
// the test fails if it leaves a VMM, namespace or interface behind. Each
// of configure may change the manager's configuration (a data directory of
// the test's own, a disk headroom) before it starts.
func StartAgent(t testing.TB, p Pool, configure ...func(*sandbox.Config)) *Agent {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "qemu-system-x86_64")
	testenv.RequireCommand(t, "qemu-img")
	imgs := Images(t)
	a := &Agent{DataDir: t.TempDir(), RunDir: t.TempDir(), Logs: &SyncBuffer{}}
	log := slog.New(slog.NewTextHandler(a.Logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a.Driver = NewDriver(t, log)
	if p.MaxSlots == 0 {
		p.MaxSlots = 8
	}
	slots := NewSlots(t, p, log)
	capacity := sandbox.Capacity{VCPUs: 8, MemoryMB: 2048}
	cfg := sandbox.Config{
		DataDir: a.DataDir, RunDir: a.RunDir, Driver: a.Driver, Images: imgs, Slots: slots, Capacity: capacity, Log: log,
	}
	for _, f := range configure {
		f(&cfg)
	}
	a.DataDir = cfg.DataDir
	mgr, err := sandbox.New(context.Background(), cfg)
	if err != nil {
		_ = slots.Close(context.Background())
		t.Fatalf("manager: %v", err)
	}
	a.Manager = mgr
	h, err := agent.New(agent.Config{Manager: mgr, Token: AgentToken, Images: imgs, Driver: a.Driver, Capacity: capacity, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = agent.Protocols()
	srv.Start()
	a.URL = srv.URL
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := mgr.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := slots.Close(ctx); err != nil {
			t.Errorf("close pool: %v", err)
		}
		AssertNoVMM(t, a.RunDir, a.DataDir)
		AssertNoSlots(t, p)
		if t.Failed() {
			t.Logf("agent log:\n%s", a.Logs.String())
		}
	})
	return a
}
