package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/vmm"
)

// Prepared machines (Config.PreparedVMMs): a create from a snapshot
// template spends about a third of its time starting QEMU (exec, dynamic
// linking, initialization: ≈ 90 ms of CPU here) before the snapshot is
// even loaded. With a driver that is a vmm.Preparer, the manager keeps a
// few VMMs of each snapshot template and machine shape created from
// lately already started, each with its own network slot and disk overlay,
// waiting to load the snapshot. A create takes one: its overlay directory
// becomes the sandbox's directory (rename), its slot the sandbox's slot,
// and Prepared.Start loads the snapshot and runs the guest. The pool is
// then topped up in the background, one VMM at a time.
//
// A template's pool is made when it is saved (a snapshot template, not a
// fork's) or by its first create (which finds it empty),
// emptied when the template's directory is given up (deleted or replaced:
// dropTemplateDir), and dropped after
// preparedIdle without a create. Prepared VMMs hold no user data: a
// restarted agent kills them (their runtime directories belong to no
// sandbox) and removes their overlays (preparedDir). They are not counted
// as sandboxes by the capacity checks: each holds a slot, which a create
// that finds no free slot takes (evictOne), and QEMU's own memory (its
// guest has not run, so none of the template's pages).

// preparedIdle is how long a template's pool outlives its last create.
const preparedIdle = 10 * time.Minute

// A prepared VMM that exits is replaced at once, unless the pool's VMMs
// keep dying young: after maxYoungDeaths in a row that lived less than
// preparedYoung, the pool is refilled by its next create only (what
// kills them, e.g. the host's OOM killer, would otherwise meet a new
// QEMU every second).
const (
	preparedYoung  = time.Minute
	maxYoungDeaths = 3
)

// preparedKey is what a prepared VMM was made for.
type preparedKey struct {
	template, snapshot, rootfs string
	vcpus, memoryMB, diskMB    int
}

// preparedVM is one VMM waiting for a create.
type preparedVM struct {
	id   string // its runtime directory's name
	dir  string // holds its disk overlay, rootfs.qcow2
	slot *netslot.Slot
	p    vmm.Prepared

	taken chan struct{} // closed when a create takes it or it is dropped
	born  time.Time     // when it was prepared
	// started is set by start once the slot is the sandbox's.
	started bool
}

// preparedPool is the manager's pool of prepared VMMs.
type preparedPool struct {
	m   *Manager
	per int

	mu     sync.Mutex
	pools  map[preparedKey]*preparedSet
	closed bool

	fillMu sync.Mutex // one prepare at a time
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

type preparedSet struct {
	ready   []*preparedVM
	filling bool
	used    time.Time
	young   int // prepared VMMs in a row that died young (see maxYoungDeaths)
}

func newPreparedPool(m *Manager, per int) *preparedPool {
	ctx, cancel := context.WithCancel(context.Background())
	return &preparedPool{m: m, per: per, pools: map[preparedKey]*preparedSet{}, ctx: ctx, cancel: cancel}
}

func (m *Manager) preparedDir() string { return filepath.Join(m.cfg.DataDir, "prepared") }

// preparer is the driver as a vmm.Preparer when prepared VMMs are on.
func (m *Manager) preparer() vmm.Preparer {
	if m.cfg.PreparedVMMs <= 0 {
		return nil
	}
	p, _ := m.cfg.Driver.(vmm.Preparer)
	return p
}

// prepareFor starts a pool of prepared VMMs for creates of snapshot
// template tpl with a shape, unless prepared VMMs are off or it has one.
func (m *Manager) prepareFor(tpl *Template, vcpus, memoryMB, diskMB int) {
	if m.preparer() == nil || !tpl.isSnapshot() {
		return
	}
	key := m.preparedKey(tpl, vcpus, memoryMB, diskMB)
	pp := m.prepared
	pp.mu.Lock()
	if pp.closed {
		pp.mu.Unlock()
		return
	}
	if pp.pools[key] == nil {
		pp.pools[key] = &preparedSet{used: m.now()}
	}
	pp.mu.Unlock()
	pp.fill(key)
}

// preparedKey is the key of creates of tpl with a shape.
func (m *Manager) preparedKey(tpl *Template, vcpus, memoryMB, diskMB int) preparedKey {
	return preparedKey{
		template: tpl.Name, snapshot: tpl.Snapshot, rootfs: tpl.Rootfs,
		vcpus: vcpus, memoryMB: memoryMB, diskMB: diskMB,
	}
}

// take returns a prepared VMM for key, or nil. The caller tops the pool
// up with fill once its create is done (not during it: a fill competes
// for the CPU).
func (pp *preparedPool) take(key preparedKey) *preparedVM {
	pp.mu.Lock()
	if pp.closed {
		pp.mu.Unlock()
		return nil
	}
	var drop []*preparedVM
	for k, set := range pp.pools {
		// The template was replaced: its old VMMs restore what it was
		// (other shapes of the same template keep theirs).
		if k.template == key.template && (k.snapshot != key.snapshot || k.rootfs != key.rootfs) {
			drop = append(drop, set.ready...)
			delete(pp.pools, k)
		}
	}
	set := pp.pools[key]
	if set == nil {
		set = &preparedSet{}
		pp.pools[key] = set
	}
	set.used = pp.m.now()
	var pv *preparedVM
	if n := len(set.ready); n > 0 {
		pv = set.ready[0]
		set.ready = set.ready[1:]
		close(pv.taken)
		set.young = 0
	}
	pp.mu.Unlock()
	pp.discardAll(drop)
	return pv
}

// fill tops key's pool up in the background, unless that already runs.
func (pp *preparedPool) fill(key preparedKey) {
	pp.mu.Lock()
	set := pp.pools[key]
	if pp.closed || set == nil || set.filling || len(set.ready) >= pp.per {
		pp.mu.Unlock()
		return
	}
	set.filling = true
	pp.wg.Add(1)
	pp.mu.Unlock()
	go func() {
		defer pp.wg.Done()
		defer func() {
			pp.mu.Lock()
			set.filling = false
			pp.mu.Unlock()
		}()
		for {
			pp.mu.Lock()
			full := pp.closed || pp.pools[key] != set || len(set.ready) >= pp.per
			pp.mu.Unlock()
			if full {
				return
			}
			pp.fillMu.Lock()
			pv, err := pp.m.prepareVM(pp.ctx, key)
			pp.fillMu.Unlock()
			switch {
			case err == nil:
			case errors.Is(err, netslot.ErrExhausted):
				pp.m.log.Info("no network slot to spare for a prepared VMM", "template", key.template)
				return
			default:
				if pp.ctx.Err() == nil {
					pp.m.log.Warn("prepare a VMM for the template's next create", "template", key.template, "err", err)
				}
				return
			}
			pp.mu.Lock()
			if pp.closed || pp.pools[key] != set {
				pp.mu.Unlock()
				pp.discard(pv)
				return
			}
			set.ready = append(set.ready, pv)
			pp.mu.Unlock()
			pp.wg.Add(1)
			go pp.watch(key, set, pv)
		}
	}()
}

// watch drops pv from the pool if its VMM exits before a create takes it.
func (pp *preparedPool) watch(key preparedKey, set *preparedSet, pv *preparedVM) {
	defer pp.wg.Done()
	select {
	case <-pv.taken:
		return
	case <-pv.p.Done():
	}
	pp.mu.Lock()
	select {
	case <-pv.taken:
		pp.mu.Unlock()
		return // taken (or dropped) meanwhile: not ours to clean
	default:
	}
	for i, r := range set.ready {
		if r == pv {
			set.ready = append(set.ready[:i:i], set.ready[i+1:]...)
			break
		}
	}
	close(pv.taken)
	if pp.m.now().Sub(pv.born) < preparedYoung {
		set.young++
	} else {
		set.young = 0
	}
	refill := set.young <= maxYoungDeaths
	pp.mu.Unlock()
	pp.m.log.Warn("a prepared VMM exited; dropped", "template", key.template, "vmm", pv.id, "refill", refill)
	pp.discard(pv)
	if refill {
		pp.fill(key)
	}
}

// evictOne discards one prepared VMM, of the pool used least lately, to
// free its network slot for a sandbox; false when there is none.
func (pp *preparedPool) evictOne() bool {
	pp.mu.Lock()
	var victim *preparedSet
	for _, set := range pp.pools {
		if len(set.ready) > 0 && (victim == nil || set.used.Before(victim.used)) {
			victim = set
		}
	}
	if victim == nil {
		pp.mu.Unlock()
		return false
	}
	n := len(victim.ready) - 1
	pv := victim.ready[n]
	victim.ready = victim.ready[:n]
	close(pv.taken)
	pp.mu.Unlock()
	pp.m.log.Info("discarded a prepared VMM for its network slot", "vmm", pv.id)
	pp.discard(pv)
	return true
}

// expire drops the pools no create used for preparedIdle.
func (pp *preparedPool) expire(now time.Time) {
	pp.mu.Lock()
	var drop []*preparedVM
	for k, set := range pp.pools {
		if now.Sub(set.used) > preparedIdle {
			drop = append(drop, pp.release(set)...)
			delete(pp.pools, k)
		}
	}
	pp.mu.Unlock()
	pp.discardAll(drop)
}

// dropDir empties the pools whose template lives in dir (a template
// directory given up: deleted or replaced).
func (pp *preparedPool) dropDir(dir string) {
	pp.mu.Lock()
	var drop []*preparedVM
	for k, set := range pp.pools {
		if within(k.snapshot, dir) || within(k.rootfs, dir) {
			drop = append(drop, pp.release(set)...)
			delete(pp.pools, k)
		}
	}
	pp.mu.Unlock()
	pp.discardAll(drop)
}

// within reports whether path is dir or inside it.
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// release takes set's ready VMMs out of it (called with pp.mu held).
func (pp *preparedPool) release(set *preparedSet) []*preparedVM {
	out := set.ready
	set.ready = nil
	for _, pv := range out {
		close(pv.taken)
	}
	return out
}

// close discards every prepared VMM and stops filling.
func (pp *preparedPool) close() {
	pp.mu.Lock()
	pp.closed = true
	var drop []*preparedVM
	for k, set := range pp.pools {
		drop = append(drop, pp.release(set)...)
		delete(pp.pools, k)
	}
	pp.mu.Unlock()
	pp.cancel()
	pp.discardAll(drop)
	pp.wg.Wait()
}

func (pp *preparedPool) discardAll(pvs []*preparedVM) {
	for _, pv := range pvs {
		pp.discard(pv)
	}
}

// discard stops a prepared VMM nobody took and removes what it held.
func (pp *preparedPool) discard(pv *preparedVM) {
	m := pp.m
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if err := pv.p.Discard(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := m.cfg.Slots.Release(ctx, pv.slot); err != nil {
		errs = append(errs, m.cfg.Slots.Destroy(ctx, pv.slot))
	}
	errs = append(errs, os.RemoveAll(pv.dir), os.RemoveAll(m.runDir(pv.id)))
	if err := errors.Join(errs...); err != nil {
		m.log.Error("discard a prepared VMM", "vmm", pv.id, "err", err)
	}
}

// prepareVM starts a VMM for key: an overlay of the template's disk in
// its own directory, a network slot, and the driver's prepared restore.
// Everything is undone when it fails.
func (m *Manager) prepareVM(ctx context.Context, key preparedKey) (pv *preparedVM, err error) {
	pr := m.preparer()
	if pr == nil {
		return nil, errors.New("the driver cannot prepare restores")
	}
	var b [6]byte
	_, _ = rand.Read(b[:])
	id := "prepared-" + hex.EncodeToString(b[:])
	var undo rollback
	defer func() {
		if err != nil {
			undo.run(m.log)
		}
	}()
	dir := filepath.Join(m.preparedDir(), id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	undo.add("remove prepared dir", func() error { return os.RemoveAll(dir) })
	diskPath := filepath.Join(dir, diskFile)
	if err := m.overlays.Create(ctx, key.rootfs, diskPath, int64(key.diskMB)<<20); err != nil {
		return nil, err
	}
	slot, err := m.cfg.Slots.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	undo.add("release network slot", func() error { return m.cfg.Slots.Release(context.Background(), slot) })
	tap, err := slot.OpenTap()
	if err != nil {
		return nil, err
	}
	defer tap.Close()
	rd := m.runDir(id)
	undo.add("remove run dir", func() error { return os.RemoveAll(rd) })
	spec := vmm.Spec{
		ID: id, Dir: rd, VCPUs: key.vcpus, MemoryMB: key.memoryMB,
		Disks:         []vmm.Disk{{Path: diskPath, Format: "qcow2"}},
		Net:           &vmm.NetAttachment{Tap: tap, MAC: slot.MAC},
		ConsoleLogMax: m.cfg.ConsoleLogMax,
	}
	p, err := pr.Prepare(ctx, spec, vmm.Snapshot{Dir: key.snapshot, VCPUs: key.vcpus, MemoryMB: key.memoryMB})
	if err != nil {
		return nil, err
	}
	return &preparedVM{id: id, dir: dir, slot: slot, p: p, taken: make(chan struct{}), born: m.now()}, nil
}
