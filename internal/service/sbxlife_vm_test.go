package service

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// TestTTLAndSnapshotsRealAgent drives one real agent (network slot pool
// ctc, 198.18.104.0/24 + 198.18.105.0/24) through the control plane's TTL
// and snapshots: envd_url persisted, env vars delivered, ping extends the
// deadline, set-timeout, a snapshot of a running sandbox (which keeps
// running) and a sandbox created from it that sees a file written before,
// another team's refusals, overwrite (the sandbox created from the old one
// keeps working), the reaper's auto-pause at the fake clock's deadline
// (audited by the system), resume restarting the clock, delete, and the
// reaper destroying a sandbox the agent lost.
func TestTTLAndSnapshotsRealAgent(t *testing.T) {
	e, agent := newEnvHost(t, hosttest.ServiceTTLPool)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	_, p := e.signup(t, "ttl@example.com")
	_, other := e.signup(t, "other@example.com")
	agentTemplates := func() []string {
		t.Helper()
		r, err := agent.ListTemplates(ctx, connect.NewRequest(&pb.ListTemplatesRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, tpl := range r.Msg.GetTemplates() {
			if !tpl.GetBuiltin() {
				names = append(names, tpl.GetName())
			}
		}
		return names
	}
	envd := func(sb Sandbox) *envdclient.Client {
		t.Helper()
		c := envdclient.New(sb.EnvdURL, sb.EnvdAccessToken)
		t.Cleanup(c.Close)
		return c
	}
	now := time.Now()
	reaper := NewReaper(e.sbx, ReaperConfig{Now: func() time.Time { return now }})
	pass := func(want ReapResult) {
		t.Helper()
		if got, err := reaper.Pass(ctx); err != nil || got != want {
			t.Fatalf("reaper pass at %v = %+v, %v; want %+v", now, got, err, want)
		}
	}

	// A: the source sandbox, with a timeout and env vars.
	a, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256, TimeoutSec: 60,
		EnvVars: map[string]string{"CAPSULE_SECRET": "s3cr3t-value"}})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, a.ID) })
	if a.EnvdURL == "" || a.EnvdURL != sandboxRow(t, e, pgUUID(a.ID)).EnvdURL || a.EndAt.IsZero() {
		t.Fatalf("created: envd %q (record %q), end_at %v", a.EnvdURL, sandboxRow(t, e, pgUUID(a.ID)).EnvdURL, a.EndAt)
	}
	if d := a.EndAt.Sub(a.LastActiveAt); d != 60*time.Second {
		t.Fatalf("end_at is %v after the last activity, want 60 s", d)
	}
	// Reads need no agent: the record has the address.
	if got, err := e.sbx.Get(ctx, p, a.ID); err != nil || got.EnvdURL != a.EnvdURL {
		t.Fatalf("Get = %q, %v", got.EnvdURL, err)
	}
	res, err := envd(a).Shell(ctx, `printf %s "$CAPSULE_SECRET"; printf 'before the snapshot' > /tmp/mark`)
	if err != nil || string(res.Stdout) != "s3cr3t-value" {
		t.Fatalf("env var in the sandbox: %+v, %v", res, err)
	}
	if raw := sandboxRow(t, e, pgUUID(a.ID)).EnvVars; len(raw) == 0 || bytes.Contains(raw, []byte("s3cr3t-value")) {
		t.Fatalf("env_vars column: %q", raw)
	}

	// Not expired yet; ping pushes the deadline past the old one.
	pass(ReapResult{})
	time.Sleep(20 * time.Millisecond)
	pinged, err := e.sbx.Ping(ctx, p, a.ID)
	if err != nil || !pinged.EndAt.After(a.EndAt) {
		t.Fatalf("Ping = %v (was %v), %v", pinged.EndAt, a.EndAt, err)
	}
	now = a.EndAt.Add(pinged.EndAt.Sub(a.EndAt) / 2)
	pass(ReapResult{})
	if _, err := e.sbx.Ping(ctx, other, a.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Ping by another team: %v", err)
	}
	// No timeout: never expires; then 30 s from now.
	if sb, err := e.sbx.SetTimeout(ctx, p, a.ID, 0); err != nil || !sb.EndAt.IsZero() {
		t.Fatalf("SetTimeout(0) = %v, %v", sb.EndAt, err)
	}
	now = time.Now().Add(24 * time.Hour)
	pass(ReapResult{})
	withT, err := e.sbx.SetTimeout(ctx, p, a.ID, 30)
	if d := time.Until(withT.EndAt); err != nil || withT.TimeoutSec != 30 || d < 15*time.Second || d > 31*time.Second {
		t.Fatalf("SetTimeout(30) = %+v, %v", withT, err)
	}

	// Snapshot of the running sandbox: it keeps running.
	snap, replaced, err := e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: a.ID, Name: "my-snap"})
	if err != nil || replaced || snap.Name != "my-snap" || snap.VCPUs != 1 || snap.MemoryMB != 256 || snap.Public || sandboxIDOf(snap.SourceSandboxID) != a.ID {
		t.Fatalf("CreateSnapshot = %+v, %v, %v", snap, replaced, err)
	}
	if got := agentTemplates(); !slices.Equal(got, []string{TemplateID(snap.ID)}) {
		t.Fatalf("agent templates %v, want the snapshot's ID", got)
	}
	if got := sandboxRow(t, e, pgUUID(a.ID)); got.State != store.SandboxRunning {
		t.Fatalf("source after the snapshot: %s", got.State)
	}
	if _, _, err := e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: a.ID, Name: "my-snap"}); !errors.Is(err, ErrConflict) {
		t.Fatalf("CreateSnapshot of an existing name: %v", err)
	}

	// B: from the snapshot, by the name the user gave; the shape is fixed.
	if _, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "my-snap", VCPUs: 2}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Create from the snapshot with 2 vCPUs: %v", err)
	}
	b, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "my-snap"})
	if err != nil {
		t.Fatalf("Create from the snapshot: %v", err)
	}
	t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, b.ID) })
	if b.Template != "my-snap" || b.VCPUs != 1 || b.MemoryMB != 256 {
		t.Fatalf("from the snapshot: %s %d/%d", b.Template, b.VCPUs, b.MemoryMB)
	}
	if data, err := envd(b).ReadFile(ctx, "/tmp/mark"); err != nil || string(data) != "before the snapshot" {
		t.Fatalf("file from before the snapshot: %q, %v", data, err)
	}

	// Another team neither sees nor uses nor deletes it, nor snapshots A.
	if _, err := e.sbx.GetSnapshot(ctx, other, "my-snap"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetSnapshot by another team: %v", err)
	}
	if _, err := e.sbx.Create(ctx, other, CreateSandbox{Template: "my-snap"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Create from another team's snapshot: %v", err)
	}
	if err := e.sbx.DeleteSnapshot(ctx, other, "my-snap"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("DeleteSnapshot by another team: %v", err)
	}
	if _, _, err := e.sbx.CreateSnapshot(ctx, other, CreateSnapshotRequest{SandboxID: a.ID, Name: "stolen"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("CreateSnapshot of another team's sandbox: %v", err)
	}
	if l, _ := e.sbx.ListSnapshots(ctx, other); len(l) != 0 {
		t.Fatalf("another team lists %d snapshots", len(l))
	}

	// Overwrite: a new template under a new ID; B (from the old one) runs on.
	if _, err := envd(a).Shell(ctx, `printf 'second' > /tmp/mark`); err != nil {
		t.Fatal(err)
	}
	snap2, replaced, err := e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: a.ID, Name: "my-snap", Overwrite: true})
	if err != nil || !replaced || snap2.ID == snap.ID {
		t.Fatalf("overwrite = %v, %v, %v", TemplateID(snap2.ID), replaced, err)
	}
	if got := agentTemplates(); !slices.Equal(got, []string{TemplateID(snap2.ID)}) {
		t.Fatalf("agent templates after the overwrite: %v", got)
	}
	if res, err := envd(b).Shell(ctx, `cat /tmp/mark; echo; echo ok`); err != nil || string(res.Stdout) != "before the snapshot\nok\n" {
		t.Fatalf("the sandbox from the old snapshot after the overwrite: %+v, %v", res, err)
	}
	list, err := e.sbx.ListSnapshots(ctx, p)
	if err != nil || len(list) != 1 || list[0].ID != snap2.ID {
		t.Fatalf("ListSnapshots = %+v, %v", list, err)
	}

	// The deadline passes: the reaper pauses A (B has no timeout), as the system.
	// (Snapshots are activity: the deadline moved on from withT's, unless
	// the last activity was written less than a second before.)
	endA := sandboxRow(t, e, pgUUID(a.ID)).EndAt
	if endA.Time.Before(withT.EndAt) {
		t.Fatalf("deadline after the snapshots %v, before them %v", endA, withT.EndAt)
	}
	now = endA.Time.Add(-time.Millisecond)
	pass(ReapResult{})
	now = endA.Time.Add(time.Millisecond)
	pass(ReapResult{Paused: 1})
	pausedA := sandboxRow(t, e, pgUUID(a.ID))
	if pausedA.State != store.SandboxPaused || pausedA.EndAt.Valid || pausedA.EnvdURL != "" {
		t.Fatalf("after the auto-pause: %s end_at %v envd %q", pausedA.State, pausedA.EndAt, pausedA.EnvdURL)
	}
	r, err := agent.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: a.ID.String()}))
	if err != nil || r.Msg.GetSandbox().GetState() != pb.SandboxState_SANDBOX_STATE_PAUSED {
		t.Fatalf("agent state: %v, %v", r, err)
	}
	pass(ReapResult{})
	// Resume restarts the clock.
	resumed, err := e.sbx.Resume(ctx, p, a.ID)
	if err != nil || resumed.EnvdURL == "" || sandboxRow(t, e, pgUUID(resumed.ID)).EnvdURL != resumed.EnvdURL || resumed.EndAt.IsZero() ||
		resumed.EndAt.Sub(resumed.LastActiveAt) != 30*time.Second || !resumed.LastActiveAt.After(pausedA.PausedAt.Time) {
		t.Fatalf("Resume = %+v, %v", resumed, err)
	}
	pass(ReapResult{})
	if _, err := e.sbx.SetTimeout(ctx, p, a.ID, 3600); err != nil {
		t.Fatal(err)
	}

	// Delete: gone for the team and on the host; B runs on.
	if err := e.sbx.DeleteSnapshot(ctx, p, "my-snap"); err != nil {
		t.Fatalf("DeleteSnapshot: %v", err)
	}
	if got := agentTemplates(); len(got) != 0 {
		t.Fatalf("agent templates after the delete: %v", got)
	}
	if _, err := e.sbx.GetSnapshot(ctx, p, "my-snap"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("GetSnapshot after the delete: %v", err)
	}
	if err := e.sbx.DeleteSnapshot(ctx, p, "my-snap"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second DeleteSnapshot: %v", err)
	}
	if _, err := envd(b).ReadFile(ctx, "/tmp/mark"); err != nil {
		t.Fatalf("the sandbox from the deleted snapshot: %v", err)
	}

	// The agent lost B: its auto-pause fails and the reaper destroys it.
	if _, err := agent.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: b.ID.String()})); err != nil {
		t.Fatal(err)
	}
	bT, err := e.sbx.SetTimeout(ctx, p, b.ID, 5)
	if err != nil {
		t.Fatal(err)
	}
	now = bT.EndAt.Add(time.Second)
	pass(ReapResult{Destroyed: 1})
	if got := sandboxRow(t, e, pgUUID(b.ID)); got.State != store.SandboxStopped || got.EndAt.Valid || got.EnvdURL != "" || !strings.Contains(got.StateReason, "destroyed") {
		t.Fatalf("B after the failed auto-pause: %s %v %q %q", got.State, got.EndAt, got.EnvdURL, got.StateReason)
	}
	// A's hour has not run out: it runs on. Destroy clears its deadline and address.
	if err := e.sbx.Destroy(ctx, p, a.ID); err != nil {
		t.Fatal(err)
	}
	if got := sandboxRow(t, e, pgUUID(a.ID)); got.State != store.SandboxStopped || got.EndAt.Valid || got.EnvdURL != "" {
		t.Fatalf("A after destroy: %s %v %q", got.State, got.EndAt, got.EnvdURL)
	}

	want := []string{
		"sandbox.create/success/user", "sandbox.set_timeout/success/user", "sandbox.set_timeout/success/user",
		"snapshot.create/success/user", "sandbox.create/success/user", "snapshot.overwrite/success/user",
		"sandbox.auto_pause/success/system", "sandbox.resume/success/user", "sandbox.set_timeout/success/user",
		"snapshot.delete/success/user",
		"sandbox.set_timeout/success/user", "sandbox.auto_pause/error/system", "sandbox.destroy/success/user",
	}
	if got := auditActions(t, e, p); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("audit log:\n got %v\nwant %v", got, want)
	}
	var ev db.AuditLog
	rows, _, _ := NewAudit(e.st, nil).List(ctx, Principal{TeamID: p.TeamID, Role: RoleOwner}, AuditFilter{Actions: []string{"sandbox.auto_pause"}})
	for _, r := range rows {
		if r.Status == AuditSuccess {
			ev = r
		}
	}
	if ev.ActorID != "system" || ev.ResourceID != a.ID.String() {
		t.Fatalf("auto-pause event: %+v", ev)
	}
}
