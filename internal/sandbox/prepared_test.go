package sandbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// preparedPIDs returns the VMM pids of the prepared VMMs in runDir (from
// their records).
func preparedPIDs(t *testing.T, runDir string) []int {
	t.Helper()
	ents, _ := os.ReadDir(runDir)
	var pids []int
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "prepared-") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(runDir, e.Name(), "vmm.json"))
		if err != nil {
			continue // being written or removed
		}
		var rec struct {
			PID int `json:"pid"`
		}
		if json.Unmarshal(b, &rec) == nil && rec.PID > 0 {
			pids = append(pids, rec.PID)
		}
	}
	return pids
}

// waitPrepared waits until e's manager has n prepared VMMs ready, and
// their runtime directories are all runDir holds, and returns their pids.
func waitPrepared(t *testing.T, e *env, n int) []int {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		pids := sandbox.PreparedPIDs(e.mgr)
		onDisk := preparedPIDs(t, e.runDir)
		slices.Sort(pids)
		slices.Sort(onDisk)
		if len(pids) == n && slices.Equal(pids, onDisk) {
			return pids
		}
		if time.Now().After(deadline) {
			t.Fatalf("prepared VMMs ready %v, in %s %v; want %d", pids, e.runDir, onDisk, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestPreparedVMMs: with PreparedVMMs, saving a snapshot template
// prepares VMMs for its creates, which take them (their VMM is one of
// those; the pool is topped up) and are sandboxes like any other: their own
// identity, a disk that survives a pause and a resume. A create that
// finds every network slot taken gets a prepared VMM's. Deleting the
// template discards its prepared VMMs; a restarted agent kills the ones a
// dead agent left and removes their disks.
func TestPreparedVMMs(t *testing.T) {
	e := newEnv(t)
	e.mgr.Close()
	mk := func(t *testing.T) *sandbox.Manager {
		return e.manager(t, func(c *sandbox.Config) { c.PreparedVMMs = 2 })
	}
	e.mgr = mk(t)
	ctx := testCtx(t, 8*time.Minute)
	var ready []int
	var taken *sandbox.Info
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"saving a snapshot template prepares two VMMs", func(t *testing.T) {
			src, c := e.create(ctx, sandbox.CreateOptions{})
			sh(t, ctx, c, "echo from-template > /root/tpl.txt && sync")
			if pids := preparedPIDs(t, e.runDir); len(pids) != 0 {
				t.Fatalf("VMMs prepared for an image: %v", pids)
			}
			if _, err := e.mgr.CreateSnapshot(ctx, src.ID, "prep-tpl"); err != nil {
				t.Fatal(err)
			}
			if err := e.mgr.Destroy(ctx, src.ID); err != nil {
				t.Fatal(err)
			}
			ready = waitPrepared(t, e, 2)
		}},
		{"creates take them, and the pool is topped up", func(t *testing.T) {
			for i := range 2 {
				var c *envdclient.Client
				taken, c = e.create(ctx, sandbox.CreateOptions{Template: "prep-tpl", EnvVars: map[string]string{"MINE": "yes"}})
				if !slices.Contains(ready, taken.VMMPid) {
					t.Fatalf("create %d: its VMM %d is none of the prepared %v", i, taken.VMMPid, ready)
				}
				if got, want := sh(t, ctx, c, `echo "$E2B_SANDBOX_ID $MINE $(cat /root/tpl.txt)"`), taken.ID+" yes from-template"; got != want {
					t.Fatalf("clone of a prepared VMM: %q, want %q", got, want)
				}
				if _, err := os.Stat(filepath.Join(e.runDir, taken.ID, "vmm.json")); err != nil {
					t.Fatalf("the sandbox's runtime directory: %v", err)
				}
				if _, err := os.Stat(filepath.Join(e.dataDir, "sandboxes", taken.ID, "rootfs.qcow2")); err != nil {
					t.Fatalf("the sandbox's disk: %v", err)
				}
				ready = waitPrepared(t, e, 2)
				if i == 0 {
					if err := e.mgr.Destroy(ctx, taken.ID); err != nil {
						t.Fatal(err)
					}
				}
			}
		}},
		{"a prepared VMM that dies is replaced, unless they keep dying young", func(t *testing.T) {
			// kill kills a prepared VMM and waits for its replacement.
			kill := func(t *testing.T) {
				t.Helper()
				ready = waitPrepared(t, e, 2)
				if err := syscall.Kill(ready[0], syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				deadline := time.Now().Add(time.Minute)
				for {
					now := sandbox.PreparedPIDs(e.mgr)
					if len(now) == 2 && !slices.Contains(now, ready[0]) {
						ready = now
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("prepared VMMs %v after %d died", now, ready[0])
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			createFromPool := func(t *testing.T) {
				t.Helper()
				info, c := e.create(ctx, sandbox.CreateOptions{Template: "prep-tpl"})
				if !info.Prepared || !slices.Contains(ready, info.VMMPid) {
					t.Fatalf("create after a death: prepared %v, VMM %d of %v", info.Prepared, info.VMMPid, ready)
				}
				if got := sh(t, ctx, c, "cat /root/tpl.txt"); got != "from-template" {
					t.Fatalf("clone: %q", got)
				}
				if err := e.mgr.Destroy(ctx, info.ID); err != nil {
					t.Fatal(err)
				}
			}
			kill(t)
			createFromPool(t) // (a create resets the count of young deaths)
			for range sandbox.MaxYoungDeaths {
				kill(t)
			}
			// One more young death: no replacement until a create.
			ready = waitPrepared(t, e, 2)
			if err := syscall.Kill(ready[0], syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
				if now := sandbox.PreparedPIDs(e.mgr); len(now) == 2 && !slices.Contains(now, ready[0]) {
					t.Fatalf("the pool was refilled after %d young deaths in a row: %v", sandbox.MaxYoungDeaths+1, now)
				}
				time.Sleep(50 * time.Millisecond)
			}
			if now := sandbox.PreparedPIDs(e.mgr); len(now) != 1 {
				t.Fatalf("prepared VMMs %v, want the one left", now)
			}
			ready = sandbox.PreparedPIDs(e.mgr)
			createFromPool(t)
			ready = waitPrepared(t, e, 2) // the create refilled the pool
		}},
		{"prepared VMMs give up their slots to creates", func(t *testing.T) {
			waitPrepared(t, e, 2)
			var held []*netslot.Slot
			defer func() {
				for _, s := range held {
					if err := e.pool.Release(context.Background(), s); err != nil {
						t.Error(err)
					}
				}
			}()
			for {
				s, err := e.pool.Acquire(ctx)
				if errors.Is(err, netslot.ErrExhausted) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				held = append(held, s)
			}
			// Every slot is taken: this cold boot gets a prepared VMM's.
			info, c := e.create(ctx, sandbox.CreateOptions{})
			if got := sh(t, ctx, c, "echo up"); got != "up" {
				t.Fatalf("create with every slot taken: %q", got)
			}
			if n := len(preparedPIDs(t, e.runDir)); n != 1 {
				t.Errorf("%d prepared VMMs left, want 1", n)
			}
			if err := e.mgr.Destroy(ctx, info.ID); err != nil {
				t.Fatal(err)
			}
		}},
		{"its disk survives a pause and a resume", func(t *testing.T) {
			sh(t, ctx, mustClient(t, e, taken.ID), "echo kept > /root/kept.txt && sync")
			if err := e.mgr.Pause(ctx, taken.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := e.mgr.Resume(ctx, taken.ID); err != nil {
				t.Fatal(err)
			}
			if got := sh(t, ctx, mustClient(t, e, taken.ID), "cat /root/kept.txt /root/tpl.txt"); got != "kept\nfrom-template" {
				t.Fatalf("after pause and resume: %q", got)
			}
		}},
		{"deleting the template discards its prepared VMMs", func(t *testing.T) {
			before := preparedPIDs(t, e.runDir)
			if err := e.mgr.DeleteTemplate("prep-tpl"); err != nil {
				t.Fatal(err)
			}
			waitPrepared(t, e, 0)
			for _, pid := range before {
				if processAlive(pid) {
					t.Errorf("prepared VMM %d still runs", pid)
				}
			}
			if ents, _ := os.ReadDir(filepath.Join(e.dataDir, "prepared")); len(ents) != 0 {
				t.Errorf("prepared overlays left: %d", len(ents))
			}
		}},
		{"a restarted agent kills what a dead one prepared", func(t *testing.T) {
			src, _ := e.create(ctx, sandbox.CreateOptions{})
			if _, err := e.mgr.CreateSnapshot(ctx, src.ID, "prep-tpl-2"); err != nil {
				t.Fatal(err)
			}
			for _, id := range []string{src.ID, taken.ID} {
				if err := e.mgr.Destroy(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			info, _ := e.create(ctx, sandbox.CreateOptions{Template: "prep-tpl-2"})
			if err := e.mgr.Destroy(ctx, info.ID); err != nil {
				t.Fatal(err)
			}
			left := waitPrepared(t, e, 2)
			sandbox.AbandonPrepared(e.mgr) // as if the agent died
			e.mgr.Close()
			e.mgr = mk(t)
			for _, pid := range left {
				if processAlive(pid) {
					t.Errorf("the dead agent's prepared VMM %d still runs", pid)
				}
			}
			if _, err := os.Stat(filepath.Join(e.dataDir, "prepared")); !os.IsNotExist(err) {
				t.Errorf("prepared overlays of the dead agent: %v", err)
			}
			if pids := preparedPIDs(t, e.runDir); len(pids) != 0 {
				t.Errorf("prepared VMMs after the restart: %v", pids)
			}
		}},
	}
	for _, s := range steps {
		if !e.step(s.name, s.run) {
			return
		}
	}
}

func processAlive(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// A zombie is gone for our purposes.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}
