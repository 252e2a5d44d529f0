package sandbox_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/sandbox"
)

// TestDiskHeadroomRefusesWrites performs issue 9.6's full data disk on a
// real sandbox: with a headroom larger than the free space, a create, a
// pause and a snapshot are refused with ErrNoSpace and write nothing, and
// the running sandbox is untouched (it runs on and pauses once the
// headroom allows).
func TestDiskHeadroomRefusesWrites(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 6*time.Minute)
	in, c := e.create(ctx, sandbox.CreateOptions{})
	sh(t, ctx, c, "echo kept > /root/kept.txt")
	sandbox.SetDiskHeadroom(e.mgr, 1<<40)
	count := func(dir string) int {
		entries, err := os.ReadDir(filepath.Join(e.dataDir, dir))
		if err != nil {
			t.Fatal(err)
		}
		return len(entries)
	}
	for _, tc := range []struct {
		name string
		op   func() error
	}{
		{"create", func() error { _, err := e.mgr.Create(ctx, sandbox.CreateOptions{Template: "minimal"}); return err }},
		{"pause", func() error { return e.mgr.Pause(ctx, in.ID) }},
		{"snapshot", func() error { _, err := e.mgr.CreateSnapshot(ctx, in.ID, "full-disk"); return err }},
		{"flatten", func() error { _, err := e.mgr.FlattenRootfs(ctx, in.ID, "full-disk"); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sandboxes, templates := count("sandboxes"), count("templates")
			if err := tc.op(); !errors.Is(err, sandbox.ErrNoSpace) {
				t.Fatalf("%s on a full disk: %v, want ErrNoSpace", tc.name, err)
			}
			if s, tp := count("sandboxes"), count("templates"); s != sandboxes || tp != templates {
				t.Fatalf("%s wrote: sandboxes %d → %d, templates %d → %d", tc.name, sandboxes, s, templates, tp)
			}
			if got, err := e.mgr.Get(in.ID); err != nil || got.State != sandbox.StateRunning {
				t.Fatalf("the sandbox after a refused %s: %+v, %v", tc.name, got, err)
			}
			if got := sh(t, ctx, mustClient(t, e, in.ID), "cat /root/kept.txt"); got != "kept" {
				t.Fatalf("the sandbox's file: %q", got)
			}
		})
	}
	sandbox.SetDiskHeadroom(e.mgr, 0)
	if err := e.mgr.Pause(ctx, in.ID); err != nil {
		t.Fatalf("pause with room: %v", err)
	}
}
