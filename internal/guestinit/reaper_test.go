package guestinit

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// subreaper makes this test process the child subreaper, so that orphans
// of its children re-parent to it as they would to PID 1 in a guest.
func subreaper(t *testing.T) {
	t.Helper()
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("PR_SET_CHILD_SUBREAPER: %v", err)
	}
	t.Cleanup(func() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	if err == nil {
		return 0
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("Wait: %v (the reaper stole the status?)", err)
	}
	return ee.ExitCode()
}

// waitZombie polls until pid is a zombie.
func waitZombie(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			t.Fatalf("process %d vanished: %v", pid, err)
		}
		if st, _, ok := parseStat(data); ok && st == 'Z' {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("process %d did not exit", pid)
}

// TestReaperLeavesOwnedChildren runs children through Start while the
// reaper runs on SIGCHLD and another goroutine reaps in a tight loop: every
// exec.Cmd.Wait must still get its exit status.
func TestReaperLeavesOwnedChildren(t *testing.T) {
	subreaper(t)
	r := NewReaper(quietLog())
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); r.Run(ctx) }()
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			r.Reap()
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	for i := 0; i < 20; i++ {
		code := i % 7
		cmd := exec.Command("sh", "-c", "exit "+strconv.Itoa(code))
		if err := r.StartCmd(cmd); err != nil {
			t.Fatal(err)
		}
		if !r.Owned(cmd.Process.Pid) {
			t.Fatal("child not registered after StartCmd")
		}
		if got := exitCode(t, cmd.Wait()); got != code {
			t.Fatalf("run %d: exit code %d, want %d", i, got, code)
		}
		r.Done(cmd.Process.Pid)
		if r.Owned(cmd.Process.Pid) {
			t.Fatal("child still registered after Done")
		}
	}
}

// TestReaperReapsOrphans checks that a grandchild orphaned by its parent's
// exit is reaped, with its status, while the parent's status still goes to
// its exec.Cmd.
func TestReaperReapsOrphans(t *testing.T) {
	subreaper(t)
	r := NewReaper(quietLog())
	exits := make(chan Exit, 16)
	r.onExit = func(e Exit) { exits <- e }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	cmd := exec.Command("sh", "-c", "(sleep 0.2; exit 7) & echo $!; exit 2")
	var out strings.Builder
	cmd.Stdout = &out
	if err := r.StartCmd(cmd); err != nil {
		t.Fatal(err)
	}
	if got := exitCode(t, cmd.Wait()); got != 2 {
		t.Fatalf("parent exit code %d, want 2", got)
	}
	r.Done(cmd.Process.Pid)
	orphan, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatalf("orphan pid %q: %v", out.String(), err)
	}
	timeout := time.After(10 * time.Second)
	for {
		select {
		case e := <-exits:
			if e.Pid != orphan {
				continue
			}
			if !e.Status.Exited() || e.Status.ExitStatus() != 7 {
				t.Fatalf("orphan status %v, want exit 7", describeStatus(e.Status))
			}
			if _, err := os.Stat("/proc/" + strconv.Itoa(orphan)); err == nil {
				t.Fatalf("orphan %d still exists after being reaped", orphan)
			}
			return
		case <-timeout:
			t.Fatalf("orphan %d was not reaped", orphan)
		}
	}
}

// TestReaperSparesUntrackedExecChild covers the pidfd layer: an os/exec
// child started without Start is a zombie when a pass runs, and its Wait
// still gets the status.
func TestReaperSparesUntrackedExecChild(t *testing.T) {
	r := NewReaper(quietLog())
	cmd := exec.Command("sh", "-c", "exit 5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	if !pidfdTargets()[pid] {
		_ = cmd.Wait()
		t.Skip("os/exec holds no pidfd for its children here (kernel without pidfd support)")
	}
	waitZombie(t, pid)
	for _, e := range r.Reap() {
		if e.Pid == pid {
			t.Fatal("reaped an untracked os/exec child")
		}
	}
	if got := exitCode(t, cmd.Wait()); got != 5 {
		t.Fatalf("exit code %d, want 5", got)
	}
}

// TestReaperOwnedZombieDoesNotHideOrphans leaves an owned child unwaited
// as a zombie and checks that orphans are still reaped around it.
func TestReaperOwnedZombieDoesNotHideOrphans(t *testing.T) {
	subreaper(t)
	r := NewReaper(quietLog())
	owned := exec.Command("sh", "-c", "exit 4")
	if err := r.StartCmd(owned); err != nil {
		t.Fatal(err)
	}
	waitZombie(t, owned.Process.Pid)
	found := false
	for _, pid := range zombieChildren(os.Getpid()) {
		found = found || pid == owned.Process.Pid
	}
	if !found {
		t.Fatalf("zombieChildren misses zombie %d", owned.Process.Pid)
	}

	var out strings.Builder
	// The orphan outlives its parent (or the parent shell might reap it).
	orphanParent := exec.Command("sh", "-c", "(sleep 0.1; exit 9) & echo $!")
	orphanParent.Stdout = &out
	if err := r.StartCmd(orphanParent); err != nil {
		t.Fatal(err)
	}
	if err := orphanParent.Wait(); err != nil {
		t.Fatal(err)
	}
	r.Done(orphanParent.Process.Pid)
	orphan, err := strconv.Atoi(strings.TrimSpace(out.String()))
	if err != nil {
		t.Fatal(err)
	}

	deadline := time.Now().Add(10 * time.Second)
	reaped := false
	for !reaped && time.Now().Before(deadline) {
		for _, e := range r.Reap() {
			if e.Pid == owned.Process.Pid {
				t.Fatal("reaped the owned zombie")
			}
			if e.Pid == orphan {
				if e.Status.ExitStatus() != 9 {
					t.Fatalf("orphan status %s", describeStatus(e.Status))
				}
				reaped = true
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if !reaped {
		t.Fatalf("orphan %d not reaped while owned zombie %d waits", orphan, owned.Process.Pid)
	}
	if got := exitCode(t, owned.Wait()); got != 4 {
		t.Fatalf("owned exit code %d, want 4", got)
	}
	r.Done(owned.Process.Pid)
}

func TestReaperStartExcludesReaping(t *testing.T) {
	r := NewReaper(quietLog())
	reaped := make(chan struct{})
	err := r.Start(func() (int, error) {
		go func() { r.Reap(); close(reaped) }()
		select {
		case <-reaped:
			t.Error("a reap pass ran between fork and registration")
		case <-time.After(50 * time.Millisecond):
		}
		return 424242, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	<-reaped
	r.Done(424242)
}

func TestReaperOwnershipCounts(t *testing.T) {
	r := NewReaper(quietLog())
	spawn := func() (int, error) { return 4242, nil }
	for i := 0; i < 2; i++ {
		if err := r.Start(spawn); err != nil {
			t.Fatal(err)
		}
	}
	r.Done(4242)
	if !r.Owned(4242) {
		t.Error("a recycled pid lost its second registration")
	}
	r.Done(4242)
	r.Done(4242) // extra Done is harmless
	if r.Owned(4242) {
		t.Error("still owned after Done")
	}
	boom := errors.New("boom")
	if err := r.Start(func() (int, error) { return 0, boom }); !errors.Is(err, boom) {
		t.Errorf("Start error = %v", err)
	}
	if len(r.owned) != 0 {
		t.Errorf("registry not empty: %v", r.owned)
	}
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in    string
		state byte
		ppid  int
		ok    bool
	}{
		{"123 (sh) Z 1 123 123 0 -1", 'Z', 1, true},
		{"123 (a) b (c)) S 77 1 1", 'S', 77, true},
		{"123 (x y) R 9", 'R', 9, true},
		{"123 sh Z 1", 0, 0, false},
		{"123 (sh) Z", 0, 0, false},
		{"123 (sh) ZZ 1", 0, 0, false},
		{"123 (sh) Z x", 0, 0, false},
	} {
		st, ppid, ok := parseStat([]byte(tc.in))
		if st != tc.state || ppid != tc.ppid || ok != tc.ok {
			t.Errorf("parseStat(%q) = %c %d %v", tc.in, st, ppid, ok)
		}
	}
}

func TestFdinfoPid(t *testing.T) {
	if pid, ok := fdinfoPid([]byte("pos:\t0\nflags:\t02000002\nPid:\t14936\nNSpid:\t14936\n")); !ok || pid != 14936 {
		t.Errorf("got %d %v", pid, ok)
	}
	if _, ok := fdinfoPid([]byte("pos:\t0\nPid:\t-1\n")); ok {
		t.Error("Pid -1 (exited and reaped) accepted")
	}
	if _, ok := fdinfoPid([]byte("pos:\t0\n")); ok {
		t.Error("no Pid line accepted")
	}
}
