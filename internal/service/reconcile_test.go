package service

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// TestReconcileRealAgent: after the agent and the records diverge (as a
// crash between an agent call and its bookkeeping leaves them), Reconcile
// makes the records follow the agent, marks what the agent lost, fails an
// interrupted create, destroys orphans (sandboxes, and snapshot templates
// no record owns), and audits each change as the
// system. A second run changes nothing.
func TestReconcileRealAgent(t *testing.T) {
	e, c := newEnvHost(t, hosttest.ServicePool)
	ctx := context.Background()
	_, p := e.signup(t, "reconcile@example.com")

	lost, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", MemoryMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	pausedBehind, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", MemoryMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, pausedBehind.ID) })
	died, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", MemoryMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, died.ID) })
	// Its machine dies: the agent keeps the sandbox, stopped, with its disk.
	killVMM(t, died.ID.String())
	waitAgentState(t, c, died.ID.String(), pb.SandboxState_SANDBOX_STATE_STOPPED)
	if _, err := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: lost.ID.String()})); err != nil {
		t.Fatal(err)
	}
	// A snapshot, and one the agent saved but whose record was never
	// written (the control plane died in between).
	kept, _, err := e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: pausedBehind.ID, Name: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	orphanTpl := TemplateID(store.NewUUID())
	if _, err := c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: pausedBehind.ID.String(), Name: orphanTpl})); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: pausedBehind.ID.String()})); err != nil {
		t.Fatal(err)
	}
	// A create interrupted after its first bookkeeping step.
	interrupted, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
		TeamID: pgUUID(p.TeamID), HostID: e.sbx.StaticHosts()[0], Template: "minimal", State: store.SandboxStarting,
		VCPUs: 1, MemoryMB: 256, AllowInternetAccess: true, Metadata: json.RawMessage(`{}`), CreatedBy: pgUUID(p.UserID),
	})
	if err != nil {
		t.Fatal(err)
	}
	// A create interrupted after the agent made the sandbox.
	madeOnAgent, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
		TeamID: pgUUID(p.TeamID), HostID: e.sbx.StaticHosts()[0], Template: "minimal", State: store.SandboxStarting,
		VCPUs: 1, MemoryMB: 256, AllowInternetAccess: true, Metadata: json.RawMessage(`{}`), CreatedBy: pgUUID(p.UserID),
	})
	if err != nil {
		t.Fatal(err)
	}
	made, err := c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: ID(madeOnAgent.ID), Template: "minimal", MemoryMb: 256}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, sandboxIDOf(madeOnAgent.ID)) })
	// A sandbox the agent runs that no record owns.
	if _, err := c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: "orphan1", Template: "minimal", MemoryMb: 256})); err != nil {
		t.Fatal(err)
	}

	rep, err := e.sbx.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep != (ReconcileReport{Changed: 5, Orphans: 1, OrphanTemplates: 1}) {
		t.Fatalf("report %+v", rep)
	}
	for _, tc := range []struct {
		name string
		sb   Sandbox
		want string
	}{
		{"lost by the agent", lost, store.SandboxMissing},
		{"paused behind the records", pausedBehind, store.SandboxPaused},
		{"interrupted create", Sandbox{ID: sandboxIDOf(interrupted.ID)}, store.SandboxError},
		{"machine died, disk kept", died, store.SandboxError},
		{"create interrupted after the agent's", Sandbox{ID: sandboxIDOf(madeOnAgent.ID)}, store.SandboxRunning},
	} {
		got, err := e.sbx.Get(ctx, p, tc.sb.ID)
		if err != nil || string(got.State) != tc.want {
			t.Errorf("%s: state %q (%v), want %q", tc.name, got.State, err, tc.want)
		}
	}
	// The record of the one made running says where its envd is, as a
	// finished create's does.
	if got, err := e.sbx.Get(ctx, p, sandboxIDOf(madeOnAgent.ID)); err != nil || got.EnvdURL == "" || got.EnvdURL != made.Msg.GetSandbox().GetEnvdUrl() {
		t.Errorf("the reconciled create's envd_url %q (%v), the agent's %q", got.EnvdURL, err, made.Msg.GetSandbox().GetEnvdUrl())
	}
	if _, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "orphan1"})); err == nil {
		t.Error("the orphan still runs")
	}
	tpls, err := c.ListTemplates(ctx, connect.NewRequest(&pb.ListTemplatesRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	onAgent := map[string]bool{}
	for _, tpl := range tpls.Msg.GetTemplates() {
		onAgent[tpl.GetName()] = true
	}
	if onAgent[orphanTpl] || !onAgent[kept.ID.String()] || !onAgent["minimal"] {
		t.Errorf("templates on the agent after the reconcile: %v (orphan %s, kept %s)", onAgent, orphanTpl, kept.ID.String())
	}
	logs, _, err := e.sbx.audit.List(ctx, Principal{TeamID: p.TeamID, Role: RoleOwner}, AuditFilter{Actions: []string{"sandbox.reconcile"}})
	if err != nil || len(logs) != 5 {
		t.Fatalf("reconcile audit: %d rows, %v", len(logs), err)
	}
	for _, l := range logs {
		if l.ActorType != ActorSystem {
			t.Errorf("audit actor %q", l.ActorType)
		}
	}
	// The paused one resumes normally; a second reconcile is a no-op.
	if _, err := e.sbx.Resume(ctx, p, pausedBehind.ID); err != nil {
		t.Fatal(err)
	}
	if rep, err := e.sbx.Reconcile(ctx); err != nil || rep != (ReconcileReport{}) {
		t.Fatalf("second reconcile: %+v, %v", rep, err)
	}
	// The one whose machine died is still on the agent (its disk kept),
	// and resuming it boots it cold.
	if _, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: died.ID.String()})); err != nil {
		t.Fatalf("the sandbox whose machine died is gone from the agent: %v", err)
	}
	if got, err := e.sbx.Resume(ctx, p, died.ID); err != nil || got.State != store.SandboxRunning {
		t.Fatalf("resume (cold boot) of the sandbox whose machine died: %q %v", got.State, err)
	}
}

// killVMM kills the QEMU process of sandbox id.
func killVMM(t *testing.T, id string) {
	t.Helper()
	vmms := hosttest.SandboxVMMs(id)
	if len(vmms) == 0 {
		t.Fatalf("found no VMM of %s", id)
	}
	for _, line := range vmms {
		pid, _ := strconv.Atoi(strings.Fields(line)[0])
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// waitAgentState waits until the agent reports sandbox id in state want.
func waitAgentState(t *testing.T, c *agentclient.Client, id string, want pb.SandboxState) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := c.GetSandbox(context.Background(), connect.NewRequest(&pb.GetSandboxRequest{SandboxId: id}))
		if err == nil && resp.Msg.GetSandbox().GetState() == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("sandbox %s: want %s on the agent, got %v (%v)", id, want, resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
