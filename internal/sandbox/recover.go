package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/vmm"
)

// recover takes over what a previous agent left in DataDir. Nothing of a
// sandbox's disk is ever deleted here:
//   - a machine that outlived the agent is adopted with its network slot
//     (the sandbox keeps running, its envd token and routes work again);
//   - a machine that died leaves its sandbox stopped with its disk (Resume
//     boots it cold);
//   - a pause interrupted by the crash ends as the old state (running, or
//     stopped if the machine died) or the new one (paused) when its
//     snapshot is complete;
//   - an unreadable state file is set aside and the sandbox is listed in
//     state error with its directory kept.
//
// Runtime directories without a sandbox (their VMMs killed), prepared
// VMMs' overlays, network slots no adopted machine uses and template
// directories no template or sandbox uses are removed.
func (m *Manager) recover(ctx context.Context) error {
	entries, err := os.ReadDir(m.sandboxesDir())
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.IsDir() {
			continue
		}
		dir := filepath.Join(m.sandboxesDir(), e.Name())
		if strings.HasPrefix(e.Name(), destroyPrefix) {
			// A destroy that had decided, cut short while removing.
			if err := os.RemoveAll(dir); err != nil {
				m.log.ErrorContext(ctx, "finish removing a destroyed sandbox", "dir", dir, "err", err)
			}
			continue
		}
		if !idRe.MatchString(e.Name()) {
			m.log.WarnContext(ctx, "leaving alone a directory that names no sandbox", "dir", dir)
			continue
		}
		rec, err := m.readRecord(dir)
		if err != nil {
			m.recoverUnreadable(ctx, e.Name(), err)
			continue
		}
		m.recoverSandbox(ctx, rec)
	}
	// Runtime directories of machines nobody owns any more.
	if runs, err := os.ReadDir(m.cfg.RunDir); err == nil {
		for _, e := range runs {
			if _, ok := m.boxes[e.Name()]; !ok {
				dir := filepath.Join(m.cfg.RunDir, e.Name())
				if err := m.cfg.Driver.Cleanup(ctx, dir); err != nil {
					m.log.ErrorContext(ctx, "kill a machine left by the previous agent", "dir", dir, "err", err)
				}
				_ = os.RemoveAll(dir)
			}
		}
	}
	// The overlays of prepared VMMs (killed above with their runtime
	// directories): no user data.
	if err := os.RemoveAll(m.preparedDir()); err != nil {
		m.log.ErrorContext(ctx, "remove the prepared VMMs' overlays", "err", err)
	}
	if err := m.cfg.Slots.DropUnclaimed(ctx); err != nil {
		m.log.ErrorContext(ctx, "remove network slots no machine uses", "err", err)
	}
	m.collectTemplateDirs()
	return nil
}

// recoverUnreadable lists a sandbox whose state file cannot be read in
// state error, its file set aside and its directory kept. A machine it
// may have cannot be adopted without its record (slot, token): it is
// killed.
func (m *Manager) recoverUnreadable(ctx context.Context, id string, readErr error) {
	dir := m.sandboxDir(id)
	reason := "the agent found no state file for this sandbox (it stopped while creating it); its directory is kept"
	if !errors.Is(readErr, fs.ErrNotExist) {
		name, err := quarantineRecord(dir, m.now())
		if err != nil {
			m.log.ErrorContext(ctx, "set aside an unreadable sandbox state", "sandbox", id, "err", err)
			name = "state.json"
		}
		reason = fmt.Sprintf("its state file was unreadable (%v); set aside as %s, directory kept", readErr, name)
	}
	if err := m.cfg.Driver.Cleanup(ctx, m.runDir(id)); err != nil {
		m.log.ErrorContext(ctx, "kill the machine of a sandbox in error", "sandbox", id, "err", err)
	}
	_ = os.RemoveAll(m.runDir(id))
	rec := &record{ID: id, State: StateError, StateReason: reason}
	if fi, err := os.Stat(m.diskPath(id)); err == nil {
		rec.CreatedAt = fi.ModTime().UTC()
	}
	m.boxes[id] = &box{rec: rec, lastActive: m.now()}
	m.log.ErrorContext(ctx, "sandbox in error after an agent restart", "sandbox", id, "reason", reason)
}

// recoverSandbox registers the sandbox of rec, as the package doc of
// recover says. Called before the manager serves anything: no locks.
func (m *Manager) recoverSandbox(ctx context.Context, rec *record) {
	b := &box{rec: rec, lastActive: m.now()}
	m.boxes[rec.ID] = b
	m.used.diskMB += rec.DiskMB
	dir := m.sandboxDir(rec.ID)
	persist := func() {
		if err := m.writeRecord(dir, rec); err != nil {
			m.log.ErrorContext(ctx, "persist a recovered sandbox", "sandbox", rec.ID, "err", err)
		}
	}
	stop := func(reason string) {
		if err := m.cfg.Driver.Cleanup(ctx, m.runDir(rec.ID)); err != nil {
			m.log.ErrorContext(ctx, "kill a machine left by the previous agent", "sandbox", rec.ID, "err", err)
		}
		_ = os.RemoveAll(m.runDir(rec.ID))
		rec.State, rec.StateReason, rec.VMMPid, rec.SlotIndex, rec.PendingSnapshot = StateStopped, reason, 0, 0, ""
		persist()
		m.log.WarnContext(ctx, "sandbox stopped: its machine did not survive the agent; disk kept", "sandbox", rec.ID, "reason", reason)
	}

	switch rec.State {
	case StatePaused:
		if rec.Snapshot == "" && rec.DiskOnly {
			m.log.InfoContext(ctx, "adopted paused sandbox (filesystem only)", "sandbox", rec.ID)
			return
		}
		if rec.Snapshot == "" {
			stop("paused without a snapshot")
			return
		}
		m.log.InfoContext(ctx, "adopted paused sandbox", "sandbox", rec.ID)
		return
	case StateStopped, StateError:
		return
	case StateStarting:
		stop("the agent stopped while the sandbox was being created")
		return
	case StatePausing:
		if rec.PendingSnapshot != "" && m.snapshotComplete(rec.PendingSnapshot) {
			// The pause had saved everything: it is the new state.
			if err := m.cfg.Driver.Cleanup(ctx, m.runDir(rec.ID)); err != nil {
				m.log.ErrorContext(ctx, "kill a paused machine", "sandbox", rec.ID, "err", err)
			}
			_ = os.RemoveAll(m.runDir(rec.ID))
			old := rec.Snapshot
			rec.State, rec.Snapshot, rec.PendingSnapshot, rec.VMMPid, rec.SlotIndex = StatePaused, rec.PendingSnapshot, "", 0, 0
			persist()
			if old != "" && old != rec.Snapshot {
				_ = os.RemoveAll(old)
			}
			m.log.InfoContext(ctx, "completed a pause interrupted by the agent's stop", "sandbox", rec.ID)
			return
		}
		// The old state: running, if the machine still does.
		if rec.PendingSnapshot != "" {
			_ = os.RemoveAll(rec.PendingSnapshot)
		}
		rec.PendingSnapshot, rec.Generation = "", rec.Generation-1
	}
	// running, resuming, or a pause rolled back.
	resuming := rec.State == StateResuming
	if resuming {
		if _, err := os.Stat(m.runDir(rec.ID)); errors.Is(err, fs.ErrNotExist) {
			// The resume never got to start a machine: still paused.
			rec.State = StatePaused
			persist()
			m.log.InfoContext(ctx, "adopted paused sandbox (its resume never started)", "sandbox", rec.ID)
			return
		}
	}
	if err := m.adopt(ctx, b, resuming); err != nil {
		if resuming && errors.Is(err, vmm.ErrNeverRan) && rec.Snapshot != "" && m.snapshotComplete(rec.Snapshot) {
			// The restore was cut short before the guest ran: its
			// snapshot is still its state (and its disk untouched), so
			// it is the old state, paused, memory kept.
			if err := m.cfg.Driver.Cleanup(ctx, m.runDir(rec.ID)); err != nil {
				m.log.ErrorContext(ctx, "kill the machine of an interrupted resume", "sandbox", rec.ID, "err", err)
			}
			_ = os.RemoveAll(m.runDir(rec.ID))
			rec.State, rec.StateReason, rec.VMMPid, rec.SlotIndex = StatePaused, "", 0, 0
			persist()
			m.log.InfoContext(ctx, "adopted paused sandbox (its resume was cut short before the guest ran)", "sandbox", rec.ID)
			return
		}
		stop(fmt.Sprintf("its machine did not survive the agent: %v", err))
		return
	}
	persist()
	m.log.InfoContext(ctx, "adopted running sandbox", "sandbox", rec.ID, "pid", rec.VMMPid, "slot", rec.SlotIndex)
}

// adopt takes over the live machine of b, its network slot and its envd.
// A resume the previous agent did not finish gets envd's /init again.
func (m *Manager) adopt(ctx context.Context, b *box, resuming bool) error {
	rec := b.rec
	ad, ok := m.cfg.Driver.(vmm.Adopter)
	if !ok {
		return fmt.Errorf("the %s driver cannot adopt machines", m.cfg.Driver.Name())
	}
	if rec.SlotIndex == 0 {
		return errors.New("no network slot recorded")
	}
	machine, err := ad.AdoptMachine(ctx, m.runDir(rec.ID))
	if err != nil {
		return err
	}
	fail := func(err error) error {
		_ = machine.Kill(context.Background())
		return err
	}
	slot, err := m.cfg.Slots.Claim(rec.SlotIndex)
	if err != nil {
		return fail(err)
	}
	fail = func(err error) error {
		_ = machine.Kill(context.Background())
		if rerr := m.cfg.Slots.Release(context.Background(), slot); rerr != nil {
			m.log.ErrorContext(ctx, "release network slot", "sandbox", rec.ID, "err", rerr)
		}
		return err
	}
	if err := slot.SetRules(ctx, rec.rules()); err != nil {
		return fail(err)
	}
	client := envdclient.New("http://"+netip.AddrPortFrom(slot.HostAddr, envdapi.DefaultPort).String(), rec.AccessToken)
	if resuming {
		ictx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
		err := client.WaitHealthy(ictx, machine.Done())
		if err == nil {
			err = m.initEnvd(ictx, client, rec)
		}
		cancel()
		if err != nil {
			client.Close()
			return fail(fmt.Errorf("finish the interrupted resume: %w", err))
		}
	}
	m.used.vcpus += rec.VCPUs
	m.used.memMB += rec.MemoryMB
	b.machine, b.slot, b.client = machine, slot, client
	rec.State, rec.StateReason, rec.VMMPid, rec.SlotIndex = StateRunning, "", machine.PID(), slot.Index
	m.running(b, machine)
	return nil
}

// snapshotComplete reports whether dir holds a complete snapshot.
func (m *Manager) snapshotComplete(dir string) bool {
	ad, ok := m.cfg.Driver.(vmm.Adopter)
	return ok && ad.SnapshotComplete(dir)
}

// collectTemplateDirs is the start-up collection of template directories:
// every directory that no template index names (left by a delete or an
// overwrite while something still backed onto it, or by a crash half way
// through makeTemplate) is given up, and deleted unless a template or a
// sandbox still reads through it, directly or down its backing chain
// (referencedTemplateDirs) — the rule DeleteTemplate follows. Temporary
// index files are removed.
func (m *Manager) collectTemplateDirs() {
	entries, err := os.ReadDir(m.templatesDir())
	if err != nil {
		return
	}
	live := map[string]bool{}
	if ts, err := m.allTemplates(); err == nil {
		for _, t := range ts {
			live[t.Dir] = true
		}
	}
	m.gcMu.Lock()
	for _, e := range entries {
		dir := filepath.Join(m.templatesDir(), e.Name())
		if !e.IsDir() {
			if strings.HasSuffix(e.Name(), ".tmp") {
				_ = os.Remove(dir)
			}
			continue
		}
		if !live[dir] {
			m.orphans[dir] = true
		}
	}
	m.gcMu.Unlock()
	m.collectTemplates()
}
