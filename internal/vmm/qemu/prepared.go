package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/vmm"
)

// Prepared machines (vmm.Preparer). Prepare runs the first half of a
// restore: QEMU starts with -S and -incoming defer, the snapshot's memory
// mapped copy-on-write, the disks and the TAP open, the state file
// inherited; Start runs the second half (migrate-incoming, cont). What
// Prepare takes off the later Start is QEMU's start-up: the exec, the
// dynamic linking of its ≈ 50 libraries and its initialization, ≈ 90 ms
// of CPU on our machines.
//
// Start moves the machine to the sandbox it becomes: the runtime directory
// is renamed (QEMU's sockets are relative to it, QEMU's working directory
// moves with it, the QMP connection stays), the record is rewritten with
// the new ID, disks and console log, and the console and qemu.log watchers
// start again on the new paths. QEMU opens its disks again by name when
// the guest first runs (it activates them after an incoming migration),
// so a prepared machine's QEMU knows them by links in its runtime
// directory, relative to its working directory, which Start points at the
// new paths: the caller may rename the disk files before Start. A prepared machine found by a restarted agent is in state
// "inmigrate": Adopt refuses it with vmm.ErrNeverRan, and whoever owns its
// directory cleans it.

var _ vmm.Preparer = (*Driver)(nil)

// preparedNice is the nice value a prepared machine's QEMU starts with
// and keeps until its Start: filling a pool must not slow the guests that
// run (a create's guest is busiest right after its restore).
const preparedNice = 19

// renice sets the nice value of every thread of the machine's process.
func (m *Machine) renice(nice int) error {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", m.rec.PID))
	if err != nil {
		return err
	}
	var errs []error
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, nice); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("thread %d: %w", tid, err))
		}
	}
	return errors.Join(errs...)
}

// Prepare starts the VMM of a restore of snap for spec without loading the
// snapshot; the returned machine's Start does. spec.CopyMemory is refused:
// a prepared machine maps the snapshot's memory.
func (d *Driver) Prepare(ctx context.Context, spec vmm.Spec, snap vmm.Snapshot) (vmm.Prepared, error) {
	if spec.CopyMemory {
		return nil, fmt.Errorf("qemu: prepare %s: CopyMemory is not supported", spec.ID)
	}
	cfg, err := d.restoreConfig(spec, snap)
	if err != nil {
		return nil, err
	}
	defer cfg.incoming.Close()
	cfg.prepare = true
	m, err := d.launch(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("qemu: prepare %s: %w", cfg.spec.ID, err)
	}
	return &prepared{m: m, spec: cfg.spec, snapDir: snap.Dir, state: cfg.meta.State, memory: cfg.meta.Memory}, nil
}

// prepared is a Machine waiting for its Start.
type prepared struct {
	m    *Machine
	spec vmm.Spec // as prepared, defaults filled in
	// The snapshot's files when it was prepared: Start refuses to load a
	// snapshot that was replaced since (vmm.ErrStale).
	snapDir, state, memory string

	mu      sync.Mutex
	started bool // Start was called: Discard leaves the machine alone
}

func (p *prepared) Done() <-chan struct{} { return p.m.Done() }

func (p *prepared) PID() int { return p.m.PID() }

// Discard kills the VMM unless Start took it.
func (p *prepared) Discard(ctx context.Context) error {
	p.mu.Lock()
	started := p.started
	p.started = true
	p.mu.Unlock()
	if started {
		return nil
	}
	return p.m.Kill(ctx)
}

// Start loads the snapshot and resumes the guest as spec (see
// vmm.Prepared).
func (p *prepared) Start(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	p.mu.Lock()
	started := p.started
	p.started = true
	p.mu.Unlock()
	if started {
		return nil, fmt.Errorf("qemu: start prepared %s: already started or discarded", spec.ID)
	}
	m := p.m
	fail := func(err error) (vmm.Machine, error) {
		_ = m.Kill(context.Background())
		return nil, fmt.Errorf("qemu: start prepared %s: %w", spec.ID, err)
	}
	spec = ownSpec(spec)
	if spec.MemoryMB == 0 {
		spec.MemoryMB = p.spec.MemoryMB
	}
	if spec.VCPUs == 0 {
		spec.VCPUs = p.spec.VCPUs
	}
	if err := sameShape(p.spec, spec); err != nil {
		return fail(err)
	}
	if spec.Net != nil {
		spec.Net = p.spec.Net // attached at Prepare
	}
	if err := m.d.checkSpec(&spec, false); err != nil {
		return fail(err)
	}
	meta, err := readSnapshotMeta(p.snapDir)
	if err != nil {
		return fail(fmt.Errorf("%w: %v", vmm.ErrStale, err))
	}
	if meta.State != p.state || meta.Memory != p.memory {
		return fail(vmm.ErrStale)
	}
	if err := ctx.Err(); err != nil {
		return fail(err)
	}
	start := time.Now()
	if spec.Dir != p.spec.Dir {
		if err := m.move(spec); err != nil {
			return fail(err)
		}
	}
	if err := m.renice(0); err != nil {
		// It runs, at a low priority: slower, not wrong.
		m.log.Warn("prepared machine keeps its low priority", "err", err)
	}
	moved := time.Since(start)
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := m.loadIncoming(qctx, m.incomingFD); err != nil {
		return fail(fmt.Errorf("load state: %w", err))
	}
	m.log.Info("prepared machine started", "as", spec.ID, "dir", spec.Dir, "move", moved.Round(time.Millisecond), "took", time.Since(start).Round(time.Millisecond))
	return m, nil
}

// diskLink is the name of a prepared machine's link to its disk i, in
// its runtime directory.
func diskLink(i int) string { return "disk" + itoa(i) }

// linkDisk points dir's link of disk i at target (an absolute path),
// replacing the link atomically.
func linkDisk(dir string, i int, target string) error {
	abs, err := filepath.Abs(target)
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, diskLink(i)+".new")
	_ = os.Remove(tmp)
	if err := os.Symlink(abs, tmp); err != nil {
		return fmt.Errorf("link disk %d: %w", i, err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, diskLink(i))); err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("link disk %d: %w", i, err)
	}
	return nil
}

// sameShape checks that spec describes the machine prepared as was.
func sameShape(was, spec vmm.Spec) error {
	if spec.MemoryMB != was.MemoryMB || spec.VCPUs != was.VCPUs {
		return fmt.Errorf("spec has %d MiB and %d vCPUs, the prepared machine %d MiB and %d vCPUs", spec.MemoryMB, spec.VCPUs, was.MemoryMB, was.VCPUs)
	}
	if len(spec.Disks) != len(was.Disks) {
		return fmt.Errorf("spec has %d disks, the prepared machine %d", len(spec.Disks), len(was.Disks))
	}
	for i, dk := range spec.Disks {
		if dk.Format != was.Disks[i].Format || dk.ReadOnly != was.Disks[i].ReadOnly {
			return fmt.Errorf("disk %d differs from the prepared machine's", i)
		}
	}
	// The network is the one attached at Prepare: spec only says there is
	// one (a TAP cannot be opened twice).
	if (spec.Net == nil) != (was.Net == nil) {
		return fmt.Errorf("spec network %q, the prepared machine's %q", netKind(spec.Net), netKind(was.Net))
	}
	return nil
}

// move renames the machine's runtime directory to spec.Dir and makes the
// machine spec's: its record (written again), console log and qemu.log
// watcher follow.
func (m *Machine) move(spec vmm.Spec) error {
	if _, err := os.Lstat(spec.Dir); err == nil {
		return fmt.Errorf("move to %s: %w", spec.Dir, os.ErrExist)
	}
	m.stateMu.Lock()
	if m.finished {
		m.stateMu.Unlock()
		return errors.New("the VMM exited")
	}
	oldCon, oldCap, from := m.console, m.logCap, m.dir
	m.stateMu.Unlock()
	// QEMU serves one console client at a time: the old follower lets go
	// before the new one connects. The guest has not run: nothing is lost.
	oldCon.close(0)
	oldCap.close()
	if err := os.Rename(from, spec.Dir); err != nil {
		return err
	}
	for i, dk := range spec.Disks {
		if err := linkDisk(spec.Dir, i, dk.Path); err != nil {
			return err
		}
	}
	rec := m.rec
	rec.ID, rec.Disks = spec.ID, spec.Disks
	rec.ConsoleLog, rec.ConsoleMax = spec.ConsoleLog, spec.ConsoleLogMax
	con, err := followConsole(spec.Dir, rec.ConsoleLog, rec.consoleMax(), m.log)
	if err != nil {
		return err
	}
	lc := capLog(filepath.Join(spec.Dir, qemuLogFile))
	m.stateMu.Lock()
	if m.finished {
		m.stateMu.Unlock()
		con.close(0)
		lc.close()
		return errors.New("the VMM exited")
	}
	// Field by field: the exit watcher reads m.rec.PID without the lock.
	m.dir, m.console, m.logCap = spec.Dir, con, lc
	m.rec.ID, m.rec.Disks, m.rec.ConsoleLog, m.rec.ConsoleMax = rec.ID, rec.Disks, rec.ConsoleLog, rec.ConsoleMax
	m.stateMu.Unlock()
	return writeJSONAtomic(filepath.Join(spec.Dir, recordFile), rec)
}
