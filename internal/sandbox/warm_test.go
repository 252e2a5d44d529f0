package sandbox_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// TestWarmSnapshots: with WarmImages, the first create of an image boots
// cold and leaves a warm snapshot behind; the next create of that shape
// restores from it, with its own identity and environment; another shape
// or a bigger disk boots cold; the warm snapshot and its build stay
// hidden; a rebuilt manager finds it again.
func TestWarmSnapshots(t *testing.T) {
	e := newEnv(t)
	e.mgr.Close()
	mk := func(t *testing.T) *sandbox.Manager {
		return e.manager(t, func(c *sandbox.Config) { c.WarmImages = true })
	}
	e.mgr = mk(t)
	ctx := testCtx(t, 6*time.Minute)

	var first, second, other, bigger *sandbox.Info
	var warm string
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"a cold create builds the warm snapshot of its shape", func(t *testing.T) {
			first, _ = e.create(ctx, sandbox.CreateOptions{MemoryMB: 256, EnvVars: map[string]string{"FIRST": "1"}})
			if first.RestoredFrom != "" {
				t.Fatalf("first create restored from %q", first.RestoredFrom)
			}
			warm = waitWarm(t, e.dataDir, "warm-minimal-1c256m-")
			if err := e.mgr.Destroy(ctx, first.ID); err != nil {
				t.Fatal(err)
			}
		}},
		{"the next create of that shape restores with its own identity", func(t *testing.T) {
			var c *envdclient.Client
			second, c = e.create(ctx, sandbox.CreateOptions{MemoryMB: 256, EnvVars: map[string]string{"SECOND": "2"}})
			if second.RestoredFrom != warm || second.Template != "minimal" {
				t.Fatalf("second create: restored from %q (want %q), template %q", second.RestoredFrom, warm, second.Template)
			}
			got := sh(t, ctx, c, `echo "$E2B_SANDBOX_ID $E2B_TEMPLATE_ID first=$FIRST second=$SECOND $(cat /run/e2b/.E2B_SANDBOX_ID)"`)
			if want := second.ID + " minimal first= second=2 " + second.ID; got != want {
				t.Fatalf("clone identity %q, want %q", got, want)
			}
		}},
		{"other shapes boot cold", func(t *testing.T) {
			other, _ = e.create(ctx, sandbox.CreateOptions{MemoryMB: 320})
			if other.RestoredFrom != "" {
				t.Fatalf("another shape restored from %q", other.RestoredFrom)
			}
			bigger, _ = e.create(ctx, sandbox.CreateOptions{MemoryMB: 256, DiskMB: 512})
			if bigger.RestoredFrom != "" {
				t.Fatalf("a bigger disk restored from %q", bigger.RestoredFrom)
			}
		}},
		{"warm snapshots are hidden", func(t *testing.T) {
			// Not a listed template, not a usable name, not a usable ID.
			ts, err := e.mgr.Templates()
			if err != nil {
				t.Fatal(err)
			}
			for _, tpl := range ts {
				if strings.HasPrefix(tpl.Name, "warm-") {
					t.Fatalf("warm snapshot listed: %s", tpl.Name)
				}
			}
			if _, err := e.mgr.Create(ctx, sandbox.CreateOptions{Template: warm}); !errors.Is(err, sandbox.ErrNotFound) {
				t.Fatalf("create from the warm snapshot by name: %v", err)
			}
			if _, err := e.mgr.Create(ctx, sandbox.CreateOptions{ID: "warmabc"}); !errors.Is(err, sandbox.ErrInvalid) {
				t.Fatalf("create with a reserved ID: %v", err)
			}
			if _, err := e.mgr.CreateSnapshot(ctx, second.ID, "warm-mine"); !errors.Is(err, sandbox.ErrInvalid) {
				t.Fatalf("snapshot with a reserved name: %v", err)
			}
		}},
		{"the warm-up sandboxes are gone once built", func(t *testing.T) {
			// Let the builds started by the two cold creates finish.
			waitWarm(t, e.dataDir, "warm-minimal-1c320m-")
			deadline := time.Now().Add(time.Minute)
			for {
				n := 0
				for _, in := range e.mgr.List() {
					if strings.HasPrefix(in.ID, "warm") {
						n++
					}
				}
				if n == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d warm-up sandboxes left", n)
				}
				time.Sleep(100 * time.Millisecond)
			}
			for _, id := range []string{second.ID, other.ID, bigger.ID} {
				if err := e.mgr.Destroy(ctx, id); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"a new manager on the same data dir restores at once", func(t *testing.T) {
			e.mgr.Close()
			e.mgr = mk(t)
			third, _ := e.create(ctx, sandbox.CreateOptions{MemoryMB: 256})
			if third.RestoredFrom != warm {
				t.Fatalf("after a restart: restored from %q", third.RestoredFrom)
			}
		}},
	}
	for _, s := range steps {
		if !e.step(s.name, s.run) {
			return
		}
	}
}

// waitWarm waits for the warm snapshot whose name starts with prefix and
// returns its name.
func waitWarm(t *testing.T, dataDir, prefix string) string {
	t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		m, _ := filepath.Glob(filepath.Join(dataDir, "templates", prefix+"*.json"))
		if len(m) == 1 {
			return strings.TrimSuffix(filepath.Base(m[0]), ".json")
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warm snapshot %s… (%v)", prefix, m)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
