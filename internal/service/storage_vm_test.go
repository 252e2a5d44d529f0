package service

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/testenv"
)

// shell runs script in a sandbox through its envd and returns its output.
func shell(t *testing.T, ctx context.Context, sb Sandbox, script string) string {
	t.Helper()
	c := envdclient.New(sb.EnvdURL, sb.EnvdAccessToken)
	defer c.Close()
	res, err := c.Shell(ctx, script)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("run %q: %+v, %v", script, res, err)
	}
	return strings.TrimSpace(string(res.Stdout))
}

// TestSnapshotChainAndStoredQuotasRealAgent performs issue 9.5 and the
// quotas of 9.6 through the control plane (real PostgreSQL, real agent
// and VMs; network slot pool cch, 198.18.174.0/24 + 198.18.175.0/24):
// deleting a snapshot that another snapshot chains onto frees its name but
// not the files (a create from the child failed with "could not open
// backing file" before); a pause and a snapshot over the team's paused or
// stored quota are refused with ErrQuota and change nothing, and the
// reaper's auto-pause is not (it keeps the data) but records it.
func TestSnapshotChainAndStoredQuotasRealAgent(t *testing.T) {
	e, agent := newEnvHost(t, hosttest.ServiceChainPool)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, p := e.signup(t, "chain@example.com")
	agentTemplates := func() int {
		t.Helper()
		r, err := agent.ListTemplates(ctx, connect.NewRequest(&pb.ListTemplatesRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, tpl := range r.Msg.GetTemplates() {
			if !tpl.GetBuiltin() {
				n++
			}
		}
		return n
	}
	setQuotas := func(paused, storedMB *int64) {
		t.Helper()
		var par db.SetTeamStorageQuotasParams
		par.ID = pgUUID(p.TeamID)
		if paused != nil {
			par.MaxPausedSandboxes = pgtype.Int4{Int32: int32(*paused), Valid: true}
		}
		if storedMB != nil {
			par.MaxStoredMB = pgtype.Int8{Int64: *storedMB, Valid: true}
		}
		if _, err := e.st.Queries().SetTeamStorageQuotas(ctx, par); err != nil {
			t.Fatal(err)
		}
	}
	zero, one := int64(0), int64(1)
	outer := t
	var b Sandbox
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a snapshot of a sandbox created from a snapshot", func(t *testing.T) {
			a0, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256})
			if err != nil {
				t.Fatal(err)
			}
			shell(t, ctx, a0, "echo one > /root/one.txt && sync")
			if _, _, err := e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: a0.ID, Name: "t1"}); err != nil {
				t.Fatal(err)
			}
			if err := e.sbx.Destroy(ctx, p, a0.ID); err != nil {
				t.Fatal(err)
			}
			a, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "t1"})
			if err != nil {
				t.Fatal(err)
			}
			shell(t, ctx, a, "echo two > /root/two.txt && sync")
			if _, _, err := e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: a.ID, Name: "t2"}); err != nil {
				t.Fatal(err)
			}
			if err := e.sbx.Destroy(ctx, p, a.ID); err != nil {
				t.Fatal(err)
			}
		}},
		{"deleting the parent frees its name", func(t *testing.T) {
			if err := e.sbx.DeleteSnapshot(ctx, p, "t1"); err != nil {
				t.Fatal(err)
			}
			if _, err := e.sbx.GetSnapshot(ctx, p, "t1"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("GetSnapshot(t1) after delete: %v", err)
			}
		}},
		{"a sandbox created from the child reads both layers", func(t *testing.T) {
			var err error
			if b, err = e.sbx.Create(ctx, p, CreateSandbox{Template: "t2", TimeoutSec: 60}); err != nil {
				t.Fatalf("create from t2 after deleting t1: %v", err)
			}
			outer.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, b.ID) })
			if got := shell(t, ctx, b, "cat /root/one.txt /root/two.txt"); got != "one\ntwo" {
				t.Fatalf("files: %q", got)
			}
		}},
		{"a pause over the paused quota is refused", func(t *testing.T) {
			setQuotas(&zero, nil)
			if _, err := e.sbx.Pause(ctx, p, b.ID); !errors.Is(err, ErrQuota) {
				t.Fatalf("Pause with a paused quota of 0: %v, want ErrQuota", err)
			}
			if st := sandboxRow(t, e, pgUUID(b.ID)).State; st != store.SandboxRunning {
				t.Fatalf("state after the refused pause: %s", st)
			}
			shell(t, ctx, b, "true")
		}},
		{"a snapshot and a pause over the stored quota are refused", func(t *testing.T) {
			setQuotas(nil, &one)
			before := agentTemplates()
			if _, _, err := e.sbx.CreateSnapshot(ctx, p, CreateSnapshotRequest{SandboxID: b.ID, Name: "t3"}); !errors.Is(err, ErrQuota) {
				t.Fatalf("CreateSnapshot over 1 MiB stored: %v, want ErrQuota", err)
			}
			if after := agentTemplates(); after != before {
				t.Fatalf("templates on the host: %d, then %d after a refused snapshot", before, after)
			}
			if _, err := e.sbx.GetSnapshot(ctx, p, "t3"); !errors.Is(err, ErrNotFound) {
				t.Fatalf("GetSnapshot(t3): %v", err)
			}
			if _, err := e.sbx.Pause(ctx, p, b.ID); !errors.Is(err, ErrQuota) {
				t.Fatalf("Pause over 1 MiB stored: %v, want ErrQuota", err)
			}
		}},
		{"the auto-pause keeps the data over the quota", func(t *testing.T) {
			now := time.Now().Add(time.Hour)
			r := NewReaper(e.sbx, ReaperConfig{Now: func() time.Time { return now }})
			if got, err := r.Pass(ctx); err != nil || got.Paused != 1 {
				t.Fatalf("reaper pass = %+v, %v; want one pause", got, err)
			}
			if st := sandboxRow(t, e, pgUUID(b.ID)).State; st != store.SandboxPaused {
				t.Fatalf("state after the auto-pause: %s", st)
			}
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			return
		}
	}
}

// TestFailedAutoPauseKeepsSandboxRealAgent performs issue 9.6's full disk
// under an auto-pause: the agent's data directory is a 32 MiB tmpfs, too
// small for the pause's memory file, so every pause fails (for real:
// ENOSPC while saving). The reaper retries after its back-off (a fake
// clock), then leaves the record in error with the reason; the sandbox is
// never destroyed: its directory and disk stay on the host, the agent
// still has it, reconciliation leaves it alone, and the team can still
// destroy it. Network slot pool cfp, 198.18.176.0/24 + 198.18.177.0/24.
func TestFailedAutoPauseKeepsSandboxRealAgent(t *testing.T) {
	testenv.RequireRoot(t) // to mount a tmpfs
	dataDir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", dataDir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dataDir).CombinedOutput(); err != nil {
			t.Errorf("umount: %v: %s", err, out)
		}
	})
	e, agent := newEnvHost(t, hosttest.ServiceFullDiskPool, func(c *sandbox.Config) { c.DataDir = dataDir })
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	_, p := e.signup(t, "full@example.com")

	sb, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256, TimeoutSec: 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, sb.ID) })
	// An idle guest has about 100 MiB of memory in use, which the pause
	// must write out: more than the tmpfs holds.
	diskFile := filepath.Join(dataDir, "sandboxes", sb.ID.String(), "rootfs.qcow2")
	now := sb.EndAt.Add(time.Second)
	r := NewReaper(e.sbx, ReaperConfig{Now: func() time.Time { return now }, PauseRetries: 2, PauseBackoff: time.Minute})
	kept := func(t *testing.T) {
		t.Helper()
		if _, err := os.Stat(diskFile); err != nil {
			t.Fatalf("the sandbox's disk on the host: %v", err)
		}
		if _, err := agent.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: sb.ID.String()})); err != nil {
			t.Fatalf("the agent no longer has the sandbox: %v", err)
		}
	}
	for _, step := range []struct {
		name  string
		want  ReapResult
		state string
	}{
		{"the first refusal is retried after the back-off", ReapResult{Retried: 1}, store.SandboxRunning},
		{"the back-off is not over", ReapResult{}, store.SandboxRunning},
		{"the last refusal leaves it in error", ReapResult{Failed: 1}, store.SandboxError},
	} {
		t.Run(step.name, func(t *testing.T) {
			got, err := r.Pass(ctx)
			if err != nil || got != step.want {
				t.Fatalf("reaper pass at %v = %+v, %v; want %+v", now, got, err, step.want)
			}
			row := sandboxRow(t, e, pgUUID(sb.ID))
			if row.State != step.state {
				t.Fatalf("state %s (%q), want %s", row.State, row.StateReason, step.state)
			}
			kept(t)
			switch step.state {
			case store.SandboxRunning:
				if !row.EndAt.Valid || !row.EndAt.Time.After(now) || row.PauseFailures != 1 {
					t.Fatalf("after a refusal: end_at %v (now %v), failures %d", row.EndAt, now, row.PauseFailures)
				}
				shell(t, ctx, sb, "true") // it runs on
				now = now.Add(30 * time.Second)
				if step.want.Retried == 0 {
					now = row.EndAt.Time.Add(time.Second)
				}
			case store.SandboxError:
				if !strings.Contains(row.StateReason, "kept") {
					t.Fatalf("state reason %q does not say the sandbox is kept", row.StateReason)
				}
			}
		})
	}
	t.Run("reconciliation keeps it; the team can destroy it", func(t *testing.T) {
		if _, err := e.sbx.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
		kept(t)
		if err := e.sbx.Destroy(ctx, p, sb.ID); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dataDir, "sandboxes", sb.ID.String())); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the sandbox directory after destroy: %v", err)
		}
	})
}
