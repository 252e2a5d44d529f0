package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/store"
)

// TestMovePausedSandboxRealAgents: two real agents (hosts "local" = A and
// "b" = B). A sandbox on A gets a file and a process holding a random
// value in its memory, and is paused; A drains. With no other host to
// take it the resume fails (503) and changes nothing; a move that fails
// after the copy or after B made the sandbox (injected faults) is rolled
// back: the sandbox is paused on A, intact, and B holds nothing of it. The resume then moves
// it: it runs on B with A's file and A's process (same pid, the value in
// its memory), and A holds nothing of it (no sandbox, no template, no
// directory). A move interrupted as by a control plane that died (after
// the copy; after the adoption) is rolled back or finished by the next
// reconciliation. Evacuating a draining host moves its paused sandboxes
// to the other, paused. A move's template left behind (a failed clean-up)
// is deleted by the reconciliation. A sandbox paused without its memory
// moves too: a resume (plain, or cold) boots it on the other host with
// its files, and an evacuation leaves it paused there without its memory.
func TestMovePausedSandboxRealAgents(t *testing.T) {
	h2 := newTwoHostEnv(t, hosttest.MovePools)
	e, hostA, hostB, idA, idB := h2.env, h2.a, h2.b, h2.idA, h2.idB
	setStatus := func(name, status string) { t.Helper(); h2.setStatus(t, name, status) }
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	_, p := e.signup(t, "mover@example.com")
	agents := map[pgtype.UUID]*hosttest.Agent{idA: hostA, idB: hostB}
	names := map[pgtype.UUID]string{idA: "A", idB: "B"}
	other := map[pgtype.UUID]pgtype.UUID{idA: idB, idB: idA}
	drain := func(h pgtype.UUID) {
		t.Helper()
		for id, name := range map[pgtype.UUID]string{idA: LocalHost, idB: "b"} {
			status := store.HostOnline
			if id == h {
				status = store.HostDraining
			}
			setStatus(name, status)
		}
	}
	envd := func(sb Sandbox) *envdclient.Client {
		c := envdclient.New(sb.EnvdURL, sb.EnvdAccessToken)
		t.Cleanup(c.Close) // the test's
		return c
	}
	value := make([]byte, 12)
	_, _ = rand.Read(value)
	secret := hex.EncodeToString(value)
	// holdsNothing fails unless host h has no machine, template or
	// directory of the sandbox.
	holdsNothing := func(t *testing.T, h pgtype.UUID, id SandboxID) {
		t.Helper()
		a := agents[h]
		if info, err := a.Manager.Get(id.String()); err == nil {
			t.Errorf("host %s still has the sandbox (%s)", names[h], info.State)
		}
		tpls, err := a.Manager.Templates()
		if err != nil {
			t.Fatal(err)
		}
		for _, tpl := range tpls {
			if strings.HasPrefix(tpl.Name, "mv") {
				t.Errorf("host %s lists the move's template %s", names[h], tpl.Name)
			}
		}
		if m, _ := filepath.Glob(filepath.Join(a.DataDir, "*", "*"+id.String()+"*")); len(m) > 0 {
			t.Errorf("host %s keeps files of the sandbox: %v", names[h], m)
		}
	}
	noMoves := func(t *testing.T) {
		t.Helper()
		if m, err := e.st.Queries().ListSandboxMoves(ctx); err != nil || len(m) != 0 {
			t.Fatalf("moves left recorded: %v, %v", m, err)
		}
	}
	// memoryState is the pid of the process started on A and whether it
	// still holds the value in its memory (its environment).
	memoryState := func(t *testing.T, sb Sandbox) (string, bool) {
		t.Helper()
		res, err := envd(sb).Shell(ctx, `for p in /proc/[0-9]*; do if tr '\0' ' ' < $p/cmdline 2>/dev/null | grep -q '^sleep 8888'; then echo ${p#/proc/}; tr '\0' '\n' < $p/environ; fi; done`)
		if err != nil {
			t.Fatal(err)
		}
		out := strings.TrimSpace(string(res.Stdout))
		pid, _, _ := strings.Cut(out, "\n")
		return pid, strings.Contains(out, "MOVE_VALUE="+secret)
	}

	var sb Sandbox
	var pid string
	top := t
	// paused: the sandbox is paused on h, intact, and its record says so.
	paused := func(t *testing.T, h pgtype.UUID) {
		t.Helper()
		row := sandboxRow(t, e, pgUUID(sb.ID))
		if row.State != store.SandboxPaused || row.HostID != h {
			t.Fatalf("record %s on %s, want paused on %s", row.State, names[row.HostID], names[h])
		}
		if info, err := agents[h].Manager.Get(sb.ID.String()); err != nil || string(info.State) != "paused" {
			t.Fatalf("on host %s: %+v, %v; want paused", names[h], info, err)
		}
		holdsNothing(t, other[h], sb.ID)
		noMoves(t)
	}
	// runsOn: the sandbox runs on h with its file and process, and the
	// other host holds nothing of it.
	// runsWithFileOn: the sandbox runs on h with A's file, and the other
	// host holds nothing of it.
	runsWithFileOn := func(t *testing.T, got Sandbox, h pgtype.UUID) {
		t.Helper()
		row := sandboxRow(t, e, pgUUID(sb.ID))
		if row.State != store.SandboxRunning || row.HostID != h {
			t.Fatalf("record %s on %s, want running on %s", row.State, names[row.HostID], names[h])
		}
		sb = got
		if sb.EnvdURL == "" {
			sb.EnvdURL = row.EnvdURL
		}
		if f, err := envd(sb).ReadFile(ctx, "/root/mark"); err != nil || string(f) != "written on A" {
			t.Fatalf("A's file: %q, %v", f, err)
		}
		holdsNothing(t, other[h], sb.ID)
		noMoves(t)
	}
	// runsOn: runsWithFileOn, and A's process runs with its memory.
	runsOn := func(t *testing.T, got Sandbox, h pgtype.UUID) {
		t.Helper()
		runsWithFileOn(t, got, h)
		if got, ok := memoryState(t, sb); got != pid || !ok {
			t.Fatalf("A's process: pid %q (want %q), value in memory %v", got, pid, ok)
		}
	}
	pause := func(t *testing.T) {
		t.Helper()
		if _, err := e.sbx.Pause(ctx, p, sb.ID); err != nil {
			t.Fatal(err)
		}
	}
	// pauseDiskOnly pauses the sandbox without its memory, on h.
	pauseDiskOnly := func(t *testing.T, h pgtype.UUID) {
		t.Helper()
		if _, err := e.sbx.PauseWith(ctx, p, sb.ID, PauseOptions{FilesystemOnly: true}); err != nil {
			t.Fatal(err)
		}
		if info, err := agents[h].Manager.Get(sb.ID.String()); err != nil || !info.DiskOnly {
			t.Fatalf("on host %s: %+v, %v; want paused without its memory", names[h], info, err)
		}
	}
	// bootedColdOn: runsWithFileOn, booted afresh (the process is gone).
	bootedColdOn := func(t *testing.T, got Sandbox, h pgtype.UUID) {
		t.Helper()
		runsWithFileOn(t, got, h)
		if got, _ := memoryState(t, sb); got != "" {
			t.Fatalf("A's process %s survived a cold boot", got)
		}
	}
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a sandbox on A with a file and a process, paused", func(t *testing.T) {
			drain(idB)
			var err error
			if sb, err = e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256}); err != nil {
				t.Fatal(err)
			}
			top.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, sb.ID) })
			if _, err := envd(sb).Shell(ctx, `printf 'written on A' > /root/mark; (MOVE_VALUE=`+secret+` sleep 8888 >/dev/null 2>&1 &)`); err != nil {
				t.Fatal(err)
			}
			var ok bool
			if pid, ok = memoryState(t, sb); pid == "" || !ok {
				t.Fatalf("the process on A: pid %q, value %v", pid, ok)
			}
			pause(t)
			paused(t, idA)
		}},
		{"with no other host to take it, the resume fails and the sandbox stays", func(t *testing.T) {
			setStatus(LocalHost, store.HostDraining)
			setStatus("b", store.HostDraining)
			if _, err := e.sbx.Resume(ctx, p, sb.ID); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("resume with every host draining: %v, want ErrUnavailable", err)
			}
			paused(t, idA)
		}},
		{"a move that fails after B made the sandbox is rolled back", func(t *testing.T) {
			drain(idA)
			for _, step := range []string{"copy", "commit"} {
				fired := false
				moveHook = func(s string) error {
					if s == step {
						fired = true
						return errors.New("injected fault at " + s)
					}
					return nil
				}
				_, err := e.sbx.Resume(ctx, p, sb.ID)
				moveHook = nil
				if !fired || !errors.Is(err, ErrUnavailable) {
					t.Fatalf("resume with a fault at %s (reached: %v): %v, want ErrUnavailable", step, fired, err)
				}
				paused(t, idA)
			}
		}},
		{"resuming on a draining host moves the sandbox to B", func(t *testing.T) {
			got, err := e.sbx.Resume(ctx, p, sb.ID)
			if err != nil {
				t.Fatal(err)
			}
			runsOn(t, got, idB)
		}},
		{"a move interrupted after the copy is rolled back by the reconciliation", func(t *testing.T) {
			pause(t)
			drain(idB)
			row, mv, err := e.sbx.beginMove(ctx, p, sb.ID)
			if err != nil || mv.ToHost != idA {
				t.Fatalf("begin the move: %v (to %s)", err, names[mv.ToHost])
			}
			fired := false
			moveHook = func(s string) error {
				if s == "adopt" {
					fired = true
					return errors.New("the control plane dies")
				}
				return nil
			}
			_, err = e.sbx.runMove(ctx, row, mv)
			moveHook = nil
			if !fired || err == nil {
				t.Fatalf("the interrupted move: reached the adoption %v, %v", fired, err)
			}
			if _, err := e.sbx.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			paused(t, idB)
		}},
		{"a move interrupted after the adoption is finished by the reconciliation", func(t *testing.T) {
			row, mv, err := e.sbx.beginMove(ctx, p, sb.ID)
			if err != nil || mv.ToHost != idA {
				t.Fatalf("begin the move: %v (to %s)", err, names[mv.ToHost])
			}
			if _, err := e.sbx.runMove(ctx, row, mv); err != nil {
				t.Fatal(err)
			}
			rep, err := e.sbx.Reconcile(ctx)
			if err != nil || rep.Moves != 1 {
				t.Fatalf("reconcile: %+v, %v; want 1 move settled", rep, err)
			}
			got, err := e.sbx.Get(ctx, p, sb.ID)
			if err != nil {
				t.Fatal(err)
			}
			runsOn(t, got, idA)
		}},
		{"evacuating a draining host moves its paused sandboxes, paused", func(t *testing.T) {
			pause(t)
			if _, err := e.sbx.Evacuate(ctx, p, hostIDOf(idA)); !errors.Is(err, ErrConflict) {
				t.Fatalf("evacuate a host that is not draining: %v, want ErrConflict", err)
			}
			drain(idA)
			ev, err := e.sbx.Evacuate(ctx, p, hostIDOf(idA))
			if err != nil || len(ev.Failed) != 0 || !slices.Equal(ev.Moved, []SandboxID{sb.ID}) {
				t.Fatalf("evacuate: %+v, %v; want the sandbox moved", ev, err)
			}
			paused(t, idB)
			got, err := e.sbx.Resume(ctx, p, sb.ID)
			if err != nil {
				t.Fatal(err)
			}
			runsOn(t, got, idB)
		}},
		{"a move's template left behind is deleted by the reconciliation", func(t *testing.T) {
			// As a clean-up that failed would leave it.
			if _, err := hostB.Manager.CreateSnapshot(ctx, sb.ID.String(), moveTemplateName(pgUUID(sb.ID))); err != nil {
				t.Fatal(err)
			}
			rep, err := e.sbx.Reconcile(ctx)
			if err != nil || rep.OrphanTemplates != 1 {
				t.Fatalf("reconcile: %+v, %v; want the move's template deleted", rep, err)
			}
			holdsNothing(t, idA, sb.ID)
			tpls, err := hostB.Manager.Templates()
			if err != nil {
				t.Fatal(err)
			}
			for _, tpl := range tpls {
				if strings.HasPrefix(tpl.Name, "mv") {
					t.Fatalf("host B still lists %s", tpl.Name)
				}
			}
		}},
		{"a sandbox paused without its memory moves and boots cold with its files", func(t *testing.T) {
			if _, err := hostB.Manager.SaveDisk(ctx, sb.ID.String(), "disk-of-running"); !errors.Is(err, sandbox.ErrConflict) {
				t.Fatalf("save the disk of a running sandbox: %v, want ErrConflict", err)
			}
			pauseDiskOnly(t, idB)
			if _, err := hostB.Manager.CreateSnapshot(ctx, sb.ID.String(), "snapshot-of-disk-only"); !errors.Is(err, sandbox.ErrConflict) {
				t.Fatalf("snapshot a sandbox paused without its memory: %v, want ErrConflict", err)
			}
			drain(idB)
			got, err := e.sbx.Resume(ctx, p, sb.ID)
			if err != nil {
				t.Fatal(err)
			}
			bootedColdOn(t, got, idA)
		}},
		{"evacuating a draining host moves a sandbox paused without its memory, paused so", func(t *testing.T) {
			pauseDiskOnly(t, idA)
			drain(idA)
			ev, err := e.sbx.Evacuate(ctx, p, hostIDOf(idA))
			if err != nil || len(ev.Failed) != 0 || !slices.Equal(ev.Moved, []SandboxID{sb.ID}) {
				t.Fatalf("evacuate: %+v, %v; want the sandbox moved", ev, err)
			}
			paused(t, idB)
			if info, err := hostB.Manager.Get(sb.ID.String()); err != nil || !info.DiskOnly {
				t.Fatalf("on host B: %+v, %v; want paused without its memory", info, err)
			}
		}},
		{"a cold resume on a draining host moves a sandbox paused without its memory", func(t *testing.T) {
			drain(idB)
			got, err := e.sbx.ResumeWith(ctx, p, sb.ID, ResumeOptions{Cold: true})
			if err != nil {
				t.Fatal(err)
			}
			bootedColdOn(t, got, idA)
		}},
	}
	for _, s := range steps {
		if !t.Run(s.name, s.run) {
			t.FailNow()
		}
	}
	if !slices.Contains([]pgtype.UUID{idA, idB}, sandboxRow(t, e, pgUUID(sb.ID)).HostID) {
		t.Fatal("the sandbox has no host")
	}
}
