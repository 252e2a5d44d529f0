package sandbox

import (
	"context"
	"fmt"
	"time"
)

// A filesystem-only pause (E2B's pause with memory: false) keeps a
// sandbox's disk and nothing else: the guest's file systems are synced,
// its machine is stopped, and the sandbox is paused with no memory
// snapshot (record.DiskOnly). Resuming it boots it cold from that disk:
// its files are as they were, its processes are not. It costs no memory
// file on the host, and a paused sandbox of any size costs the same.
//
// ResumeCold (E2B's connect with onResume: 'reboot', which sends memory:
// false) boots a paused sandbox cold even when it has a memory snapshot,
// which is then dropped (a snapshot older than the disk can never be
// resumed again). A memory pause does not sync the guest (that would
// delay the pause by seconds, and the guest would run on meanwhile), so
// its disk alone may lack what the guest had not written back: such a
// sandbox is restored first, synced and stopped as a filesystem-only
// pause does, and then booted cold, so nothing written before the pause
// is lost.

// syncTimeout bounds the guest's sync before a filesystem-only pause.
const syncTimeout = time.Minute

// PauseFilesystem stops a running sandbox after syncing its guest's file
// systems, keeping its disk only (see above). Pausing a paused sandbox is
// a conflict. A guest that cannot sync (envd does not answer) is not
// stopped: its unwritten data would be lost.
func (m *Manager) PauseFilesystem(ctx context.Context, id string) error {
	b, err := m.lock(id)
	if err != nil {
		return err
	}
	defer b.op.Unlock()
	return m.pauseFilesystemLocked(ctx, b)
}

func (m *Manager) pauseFilesystemLocked(ctx context.Context, b *box) error {
	b.mu.Lock()
	if b.rec.State != StateRunning {
		st := b.rec.State
		b.mu.Unlock()
		return fmt.Errorf("%w: sandbox %s is %s", ErrConflict, b.rec.ID, st)
	}
	b.rec.State = StatePausing
	rec := *b.rec
	machine, slot, client := b.machine, b.slot, b.client
	b.mu.Unlock()
	dir := m.sandboxDir(rec.ID)
	back := func() {
		b.mu.Lock()
		b.rec.State = StateRunning
		r := *b.rec
		b.mu.Unlock()
		if err := m.writeRecord(dir, &r); err != nil {
			m.log.ErrorContext(ctx, "persist a failed pause", "sandbox", r.ID, "err", err)
		}
	}
	started := m.now()
	// Recorded as pausing with no pending snapshot: an agent that dies
	// from here on adopts the machine if it still runs (the old state),
	// and stops the sandbox, disk kept, if not.
	if err := m.writeRecord(dir, &rec); err != nil {
		back()
		return fmt.Errorf("pause %s: %w", rec.ID, err)
	}
	sctx, cancel := context.WithTimeout(ctx, syncTimeout)
	res, err := client.Shell(sctx, "sync")
	cancel()
	if err == nil && res.ExitCode != 0 {
		err = fmt.Errorf("sync exited with %d: %s", res.ExitCode, res.Stderr)
	}
	if err != nil {
		back()
		return fmt.Errorf("pause %s: sync the guest's file systems: %w", rec.ID, err)
	}
	// Synced: every block the guest wrote has been flushed to the disk
	// image (virtio-blk flushes reach the host file), so stopping the
	// machine loses nothing on disk.
	return m.finishPause(ctx, b, rec, machine, slot, client, "", started)
}

// ResumeCold boots a paused sandbox cold from its disk, dropping its
// memory snapshot if it has one (see above); its ID, access token and
// files are kept. A stopped sandbox boots cold as with Resume.
func (m *Manager) ResumeCold(ctx context.Context, id string) (*Info, error) {
	b, err := m.lock(id)
	if err != nil {
		return nil, err
	}
	defer b.op.Unlock()
	b.mu.Lock()
	rec := *b.rec
	b.mu.Unlock()
	if rec.State != StatePaused && rec.State != StateStopped {
		return nil, fmt.Errorf("%w: sandbox %s is %s", ErrConflict, rec.ID, rec.State)
	}
	if rec.State == StatePaused && rec.Snapshot != "" {
		// Its memory may hold writes its disk lacks: restore, sync, stop.
		if err := m.resumeLocked(ctx, b); err != nil {
			return nil, err
		}
		if err := m.pauseFilesystemLocked(ctx, b); err != nil {
			return nil, fmt.Errorf("resume %s cold: %w", rec.ID, err)
		}
		b.mu.Lock()
		rec = *b.rec
		b.mu.Unlock()
	}
	if err := m.bootColdLocked(ctx, b, rec, rec.State); err != nil {
		return nil, err
	}
	return m.info(b), nil
}
