package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/vmm"
)

// memBackend is the id of the guest RAM backend, and so the name of its
// RAM block in the migration stream.
const memBackend = "mem"

// Memory modes of a machine (record.Memory).
const (
	memShared  = "shared"  // a memfd of the machine's own, share=on
	memPrivate = "private" // a snapshot's memory file, share=off (copy-on-write)
)

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
	// exit watcher starts (and replaced, under stateMu, by a prepared
	// machine's Start, as dir is).
	console *console
	// logCap keeps qemu.log under its cap (qemulog.go); as console.
	logCap *logCap
	// incomingFD is the descriptor of the migration stream a prepared
	// machine loads when it starts (0: none).
	incomingFD int

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
func (m *Machine) Dir() string {
	m.stateMu.Lock()
	defer m.stateMu.Unlock()
	return m.dir
}

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
		// A prepared machine's Start moves these (prepared.go).
		con, lc, dir := m.console, m.logCap, m.dir
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
		if con != nil {
			// What QEMU wrote before it exited is still to be read.
			con.close(2 * time.Second)
		}
		if lc != nil {
			lc.close()
		}
		removeRuntimeFiles(dir, m.rec.PID)
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
	if m.logCap != nil {
		m.logCap.close()
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
