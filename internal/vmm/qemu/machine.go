package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/vmm"
)

// Files of a machine's runtime directory (Spec.Dir).
const (
	recordFile  = "vmm.json"    // the running VMM, for Adopt and Cleanup
	qmpSocket   = "qmp.sock"    // QMP monitor
	consoleFile = "console.log" // serial console unless Spec.ConsoleLog
	qemuLogFile = "qemu.log"    // QEMU's own stdout and stderr
)

// memBackend is the id of the guest RAM backend, and so the name of its
// RAM block in the migration stream.
const memBackend = "mem"

// Memory modes of a machine (record.Memory).
const (
	memShared  = "shared"  // a memfd of the machine's own, share=on
	memPrivate = "private" // a snapshot's memory file, share=off (copy-on-write)
)

// record is what Spec.Dir/vmm.json says about a running VMM.
type record struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	PID       int       `json:"pid"`
	StartTime uint64    `json:"startTime"` // /proc/<pid>/stat field 22
	Binary    string    `json:"binary"`
	Args      []string  `json:"args"`
	Accel     vmm.Accel `json:"accel"`
	MemoryMB  int       `json:"memoryMB"`
	VCPUs     int       `json:"vcpus"`
	// Memory is memShared (MemoryFD is the memfd's descriptor number in
	// the VMM) or memPrivate (MemoryPath is the mapped snapshot file).
	Memory      string     `json:"memory"`
	MemoryFD    int        `json:"memoryFD,omitempty"`
	MemoryPath  string     `json:"memoryPath,omitempty"`
	MemoryDev   uint64     `json:"memoryDev,omitempty"` // of MemoryPath's file when mapped
	MemoryIno   uint64     `json:"memoryIno,omitempty"`
	Disks       []vmm.Disk `json:"disks"`
	Net         string     `json:"net,omitempty"` // "", "tap" or "user"
	MAC         string     `json:"mac,omitempty"`
	HostForward string     `json:"hostForward,omitempty"`
	ConsoleLog  string     `json:"consoleLog"`
	ConsoleMax  int64      `json:"consoleMax,omitempty"` // 0: vmm.DefaultConsoleLogMax
	Started     time.Time  `json:"started"`
}

const recordVersion = 1

// consoleMax is the cap of the machine's console log.
func (r *record) consoleMax() int64 {
	if r.ConsoleMax > 0 {
		return r.ConsoleMax
	}
	return vmm.DefaultConsoleLogMax
}

// Machine is a running QEMU process.
type Machine struct {
	d   *Driver
	log *slog.Logger
	dir string
	rec record

	proc  *os.Process // nil for an adopted machine
	pidfd int         // adopted machines: a pidfd to signal and watch; else -1
	qmp   *qmpClient
	memfd *os.File // shared memory; nil for a private mapping
	// console copies the serial console into its log; set before the
	// exit watcher starts.
	console *console

	opMu sync.Mutex // one Snapshot at a time

	stateMu  sync.Mutex
	shutdown string // reason of the SHUTDOWN event, if any
	finished bool   // finish ran: attach closes what it is given

	done     chan struct{}
	exitOnce sync.Once
	exitErr  error
}

var _ vmm.Machine = (*Machine)(nil)

// PID is the QEMU process.
func (m *Machine) PID() int { return m.rec.PID }

// ID is the machine's Spec.ID.
func (m *Machine) ID() string { return m.rec.ID }

// Dir is the machine's runtime directory.
func (m *Machine) Dir() string { return m.dir }

// Done is closed when the QEMU process has exited.
func (m *Machine) Done() <-chan struct{} { return m.done }

// Err says how the process ended (nil while it runs; for an adopted
// machine, which is not our child, it is always nil).
func (m *Machine) Err() error {
	select {
	case <-m.done:
		return m.exitErr
	default:
		return nil
	}
}

// HostForward is the 127.0.0.1:port that reaches the guest's envd port
// with user-mode networking; empty otherwise.
func (m *Machine) HostForward() string { return m.rec.HostForward }

// ConsoleLog is the file receiving the serial console.
func (m *Machine) ConsoleLog() string { return m.rec.ConsoleLog }

func (m *Machine) exited() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// Kill stops the VMM at once (SIGKILL) and waits for it to be gone.
// Killing an exited machine is a no-op.
func (m *Machine) Kill(ctx context.Context) error {
	if m.exited() {
		return nil
	}
	var err error
	if m.proc != nil {
		err = m.proc.Signal(syscall.SIGKILL)
	} else {
		err = unix.PidfdSendSignal(m.pidfd, unix.SIGKILL, nil, 0)
	}
	if err != nil && !errors.Is(err, os.ErrProcessDone) && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("qemu: kill %s: %w", m.rec.ID, err)
	}
	select {
	case <-m.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qemu: kill %s: %w", m.rec.ID, ctx.Err())
	}
}

// finish runs once, when the process has exited: it releases what the
// machine holds and removes the runtime files that describe a running
// VMM (the logs stay).
func (m *Machine) finish(err error) {
	m.exitOnce.Do(func() {
		m.exitErr = err
		m.stateMu.Lock()
		m.finished = true
		reason := m.shutdown
		qmp, memfd := m.qmp, m.memfd
		m.stateMu.Unlock()
		if qmp != nil {
			qmp.Close()
		}
		if memfd != nil {
			memfd.Close()
		}
		if m.pidfd >= 0 {
			unix.Close(m.pidfd)
		}
		if m.console != nil {
			// What QEMU wrote before it exited is still to be read.
			m.console.close(2 * time.Second)
		}
		removeRuntimeFiles(m.dir, m.rec.PID)
		m.log.Info("machine exited", "pid", m.rec.PID, "shutdown", reason, "err", err)
		close(m.done)
	})
}

// Detach lets go of a running machine without stopping it, so that
// another process (a restarted or upgraded agent) can Adopt it: it closes
// the QMP and console connections, since QEMU serves one client at a
// time. Snapshot fails afterwards, and the console is no longer logged
// (QEMU drops it until the next Adopt); Kill and Done still work.
func (m *Machine) Detach() {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.stateMu.Lock()
	qmp := m.qmp
	m.stateMu.Unlock()
	if qmp != nil {
		qmp.Close()
	}
	if m.console != nil {
		m.console.close(0)
	}
}

// attach gives the machine its QMP connection and memfd (either may be
// nil), which start and Adopt obtain after the exit watcher runs. It
// returns false, having closed them, when the machine already exited.
func (m *Machine) attach(qmp *qmpClient, memfd *os.File) bool {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	if m.finished {
		if qmp != nil {
			qmp.Close()
		}
		if memfd != nil {
			memfd.Close()
		}
		return false
	}
	if qmp != nil {
		m.qmp = qmp
	}
	if memfd != nil {
		m.memfd = memfd
	}
	return true
}

// watchEvents logs the machine's QMP events and remembers why it shut
// down.
func (m *Machine) watchEvents() {
	ev, _ := m.qmp.subscribe()
	for e := range ev {
		switch e.Name {
		case "SHUTDOWN":
			var d struct {
				Guest  bool   `json:"guest"`
				Reason string `json:"reason"`
			}
			_ = json.Unmarshal(e.Data, &d)
			m.stateMu.Lock()
			m.shutdown = d.Reason
			m.stateMu.Unlock()
			m.log.Info("machine shutting down", "reason", d.Reason, "byGuest", d.Guest)
		case "GUEST_PANICKED":
			m.log.Warn("guest panicked", "data", string(e.Data))
		case "STOP", "RESUME":
			m.log.Debug("machine "+strings.ToLower(e.Name), "at", e.Time)
		}
	}
}

// waitMigration waits until the migration under way (outgoing or
// incoming) ends, from its MIGRATION events (or, should one be missed, a
// periodic query-migrate), and returns nil if it completed.
func (m *Machine) waitMigration(ctx context.Context, ev <-chan qmpEvent) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		check := false
		select {
		case e, ok := <-ev:
			if !ok {
				return fmt.Errorf("migration: %w", errQMPClosed)
			}
			check = e.Name == "MIGRATION"
		case <-tick.C:
			check = true
		case <-m.done:
			return errors.New("migration: the VMM exited")
		case <-ctx.Done():
			return fmt.Errorf("migration: %w", ctx.Err())
		}
		if !check {
			continue
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := m.qmp.Execute(ctx, "query-migrate", nil, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return nil
		case "failed", "cancelled":
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
	}
}

// setMigrationCaps turns on x-ignore-shared (guest RAM that is shared is
// not streamed) and MIGRATION events.
func (m *Machine) setMigrationCaps(ctx context.Context) error {
	caps := []map[string]any{
		{"capability": "x-ignore-shared", "state": true},
		{"capability": "events", "state": true},
	}
	return m.qmp.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": caps}, nil)
}

// removeRuntimeFiles deletes the record and the QMP socket of dir if the
// record is pid's (or unreadable).
func removeRuntimeFiles(dir string, pid int) {
	if r, err := readRecord(dir); err == nil && r.PID != pid {
		return // another VMM owns the directory now
	}
	os.Remove(filepath.Join(dir, recordFile))
	os.Remove(filepath.Join(dir, qmpSocket))
	os.Remove(filepath.Join(dir, consoleSocket))
}

// launchConfig is a machine to start: a cold boot, or a restore when
// incoming is set.
type launchConfig struct {
	spec vmm.Spec
	// Exactly one of memfd (shared guest RAM) and privateMem (a snapshot's
	// memory file, mapped copy-on-write) is set.
	memfd      *os.File
	privateMem string
	incoming   *os.File // migration stream to load
	meta       *snapshotMeta
}

// errPortBusy is a user-mode network forward whose port was taken between
// choosing it and QEMU binding it.
var errPortBusy = errors.New("host forward port busy")

// launch starts QEMU for cfg and returns the machine once it runs. It
// closes cfg.memfd in any case (a running machine holds its own
// descriptor).
func (d *Driver) launch(ctx context.Context, cfg launchConfig) (*Machine, error) {
	if cfg.memfd != nil {
		defer cfg.memfd.Close()
	}
	if err := os.MkdirAll(cfg.spec.Dir, 0o700); err != nil {
		return nil, err
	}
	if r, err := readRecord(cfg.spec.Dir); err == nil {
		if alive, _ := processMatches(r.PID, r.StartTime); alive {
			return nil, fmt.Errorf("a VMM (pid %d) already runs in %s", r.PID, cfg.spec.Dir)
		}
	}
	// Whatever ran here before is gone.
	os.Remove(filepath.Join(cfg.spec.Dir, recordFile))
	os.Remove(filepath.Join(cfg.spec.Dir, qmpSocket))
	os.Remove(filepath.Join(cfg.spec.Dir, consoleSocket))
	for attempt := 0; ; attempt++ {
		m, err := d.start(ctx, cfg)
		if errors.Is(err, errPortBusy) && attempt < 3 {
			continue
		}
		return m, err
	}
}

func (d *Driver) start(ctx context.Context, cfg launchConfig) (*Machine, error) {
	spec := cfg.spec
	var files []*os.File
	addFile := func(f *os.File) int {
		files = append(files, f)
		return 2 + len(files)
	}
	args := []string{
		"-name", optEscape(spec.ID) + ",process=capsule-vm",
		"-M", "microvm,acpi=on,memory-backend=" + memBackend,
		"-accel", string(d.accel),
		"-cpu", cpuModel(d.accel),
		"-m", itoa(spec.MemoryMB),
		"-smp", itoa(spec.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-sandbox", "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
		// Sockets relative to the process's working directory (spec.Dir):
		// a unix socket path must stay short. The console: see console.go.
		"-chardev", "socket,id=con0,path=" + consoleSocket + ",server=on,wait=off",
		"-serial", "chardev:con0",
		"-qmp", "unix:" + qmpSocket + ",server=on,wait=off",
	}
	rec := record{
		Version: recordVersion, ID: spec.ID, Binary: d.binary, Accel: d.accel,
		MemoryMB: spec.MemoryMB, VCPUs: spec.VCPUs, Disks: spec.Disks,
		ConsoleLog: spec.ConsoleLog, ConsoleMax: spec.ConsoleLogMax, Net: netKind(spec.Net),
	}
	mem := "memory-backend-file,id=" + memBackend + ",size=" + itoa(spec.MemoryMB) + "M"
	if cfg.memfd != nil {
		rec.Memory, rec.MemoryFD = memShared, addFile(cfg.memfd)
		mem += ",share=on,mem-path=/dev/fd/" + itoa(rec.MemoryFD)
	} else {
		var st unix.Stat_t
		if err := unix.Stat(cfg.privateMem, &st); err != nil {
			return nil, fmt.Errorf("snapshot memory: %w", err)
		}
		if st.Size != int64(spec.MemoryMB)<<20 {
			return nil, fmt.Errorf("snapshot memory file has %d bytes, want %d", st.Size, int64(spec.MemoryMB)<<20)
		}
		rec.Memory, rec.MemoryPath, rec.MemoryDev, rec.MemoryIno = memPrivate, cfg.privateMem, st.Dev, st.Ino
		mem += ",share=off,mem-path=" + optEscape(cfg.privateMem)
	}
	args = append(args, "-object", mem)
	if cfg.incoming == nil {
		args = append(args, "-kernel", spec.Kernel)
		if spec.Initrd != "" {
			args = append(args, "-initrd", spec.Initrd)
		}
		args = append(args, "-append", d.kernelCmdline(spec))
	}
	for i, dk := range spec.Disks {
		drive := fmt.Sprintf("id=d%d,if=none,file=%s,format=%s,discard=unmap", i, optEscape(dk.Path), dk.Format)
		if dk.ReadOnly {
			drive += ",readonly=on"
		}
		args = append(args, "-drive", drive, "-device", fmt.Sprintf("virtio-blk-device,drive=d%d", i))
	}
	if spec.Net != nil {
		rec.MAC = spec.Net.MAC
		if spec.Net.Tap != nil {
			args = append(args, "-netdev", "tap,id=n0,fd="+itoa(addFile(spec.Net.Tap)))
		} else {
			port, err := freePort()
			if err != nil {
				return nil, fmt.Errorf("user network: %w", err)
			}
			rec.HostForward = "127.0.0.1:" + itoa(port)
			args = append(args, "-netdev", fmt.Sprintf("user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:%d-:%d", port, EnvdPort))
		}
		args = append(args, "-device", "virtio-net-device,netdev=n0,mac="+spec.Net.MAC)
	}
	if cfg.incoming != nil {
		addFile(cfg.incoming) // its number goes to migrate-incoming
		// -S: the guest stays stopped after the load until cont.
		args = append(args, "-S", "-incoming", "defer")
		if cfg.meta.StateFormat == stateDevices {
			// A device-state-only stream has no configuration section.
			args = append(args, "-global", "migration.send-configuration=off")
		}
	}
	rec.Args = args

	logf, err := os.OpenFile(filepath.Join(spec.Dir, qemuLogFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(d.binary, args...)
	cmd.Dir = spec.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = files
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if d.pdeathsig {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	var memfd *os.File
	if cfg.memfd != nil {
		fd, err := unix.FcntlInt(cfg.memfd.Fd(), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("dup memfd: %w", err)
		}
		memfd = os.NewFile(uintptr(fd), cfg.memfd.Name())
	}
	logStart, _ := logf.Seek(0, 2)
	mlog := d.log.With("machine", spec.ID)
	// Connecting before QEMU starts: it retries until the socket exists.
	con, err := followConsole(spec.Dir, spec.ConsoleLog, rec.consoleMax(), mlog)
	if err != nil {
		if memfd != nil {
			memfd.Close()
		}
		return nil, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		con.close(0)
		if memfd != nil {
			memfd.Close()
		}
		return nil, fmt.Errorf("start %s: %w", d.binary, err)
	}
	rec.PID = cmd.Process.Pid
	rec.Started = start
	m := &Machine{
		d: d, log: mlog, dir: spec.Dir, rec: rec,
		proc: cmd.Process, pidfd: -1, memfd: memfd, console: con, done: make(chan struct{}),
	}
	go func() { m.finish(cmd.Wait()) }()

	fail := func(err error) (*Machine, error) {
		_ = m.Kill(context.Background())
		out := readTail(filepath.Join(spec.Dir, qemuLogFile), logStart, 2000)
		if strings.Contains(out, "host forwarding rule") {
			err = fmt.Errorf("%w: %w", errPortBusy, err)
		}
		if out != "" {
			return nil, fmt.Errorf("%w; qemu: %s", err, out)
		}
		return nil, err
	}
	if m.rec.StartTime, err = procStartTime(rec.PID); err != nil {
		return fail(fmt.Errorf("read process start time: %w", err))
	}
	if err := writeJSONAtomic(filepath.Join(spec.Dir, recordFile), m.rec); err != nil {
		return fail(err)
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	qmp, err := dialQMP(qctx, filepath.Join(spec.Dir, qmpSocket), m.log, m.done)
	if err != nil {
		return fail(err)
	}
	if !m.attach(qmp, nil) {
		return fail(errors.New("the VMM exited"))
	}
	go m.watchEvents()
	if cfg.incoming != nil {
		if err := m.loadIncoming(qctx, len(files)+2); err != nil {
			return fail(err)
		}
	}
	m.log.Info("machine started", "pid", rec.PID, "accel", d.accel, "memory", rec.Memory, "restore", cfg.incoming != nil, "took", time.Since(start).Round(time.Millisecond))
	return m, nil
}

// loadIncoming loads the migration stream on descriptor fd and resumes the
// guest.
func (m *Machine) loadIncoming(ctx context.Context, fd int) error {
	if err := m.setMigrationCaps(ctx); err != nil {
		return err
	}
	ev, unsubscribe := m.qmp.subscribe()
	defer unsubscribe()
	if err := m.qmp.Execute(ctx, "migrate-incoming", map[string]any{"uri": "fd:" + itoa(fd)}, nil); err != nil {
		return err
	}
	if err := m.waitMigration(ctx, ev); err != nil {
		return fmt.Errorf("load state: %w", err)
	}
	// QEMU runs with -S: the guest waits for cont.
	return m.qmp.Execute(ctx, "cont", nil, nil)
}

// Adopt takes over the machine that runs in dir, as recorded there by the
// driver that started it (typically before the agent restarted). The
// process must still be the one recorded (same pid and start time). The
// returned machine supports every operation; Err stays nil since the
// process is not our child.
func (d *Driver) Adopt(ctx context.Context, dir string) (*Machine, error) {
	rec, pidfd, err := findRunning(dir)
	if err != nil {
		return nil, fmt.Errorf("qemu: adopt %s: %w", dir, err)
	}
	log := d.log.With("machine", rec.ID)
	fail := func(err error) (*Machine, error) {
		unix.Close(pidfd)
		return nil, fmt.Errorf("qemu: adopt %s: %w", dir, err)
	}
	var memfd *os.File
	if rec.Memory == memShared {
		if memfd, err = os.OpenFile(fmt.Sprintf("/proc/%d/fd/%d", rec.PID, rec.MemoryFD), os.O_RDWR, 0); err != nil {
			return fail(fmt.Errorf("reopen guest memory: %w", err))
		}
	}
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	qmp, err := dialQMP(qctx, filepath.Join(dir, qmpSocket), log, nil)
	if err != nil {
		if memfd != nil {
			memfd.Close()
		}
		return fail(err)
	}
	con, err := followConsole(dir, rec.ConsoleLog, rec.consoleMax(), log)
	if err != nil {
		qmp.Close()
		if memfd != nil {
			memfd.Close()
		}
		return fail(err)
	}
	m := &Machine{d: d, log: log, dir: dir, rec: rec, pidfd: pidfd, qmp: qmp, memfd: memfd, console: con, done: make(chan struct{})}
	go m.watchPidfd()
	go m.watchEvents()
	if err := m.resumeInterrupted(qctx); err != nil {
		_ = m.Kill(context.Background())
		return nil, fmt.Errorf("qemu: adopt %s: %w", dir, err)
	}
	m.log.Info("machine adopted", "pid", rec.PID)
	return m, nil
}

// AdoptMachine is Adopt as vmm.Adopter has it.
func (d *Driver) AdoptMachine(ctx context.Context, dir string) (vmm.Machine, error) {
	m, err := d.Adopt(ctx, dir)
	if err != nil {
		return nil, err
	}
	return m, nil
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

// resumeInterrupted undoes a snapshot that the previous agent did not
// finish: a migration still running is cancelled, and a guest left
// stopped by it (paused, or done migrating) runs again. An adopted
// machine runs, whatever happened to the process that last drove it.
func (m *Machine) resumeInterrupted(ctx context.Context) error {
	for {
		var mig struct{ Status string }
		if err := m.qmp.Execute(ctx, "query-migrate", nil, &mig); err != nil {
			return err
		}
		if mig.Status != "setup" && mig.Status != "active" && mig.Status != "device" && mig.Status != "cancelling" && mig.Status != "pre-switchover" {
			break
		}
		m.log.Warn("cancelling the migration of an interrupted snapshot", "status", mig.Status)
		if err := m.qmp.Execute(ctx, "migrate_cancel", nil, nil); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	var st struct{ Status string }
	if err := m.qmp.Execute(ctx, "query-status", nil, &st); err != nil {
		return err
	}
	switch st.Status {
	case "running":
		return nil
	case "paused", "postmigrate", "finish-migrate":
		m.log.Warn("resuming a guest that an interrupted snapshot left stopped", "status", st.Status)
		return m.qmp.Execute(ctx, "cont", nil, nil)
	case "inmigrate", "prelaunch":
		// A restore that the previous agent did not see through: the
		// guest has not run a single instruction.
		return fmt.Errorf("guest is %s: %w", st.Status, vmm.ErrNeverRan)
	default:
		return fmt.Errorf("guest is %s", st.Status)
	}
}

// Cleanup kills the VMM that runs in dir, if any, and removes the files
// that describe it; the directory itself is the caller's. An agent that
// starts runs it on every machine directory it does not adopt. It needs
// no working QMP: the process is killed through a pidfd.
func Cleanup(ctx context.Context, dir string) error {
	rec, pidfd, err := findRunning(dir)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, vmm.ErrExited) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("qemu: cleanup %s: %w", dir, err)
	}
	defer unix.Close(pidfd)
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("qemu: cleanup %s: kill %d: %w", dir, rec.PID, err)
	}
	if err := waitPidfd(ctx, pidfd); err != nil {
		return fmt.Errorf("qemu: cleanup %s: %w", dir, err)
	}
	removeRuntimeFiles(dir, rec.PID)
	return nil
}

// findRunning reads dir's record and opens a pidfd on its process after
// checking it is still the recorded one. A record whose process is gone
// is removed, and vmm.ErrExited returned.
func findRunning(dir string) (record, int, error) {
	rec, err := readRecord(dir)
	if err != nil {
		return record{}, -1, err
	}
	pidfd, err := unix.PidfdOpen(rec.PID, 0)
	if err == nil {
		// Checked after opening the pidfd: if the pid was reused before
		// that, the start time differs; after it, the pidfd still refers
		// to the process checked.
		var ok bool
		if ok, err = processMatches(rec.PID, rec.StartTime); err == nil && ok {
			return rec, pidfd, nil
		}
		unix.Close(pidfd)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, os.ErrNotExist) {
		return record{}, -1, err
	}
	removeRuntimeFiles(dir, rec.PID)
	return record{}, -1, fmt.Errorf("pid %d: %w", rec.PID, vmm.ErrExited)
}

// watchPidfd finishes an adopted machine when its process exits.
func (m *Machine) watchPidfd() {
	_ = waitPidfd(context.Background(), m.pidfd)
	m.finish(nil)
}

// waitPidfd waits until the process of pidfd has exited.
func waitPidfd(ctx context.Context, pidfd int) error {
	for {
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll pidfd: %w", err)
		}
		if n > 0 {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// procStartTime is field 22 of /proc/<pid>/stat: when the process started,
// in clock ticks after boot. With the pid it identifies a process.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is parenthesized and may hold anything.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("malformed /proc stat")
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 is the 20th after the name
}

// processMatches reports whether pid runs and started at startTime.
func processMatches(pid int, startTime uint64) (bool, error) {
	st, err := procStartTime(pid)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return st == startTime, nil
}

func readRecord(dir string) (record, error) {
	var r record
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", recordFile, err)
	}
	if r.Version != recordVersion || r.PID <= 0 {
		return r, fmt.Errorf("%s: unsupported record", recordFile)
	}
	return r, nil
}

// writeJSONAtomic writes v to path through a synced temporary file, a
// rename and a sync of the directory.
func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	syncDir(filepath.Dir(path)) // the rename too is durable
	return nil
}

// readTail returns up to max bytes of what path holds after offset from,
// trimmed.
func readTail(path string, from int64, max int) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) <= from {
		return ""
	}
	b = b[from:]
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return strings.TrimSpace(string(b))
}
