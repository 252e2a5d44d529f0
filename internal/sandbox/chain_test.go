package sandbox_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/sandbox"
)

// TestTemplateChainSurvivesParentDelete performs the failure of issue 9.5:
// a snapshot template of a sandbox created from a snapshot template backs
// onto its parent's disk, so deleting the parent broke it ("could not open
// backing file"). Each step deletes a parent that something still chains
// onto and asserts that what depends on it still works — also across an
// agent restart (start-up collection) — and that the files go with the
// last dependant.
func TestTemplateChainSurvivesParentDelete(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 15*time.Minute)
	tplDirs := func() []string {
		entries, err := os.ReadDir(filepath.Join(e.dataDir, "templates"))
		if err != nil {
			t.Fatal(err)
		}
		var dirs []string
		for _, en := range entries {
			if en.IsDir() {
				dirs = append(dirs, en.Name())
			}
		}
		return dirs
	}
	var b, c string
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"T1 is a snapshot of a sandbox", func(t *testing.T) {
			a0, cl := e.create(ctx, sandbox.CreateOptions{})
			sh(t, ctx, cl, "echo one > /root/one.txt && sync")
			if _, err := e.mgr.CreateSnapshot(ctx, a0.ID, "chain-t1"); err != nil {
				t.Fatal(err)
			}
			if err := e.mgr.Destroy(ctx, a0.ID); err != nil {
				t.Fatal(err)
			}
		}},
		{"T2 is a snapshot of a sandbox created from T1", func(t *testing.T) {
			a, cl := e.create(ctx, sandbox.CreateOptions{Template: "chain-t1"})
			sh(t, ctx, cl, "echo two > /root/two.txt && sync")
			if _, err := e.mgr.CreateSnapshot(ctx, a.ID, "chain-t2"); err != nil {
				t.Fatal(err)
			}
			if err := e.mgr.Destroy(ctx, a.ID); err != nil {
				t.Fatal(err)
			}
		}},
		{"deleting T1 keeps the files T2 backs onto", func(t *testing.T) {
			if err := e.mgr.DeleteTemplate("chain-t1"); err != nil {
				t.Fatal(err)
			}
			if got := len(tplDirs()); got != 2 {
				t.Fatalf("template directories after deleting T1: %v, want T1's (kept) and T2's", tplDirs())
			}
		}},
		{"a sandbox created from T2 reads both layers", func(t *testing.T) {
			in, cl := e.create(ctx, sandbox.CreateOptions{Template: "chain-t2"})
			b = in.ID
			if got := sh(t, ctx, cl, "cat /root/one.txt /root/two.txt"); got != "one\ntwo" {
				t.Fatalf("files of the chain: %q", got)
			}
		}},
		{"T3 of the paused sandbox; T2 deleted; the agent restarts", func(t *testing.T) {
			if err := e.mgr.Pause(ctx, b); err != nil {
				t.Fatal(err)
			}
			if _, err := e.mgr.CreateSnapshot(ctx, b, "chain-t3"); err != nil {
				t.Fatal(err)
			}
			if err := e.mgr.DeleteTemplate("chain-t2"); err != nil {
				t.Fatal(err)
			}
			e.mgr.Close()
			e.mgr = e.manager(t) // start-up collection runs here
			if got := len(tplDirs()); got != 3 {
				t.Fatalf("template directories after the restart: %v, want T1's, T2's (both kept) and T3's", tplDirs())
			}
			if _, err := e.mgr.Resume(ctx, b); err != nil {
				t.Fatalf("resume the sandbox of deleted T2: %v", err)
			}
			if got := sh(t, ctx, mustClient(t, e, b), "cat /root/one.txt /root/two.txt"); got != "one\ntwo" {
				t.Fatalf("resumed: %q", got)
			}
			in, cl := e.create(ctx, sandbox.CreateOptions{Template: "chain-t3"})
			c = in.ID
			if got := sh(t, ctx, cl, "cat /root/one.txt /root/two.txt"); got != "one\ntwo" {
				t.Fatalf("created from T3: %q", got)
			}
		}},
		{"the files go with the last dependant", func(t *testing.T) {
			for _, id := range []string{b, c} {
				if err := e.mgr.Destroy(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
			if got := len(tplDirs()); got != 3 {
				t.Fatalf("template directories while T3 exists: %v, want all three (T3 chains onto T2 and T1)", tplDirs())
			}
			if err := e.mgr.DeleteTemplate("chain-t3"); err != nil {
				t.Fatal(err)
			}
			if dirs := tplDirs(); len(dirs) != 0 {
				t.Fatalf("template directories left: %v", dirs)
			}
		}},
	}
	for _, s := range steps {
		if !e.step(s.name, s.run) {
			return
		}
	}
}
