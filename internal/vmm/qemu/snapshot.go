package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/vmm"
)

// Files of a snapshot directory. The state, memory and disk file names
// carry a generation suffix (state-<gen>, memory-<gen>, disk0-<gen>.qcow2)
// so that snapshotting into an existing snapshot directory never
// overwrites a file in place: machines restored from the old generation
// keep mapping its memory file, and a crash leaves the old or the new
// snapshot whole (snapshot.json is renamed last).
const snapMetaFile = "snapshot.json"

// snapshotFormat identifies the layout described in the package doc;
// snapshotFormatBalloon is the same of a machine with the virtio-balloon
// device, whose device state only a restore with that device loads: an
// agent that predates the balloon refuses it by its format instead of
// failing in QEMU.
const (
	snapshotFormat        = "capsule-qemu-snapshot/1"
	snapshotFormatBalloon = "capsule-qemu-snapshot/2"
)

// State file formats.
const (
	// stateDevices is the output of xen-save-devices-state: every device's
	// state and no RAM section (nor the configuration section).
	stateDevices = "devices"
	// stateMigration is a migration stream (x-ignore-shared) whose guest
	// RAM pages were moved to the memory file by splitStream.
	stateMigration = "migration"
)

// snapshotMeta is snapshot.json.
type snapshotMeta struct {
	Format      string     `json:"format"`
	QEMUVersion string     `json:"qemuVersion"`
	Accel       vmm.Accel  `json:"accel"`
	CPU         string     `json:"cpu"`
	MemoryMB    int        `json:"memoryMB"`
	VCPUs       int        `json:"vcpus"`
	State       string     `json:"state"`       // device state, no guest RAM
	StateFormat string     `json:"stateFormat"` // stateDevices or stateMigration
	Memory      string     `json:"memory"`      // guest RAM image, sparse
	Disks       []vmm.Disk `json:"disks"`
	Net         string     `json:"net,omitempty"`
	MAC         string     `json:"mac,omitempty"`
	// Balloon: the machine had the virtio-balloon device, so the device
	// state holds one and its restores add it. Read from Format
	// (snapshotFormatBalloon), written for people.
	Balloon bool `json:"balloon,omitempty"`
	// Source is how the saved machine's RAM was mapped (memShared or
	// memPrivate), which decided how the memory file was written.
	Source      string    `json:"source"`
	StateBytes  int64     `json:"stateBytes"`
	MemoryBytes int64     `json:"memoryBytes"` // allocated
	Paused      float64   `json:"pausedSeconds"`
	Stopped     time.Time `json:"stopped,omitzero"` // the guest stopped (QMP stop returned); its clocks stand there
	Created     time.Time `json:"created"`
}

func readSnapshotMeta(dir string) (*snapshotMeta, error) {
	b, err := os.ReadFile(filepath.Join(dir, snapMetaFile))
	if err != nil {
		return nil, err
	}
	var m snapshotMeta
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", snapMetaFile, err)
	}
	switch m.Format {
	case snapshotFormat, snapshotFormatBalloon:
		m.Balloon = m.Format == snapshotFormatBalloon
	default:
		return nil, fmt.Errorf("%s: unsupported format %q", snapMetaFile, m.Format)
	}
	if m.StateFormat != stateDevices && m.StateFormat != stateMigration {
		return nil, fmt.Errorf("%s: unknown state format %q", snapMetaFile, m.StateFormat)
	}
	if m.State == "" || m.Memory == "" || strings.ContainsRune(m.State+m.Memory, '/') {
		return nil, fmt.Errorf("%s: bad file names", snapMetaFile)
	}
	return &m, nil
}

// ReadSnapshot describes the snapshot in dir.
func ReadSnapshot(dir string) (vmm.Snapshot, error) {
	m, err := readSnapshotMeta(dir)
	if err != nil {
		return vmm.Snapshot{}, fmt.Errorf("qemu: read snapshot %s: %w", dir, err)
	}
	return vmm.Snapshot{Dir: dir, MemoryMB: m.MemoryMB, VCPUs: m.VCPUs, Disks: m.Disks}, nil
}

// SnapshotComplete reports whether dir holds a complete snapshot: its
// metadata, written last, and the files it names.
func (d *Driver) SnapshotComplete(dir string) bool {
	meta, err := readSnapshotMeta(dir)
	if err != nil {
		return false
	}
	for _, f := range []string{meta.State, meta.Memory} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			return false
		}
	}
	return true
}

// migration parameters for snapshots: no bandwidth limit (the guest is
// stopped, so there is nothing to throttle).
const maxBandwidth = 1 << 40

// Snapshot saves the machine into dir (see the package doc for the
// procedure and the layout).
func (m *Machine) Snapshot(ctx context.Context, dir string, keepRunning bool) (vmm.Snapshot, error) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	if m.exited() {
		return vmm.Snapshot{}, fmt.Errorf("qemu: snapshot %s: %w", m.rec.ID, vmm.ErrExited)
	}
	snap, err := m.snapshot(ctx, dir, keepRunning)
	if err != nil {
		if m.exited() {
			err = fmt.Errorf("%w (%w)", err, vmm.ErrExited)
		}
		return vmm.Snapshot{}, fmt.Errorf("qemu: snapshot %s: %w", m.rec.ID, err)
	}
	return snap, nil
}

// snapshot runs the phases of a snapshot (see the package doc): prepare
// the files, stop the guest, save its device state and memory, copy the
// disks, resume the guest (keepRunning), finish the memory file, publish
// the files and their metadata, and end the VMM (!keepRunning).
func (m *Machine) snapshot(ctx context.Context, dir string, keepRunning bool) (_ vmm.Snapshot, err error) {
	start := time.Now()
	if dir, err = filepath.Abs(dir); err != nil {
		return vmm.Snapshot{}, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return vmm.Snapshot{}, err
	}
	meta, copies := m.newSnapshotMeta(dir, keepRunning)
	files := &snapshotFiles{dir: dir}
	defer func() { files.close(err != nil) }()
	memSize := int64(m.rec.MemoryMB) << 20
	stateF, memF, err := files.createStateAndMemory(meta, memSize)
	if err != nil {
		return vmm.Snapshot{}, err
	}

	// From here on the guest is stopped; every failure resumes it.
	if err := m.qmp.Execute(ctx, "stop", nil, nil); err != nil {
		return vmm.Snapshot{}, err
	}
	stopped := time.Now()
	meta.Stopped = stopped.UTC()
	resumed := false
	defer func() {
		if err != nil && !resumed && !m.exited() {
			m.resumeAfterFailedSnapshot()
		}
	}()
	memDone, err := m.saveMemoryAndState(ctx, stateF, memF, memSize, keepRunning)
	if err != nil {
		return vmm.Snapshot{}, err
	}
	defer memDone.close()
	meta.StateFormat = memDone.format
	saved := time.Now()
	if err := files.copyDisks(copies); err != nil {
		return vmm.Snapshot{}, err
	}
	if keepRunning {
		if err := m.qmp.Execute(ctx, "cont", nil, nil); err != nil {
			return vmm.Snapshot{}, err
		}
		resumed = true
	}
	paused := time.Since(stopped)
	if err := memDone.finish(); err != nil {
		return vmm.Snapshot{}, fmt.Errorf("write guest memory: %w", err)
	}

	if err := files.publish(meta, stateF, memF, paused); err != nil {
		return vmm.Snapshot{}, err
	}
	if err := publishSnapshotMeta(dir, meta); err != nil {
		return vmm.Snapshot{}, err
	}
	if !keepRunning {
		m.quitSaved(ctx)
	}
	m.log.Info("machine snapshotted", "dir", dir, "keepRunning", keepRunning, "memory", m.rec.Memory,
		"save", saved.Sub(stopped).Round(time.Millisecond), "paused", paused.Round(time.Millisecond),
		"took", time.Since(start).Round(time.Millisecond), "stateBytes", meta.StateBytes, "memoryBytes", meta.MemoryBytes)
	return vmm.Snapshot{Dir: dir, MemoryMB: meta.MemoryMB, VCPUs: meta.VCPUs, Disks: meta.Disks, Paused: paused}, nil
}

// diskCopy is a disk that a snapshot copies (src) into its directory
// (dst).
type diskCopy struct{ src, dst string }

// newSnapshotMeta starts the metadata of a snapshot of m into dir, with
// a new generation's file names. Its disks are copies for keepRunning (the
// guest writes on), which it returns, else the machine's own files.
func (m *Machine) newSnapshotMeta(dir string, keepRunning bool) (*snapshotMeta, []diskCopy) {
	gen := newGeneration()
	meta := &snapshotMeta{
		Format: snapshotFormat, QEMUVersion: m.d.version, Accel: m.rec.Accel, CPU: cpuModel(m.rec.Accel),
		MemoryMB: m.rec.MemoryMB, VCPUs: m.rec.VCPUs, Net: m.rec.Net, MAC: m.rec.MAC, Source: m.rec.Memory,
		Balloon: m.rec.Balloon,
		State:   "state-" + gen, Memory: "memory-" + gen,
	}
	if meta.Balloon {
		meta.Format = snapshotFormatBalloon
	}
	var copies []diskCopy
	for i, dk := range m.rec.Disks {
		if keepRunning && !dk.ReadOnly {
			name := fmt.Sprintf("disk%d-%s.%s", i, gen, dk.Format)
			copies = append(copies, diskCopy{dk.Path, filepath.Join(dir, name)})
			dk.Path = filepath.Join(dir, name)
		}
		meta.Disks = append(meta.Disks, dk)
	}
	return meta, copies
}

// snapshotFiles are the files of a snapshot being written: everything is
// written to temporary names first (.<name>.tmp), renamed by publish.
type snapshotFiles struct {
	dir  string
	tmps []*os.File
}

// create opens the temporary file of final.
func (s *snapshotFiles) create(final string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(s.dir, "."+final+".tmp"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err == nil {
		s.tmps = append(s.tmps, f)
	}
	return f, err
}

// createStateAndMemory opens the state file and the memory file, sized
// memSize, of meta.
func (s *snapshotFiles) createStateAndMemory(meta *snapshotMeta, memSize int64) (stateF, memF *os.File, err error) {
	if stateF, err = s.create(meta.State); err != nil {
		return nil, nil, err
	}
	if memF, err = s.create(meta.Memory); err != nil {
		return nil, nil, err
	}
	if err := memF.Truncate(memSize); err != nil {
		return nil, nil, err
	}
	return stateF, memF, nil
}

// copyDisks copies the disks of a keepRunning snapshot. Stopping the guest
// drained and flushed its disks (a migration also inactivated them):
// copies taken while it is stopped match the memory.
func (s *snapshotFiles) copyDisks(copies []diskCopy) error {
	for _, c := range copies {
		f, err := s.create(filepath.Base(c.dst))
		if err != nil {
			return err
		}
		if err := copyFile(f, c.src); err != nil {
			return fmt.Errorf("copy disk %s: %w", c.src, err)
		}
	}
	return nil
}

// publish makes the files durable, completes meta with their sizes and
// the guest's pause, and renames them to their final names.
func (s *snapshotFiles) publish(meta *snapshotMeta, stateF, memF *os.File, paused time.Duration) error {
	for _, f := range s.tmps {
		if err := f.Sync(); err != nil {
			return err
		}
	}
	if fi, err := stateF.Stat(); err == nil {
		meta.StateBytes = fi.Size()
	}
	meta.MemoryBytes = allocatedBytes(memF)
	meta.Paused = paused.Seconds()
	meta.Created = time.Now().UTC()
	for _, f := range s.tmps {
		final := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f.Name()), "."), ".tmp")
		if err := os.Rename(f.Name(), filepath.Join(s.dir, final)); err != nil {
			return err
		}
	}
	return nil
}

// close closes the files, and removes those of a failed snapshot.
func (s *snapshotFiles) close(failed bool) {
	for _, f := range s.tmps {
		f.Close()
		if failed {
			os.Remove(f.Name())
		}
	}
}

// publishSnapshotMeta writes snapshot.json, which makes the snapshot in
// dir the new generation, and removes the previous generation's files.
func publishSnapshotMeta(dir string, meta *snapshotMeta) error {
	old, _ := readSnapshotMeta(dir)
	if err := writeJSONAtomic(filepath.Join(dir, snapMetaFile), meta); err != nil {
		return err
	}
	syncDir(dir)
	if old != nil {
		removeGeneration(dir, old, meta)
	}
	return nil
}

// resumeAfterFailedSnapshot lets the guest that a failed snapshot stopped
// run again.
func (m *Machine) resumeAfterFailedSnapshot() {
	if err := m.qmp.Execute(context.Background(), "cont", nil, nil); err != nil {
		m.log.Error("resume after a failed snapshot", "err", err)
	}
}

// quitSaved ends the VMM of a guest that is saved (its disks are
// flushed), killing it if it does not quit in time.
func (m *Machine) quitSaved(ctx context.Context) {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_ = m.qmp.Execute(qctx, "quit", nil, nil)
	select {
	case <-m.done:
	case <-qctx.Done():
		_ = m.Kill(ctx)
	}
}

// savedMemory completes a snapshot's memory file: finish writes what
// was not written while the guest was stopped; close releases what was
// held for it.
type savedMemory struct {
	format string
	finish func() error
	close  func()
}

// saveMemoryAndState writes the stopped guest's device state, and its
// memory or what it takes to write it later. It saves the device state
// alone where QEMU can (xen-save-devices-state, which despite its name is
// generic: a millisecond, no RAM). The memory then comes from the memfd,
// or for a private mapping from the mapped file plus the pages the guest
// owns (see privateMemory). Without keepRunning it is all written while
// the guest is stopped: a failure then resumes the guest, and the pause is
// only final once the snapshot is complete. With keepRunning only what the
// guest can change is taken while it is stopped, into RAM (the memfd's
// allocated pages, or the guest-owned pages of a private mapping), and
// finish writes the file after the guest resumed, so the guest's pause does
// not include disk writes. Without device-state saving, or if it fails,
// it falls back to a migration stream split by splitStream, all while
// stopped.
func (m *Machine) saveMemoryAndState(ctx context.Context, stateF, memF *os.File, memSize int64, keepRunning bool) (savedMemory, error) {
	noop := func() {}
	if !m.d.streamSnapshots.Load() {
		sm, err := m.saveDevicesAndMemory(ctx, stateF, memF, memSize, keepRunning)
		if err == nil {
			return sm, nil
		}
		if errors.Is(err, errNoDeviceSave) {
			m.d.streamSnapshots.Store(true)
		}
		m.log.Warn("device-state snapshot failed, using a migration stream", "err", err)
		for _, f := range []*os.File{stateF, memF} {
			if err := f.Truncate(0); err != nil {
				return savedMemory{}, err
			}
		}
		if err := memF.Truncate(memSize); err != nil {
			return savedMemory{}, err
		}
	}
	if err := m.setMigrationCaps(ctx); err != nil {
		return savedMemory{}, err
	}
	if err := m.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": maxBandwidth}, nil); err != nil {
		return savedMemory{}, err
	}
	// Shared RAM is copied from the memfd while QEMU writes the device
	// state; private RAM comes through the stream.
	copyDone := make(chan error, 1)
	if m.memfd != nil {
		go func() {
			_, err := copySparse(memF, m.memfd, memSize)
			copyDone <- err
		}()
	} else {
		copyDone <- nil
	}
	stats, err := m.saveState(ctx, stateF, memF)
	if cerr := <-copyDone; err == nil && cerr != nil {
		err = fmt.Errorf("copy guest memory: %w", cerr)
	}
	if err != nil {
		return savedMemory{}, err
	}
	if m.memfd != nil && stats.PagesMoved != 0 {
		return savedMemory{}, fmt.Errorf("shared guest memory came in the stream (%d pages)", stats.PagesMoved)
	}
	if stats.BlockLength != memSize {
		return savedMemory{}, fmt.Errorf("guest memory block of %d bytes in the stream, want %d", stats.BlockLength, memSize)
	}
	return savedMemory{format: stateMigration, finish: func() error { return nil }, close: noop}, nil
}

// saveDevicesAndMemory is the device-state path of saveMemoryAndState.
func (m *Machine) saveDevicesAndMemory(ctx context.Context, stateF, memF *os.File, memSize int64, keepRunning bool) (savedMemory, error) {
	if err := m.saveDevices(ctx, stateF.Name()); err != nil {
		return savedMemory{}, err
	}
	sm := savedMemory{format: stateDevices, close: func() {}}
	switch {
	case m.memfd != nil && !keepRunning:
		_, err := copySparse(memF, m.memfd, memSize)
		sm.finish = func() error { return nil }
		return sm, err
	case m.memfd != nil:
		tmp, err := newMemfd("capsule-capture", memSize)
		if err != nil {
			return savedMemory{}, err
		}
		if _, err := copySparse(tmp, m.memfd, memSize); err != nil {
			tmp.Close()
			return savedMemory{}, err
		}
		sm.finish = func() error {
			_, err := copySparse(memF, tmp, memSize)
			return err
		}
		sm.close = func() { tmp.Close() }
		return sm, nil
	}
	pm, err := openPrivateMemory(m.rec.PID, m.rec.MemoryDev, m.rec.MemoryIno, memSize)
	if err != nil {
		return savedMemory{}, err
	}
	if !keepRunning {
		defer pm.Close()
		if err := pm.copyBase(memF); err != nil {
			return savedMemory{}, err
		}
		_, err := pm.dirtyPages(func(off int64, data []byte) error { return writePages(memF, off, data) })
		sm.finish = func() error { return nil }
		return sm, err
	}
	captured, err := pm.capture()
	if err != nil {
		pm.Close()
		return savedMemory{}, err
	}
	sm.finish = func() error {
		if err := pm.copyBase(memF); err != nil {
			return err
		}
		return captured.apply(memF)
	}
	sm.close = func() {
		captured.Close()
		pm.Close()
	}
	return sm, nil
}

// saveDevices writes the device state (no RAM) of the stopped guest to
// path, which QEMU opens and truncates.
func (m *Machine) saveDevices(ctx context.Context, path string) error {
	err := m.qmp.Execute(ctx, "xen-save-devices-state", map[string]any{"filename": path, "live": false}, nil)
	var qe *QMPError
	if errors.As(err, &qe) && qe.Class == "CommandNotFound" {
		return fmt.Errorf("%w: %w", errNoDeviceSave, err)
	}
	return err
}

// saveState runs the migration of the stopped guest into a pipe and splits
// the stream into state and memory (see splitStream).
func (m *Machine) saveState(ctx context.Context, state, mem *os.File) (splitStats, error) {
	pr, pw, err := os.Pipe()
	if err != nil {
		return splitStats{}, err
	}
	defer pr.Close()
	const fdName = "capsule-snapshot"
	err = m.qmp.ExecuteFD(ctx, "getfd", map[string]any{"fdname": fdName}, pw)
	pw.Close()
	if err != nil {
		return splitStats{}, err
	}
	type result struct {
		stats splitStats
		err   error
	}
	ev, unsubscribe := m.qmp.subscribe()
	defer unsubscribe()
	split := make(chan result, 1)
	go func() {
		st, err := splitStream(pr, state, mem, memBackend)
		if err != nil {
			// Unblock QEMU's writer, which then fails the migration.
			pr.Close()
		}
		split <- result{st, err}
	}()
	if err := m.qmp.Execute(ctx, "migrate", map[string]any{"uri": "fd:" + fdName}, nil); err != nil {
		_ = m.qmp.Execute(context.Background(), "closefd", map[string]any{"fdname": fdName}, nil)
		pr.Close()
		<-split
		return splitStats{}, err
	}
	var res result
	select {
	case res = <-split:
	case <-ctx.Done():
		_ = m.qmp.Execute(context.Background(), "migrate_cancel", nil, nil)
		pr.Close()
		<-split
		return splitStats{}, ctx.Err()
	}
	// QEMU closed the stream; wait for it to say how the migration ended.
	if res.err != nil {
		_ = m.qmp.Execute(context.Background(), "migrate_cancel", nil, nil)
		_ = m.waitMigration(ctx, ev)
		return splitStats{}, res.err
	}
	if err := m.waitMigration(ctx, ev); err != nil {
		return splitStats{}, err
	}
	return res.stats, nil
}

// copyFile copies the file at src into dst (an open, empty file): by
// reflink where the filesystem can, else sparse-aware.
func copyFile(dst *os.File, src string) error {
	s, err := os.Open(src)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(s.Fd())); err == nil {
		return nil
	}
	fi, err := s.Stat()
	if err != nil {
		return err
	}
	if err := dst.Truncate(fi.Size()); err != nil {
		return err
	}
	_, err = copySparse(dst, s, fi.Size())
	return err
}

// newGeneration returns a short unique suffix for snapshot files.
func newGeneration() string {
	b := make([]byte, 4)
	_, _ = io.ReadFull(rand.Reader, b)
	return time.Now().UTC().Format("20060102T150405") + "-" + hex.EncodeToString(b)
}

// removeGeneration deletes the state and memory files of the old snapshot
// generation. Machines restored lazily from it keep their mapping of the
// unlinked memory file. Old disk copies stay: overlays of other machines
// may name them as backing files; they are the caller's to remove.
func removeGeneration(dir string, old, cur *snapshotMeta) {
	for _, name := range []string{old.State, old.Memory} {
		if name != cur.State && name != cur.Memory {
			os.Remove(filepath.Join(dir, name))
		}
	}
}

// syncDir makes renames in dir durable.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
