package sandbox_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/testenv"
)

// The tests share one image store (built once per content hash) and run
// their own pool of network slots in a test-only address range. The slots
// outlive a pool's Close: an agent restarted by a test adopts its
// machines.
var testPool = func() hosttest.Pool {
	p := hosttest.SandboxPool
	p.MaxSlots, p.KeepSlots = 16, true
	return p
}()

type env struct {
	t       *testing.T
	dataDir string
	runDir  string
	pool    *netslot.Pool
	mgr     *sandbox.Manager
}

func newEnv(t *testing.T) *env {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "qemu-system-x86_64")
	testenv.RequireCommand(t, "qemu-img")
	e := &env{t: t, dataDir: t.TempDir(), runDir: t.TempDir()}
	e.pool = newPool(t)
	e.mgr = e.manager(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if e.mgr != nil {
			if err := e.mgr.Shutdown(ctx); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		}
		if err := e.pool.Close(ctx); err != nil {
			t.Errorf("close pool: %v", err)
		}
		hosttest.AssertNoVMM(t, e.runDir, e.dataDir)
	})
	return e
}

func newPool(t *testing.T) *netslot.Pool {
	t.Helper()
	return hosttest.NewSlots(t, testPool, nil)
}

// manager makes a manager of e's directories and slots; mods change its
// configuration first.
func (e *env) manager(t *testing.T, mods ...func(*sandbox.Config)) *sandbox.Manager {
	t.Helper()
	cfg := sandbox.Config{
		DataDir: e.dataDir, RunDir: e.runDir,
		Driver: hosttest.Driver(t), Images: hosttest.Images(t), Slots: e.pool,
		Capacity: sandbox.Capacity{VCPUs: 16, MemoryMB: 4096},
	}
	for _, mod := range mods {
		mod(&cfg)
	}
	m, err := sandbox.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("manager: %v", err)
	}
	return m
}

// step runs fn as the named step (a subtest) of the test, with e
// reporting to it (e.create fails the step), and reports whether it
// passed. Steps build on each other: callers stop at the first that fails.
func (e *env) step(name string, fn func(t *testing.T)) bool {
	return testenv.Step(&e.t, name, fn)
}

func (e *env) create(ctx context.Context, o sandbox.CreateOptions) (*sandbox.Info, *envdclient.Client) {
	e.t.Helper()
	if o.Template == "" {
		o.Template = "minimal"
	}
	if o.AccessToken == "" {
		o.AccessToken = "tok-" + sandbox.NewID()
	}
	info, err := e.mgr.Create(ctx, o)
	if err != nil {
		e.t.Fatalf("create: %v", err)
	}
	c, err := e.mgr.Client(info.ID)
	if err != nil {
		e.t.Fatal(err)
	}
	return info, c
}

func sh(t *testing.T, ctx context.Context, c *envdclient.Client, script string) string {
	t.Helper()
	res, err := c.Shell(ctx, script)
	if err != nil {
		t.Fatalf("run %q: %v", script, err)
	}
	if res.ExitCode != 0 {
		t.Fatalf("run %q: exit %d: %s%s", script, res.ExitCode, res.Stdout, res.Stderr)
	}
	return strings.TrimSpace(string(res.Stdout))
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestBootExecFiles(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 3*time.Minute)
	info, c := e.create(ctx, sandbox.CreateOptions{EnvVars: map[string]string{"GREETING": "hi"}, DiskMB: 512})
	if info.State != sandbox.StateRunning || info.VMMPid == 0 {
		t.Fatalf("info %+v", info)
	}
	if got := sh(t, ctx, c, `echo "$GREETING $E2B_SANDBOX_ID"`); got != "hi "+info.ID {
		t.Fatalf("env: %q", got)
	}
	if err := c.WriteFile(ctx, "/tmp/hello.txt", strings.NewReader("hello from the host")); err != nil {
		t.Fatal(err)
	}
	if got := sh(t, ctx, c, "cat /tmp/hello.txt"); got != "hello from the host" {
		t.Fatalf("file: %q", got)
	}
	// A client without the sandbox's token is refused.
	if _, err := envdclient.New(c.Base(), "wrong").Shell(ctx, "true"); err == nil {
		t.Fatal("envd accepted a wrong access token")
	}
	// The disk is the size asked for (the 128 MiB template's filesystem
	// grew at boot), and its free space is real: it can be filled.
	if got := atoi(t, sh(t, ctx, c, "df -m / | awk 'NR==2{print $2}'")); got < 450 {
		t.Fatalf("root filesystem is %d MiB, want about 512", got)
	}
	// Writing 300 MiB under TCG takes seconds on a quiet machine and
	// minutes on a loaded one: its own budget, so that the check is of
	// the disk, not of the machine's load.
	sh(t, testCtx(t, 10*time.Minute), c, "dd if=/dev/zero of=/root/big bs=1M count=300 2>/dev/null && sync && rm /root/big")
}

// counterScript keeps an in-memory counter in a shell loop and reports it
// on demand: its value survives only if process memory does.
const counterScript = `i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.tmp; mv /tmp/counter.tmp /tmp/counter.now; sleep 0.2; done`

func TestPauseResumeKeepsMemoryAndFiles(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 10*time.Minute)
	info, c := e.create(ctx, sandbox.CreateOptions{})
	startBackground(t, ctx, c, counterScript)
	sh(t, ctx, c, "echo persistent > /root/state.txt; head -c 1048576 /dev/urandom > /root/blob; md5sum /root/blob | cut -d' ' -f1 > /root/blob.md5")
	last := 0
	for cycle := range 20 {
		// Each cycle starts from the state the previous one left.
		if !t.Run(fmt.Sprintf("cycle %02d", cycle), func(t *testing.T) {
			time.Sleep(500 * time.Millisecond)
			before := atoi(t, sh(t, ctx, c, "cat /tmp/counter.now"))
			if before <= last {
				t.Fatalf("counter %d did not advance past %d", before, last)
			}
			if err := e.mgr.Pause(ctx, info.ID); err != nil {
				t.Fatalf("pause: %v", err)
			}
			if err := e.mgr.Pause(ctx, info.ID); !errors.Is(err, sandbox.ErrConflict) {
				t.Fatalf("pausing a paused sandbox: %v", err)
			}
			if in, _ := e.mgr.Get(info.ID); in.State != sandbox.StatePaused || in.VMMPid != 0 {
				t.Fatalf("after pause: %+v", in)
			}
			if _, err := e.mgr.Resume(ctx, info.ID); err != nil {
				t.Fatalf("resume: %v", err)
			}
			c2, err := e.mgr.Client(info.ID)
			if err != nil {
				t.Fatal(err)
			}
			c = c2
			now := atoi(t, sh(t, ctx, c, "cat /tmp/counter.now"))
			if now < before {
				t.Fatalf("counter went back from %d to %d: process memory lost", before, now)
			}
			got := strings.Split(sh(t, ctx, c, "cat /root/state.txt; md5sum /root/blob | cut -d' ' -f1; cat /root/blob.md5"), "\n")
			if len(got) != 3 || got[0] != "persistent" || got[1] != got[2] {
				t.Fatalf("files changed: %q", got)
			}
			last = now
		}) {
			return
		}
	}
}

func startBackground(t *testing.T, ctx context.Context, c *envdclient.Client, script string) {
	t.Helper()
	sh(t, ctx, c, "sh -c '"+script+"' >/dev/null 2>&1 </dev/null &")
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	var n int
	if _, err := fmt.Sscan(s, &n); err != nil {
		t.Fatalf("not a number: %q", s)
	}
	return n
}

func TestSnapshotTemplateClonesDiverge(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 8*time.Minute)
	src, c := e.create(ctx, sandbox.CreateOptions{})
	sh(t, ctx, c, "echo from-template > /root/tpl.txt")
	startBackground(t, ctx, c, counterScript)
	time.Sleep(time.Second)
	tpl, err := e.mgr.CreateSnapshot(ctx, src.ID, "snap-test")
	if err != nil {
		t.Fatalf("create snapshot: %v", err)
	}
	if tpl.Kind != sandbox.KindSnapshot {
		t.Fatalf("template %+v", tpl)
	}
	// The source goes on.
	if got := sh(t, ctx, mustClient(t, e, src.ID), "cat /root/tpl.txt"); got != "from-template" {
		t.Fatalf("source after snapshot: %q", got)
	}
	var clients []*envdclient.Client
	for i := range 3 {
		_, cc := e.create(ctx, sandbox.CreateOptions{Template: "snap-test"})
		if got := sh(t, ctx, cc, "cat /root/tpl.txt"); got != "from-template" {
			t.Fatalf("clone %d: %q", i, got)
		}
		if n := atoi(t, sh(t, ctx, cc, "sleep 0.5; cat /tmp/counter.now")); n < 1 {
			t.Fatalf("clone %d: counter process did not survive: %d", i, n)
		}
		sh(t, ctx, cc, fmt.Sprintf("echo clone-%d > /root/mine.txt", i))
		clients = append(clients, cc)
	}
	for i, cc := range clients {
		if got := sh(t, ctx, cc, "cat /root/mine.txt"); got != fmt.Sprintf("clone-%d", i) {
			t.Fatalf("clone %d sees %q", i, got)
		}
	}
	if got := sh(t, ctx, mustClient(t, e, src.ID), "cat /root/mine.txt 2>/dev/null || echo none"); got != "none" {
		t.Fatalf("source sees a clone's file: %q", got)
	}
	// Creating from a snapshot template with another shape is refused.
	if _, err := e.mgr.Create(ctx, sandbox.CreateOptions{Template: "snap-test", MemoryMB: 1024}); !errors.Is(err, sandbox.ErrInvalid) {
		t.Fatalf("create with another memory size: %v", err)
	}
}

func mustClient(t *testing.T, e *env, id string) *envdclient.Client {
	t.Helper()
	c, err := e.mgr.Client(id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFlattenRootfsColdBoots(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 6*time.Minute)
	src, c := e.create(ctx, sandbox.CreateOptions{})
	sh(t, ctx, c, "mkdir -p /opt/app && echo built > /opt/app/artifact && sync")
	if _, err := e.mgr.FlattenRootfs(ctx, src.ID, "flat-test"); err != nil {
		t.Fatal(err)
	}
	_, cc := e.create(ctx, sandbox.CreateOptions{Template: "flat-test"})
	if got := sh(t, ctx, cc, "cat /opt/app/artifact; cat /tmp/counter.now 2>/dev/null || echo cold"); got != "built\ncold" {
		t.Fatalf("flattened template: %q", got)
	}
	for _, bad := range []string{"../evil", "a/b", "", "minimal"} {
		if _, err := e.mgr.FlattenRootfs(ctx, src.ID, bad); !errors.Is(err, sandbox.ErrInvalid) {
			t.Fatalf("template name %q: %v", bad, err)
		}
	}
}

func TestNetworkIsolationAndEgress(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 6*time.Minute)
	inet := startInternet(t)
	a, ca := e.create(ctx, sandbox.CreateOptions{Egress: true})
	b, cb := e.create(ctx, sandbox.CreateOptions{Egress: false})

	// Egress on: the guest reaches the "internet"; off: it does not.
	if got := sh(t, ctx, ca, "nc -w 5 "+inet.addr+" 80 </dev/null"); !strings.HasPrefix(got, "internet") {
		t.Fatalf("egress on: %q", got)
	}
	res, err := cb.Shell(ctx, "nc -w 3 "+inet.addr+" 80 </dev/null")
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasPrefix(string(res.Stdout), "internet") {
		t.Fatalf("sandbox %s reached the internet with egress off", b.ID)
	}
	// The two sandboxes cannot reach each other, nor the host's services.
	hostLn := listenHost(t)
	for _, target := range []string{b.HostAddr + " 49983", hostLn} {
		res, err := ca.Shell(ctx, "nc -w 3 "+target+" </dev/null; echo rc=$?")
		if err != nil || !strings.Contains(string(res.Stdout), "rc=1") {
			t.Fatalf("sandbox %s reached %s: %v %q", a.ID, target, err, res.Stdout)
		}
	}
}

// internet is a test namespace standing for the outside world.
type internet struct{ addr string }

// startInternet makes a namespace routed from the host (198.19.2.0/30)
// that answers TCP :80 with "internet". Traffic never leaves the machine.
func startInternet(t *testing.T) *internet {
	t.Helper()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	_ = exec.Command("ip", "netns", "del", "cst-inet").Run()
	_ = exec.Command("ip", "link", "del", "cstinet").Run()
	run("ip", "netns", "add", "cst-inet")
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", "cstinet").Run()
		_ = exec.Command("ip", "netns", "del", "cst-inet").Run()
	})
	run("ip", "link", "add", "cstinet", "type", "veth", "peer", "name", "eth0", "netns", "cst-inet")
	run("ip", "addr", "add", "198.19.2.1/30", "dev", "cstinet")
	run("ip", "link", "set", "cstinet", "up")
	run("ip", "-n", "cst-inet", "addr", "add", "198.19.2.2/30", "dev", "eth0")
	run("ip", "-n", "cst-inet", "link", "set", "eth0", "up")
	run("ip", "-n", "cst-inet", "link", "set", "lo", "up")
	srv := exec.Command("ip", "netns", "exec", "cst-inet", os.Args[0], "-test.run=^TestHelperInternetServer$")
	srv.Env = append(os.Environ(), "CAPSULE_INTERNET_SERVER=1")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })
	return &internet{addr: "198.19.2.2"}
}

// TestHelperInternetServer is the "internet" server, run in its namespace
// by startInternet; on its own it does nothing.
func TestHelperInternetServer(t *testing.T) {
	if os.Getenv("CAPSULE_INTERNET_SERVER") != "1" {
		return
	}
	ln, err := net.Listen("tcp4", ":80")
	if err != nil {
		t.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		_, _ = c.Write([]byte("internet " + c.RemoteAddr().String() + "\n"))
		c.Close()
	}
}

// listenHost listens on every host address and returns "addr port" for
// nc with the host's end of the internet veth: an address of the host that
// guests can route to, and must still not reach.
func listenHost(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("host\n"))
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	return fmt.Sprintf("198.19.2.1 %d", port)
}

func TestConcurrentCreatesAndNoLeaks(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 8*time.Minute)
	var wg sync.WaitGroup
	ids := make(chan string, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			info, c := e.create(ctx, sandbox.CreateOptions{})
			if got := sh(t, ctx, c, "echo ok"); got != "ok" {
				t.Errorf("%s: %q", info.ID, got)
			}
			ids <- info.ID
		}()
	}
	wg.Wait()
	close(ids)
	for id := range ids {
		if err := e.mgr.Destroy(ctx, id); err != nil {
			t.Fatal(err)
		}
		if err := e.mgr.Destroy(ctx, id); err != nil {
			t.Fatalf("second destroy: %v", err)
		}
		if _, err := e.mgr.Get(id); !errors.Is(err, sandbox.ErrNotFound) {
			t.Fatalf("get after destroy: %v", err)
		}
	}
	hosttest.AssertNoVMM(t, e.runDir, e.dataDir)
	if entries, _ := os.ReadDir(filepath.Join(e.dataDir, "sandboxes")); len(entries) != 0 {
		t.Fatalf("sandbox directories left: %v", entries)
	}
	if entries, _ := os.ReadDir(e.runDir); len(entries) != 0 {
		t.Fatalf("run directories left: %v", entries)
	}
}

func TestCapacityRefusesOvercommit(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 3*time.Minute)
	if _, err := e.mgr.Create(ctx, sandbox.CreateOptions{Template: "minimal", MemoryMB: 8192}); !errors.Is(err, sandbox.ErrCapacity) {
		t.Fatalf("8 GiB on a 4 GiB host: %v", err)
	}
	if _, err := e.mgr.Create(ctx, sandbox.CreateOptions{Template: "no-such-template"}); !errors.Is(err, sandbox.ErrNotFound) {
		t.Fatalf("unknown template: %v", err)
	}
	if _, err := e.mgr.Create(ctx, sandbox.CreateOptions{ID: "Bad-ID"}); !errors.Is(err, sandbox.ErrInvalid) {
		t.Fatalf("bad id: %v", err)
	}
}

// TestCreateDestroyCyclesLeakNothing: 50 create/destroy cycles (from a
// snapshot template, so that they are quick) leave no process, file,
// network slot or descriptor behind.
func TestCreateDestroyCyclesLeakNothing(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 10*time.Minute)
	src, _ := e.create(ctx, sandbox.CreateOptions{})
	if _, err := e.mgr.CreateSnapshot(ctx, src.ID, "cycles"); err != nil {
		t.Fatal(err)
	}
	if err := e.mgr.Destroy(ctx, src.ID); err != nil {
		t.Fatal(err)
	}
	fds := openFDs(t)
	for i := range 50 {
		info, c := e.create(ctx, sandbox.CreateOptions{Template: "cycles"})
		if i%10 == 0 {
			if got := sh(t, ctx, c, "echo alive"); got != "alive" {
				t.Fatalf("cycle %d: %q", i, got)
			}
		}
		if err := e.mgr.Destroy(ctx, info.ID); err != nil {
			t.Fatalf("cycle %d: destroy: %v", i, err)
		}
	}
	hosttest.AssertNoVMM(t, e.runDir, e.dataDir)
	if entries, _ := os.ReadDir(filepath.Join(e.dataDir, "sandboxes")); len(entries) != 0 {
		t.Fatalf("sandbox directories left: %d", len(entries))
	}
	if entries, _ := os.ReadDir(e.runDir); len(entries) != 0 {
		t.Fatalf("run directories left: %d", len(entries))
	}
	// Slots are reused, not piled up: one namespace serves every cycle.
	if ns := netnsCount(t, "cst-"); ns > 1 {
		t.Fatalf("%d slot namespaces after sequential cycles", ns)
	}
	// Descriptors settle back (allow a little slack for idle HTTP
	// connections and runtime internals).
	if now := openFDs(t); now > fds+8 {
		t.Fatalf("open descriptors grew from %d to %d", fds, now)
	}
}

func openFDs(t *testing.T) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(entries)
}

func netnsCount(t *testing.T, prefix string) int {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	n := 0
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix) {
			n++
		}
	}
	return n
}

// TestIdleTimeoutPauses: the reaper pauses a sandbox idle for longer than
// its timeout; Ping keeps one alive.
func TestIdleTimeoutPauses(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 4*time.Minute)
	idle, _ := e.create(ctx, sandbox.CreateOptions{Timeout: 3 * time.Second})
	busy, _ := e.create(ctx, sandbox.CreateOptions{Timeout: 3 * time.Second})
	deadline := time.Now().Add(60 * time.Second)
	for {
		if err := e.mgr.Ping(busy.ID); err != nil {
			t.Fatal(err)
		}
		in, err := e.mgr.Get(idle.ID)
		if err != nil {
			t.Fatal(err)
		}
		if in.State == sandbox.StatePaused {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("idle sandbox still %s after 60 s", in.State)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if in, _ := e.mgr.Get(busy.ID); in.State != sandbox.StateRunning {
		t.Fatalf("pinged sandbox is %s", in.State)
	}
	if err := e.mgr.SetTimeout(busy.ID, 0); err != nil {
		t.Fatal(err)
	}
	// A graceful agent stop pauses whatever still runs.
	if err := e.mgr.PauseAll(ctx); err != nil {
		t.Fatal(err)
	}
	for _, in := range e.mgr.List() {
		if in.State != sandbox.StatePaused {
			t.Fatalf("after PauseAll %s is %s", in.ID, in.State)
		}
	}
}

// TestConcurrentOperationsOnOneSandbox: pause, resume and destroy racing
// on one sandbox end in a consistent state with nothing leaked.
func TestConcurrentOperationsOnOneSandbox(t *testing.T) {
	e := newEnv(t)
	ctx := testCtx(t, 4*time.Minute)
	info, _ := e.create(ctx, sandbox.CreateOptions{})
	var wg sync.WaitGroup
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch i % 3 {
			case 0:
				err = e.mgr.Pause(ctx, info.ID)
			case 1:
				_, err = e.mgr.Resume(ctx, info.ID)
			case 2:
				if i == 5 {
					time.Sleep(2 * time.Second)
					err = e.mgr.Destroy(ctx, info.ID)
				}
			}
			if err != nil && !errors.Is(err, sandbox.ErrConflict) && !errors.Is(err, sandbox.ErrNotFound) {
				t.Errorf("op %d: %v", i, err)
			}
		}()
	}
	wg.Wait()
	if _, err := e.mgr.Get(info.ID); !errors.Is(err, sandbox.ErrNotFound) {
		t.Fatalf("after destroy: %v", err)
	}
	hosttest.AssertNoVMM(t, e.runDir, e.dataDir)
}
