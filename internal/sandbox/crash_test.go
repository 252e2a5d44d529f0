package sandbox_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/testenv"
)

// helperIDs is what the helper agent reports once its sandboxes exist:
// one running a counter in memory with a synced file, one paused with a
// file, and one whose machine the test kills (a VMM that died).
type helperIDs struct{ running, paused, victim string }

// runHelperAgent starts TestHelperAgent in a child process on dataDir and
// runDir and waits until it reports its sandboxes (and, with crashAt,
// has killed itself with SIGKILL at that crash point); else it kills it
// with SIGKILL.
func runHelperAgent(t *testing.T, dataDir, runDir, crashAt string) helperIDs {
	t.Helper()
	ids := filepath.Join(t.TempDir(), "ids")
	agent := exec.Command(os.Args[0], "-test.run=^TestHelperAgent$", "-test.v")
	agent.Env = append(os.Environ(), "CAPSULE_HELPER_AGENT="+strings.Join([]string{dataDir, runDir, ids, crashAt}, ","))
	out := &strings.Builder{}
	agent.Stdout, agent.Stderr = out, out
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = agent.Wait(); close(exited) }()
	var h helperIDs
	deadline := time.After(8 * time.Minute)
	for h.victim == "" {
		if b, err := os.ReadFile(ids); err == nil {
			fmt.Sscan(string(b), &h.running, &h.paused, &h.victim)
		}
		select {
		case <-deadline:
			_ = agent.Process.Kill()
			<-exited
			t.Fatalf("the helper agent did not get ready:\n%s", out)
		case <-exited:
			if h.victim == "" {
				if b, err := os.ReadFile(ids); err == nil {
					fmt.Sscan(string(b), &h.running, &h.paused, &h.victim)
				}
			}
			if h.victim == "" {
				t.Fatalf("the helper agent exited before getting ready:\n%s", out)
			}
		case <-time.After(200 * time.Millisecond):
		}
	}
	if crashAt != "" {
		<-exited // it kills itself at the crash point
		if !strings.Contains(out.String(), "crash point "+crashAt) {
			t.Fatalf("the helper agent did not reach crash point %s:\n%s", crashAt, out)
		}
	} else {
		_ = agent.Process.Signal(syscall.SIGKILL)
		<-exited
	}
	return h
}

// helperToken is the envd access token of the helper's running sandbox.
const helperToken = "tok-helper-running-secret"

// TestHelperAgent is the agent that the restart tests kill; on its own it
// does nothing. With a crash point it runs the operation that reaches
// that point and kills itself there with SIGKILL.
func TestHelperAgent(t *testing.T) {
	arg := os.Getenv("CAPSULE_HELPER_AGENT")
	if arg == "" {
		return
	}
	parts := strings.Split(arg, ",")
	e := &env{t: t, dataDir: parts[0], runDir: parts[1]}
	e.pool = newPool(t)
	e.mgr = e.manager(t)
	ctx := testCtx(t, 8*time.Minute)
	running, c := e.create(ctx, sandbox.CreateOptions{ID: "running", AccessToken: helperToken,
		EnvVars: map[string]string{"SECRET_ENV": "env-plaintext-value"}})
	startBackground(t, ctx, c, counterScript)
	sh(t, ctx, c, "echo alive > /root/synced.txt; sync")
	paused, c := e.create(ctx, sandbox.CreateOptions{ID: "paused"})
	sh(t, ctx, c, "echo kept > /root/kept.txt")
	if err := e.mgr.Pause(ctx, paused.ID); err != nil {
		t.Fatal(err)
	}
	victim, c := e.create(ctx, sandbox.CreateOptions{ID: "victim"})
	sh(t, ctx, c, "echo on-disk > /root/disk.txt; sync")
	// The counter has counted before anything happens.
	for atoi(t, sh(t, ctx, mustClient(t, e, running.ID), "cat /tmp/counter.now")) < 2 {
		time.Sleep(100 * time.Millisecond)
	}
	report := func() {
		if err := os.WriteFile(parts[2], []byte(running.ID+" "+paused.ID+" "+victim.ID), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	crashAt := parts[3]
	if crashAt == "" {
		report()
		select {} // wait for SIGKILL
	}
	sandbox.SetCrashHook(func(point string) {
		if point == crashAt {
			report()
			fmt.Printf("crash point %s\n", point)
			_ = os.Stdout.Sync()
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	})
	var err error
	switch {
	case strings.HasPrefix(crashAt, "create-"):
		_, err = e.mgr.Create(ctx, sandbox.CreateOptions{ID: "crashme", Template: "minimal", AccessToken: "tok-crashme"})
	case strings.HasPrefix(crashAt, "destroy-"):
		err = e.mgr.Destroy(ctx, paused.ID)
	case strings.HasPrefix(crashAt, "pause-"):
		err = e.mgr.Pause(ctx, running.ID)
	case strings.HasPrefix(crashAt, "resume-"):
		_, err = e.mgr.Resume(ctx, paused.ID)
	case strings.HasPrefix(crashAt, "snapshot-"):
		_, err = e.mgr.CreateSnapshot(ctx, running.ID, "crashtpl")
	}
	t.Fatalf("crash point %s not reached (err %v)", crashAt, err)
}

// TestAgentKilledAtEachStepKeepsSandboxes kills the agent with SIGKILL
// (after its sandboxes exist, and at chosen points of pause, resume and
// snapshot), kills one sandbox's VMM too, and starts a new agent on the
// same directories: running machines are adopted and keep running (a
// counter in memory goes on, files are there), an interrupted operation
// leaves the old state or the new one, complete, the machine that died
// leaves its sandbox stopped with its disk (Resume boots it cold), an
// unreadable state file is set aside with the sandbox in error, and
// after a final destroy nothing is left.
func TestAgentKilledAtEachStepKeepsSandboxes(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tc := range []struct {
		crashAt string
		// the state the first sandbox ("running") and the paused one have
		// after the restart
		running, paused sandbox.State
	}{
		{"", sandbox.StateRunning, sandbox.StatePaused},
		{"pause-recorded", sandbox.StateRunning, sandbox.StatePaused},
		{"pause-snapshotted", sandbox.StatePaused, sandbox.StatePaused},
		{"resume-recorded", sandbox.StateRunning, sandbox.StatePaused},
		{"resume-machine-started", sandbox.StateRunning, sandbox.StateRunning},
		{"create-recorded", sandbox.StateRunning, sandbox.StatePaused},
		{"create-machine-started", sandbox.StateRunning, sandbox.StatePaused},
		// A destroy that released the machine (none: it is paused) but
		// removed nothing yet leaves the sandbox as it was.
		{"destroy-released", sandbox.StateRunning, sandbox.StatePaused},
		{"snapshot-saved", sandbox.StateRunning, sandbox.StatePaused},
	} {
		name := tc.crashAt
		if name == "" {
			name = "idle"
		}
		t.Run(name, func(t *testing.T) {
			dataDir, runDir := t.TempDir(), t.TempDir()
			h := runHelperAgent(t, dataDir, runDir, tc.crashAt)

			// The victim's machine dies with the agent.
			victimPID := vmmPID(t, runDir, h.victim)
			if err := syscall.Kill(victimPID, syscall.SIGKILL); err != nil {
				t.Fatalf("kill the victim's VMM %d: %v", victimPID, err)
			}
			// A sandbox whose state file is damaged.
			corrupt := filepath.Join(dataDir, "sandboxes", "corrupt")
			if err := os.MkdirAll(corrupt, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(corrupt, "state.json"), []byte("{not json"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(corrupt, "rootfs.qcow2"), []byte("user data"), 0o600); err != nil {
				t.Fatal(err)
			}

			e := &env{t: t, dataDir: dataDir, runDir: runDir}
			e.pool = newPool(t)
			e.mgr = e.manager(t)
			t.Cleanup(func() {
				ctx := testCtx(t, time.Minute)
				_ = e.mgr.Shutdown(ctx)
				_ = e.pool.Close(ctx)
				hosttest.AssertNoVMM(t, runDir, dataDir)
			})
			ctx := testCtx(t, 6*time.Minute)
			state := func(t *testing.T, id string) *sandbox.Info {
				t.Helper()
				in, err := e.mgr.Get(id)
				if err != nil {
					t.Fatalf("%s after restart: %v", id, err)
				}
				return in
			}

			t.Run("running sandbox", func(t *testing.T) {
				in := state(t, h.running)
				if in.State != tc.running {
					t.Fatalf("state %s (%s), want %s", in.State, in.StateReason, tc.running)
				}
				if in.State == sandbox.StatePaused {
					if _, err := e.mgr.Resume(ctx, h.running); err != nil {
						t.Fatal(err)
					}
				}
				c := mustClient(t, e, h.running)
				before := atoi(t, sh(t, ctx, c, "cat /tmp/counter.now"))
				if before < 2 {
					t.Fatalf("counter %d: the process' memory was lost", before)
				}
				deadline := time.Now().Add(time.Minute)
				for atoi(t, sh(t, ctx, c, "cat /tmp/counter.now")) <= before {
					if time.Now().After(deadline) {
						t.Fatal("the counter stopped counting")
					}
					time.Sleep(200 * time.Millisecond)
				}
				if got := sh(t, ctx, c, "cat /root/synced.txt"); got != "alive" {
					t.Fatalf("synced file: %q", got)
				}
				if got := sh(t, ctx, c, "echo $SECRET_ENV"); got != "env-plaintext-value" {
					t.Fatalf("env var after adoption: %q", got)
				}
			})
			t.Run("no secrets in state files or template metadata", func(t *testing.T) {
				// A template from the running sandbox: its metadata holds
				// the token its saved envd has, sealed.
				if _, err := e.mgr.CreateSnapshot(ctx, h.running, "secretcheck"); err != nil {
					t.Fatal(err)
				}
				var checked int
				_ = filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
					if err != nil || d.IsDir() || !strings.HasSuffix(p, ".json") || strings.Contains(p, "/snapshot") {
						return nil
					}
					b, _ := os.ReadFile(p)
					checked++
					for _, secret := range []string{helperToken, "env-plaintext-value"} {
						if strings.Contains(string(b), secret) {
							t.Errorf("%s holds %q in plaintext", p, secret)
						}
					}
					return nil
				})
				if checked < 3 {
					t.Fatalf("only %d metadata files checked", checked)
				}
				if err := e.mgr.DeleteTemplate("secretcheck"); err != nil {
					t.Fatal(err)
				}
			})
			t.Run("paused sandbox", func(t *testing.T) {
				if in := state(t, h.paused); in.State != tc.paused {
					t.Fatalf("state %s (%s), want %s", in.State, in.StateReason, tc.paused)
				}
				if tc.paused == sandbox.StatePaused {
					if _, err := e.mgr.Resume(ctx, h.paused); err != nil {
						t.Fatalf("resume: %v", err)
					}
				}
				if got := sh(t, ctx, mustClient(t, e, h.paused), "cat /root/kept.txt"); got != "kept" {
					t.Fatalf("file: %q", got)
				}
			})
			t.Run("dead machine leaves a stopped sandbox with its disk", func(t *testing.T) {
				in := state(t, h.victim)
				if in.State != sandbox.StateStopped || in.StateReason == "" {
					t.Fatalf("state %s (%q), want stopped with a reason", in.State, in.StateReason)
				}
				if _, err := os.Stat(filepath.Join(dataDir, "sandboxes", h.victim, "rootfs.qcow2")); err != nil {
					t.Fatalf("disk: %v", err)
				}
				if _, err := e.mgr.Resume(ctx, h.victim); err != nil {
					t.Fatalf("cold boot: %v", err)
				}
				if got := sh(t, ctx, mustClient(t, e, h.victim), "cat /root/disk.txt"); got != "on-disk" {
					t.Fatalf("file after a cold boot: %q", got)
				}
			})
			t.Run("unreadable state is set aside", func(t *testing.T) {
				in := state(t, "corrupt")
				if in.State != sandbox.StateError || !strings.Contains(in.StateReason, "state.json.corrupt-") {
					t.Fatalf("state %s (%q), want error naming the set-aside file", in.State, in.StateReason)
				}
				names, _ := filepath.Glob(filepath.Join(corrupt, "state.json.corrupt-*"))
				if len(names) != 1 {
					t.Fatalf("set-aside state files: %v", names)
				}
				if b, err := os.ReadFile(filepath.Join(corrupt, "rootfs.qcow2")); err != nil || string(b) != "user data" {
					t.Fatalf("disk of the sandbox in error: %q %v", b, err)
				}
				if _, err := e.mgr.Resume(ctx, "corrupt"); !errors.Is(err, sandbox.ErrConflict) {
					t.Fatalf("resume of a sandbox in error: %v", err)
				}
			})
			if strings.HasPrefix(tc.crashAt, "create-") {
				t.Run("interrupted create leaves a stopped sandbox with its disk", func(t *testing.T) {
					in := state(t, "crashme")
					if in.State != sandbox.StateStopped || in.StateReason == "" {
						t.Fatalf("state %s (%q), want stopped with a reason", in.State, in.StateReason)
					}
					if _, err := os.Stat(filepath.Join(dataDir, "sandboxes", "crashme", "rootfs.qcow2")); err != nil {
						t.Fatalf("disk: %v", err)
					}
				})
			}
			t.Run("interrupted snapshot leaves no template", func(t *testing.T) {
				ts, err := e.mgr.Templates()
				if err != nil {
					t.Fatal(err)
				}
				for _, tpl := range ts {
					if tpl.Name == "crashtpl" {
						t.Fatalf("a template from the interrupted snapshot: %+v", tpl)
					}
				}
			})
			t.Run("destroy removes everything", func(t *testing.T) {
				for _, in := range e.mgr.List() {
					if err := e.mgr.Destroy(ctx, in.ID); err != nil {
						t.Fatalf("destroy %s: %v", in.ID, err)
					}
				}
				left, _ := os.ReadDir(filepath.Join(dataDir, "sandboxes"))
				if len(left) != 0 {
					t.Fatalf("sandbox directories left: %v", left)
				}
				hosttest.AssertNoVMM(t, runDir, dataDir)
				if n := netnsCount(t, "cst-"); n > 0 {
					// Released slots stay in the pool for reuse; the pool's
					// Close at cleanup removes them.
					t.Logf("%d slots kept for reuse", n)
				}
			})
		})
	}
}

// vmmPID reads the PID of a sandbox's VMM from its runtime record.
func vmmPID(t *testing.T, runDir, id string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(runDir, id, "vmm.json"))
	if err != nil {
		t.Fatalf("runtime record of %s: %v", id, err)
	}
	var rec struct{ PID int }
	if err := json.Unmarshal(b, &rec); err != nil || rec.PID <= 0 {
		t.Fatalf("runtime record of %s: %s %v", id, b, err)
	}
	return rec.PID
}
