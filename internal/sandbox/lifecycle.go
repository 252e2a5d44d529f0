package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/vmm"
)

// Pause saves a running sandbox's memory and stops its machine: CPU and
// memory are given back, the disk and the snapshot stay. Pausing a paused
// sandbox is a conflict.
func (m *Manager) Pause(ctx context.Context, id string) error {
	b, err := m.lock(id)
	if err != nil {
		return err
	}
	defer b.op.Unlock()
	if err := m.checkDisk("pause", int64(b.snapshotRecord().MemoryMB)); err != nil {
		return fmt.Errorf("pause %s: %w", id, err)
	}
	return m.pauseLocked(ctx, b)
}

func (m *Manager) pauseLocked(ctx context.Context, b *box) error {
	b.mu.Lock()
	if b.rec.State != StateRunning {
		st := b.rec.State
		b.mu.Unlock()
		return fmt.Errorf("%w: sandbox %s is %s", ErrConflict, b.rec.ID, st)
	}
	b.rec.State = StatePausing
	b.rec.Generation++
	rec := *b.rec
	machine, slot, client := b.machine, b.slot, b.client
	b.mu.Unlock()
	// A stopped machine has nothing to sample; a failed pause samples
	// again.
	m.sampler.Remove(rec.ID)

	dir := m.sandboxDir(rec.ID)
	snapDir := generationDir(dir, rec.Generation)
	started := m.now()
	// The pause is recorded before it starts: a crash from here on leaves
	// the old state (running) or, once the snapshot is complete, the new
	// one (recover decides which).
	rec.PendingSnapshot = snapDir
	back := func() {
		b.mu.Lock()
		b.rec.State, b.rec.Generation, b.rec.PendingSnapshot = StateRunning, b.rec.Generation-1, ""
		r := *b.rec
		b.mu.Unlock()
		m.sampleBox(b)
		if err := m.writeRecord(dir, &r); err != nil {
			m.log.ErrorContext(ctx, "persist a failed pause", "sandbox", r.ID, "err", err)
		}
	}
	if err := m.writeRecord(dir, &rec); err != nil {
		back()
		return fmt.Errorf("pause %s: %w", rec.ID, err)
	}
	crashPoint("pause-recorded")
	snap, err := machine.Snapshot(ctx, snapDir, false)
	if err != nil {
		// The machine may still run: back to running, nothing lost.
		_ = os.RemoveAll(snapDir)
		back()
		return fmt.Errorf("pause %s: %w", rec.ID, err)
	}
	crashPoint("pause-snapshotted")
	return m.finishPause(ctx, b, rec, machine, slot, client, snap.Dir, started)
}

// finishPause ends a pause of rec's box once what the pause keeps is safe
// (its memory snapshot written to snapshot, or, with snapshot empty, the
// guest's file systems synced): the machine stops (the VMM exits after
// saving; this makes sure), its slot, run directory and reservation go,
// and the record says paused with snapshot before the previous snapshot
// is removed.
func (m *Manager) finishPause(ctx context.Context, b *box, rec record, machine vmm.Machine, slot *netslot.Slot,
	client *envdclient.Client, snapshot string, started time.Time) error {
	m.sampler.Remove(rec.ID)
	_ = machine.Kill(ctx)
	client.Close()
	if err := m.cfg.Slots.Release(ctx, slot); err != nil {
		m.log.ErrorContext(ctx, "release network slot", "sandbox", rec.ID, "err", err)
	}
	_ = os.RemoveAll(m.runDir(rec.ID))
	m.release(&rec, false)

	b.mu.Lock()
	old := b.rec.Snapshot
	b.machine, b.slot, b.client = nil, nil, nil
	b.rec.State, b.rec.Snapshot, b.rec.DiskOnly, b.rec.VMMPid, b.rec.SlotIndex, b.rec.PendingSnapshot = StatePaused, snapshot, snapshot == "", 0, 0, ""
	rec = *b.rec
	b.mu.Unlock()
	if err := m.writeRecord(m.sandboxDir(rec.ID), &rec); err != nil {
		return err
	}
	if old != "" && old != snapshot {
		_ = os.RemoveAll(old)
	}
	how := "sandbox paused"
	if snapshot == "" {
		how = "sandbox paused, filesystem only"
	}
	m.log.InfoContext(ctx, how, "sandbox", rec.ID, "took", m.now().Sub(started))
	return nil
}

// Resume restores a paused sandbox into a new machine (and network slot);
// its ID, access token, files and memory are as they were.
func (m *Manager) Resume(ctx context.Context, id string) (*Info, error) {
	b, err := m.lock(id)
	if err != nil {
		return nil, err
	}
	defer b.op.Unlock()
	if err := m.resumeLocked(ctx, b); err != nil {
		return nil, err
	}
	return m.info(b), nil
}

func (m *Manager) resumeLocked(ctx context.Context, b *box) (err error) {
	b.mu.Lock()
	if b.rec.State != StatePaused && b.rec.State != StateStopped {
		st := b.rec.State
		b.mu.Unlock()
		return fmt.Errorf("%w: sandbox %s is %s", ErrConflict, b.rec.ID, st)
	}
	rec := *b.rec
	b.mu.Unlock()
	from := rec.State
	if from == StateStopped || (from == StatePaused && rec.Snapshot == "") {
		// Its memory is lost, or was not kept (a filesystem-only pause).
		return m.bootColdLocked(ctx, b, rec, from)
	}

	undo, finish, err := m.reserveRestoring(b, &rec, StatePaused)
	if err != nil {
		return err
	}
	defer func() { finish(err) }()
	b.setState(StateResuming)
	// Recorded: a crash while the restored guest runs leaves a sandbox
	// that recover adopts (or stops), never one resumed twice from the
	// same snapshot while its disk moved on.
	rec.State = StateResuming
	if err := m.writeRecord(m.sandboxDir(rec.ID), &rec); err != nil {
		return err
	}
	undo.add("record paused", func() error {
		r := rec
		r.State = StatePaused
		return m.writeRecord(m.sandboxDir(rec.ID), &r)
	})
	crashPoint("resume-recorded")
	snap := vmm.Snapshot{Dir: rec.Snapshot, VCPUs: rec.VCPUs, MemoryMB: rec.MemoryMB}
	if err := m.start(ctx, b, &snap, rec.AccessToken, undo, nil, nil); err != nil {
		return fmt.Errorf("resume %s: %w", rec.ID, err)
	}
	m.log.InfoContext(ctx, "sandbox resumed", "sandbox", rec.ID)
	return nil
}

// bootColdLocked boots a sandbox cold from its disk: a stopped one (its
// machine died, its memory is lost), one paused without its memory, or
// one whose memory snapshot is to be dropped (ResumeCold). The guest
// starts afresh on the files it had; restore is the state it goes back to
// on a failure. Called with b.op held.
func (m *Manager) bootColdLocked(ctx context.Context, b *box, rec record, restore State) (err error) {
	undo, finish, err := m.reserveRestoring(b, &rec, restore)
	if err != nil {
		return err
	}
	defer func() { finish(err) }()
	b.setState(StateStarting)
	if err := m.start(ctx, b, nil, "", undo, nil, nil); err != nil {
		return fmt.Errorf("boot sandbox %s cold: %w", rec.ID, err)
	}
	b.mu.Lock()
	old := b.rec.Snapshot
	b.rec.Snapshot, b.rec.DiskOnly = "", false
	r := *b.rec
	b.mu.Unlock()
	// A snapshot older than the disk can never be resumed again.
	_ = m.writeRecord(m.sandboxDir(rec.ID), &r)
	if old != "" {
		_ = os.RemoveAll(old)
	}
	m.log.InfoContext(ctx, "sandbox booted cold from its disk", "sandbox", rec.ID, "was", string(restore))
	return nil
}

// reserveRestoring reserves the capacity rec needs for a machine that
// starts again (resume, cold boot of a stopped sandbox). It returns the
// rollback that releases it (later steps add to it) and finish, which the
// caller defers with its result: on an error it runs the rollback and
// puts the sandbox back in restore, the state it had before.
func (m *Manager) reserveRestoring(b *box, rec *record, restore State) (undo *rollback, finish func(error), err error) {
	m.mu.Lock()
	err = m.used.reserve(m.cfg.Capacity, rec.VCPUs, rec.MemoryMB, 0)
	m.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	undo = &rollback{}
	undo.add("release capacity", func() error { m.release(rec, false); return nil })
	finish = func(err error) {
		if err != nil {
			undo.run(m.log)
			b.setState(restore)
		}
	}
	return undo, finish, nil
}

// Destroy stops a sandbox and deletes everything it had. It is
// idempotent: destroying an unknown or already destroyed sandbox succeeds.
func (m *Manager) Destroy(ctx context.Context, id string) error {
	b, err := m.lock(id)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer b.op.Unlock()
	b.mu.Lock()
	rec := *b.rec
	machine, slot, client := b.machine, b.slot, b.client
	b.gone = true
	b.machine, b.slot, b.client = nil, nil, nil
	b.mu.Unlock()
	m.sampler.Remove(id)

	var errs []error
	if machine != nil {
		errs = append(errs, machine.Kill(ctx))
		client.Close()
		m.release(&rec, false)
	}
	if slot != nil {
		// A slot whose guest was destroyed may hold its connections:
		// Release resets it for the next sandbox.
		errs = append(errs, m.cfg.Slots.Release(ctx, slot))
	}
	crashPoint("destroy-released")
	errs = append(errs, os.RemoveAll(m.runDir(id)), m.removeSandboxDir(id))
	m.mu.Lock()
	m.used.release(0, 0, rec.DiskMB)
	delete(m.boxes, id)
	m.mu.Unlock()
	m.collectTemplates() // a deleted template it backed onto may go now
	if err := errors.Join(errs...); err != nil {
		m.log.ErrorContext(ctx, "sandbox destroyed with errors", "sandbox", id, "err", err)
		return fmt.Errorf("destroy %s: %w", id, err)
	}
	m.log.InfoContext(ctx, "sandbox destroyed", "sandbox", id)
	return nil
}

// removeSandboxDir deletes the directory of sandbox id all at once as far
// as a crash can tell: it is first renamed to a tombstone (destroyPrefix),
// durably, then removed; recovery removes a tombstone it finds. A destroy
// cut short never leaves a half-removed sandbox directory behind.
func (m *Manager) removeSandboxDir(id string) error {
	dir, tomb := m.sandboxDir(id), filepath.Join(m.sandboxesDir(), destroyPrefix+id)
	if err := os.Rename(dir, tomb); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return err
	}
	if err := syncDir(m.sandboxesDir()); err != nil {
		return err
	}
	return os.RemoveAll(tomb)
}

// destroyPrefix names the tombstone of a sandbox directory being removed.
const destroyPrefix = ".destroying-"

// Close stops the manager's background work. Machines keep running; a new
// Manager on the same DataDir recovers them.
func (m *Manager) Close() {
	m.warm.stop()
	m.prepared.close()
	m.stopReaper()
	<-m.reaperDone
	m.stopSampler()
}

// Shutdown destroys every sandbox, then closes the manager.
func (m *Manager) Shutdown(ctx context.Context) error {
	err := m.DestroyAll(ctx)
	m.Close()
	return err
}

// reap pauses sandboxes idle for longer than their timeout. A pause that
// fails never destroys the sandbox: it runs on, and the next attempt comes
// one timeout later (the control plane's reaper, which owns the timeouts
// of a served host, backs off and then marks the record error).
func (m *Manager) reap(ctx context.Context) {
	defer close(m.reaperDone)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		m.prepared.expire(m.now())
		for _, id := range m.idle() {
			err := m.Pause(ctx, id)
			switch {
			case err == nil:
				m.log.Info("idle sandbox paused", "sandbox", id)
			case errors.Is(err, ErrNotFound), errors.Is(err, ErrConflict):
			default:
				m.log.Error("auto-pause failed; the sandbox runs on", "sandbox", id, "err", err)
				_ = m.Ping(id)
			}
		}
	}
}

// idle lists running sandboxes past their idle timeout.
func (m *Manager) idle() []string {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	var ids []string
	for id, b := range m.boxes {
		b.mu.Lock()
		if b.rec.State == StateRunning && b.rec.TimeoutSec > 0 &&
			now.Sub(b.lastActive) > time.Duration(b.rec.TimeoutSec)*time.Second {
			ids = append(ids, id)
		}
		b.mu.Unlock()
	}
	return ids
}

// PauseAll pauses every running sandbox (an agent that stops gracefully
// leaves nothing whose memory a restart would lose). Sandboxes that fail to
// pause are reported in the error and keep running.
func (m *Manager) PauseAll(ctx context.Context) error {
	var (
		mu   sync.Mutex
		errs []error
		wg   sync.WaitGroup
		sem  = make(chan struct{}, 4)
	)
	for _, in := range m.List() {
		if in.State != StateRunning {
			continue
		}
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			if err := m.Pause(ctx, id); err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrNotFound) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}(in.ID)
	}
	wg.Wait()
	return errors.Join(errs...)
}
