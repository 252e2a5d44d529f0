package service

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/testenv"
)

// TestLifecycleRealAgent drives one real agent (network slot pool clf,
// 198.18.154.0/24 + 198.18.155.0/24) through issue 14.5's lifecycle:
// the reaper's loop on the real clock ends a sandbox whose timeout was
// shortened at that deadline (E2B's setTimeout then isRunning); a
// filesystem-only pause keeps the disk and nothing of the memory, and the
// resume boots cold from it; a cold resume of a memory pause drops the
// memory and keeps the files; the timeout's pause keeps the memory or
// not as the sandbox was created (E2B's autoPauseMemory).
func TestLifecycleRealAgent(t *testing.T) {
	e, _ := newEnvHost(t, hosttest.LifecyclePool)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, p := e.signup(t, "lifecycle@example.com")
	envd := func(t *testing.T, sb Sandbox) *envdclient.Client {
		t.Helper()
		c := envdclient.New(sb.EnvdURL, sb.EnvdAccessToken)
		t.Cleanup(c.Close)
		return c
	}
	sh := func(t *testing.T, c *envdclient.Client, script string) string {
		t.Helper()
		res, err := c.Shell(ctx, script)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%q: %+v, %v", script, res, err)
		}
		return strings.TrimSpace(string(res.Stdout))
	}
	create := func(t *testing.T, autoPause bool) Sandbox {
		t.Helper()
		sb, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256, TimeoutSec: 600, AutoPause: &autoPause})
		if err != nil {
			t.Fatalf("Create: %v", err)
		}
		t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, sb.ID) })
		return sb
	}
	// markers writes a file on the disk and one in memory only (a tmpfs)
	// and starts a process that lives until the machine stops.
	markers := func(t *testing.T, c *envdclient.Client) {
		t.Helper()
		sh(t, c, `echo disk > /root/on-disk && mkdir -p /mnt/mem && { grep -q ' /mnt/mem ' /proc/mounts || mount -t tmpfs tmpfs /mnt/mem; } && echo memory > /mnt/mem/in-memory && (sleep 100000 >/dev/null 2>&1 &) && echo ok`)
	}
	// booted reports what survived: the disk file, the memory file, the
	// sleeper.
	survived := func(t *testing.T, c *envdclient.Client) (disk, memory, process bool) {
		t.Helper()
		out := sh(t, c, `cat /root/on-disk 2>/dev/null; cat /mnt/mem/in-memory 2>/dev/null; ps -o args 2>/dev/null | grep -c '^sleep 100000' || true`)
		return strings.Contains(out, "disk"), strings.Contains(out, "memory"), strings.HasSuffix(out, "1")
	}

	testenv.Step(&t, "the reaper ends a sandbox at its shortened deadline", func(t *testing.T) {
		sb := create(t, false)
		rctx, rcancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Go(func() { NewReaper(e.sbx, ReaperConfig{}).Run(rctx) })
		defer wg.Wait()
		defer rcancel()
		set, err := e.sbx.SetTimeout(ctx, p, sb.ID, 2)
		if err != nil {
			t.Fatal(err)
		}
		// As E2B's SDK check (setTimeout, then isRunning a second after
		// the deadline): the reaper claims it (running → pausing, the
		// proxy answers 502 from then on) within a second of its
		// deadline, and destroys it.
		var left time.Time // when it was first seen not running
		var row = sandboxRow(t, e, pgUUID(sb.ID))
		for row.State != store.SandboxStopped && time.Now().Before(set.EndAt.Add(time.Minute)) {
			select {
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			case <-time.After(20 * time.Millisecond):
			}
			row = sandboxRow(t, e, pgUUID(sb.ID))
			if row.State != store.SandboxRunning && left.IsZero() {
				left = time.Now()
			}
		}
		if row.State != store.SandboxStopped || !row.StoppedAt.Valid {
			t.Fatalf("a minute after its deadline the sandbox is %s (%q)", row.State, row.StateReason)
		}
		claimed, stopped := left.Sub(set.EndAt), row.StoppedAt.Time.Sub(set.EndAt)
		t.Logf("left running %v after its deadline (seen), destroyed %v after it", claimed, stopped)
		if claimed < 0 || claimed > time.Second {
			t.Fatalf("left running %v after its deadline, want within a second", claimed)
		}
	})

	// E2B's lifecycle.onTimeout {action: 'pause', keepMemory}: the
	// timeout's pause keeps what the sandbox was created to keep.
	for _, tc := range []struct {
		name       string
		keepMemory bool
	}{
		{"autoPauseMemory false: the timeout's pause keeps the disk only; the resume boots cold", false},
		{"autoPauseMemory true: the timeout's pause keeps the memory; the processes go on", true},
	} {
		testenv.Step(&t, tc.name, func(t *testing.T) {
			yes := true
			sb, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", VCPUs: 1, MemoryMB: 256, TimeoutSec: 600,
				AutoPause: &yes, PauseWithoutMemory: !tc.keepMemory})
			if err != nil {
				t.Fatalf("Create: %v", err)
			}
			t.Cleanup(func() { _ = e.sbx.Destroy(context.Background(), p, sb.ID) })
			if got, err := e.sbx.Get(ctx, p, sb.ID); err != nil || got.AutoPauseMemory != tc.keepMemory {
				t.Fatalf("stored auto_pause_memory = %v (%v), want %v", got.AutoPauseMemory, err, tc.keepMemory)
			}
			markers(t, envd(t, sb))
			rctx, rcancel := context.WithCancel(ctx)
			var wg sync.WaitGroup
			wg.Go(func() { NewReaper(e.sbx, ReaperConfig{}).Run(rctx) })
			defer wg.Wait()
			defer rcancel()
			set, err := e.sbx.SetTimeout(ctx, p, sb.ID, 1)
			if err != nil {
				t.Fatal(err)
			}
			row := sandboxRow(t, e, pgUUID(sb.ID))
			for row.State != store.SandboxPaused && time.Now().Before(set.EndAt.Add(2*time.Minute)) {
				select {
				case <-ctx.Done():
					t.Fatal(ctx.Err())
				case <-time.After(50 * time.Millisecond):
				}
				row = sandboxRow(t, e, pgUUID(sb.ID))
			}
			if row.State != store.SandboxPaused {
				t.Fatalf("after its timeout the sandbox is %s (%q), want paused", row.State, row.StateReason)
			}
			rcancel()
			resumed, err := e.sbx.Resume(ctx, p, sb.ID)
			if err != nil {
				t.Fatalf("Resume: %v", err)
			}
			disk, memory, process := survived(t, envd(t, resumed))
			if !disk || memory != tc.keepMemory || process != tc.keepMemory {
				t.Fatalf("after the timeout's pause: disk file %v, memory file %v, process %v; want the disk file, and the others %v",
					disk, memory, process, tc.keepMemory)
			}
		})
	}

	testenv.Step(&t, "a filesystem-only pause keeps the disk only; the resume boots cold", func(t *testing.T) {
		sb := create(t, true)
		markers(t, envd(t, sb))
		paused, err := e.sbx.PauseWith(ctx, p, sb.ID, PauseOptions{FilesystemOnly: true})
		if err != nil || paused.State != StatePaused {
			t.Fatalf("PauseWith(filesystem only) = %s, %v", paused.State, err)
		}
		resumed, err := e.sbx.Resume(ctx, p, sb.ID)
		if err != nil {
			t.Fatalf("Resume: %v", err)
		}
		if resumed.EnvdAccessToken != sb.EnvdAccessToken {
			t.Fatal("the envd access token changed across the pause")
		}
		disk, memory, process := survived(t, envd(t, resumed))
		if !disk || memory || process {
			t.Fatalf("after a filesystem-only pause: disk file %v, memory file %v, process %v; want only the disk file", disk, memory, process)
		}
	})

	testenv.Step(&t, "a memory pause resumed cold drops the memory, keeps the files", func(t *testing.T) {
		sb := create(t, true)
		markers(t, envd(t, sb))
		if _, err := e.sbx.Pause(ctx, p, sb.ID); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		got, resumed, err := e.sbx.ConnectWith(ctx, p, sb.ID, 60, ResumeOptions{Cold: true})
		if err != nil || !resumed {
			t.Fatalf("ConnectWith(cold) = %v, %v", resumed, err)
		}
		disk, memory, process := survived(t, envd(t, got))
		if !disk || memory || process {
			t.Fatalf("after a cold resume: disk file %v, memory file %v, process %v; want only the disk file", disk, memory, process)
		}
		// And a memory pause resumed as usual keeps all three.
		markers(t, envd(t, got))
		if _, err := e.sbx.Pause(ctx, p, sb.ID); err != nil {
			t.Fatalf("Pause: %v", err)
		}
		again, err := e.sbx.Resume(ctx, p, sb.ID)
		if err != nil {
			t.Fatalf("Resume: %v", err)
		}
		if disk, memory, process := survived(t, envd(t, again)); !disk || !memory || !process {
			t.Fatalf("after a memory resume: disk file %v, memory file %v, process %v; want all three", disk, memory, process)
		}
	})
}
