package vmmtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/disk"
	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/vmm"
)

// Guest is what the suite boots and how it reaches the guest's envd.
type Guest struct {
	// Kernel and Initrd boot the guest; Rootfs is a raw root filesystem
	// image (never written: every machine gets an overlay of its own).
	Kernel, Initrd, Rootfs string
	// MemoryMB and VCPUs size every machine; default 256 and 1.
	MemoryMB, VCPUs int
	// Cmdline is added to every boot's kernel command line (for instance
	// the ip= of the network that Net attaches).
	Cmdline string
	// Net returns the network attachment of a new machine (boot or
	// restore); it must let the host reach envd. Required.
	Net func(t testing.TB) *vmm.NetAttachment
	// EnvdURL returns the base URL (http://host:port) at which the host
	// reaches envd in m. Required.
	EnvdURL func(m vmm.Machine) string
	// Overlay creates a copy-on-write disk at path over base (a raw image
	// or a snapshot's disk) and returns it; default: a qcow2 overlay
	// (package disk).
	Overlay func(ctx context.Context, base vmm.Disk, path string) (vmm.Disk, error)
	// PauseCycles is how many pause/resume cycles one machine goes
	// through; default 3.
	PauseCycles int
	// Timeout bounds each test; default 5 minutes.
	Timeout time.Duration
}

// Run runs the conformance suite against d. Every test boots its own
// machines (a few: TCG boots take seconds), keeps every file in its
// t.TempDir(), and checks at the end that no VMM process it started is
// left and nothing appeared in /dev/shm.
func Run(t *testing.T, d vmm.Driver, g Guest) {
	if g.Net == nil || g.EnvdURL == nil || g.Kernel == "" || g.Rootfs == "" {
		t.Fatal("vmmtest: Guest needs Kernel, Rootfs, Net and EnvdURL")
	}
	if g.MemoryMB == 0 {
		g.MemoryMB = 256
	}
	if g.VCPUs == 0 {
		g.VCPUs = 1
	}
	if g.Overlay == nil {
		g.Overlay = qcow2Overlay
	}
	if g.PauseCycles == 0 {
		g.PauseCycles = 3
	}
	if g.Timeout == 0 {
		g.Timeout = 5 * time.Minute
	}
	s := &suite{d: d, g: g}
	t.Logf("driver %s, accelerator %s", d.Name(), d.Accel())
	t.Run("KillWhileBooting", s.testKillWhileBooting)
	t.Run("Cleanup", s.testCleanup)
	t.Run("BootRunPauseResumePoweroff", s.testLifecycle)
	t.Run("SnapshotTemplate", s.testTemplate)
}

type suite struct {
	d vmm.Driver
	g Guest
}

// qcow2Overlay is the default Guest.Overlay.
func qcow2Overlay(ctx context.Context, base vmm.Disk, path string) (vmm.Disk, error) {
	if err := disk.CreateOverlay(ctx, base.Path, path, 0); err != nil {
		return vmm.Disk{}, err
	}
	return vmm.Disk{Path: path, Format: "qcow2"}, nil
}

// env is one test's world: its directory and the machines it started.
// t is the test or the step (see step) that runs; root is the test, which
// outlives the steps: the machines a step starts are killed when the test
// ends.
type env struct {
	t        *testing.T
	root     *testing.T
	s        *suite
	ctx      context.Context
	dir      string
	machines []vmm.Machine
	shm      map[string]bool
}

func (s *suite) begin(t *testing.T) *env {
	e := &env{t: t, root: t, s: s, dir: t.TempDir(), shm: listDir("/dev/shm")}
	ctx, cancel := context.WithTimeout(context.Background(), s.g.Timeout)
	e.ctx = ctx
	// Cleanups run last-in first-out: machines are killed (registered as
	// they start), then this check, then t.TempDir's removal.
	t.Cleanup(func() {
		cancel()
		e.checkLeaks()
	})
	return e
}

// checkLeaks fails the test when a machine's VMM still runs or a process
// still refers to the test's directory, or when /dev/shm gained entries.
func (e *env) checkLeaks() {
	for _, m := range e.machines {
		select {
		case <-m.Done():
		default:
			e.t.Errorf("machine (pid %d) still running at the end of the test", m.PID())
			_ = m.Kill(context.Background())
		}
	}
	for _, pid := range processesUsing(e.dir) {
		e.t.Errorf("process %d still uses %s after the test; killing it", pid, e.dir)
		if p, err := os.FindProcess(pid); err == nil {
			_ = p.Kill()
		}
	}
	for name := range listDir("/dev/shm") {
		// PostgreSQL's dynamic shared memory segments come and go with the
		// test databases of packages that run beside this one.
		if !e.shm[name] && !strings.HasPrefix(name, "PostgreSQL.") {
			e.t.Errorf("/dev/shm/%s appeared during the test", name)
		}
	}
}

// spec returns the spec of a new machine named id whose files live in
// the test's directory.
func (e *env) spec(id string, disks []vmm.Disk) vmm.Spec {
	return vmm.Spec{
		ID:       id,
		Dir:      filepath.Join(e.dir, id),
		Kernel:   e.s.g.Kernel,
		Initrd:   e.s.g.Initrd,
		Cmdline:  e.s.g.Cmdline,
		VCPUs:    e.s.g.VCPUs,
		MemoryMB: e.s.g.MemoryMB,
		Disks:    disks,
		Net:      e.s.g.Net(e.t),
	}
}

// overlay creates a new disk over base in the test's directory.
func (e *env) overlay(name string, base vmm.Disk) vmm.Disk {
	e.t.Helper()
	dk, err := e.s.g.Overlay(e.ctx, base, filepath.Join(e.dir, name))
	if err != nil {
		e.t.Fatalf("create overlay %s: %v", name, err)
	}
	return dk
}

func (e *env) track(m vmm.Machine) {
	e.machines = append(e.machines, m)
	e.root.Cleanup(func() {
		if err := m.Kill(context.Background()); err != nil {
			e.root.Errorf("kill machine (pid %d): %v", m.PID(), err)
		}
	})
}

// step runs fn as the named step (a subtest) of the test, with e
// reporting to it, and reports whether it passed. Steps build on each
// other: the test stops at the first that fails.
func (e *env) step(name string, fn func(t *testing.T)) bool {
	return testenv.Step(&e.t, name, fn)
}

// boot cold-boots a machine on an overlay of the guest's rootfs.
func (e *env) boot(id string) vmm.Machine {
	e.t.Helper()
	root := e.overlay(id+"-root.qcow2", vmm.Disk{Path: e.s.g.Rootfs, Format: "raw"})
	m, err := e.s.d.Boot(e.ctx, e.spec(id, []vmm.Disk{root}))
	if err != nil {
		e.t.Fatalf("boot %s: %v", id, err)
	}
	e.track(m)
	return m
}

// restore restores snap as machine id with the given disks.
func (e *env) restore(id string, snap vmm.Snapshot, disks []vmm.Disk, copyMemory bool) vmm.Machine {
	e.t.Helper()
	spec := e.spec(id, disks)
	spec.CopyMemory = copyMemory
	m, err := e.s.d.Restore(e.ctx, spec, snap)
	if err != nil {
		e.t.Fatalf("restore %s from %s: %v", id, snap.Dir, err)
	}
	e.track(m)
	return m
}

// envd waits until m's envd answers and returns a client.
func (e *env) envd(m vmm.Machine) *envdClient {
	e.t.Helper()
	c := newEnvdClient(e.s.g.EnvdURL(m))
	ctx, cancel := context.WithTimeout(e.ctx, 2*time.Minute)
	defer cancel()
	if err := c.waitHealth(ctx, m.Done()); err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) mustRun(c *envdClient, script string) string {
	e.t.Helper()
	out, err := c.mustRun(e.ctx, script)
	e.must(err)
	return out
}

func (e *env) readFile(c *envdClient, path string) string {
	e.t.Helper()
	b, err := c.readFile(e.ctx, path)
	e.must(err)
	return string(b)
}

// wantFile checks that path in the guest holds want.
func (e *env) wantFile(c *envdClient, path, want string) {
	e.t.Helper()
	if got := e.readFile(c, path); got != want {
		e.t.Fatalf("%s holds %q, want %q", path, got, want)
	}
}

// wantNoFile checks that path does not exist in the guest.
func (e *env) wantNoFile(c *envdClient, path string) {
	e.t.Helper()
	b, err := c.readFile(e.ctx, path)
	if !errors.Is(err, errNotFound) {
		e.t.Fatalf("%s: want no such file, got %q, %v", path, b, err)
	}
}

// The counter: a shell whose loop variable lives only in its memory and
// is published to a file at every step (atomically, by rename). If the
// process were restarted, the count would start over.
const (
	counterFile   = "/tmp/vmmtest-counter"
	counterScript = `i=0; while :; do i=$((i+1)); echo $i > ` + counterFile + `.tmp && mv ` + counterFile + `.tmp ` + counterFile + `; sleep 0.1; done`
)

func (e *env) counter(c *envdClient) int {
	e.t.Helper()
	s := strings.TrimSpace(e.readFile(c, counterFile))
	n, err := strconv.Atoi(s)
	if err != nil {
		e.t.Fatalf("counter file holds %q", s)
	}
	return n
}

// startCounter starts the counter and waits until it has counted to at
// least 3.
func (e *env) startCounter(c *envdClient) uint32 {
	e.t.Helper()
	pid, err := c.startBackground(e.ctx, counterScript)
	e.must(err)
	e.waitCounter(c, 3)
	return pid
}

// waitCounter waits until the counter reaches min.
func (e *env) waitCounter(c *envdClient, min int) int {
	e.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		b, err := c.readFile(e.ctx, counterFile)
		if err == nil {
			if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n >= min {
				return n
			}
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("the counter did not reach %d (last %q, %v)", min, b, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkCounter checks that the counter process survived: it is still
// listed with its pid, it did not start over (at least atLeast), and it
// goes on counting.
func (e *env) checkCounter(c *envdClient, pid uint32, atLeast int) int {
	e.t.Helper()
	pids, err := c.pids(e.ctx)
	e.must(err)
	if !pids[pid] {
		e.t.Fatalf("counter process %d is gone (processes: %v)", pid, pids)
	}
	n := e.counter(c)
	if n < atLeast {
		e.t.Fatalf("counter at %d, below %d before the snapshot: its memory was lost", n, atLeast)
	}
	return e.waitCounter(c, n+2)
}

// testKillWhileBooting kills a machine right after Boot returns.
func (s *suite) testKillWhileBooting(t *testing.T) {
	e := s.begin(t)
	m := e.boot("kill")
	start := time.Now()
	e.must(m.Kill(e.ctx))
	select {
	case <-m.Done():
	default:
		t.Fatal("Done is open after Kill returned")
	}
	t.Logf("Kill took %v", time.Since(start).Round(time.Millisecond))
	if processAlive(m.PID()) {
		t.Fatalf("VMM process %d alive after Kill", m.PID())
	}
	e.must(m.Kill(e.ctx)) // idempotent
	if _, err := m.Snapshot(e.ctx, filepath.Join(e.dir, "snap"), false); !errors.Is(err, vmm.ErrExited) {
		t.Fatalf("Snapshot of a killed machine: %v, want ErrExited", err)
	}
}

// testCleanup kills a machine through Driver.Cleanup of its directory,
// as an agent does with what its previous process left.
func (s *suite) testCleanup(t *testing.T) {
	e := s.begin(t)
	empty := filepath.Join(e.dir, "empty")
	e.must(os.Mkdir(empty, 0o700))
	e.must(s.d.Cleanup(e.ctx, empty)) // nothing runs there: a no-op
	m := e.boot("cleanup")
	dir := filepath.Join(e.dir, "cleanup")
	e.must(s.d.Cleanup(e.ctx, dir))
	select {
	case <-m.Done():
	case <-time.After(30 * time.Second):
		t.Fatal("the machine still runs after Cleanup")
	}
	if processAlive(m.PID()) {
		t.Fatalf("VMM process %d alive after Cleanup", m.PID())
	}
	e.must(s.d.Cleanup(e.ctx, dir)) // again: a no-op
}

// testLifecycle boots a machine, runs processes and moves files, pauses
// and resumes it PauseCycles times (alternately restoring lazily and with
// CopyMemory, always into the same snapshot directory), and powers it off
// from inside.
func (s *suite) testLifecycle(t *testing.T) {
	e := s.begin(t)
	var (
		m       vmm.Machine
		c       *envdClient
		pid     uint32
		payload = bytes.Repeat([]byte("capsule\x00\xff"), 10000)
	)
	if !e.step("cold boot to envd health", func(t *testing.T) {
		start := time.Now()
		m = e.boot("life")
		c = e.envd(m)
		t.Logf("cold boot to envd health: %v", time.Since(start).Round(time.Millisecond))
	}) {
		return
	}
	if !e.step("processes and files", func(t *testing.T) {
		r, err := c.run(e.ctx, "echo out; echo err >&2; exit 7")
		e.must(err)
		if r.Stdout != "out\n" || r.Stderr != "err\n" || r.ExitCode != 7 {
			t.Fatalf("run: stdout %q stderr %q exit %d", r.Stdout, r.Stderr, r.ExitCode)
		}
		e.must(c.writeFile(e.ctx, "/root/payload.bin", payload))
		if got := e.readFile(c, "/root/payload.bin"); got != string(payload) {
			t.Fatalf("payload read back differs (%d bytes, want %d)", len(got), len(payload))
		}
		if got := e.mustRun(c, "wc -c < /root/payload.bin"); strings.TrimSpace(got) != strconv.Itoa(len(payload)) {
			t.Fatalf("the guest sees %s bytes, want %d", got, len(payload))
		}
		// A file only in guest memory (tmpfs) and one on the disk.
		e.must(c.writeFile(e.ctx, "/dev/shm/in-memory", []byte("ram")))
		e.mustRun(c, "echo disk > /root/on-disk && sync")
		pid = e.startCounter(c)
	}) {
		return
	}

	snapDir := filepath.Join(e.dir, "pause")
	for i := range s.g.PauseCycles {
		copyMemory := i%2 == 1
		if !e.step(fmt.Sprintf("pause and resume %d (copyMemory=%v)", i, copyMemory), func(t *testing.T) {
			before := e.counter(c)
			e.must(c.writeFile(e.ctx, fmt.Sprintf("/dev/shm/cycle-%d", i), []byte(strconv.Itoa(i))))
			t0 := time.Now()
			snap, err := m.Snapshot(e.ctx, snapDir, false)
			if err != nil {
				t.Fatalf("pause: %v", err)
			}
			paused := time.Since(t0)
			select {
			case <-m.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the VMM is still running after a pause")
			}
			if len(snap.Disks) != 1 {
				t.Fatalf("snapshot lists %d disks", len(snap.Disks))
			}
			t0 = time.Now()
			m = e.restore(fmt.Sprintf("life-%d", i+1), snap, snap.Disks, copyMemory)
			restored := time.Since(t0)
			c = e.envd(m)
			t.Logf("pause %v; resume (copyMemory=%v) %v, to envd health %v",
				paused.Round(time.Millisecond), copyMemory, restored.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
			e.checkCounter(c, pid, before)
			e.wantFile(c, "/dev/shm/in-memory", "ram")
			e.wantFile(c, "/root/on-disk", "disk\n")
			for j := 0; j <= i; j++ {
				e.wantFile(c, fmt.Sprintf("/dev/shm/cycle-%d", j), strconv.Itoa(j))
			}
		}) {
			return
		}
	}
	if !e.step("payload kept across the pauses", func(t *testing.T) {
		if got := e.readFile(c, "/root/payload.bin"); got != string(payload) {
			t.Fatal("payload changed across the pauses")
		}
	}) {
		return
	}

	e.step("poweroff from inside", func(t *testing.T) {
		// envd (PID 1) shuts the guest down on SIGTERM.
		if _, err := c.startBackground(e.ctx, "kill -TERM 1"); err != nil {
			t.Logf("poweroff request: %v (the guest may have gone first)", err)
		}
		select {
		case <-m.Done():
		case <-time.After(time.Minute):
			t.Fatal("Done stayed open after the guest powered off")
		}
		if processAlive(m.PID()) {
			t.Fatalf("VMM process %d alive after poweroff", m.PID())
		}
	})
}

// testTemplate snapshots a running machine and starts three machines from
// the snapshot, which must each see the saved state and diverge
// independently, while the snapshot's files stay unchanged; then it
// snapshots one of those restored machines and restores that too.
func (s *suite) testTemplate(t *testing.T) {
	e := s.begin(t)
	var (
		sc         *envdClient
		pid        uint32
		atSnapshot int // a lower bound of the count saved
		snap       vmm.Snapshot
		sums       map[string]string
		clones     []*envdClient
		cloneMs    []vmm.Machine
	)
	snapDir := filepath.Join(e.dir, "template")
	var src vmm.Machine
	if !e.step("boot the source", func(t *testing.T) {
		src = e.boot("src")
		sc = e.envd(src)
		pid = e.startCounter(sc)
		e.must(sc.writeFile(e.ctx, "/dev/shm/saved", []byte("in memory")))
		e.mustRun(sc, "echo saved > /root/saved")
	}) {
		return
	}
	if !e.step("snapshot keeps the source running", func(t *testing.T) {
		atSnapshot = e.counter(sc)
		t0 := time.Now()
		var err error
		snap, err = src.Snapshot(e.ctx, snapDir, true)
		e.must(err)
		t.Logf("snapshot of a running machine (keepRunning): %v", time.Since(t0).Round(time.Millisecond))
		if snap.MemoryMB != s.g.MemoryMB || snap.VCPUs != s.g.VCPUs || len(snap.Disks) != 1 {
			t.Fatalf("snapshot %+v", snap)
		}
		// The source goes on, and what it does now is not in the snapshot.
		e.checkCounter(sc, pid, atSnapshot)
		e.mustRun(sc, "echo after > /root/after && sync")
		e.must(sc.writeFile(e.ctx, "/dev/shm/after", []byte("after")))
		sums = hashDir(t, snapDir)
	}) {
		return
	}
	if !e.step("restore three clones", func(t *testing.T) {
		for i := range 3 {
			id := fmt.Sprintf("clone-%d", i)
			root := e.overlay(id+"-root.qcow2", snap.Disks[0])
			t0 := time.Now()
			m := e.restore(id, snap, []vmm.Disk{root}, false)
			restored := time.Since(t0)
			c := e.envd(m)
			t.Logf("%s: template restore %v, to envd health %v", id, restored.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
			clones = append(clones, c)
			cloneMs = append(cloneMs, m)
		}
	}) {
		return
	}
	if !e.step("clones see the saved state and diverge", func(t *testing.T) {
		for i, c := range clones {
			e.wantFile(c, "/dev/shm/saved", "in memory")
			e.wantFile(c, "/root/saved", "saved\n")
			e.wantNoFile(c, "/root/after")
			e.wantNoFile(c, "/dev/shm/after")
			e.checkCounter(c, pid, atSnapshot)
			e.mustRun(c, fmt.Sprintf("echo %d > /root/mine && echo %d > /root/only-%d && sync", i, i, i))
			e.must(c.writeFile(e.ctx, "/dev/shm/mine", []byte(strconv.Itoa(i))))
		}
		for i, c := range clones {
			e.wantFile(c, "/root/mine", fmt.Sprintf("%d\n", i))
			e.wantFile(c, "/dev/shm/mine", strconv.Itoa(i))
			for j := range clones {
				if j != i {
					e.wantNoFile(c, fmt.Sprintf("/root/only-%d", j))
				}
			}
		}
		e.wantNoFile(sc, "/root/mine")
		e.wantNoFile(sc, "/dev/shm/mine")
	}) {
		return
	}
	var (
		snap2 vmm.Snapshot
		m2    vmm.Machine
	)
	if !e.step("a restored machine is a template source too", func(t *testing.T) {
		var err error
		snap2, err = cloneMs[0].Snapshot(e.ctx, filepath.Join(e.dir, "template-2"), true)
		e.must(err)
		root := e.overlay("second-root.qcow2", snap2.Disks[0])
		m2 = e.restore("second", snap2, []vmm.Disk{root}, false)
		c2 := e.envd(m2)
		e.wantFile(c2, "/root/mine", "0\n")
		e.wantFile(c2, "/dev/shm/mine", "0")
		e.wantFile(c2, "/dev/shm/saved", "in memory")
		e.checkCounter(c2, pid, atSnapshot)
		e.checkCounter(clones[0], pid, atSnapshot) // and the source of that snapshot goes on
	}) {
		return
	}
	if pr, ok := s.d.(vmm.Preparer); ok {
		if !e.step("a prepared restore starts later as another machine", func(t *testing.T) {
			e.preparedRestore(pr, snap, pid, atSnapshot)
		}) {
			return
		}
		if !e.step("a prepared restore of a replaced snapshot is refused", func(t *testing.T) {
			root := e.overlay("stale-root.qcow2", snap2.Disks[0])
			p := e.prepare(pr, e.spec("stale", []vmm.Disk{root}), snap2)
			_, err := m2.Snapshot(e.ctx, snap2.Dir, true) // replaces it
			e.must(err)
			if _, err := p.Start(e.ctx, e.spec("stale-started", []vmm.Disk{root})); !errors.Is(err, vmm.ErrStale) {
				t.Fatalf("Start after the snapshot was replaced: %v, want ErrStale", err)
			}
			e.waitGone(p.Done(), "the refused prepared machine")
		}) {
			return
		}
	}
	e.step("restores leave the snapshot unchanged", func(t *testing.T) {
		for _, m := range e.machines {
			e.must(m.Kill(e.ctx))
		}
		if after := hashDir(t, snapDir); !equalMaps(sums, after) {
			t.Fatalf("restores modified the snapshot:\nbefore %v\nafter  %v", sums, after)
		}
	})
}

// prepare prepares a restore of snap as spec; the test discards it at the
// end unless it started.
func (e *env) prepare(pr vmm.Preparer, spec vmm.Spec, snap vmm.Snapshot) vmm.Prepared {
	e.t.Helper()
	p, err := pr.Prepare(e.ctx, spec, snap)
	if err != nil {
		e.t.Fatalf("prepare %s from %s: %v", spec.ID, snap.Dir, err)
	}
	e.root.Cleanup(func() {
		if err := p.Discard(context.Background()); err != nil {
			e.root.Errorf("discard prepared %s: %v", spec.ID, err)
		}
	})
	return p
}

// waitGone waits until done closes (a VMM exited).
func (e *env) waitGone(done <-chan struct{}, what string) {
	e.t.Helper()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		e.t.Fatalf("%s still runs", what)
	}
}

// preparedRestore prepares a restore of snap, renames its disk and starts
// it under another name and directory, as a warm pool does: the guest is
// the snapshot's, works, and can be snapshotted from its new disk path.
// Discarding a started machine leaves it running; a prepared machine that
// is discarded exits.
func (e *env) preparedRestore(pr vmm.Preparer, snap vmm.Snapshot, pid uint32, atSnapshot int) {
	t := e.t
	root := e.overlay("prep-root.qcow2", snap.Disks[0])
	spec := e.spec("prep", []vmm.Disk{root})
	p := e.prepare(pr, spec, snap)
	moved := filepath.Join(e.dir, "prep-moved-root.qcow2")
	e.must(os.Rename(root.Path, moved))
	final := e.spec("prepared", []vmm.Disk{{Path: moved, Format: root.Format}})
	t0 := time.Now()
	m, err := p.Start(e.ctx, final)
	e.must(err)
	e.track(m)
	started := time.Since(t0)
	if _, err := os.Stat(spec.Dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the prepared runtime directory %s is still there (%v)", spec.Dir, err)
	}
	c := e.envd(m)
	t.Logf("prepared machine: Start %v, to envd health %v", started.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	e.wantFile(c, "/dev/shm/saved", "in memory")
	e.wantFile(c, "/root/saved", "saved\n")
	e.wantNoFile(c, "/root/mine")
	e.checkCounter(c, pid, atSnapshot)
	e.mustRun(c, "echo prepared > /root/prepared && sync")
	snap3, err := m.Snapshot(e.ctx, filepath.Join(e.dir, "template-3"), true)
	e.must(err)
	m3 := e.restore("third", snap3, []vmm.Disk{e.overlay("third-root.qcow2", snap3.Disks[0])}, false)
	e.wantFile(e.envd(m3), "/root/prepared", "prepared\n")
	e.must(p.Discard(e.ctx))
	select {
	case <-m.Done():
		t.Fatal("Discard after Start stopped the machine")
	default:
	}
	e.mustRun(c, "true")

	q := e.prepare(pr, e.spec("prep-discarded", []vmm.Disk{e.overlay("prep-discarded-root.qcow2", snap.Disks[0])}), snap)
	e.must(q.Discard(e.ctx))
	e.waitGone(q.Done(), "a discarded prepared machine")
	if _, err := q.Start(e.ctx, e.spec("prep-discarded-2", nil)); err == nil {
		t.Error("a discarded prepared machine started")
	}
}

// hashDir returns name → size/mtime/sha256 of every file in dir.
func hashDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, ent := range ents {
		p := filepath.Join(dir, ent.Name())
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if !fi.Mode().IsRegular() {
			continue
		}
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		out[ent.Name()] = fmt.Sprintf("%d/%d/%x", fi.Size(), fi.ModTime().UnixNano(), h.Sum(nil)[:8])
	}
	return out
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func listDir(dir string) map[string]bool {
	out := map[string]bool{}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		out[e.Name()] = true
	}
	return out
}

// processAlive reports whether pid exists (and is not a zombie).
func processAlive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || !bytes.HasPrefix(bytes.TrimSpace(b[i+1:]), []byte("Z"))
}

// processesUsing lists the processes (other than this one) whose command
// line or working directory is inside dir.
func processesUsing(dir string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, ent := range ents {
		pid, err := strconv.Atoi(ent.Name())
		if err != nil || pid == os.Getpid() || !processAlive(pid) {
			continue
		}
		cwd, _ := os.Readlink("/proc/" + ent.Name() + "/cwd")
		cmdline, _ := os.ReadFile("/proc/" + ent.Name() + "/cmdline")
		if cwd == dir || strings.HasPrefix(cwd, dir+"/") || bytes.Contains(cmdline, []byte(dir)) {
			out = append(out, pid)
		}
	}
	return out
}
