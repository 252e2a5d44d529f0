package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/vmm"
)

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
	// prepare starts the VMM of a restore without loading incoming: a
	// prepared machine's Start does (prepared.go).
	prepare bool
}

// balloon says whether the machine of cfg gets the virtio-balloon device:
// a boot unless the driver has it off, a restore when the snapshot's
// machine had it (its device state must match).
func (d *Driver) balloon(cfg launchConfig) bool {
	if cfg.incoming != nil {
		return cfg.meta.Balloon
	}
	return !d.noBalloon
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

// prepare describes the machine cfg asks for: its record (without the
// process), and QEMU's arguments with the files the process inherits.
func (d *Driver) prepare(cfg launchConfig) (rec record, files []*os.File, err error) {
	spec := cfg.spec
	addFile := func(f *os.File) int {
		files = append(files, f)
		return 2 + len(files)
	}
	rec = record{
		Version: recordVersion, ID: spec.ID, Binary: d.binary, Accel: d.accel,
		MemoryMB: spec.MemoryMB, VCPUs: spec.VCPUs, Disks: spec.Disks,
		ConsoleLog: spec.ConsoleLog, ConsoleMax: spec.ConsoleLogMax, Net: netKind(spec.Net),
		Balloon: d.balloon(cfg),
	}
	qc := qemuCommand{spec: spec, accel: d.accel, tbSizeMB: d.tbSizeMB, balloon: rec.Balloon}
	if cfg.memfd != nil {
		rec.Memory, rec.MemoryFD = memShared, addFile(cfg.memfd)
		qc.memoryFD = rec.MemoryFD
	} else {
		var st unix.Stat_t
		if err := unix.Stat(cfg.privateMem, &st); err != nil {
			return record{}, nil, fmt.Errorf("snapshot memory: %w", err)
		}
		if st.Size != int64(spec.MemoryMB)<<20 {
			return record{}, nil, fmt.Errorf("snapshot memory file has %d bytes, want %d", st.Size, int64(spec.MemoryMB)<<20)
		}
		rec.Memory, rec.MemoryPath, rec.MemoryDev, rec.MemoryIno = memPrivate, cfg.privateMem, st.Dev, st.Ino
		qc.privateMem = cfg.privateMem
	}
	if cfg.incoming == nil {
		qc.cmdline = d.kernelCmdline(spec)
	}
	if spec.Net != nil {
		rec.MAC = spec.Net.MAC
		if spec.Net.Tap != nil {
			qc.tapFD = addFile(spec.Net.Tap)
		} else {
			port, err := freePort()
			if err != nil {
				return record{}, nil, fmt.Errorf("user network: %w", err)
			}
			rec.HostForward = "127.0.0.1:" + itoa(port)
			qc.hostPort = port
		}
	}
	if cfg.incoming != nil {
		addFile(cfg.incoming) // its number goes to migrate-incoming
		qc.incoming = true
		qc.devicesOnly = cfg.meta.StateFormat == stateDevices
	}
	if cfg.prepare {
		// QEMU opens its disks again by name when the guest first runs
		// (activating them after the incoming migration), and the caller
		// may rename them before Start: QEMU gets links in its runtime
		// directory, relative to its working directory, which Start
		// points at the new paths (prepared.go).
		qc.spec.Disks = slices.Clone(spec.Disks)
		for i, dk := range spec.Disks {
			if err := linkDisk(spec.Dir, i, dk.Path); err != nil {
				return record{}, nil, err
			}
			qc.spec.Disks[i].Path = diskLink(i)
		}
	}
	rec.Args = qemuArgs(qc)
	return rec, files, nil
}

// start runs QEMU for cfg and waits until its QMP monitor answers (and,
// for a restore, the state is loaded and the guest resumed).
func (d *Driver) start(ctx context.Context, cfg launchConfig) (*Machine, error) {
	spec := cfg.spec
	rec, files, err := d.prepare(cfg)
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(spec.Dir, qemuLogFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	cmd := exec.Command(d.binary, rec.Args...)
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
	startCmd := cmd.Start
	// A snapshot's file mapped privately is guarded, and a prepared
	// machine starts at a low priority: see guard.go.
	kind := starterKind{guard: rec.Memory == memPrivate && !d.unguarded}
	if cfg.prepare {
		kind.nice = preparedNice
	}
	if kind != (starterKind{}) {
		startCmd = func() error { return startFrom(kind, cmd) }
	}
	if err := startCmd(); err != nil {
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
		logCap: capLog(filepath.Join(spec.Dir, qemuLogFile)),
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
		fd := len(files) + 2
		if cfg.prepare {
			m.incomingFD = fd
			m.log.Info("machine prepared", "pid", rec.PID, "accel", d.accel, "took", time.Since(start).Round(time.Millisecond))
			return m, nil
		}
		if err := m.loadIncoming(qctx, fd); err != nil {
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
