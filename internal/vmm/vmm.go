// Package vmm is the boundary between the host sandbox manager and a
// virtual machine monitor. A Driver boots and restores Machines; a Machine
// is one running VMM process. Drivers: qemu (QEMU -M microvm, KVM or TCG),
// firecracker next. Every driver must pass the conformance suite in
// package vmmtest.
//
// The guest contract shared by all drivers: the kernel boots the Capsule
// initramfs (envd as /init), disk 0 is the root filesystem (/dev/vda), the
// network attachment is eth0, configured from the ip= kernel parameter, and
// envd listens on TCP 49983.
package vmm

import (
	"context"
	"errors"
	"os"
	"time"
)

// Accel names how guest code executes.
type Accel string

const (
	AccelKVM Accel = "kvm" // hardware virtualization
	AccelTCG Accel = "tcg" // software emulation (QEMU only)
)

// DefaultConsoleLogMax is the cap of a console log (Spec.ConsoleLogMax).
const DefaultConsoleLogMax = 4 << 20

// Spec describes a machine to boot or restore.
type Spec struct {
	// ID names the machine in logs and process titles.
	ID string
	// Dir is the machine's private runtime directory (control sockets,
	// console log). The driver creates files only inside it.
	Dir string

	Kernel  string // bzImage (QEMU) or vmlinux (Firecracker)
	Initrd  string
	Cmdline string // appended to the driver's own parameters

	VCPUs    int
	MemoryMB int

	Disks []Disk
	Net   *NetAttachment // nil: no network device

	// ConsoleLog receives the serial console; empty means Dir/console.log.
	// It never grows past ConsoleLogMax bytes: the driver then renames it
	// to ConsoleLog+".1" (replacing the previous one) and starts a new
	// one, so a guest that prints without end takes at most twice the cap
	// of disk. 0 means DefaultConsoleLogMax.
	ConsoleLog    string
	ConsoleLogMax int64

	// CopyMemory applies to Restore only. By default a restored machine
	// maps the snapshot's memory lazily and copy-on-write, shared with
	// every other machine restored from the same snapshot: O(1) to start,
	// the right choice for snapshot templates. With CopyMemory the machine
	// gets its own copy instead: the restore reads all the memory the
	// snapshot uses, and the machine no longer reads the snapshot's memory
	// file (whose disk space a lazily restored machine keeps in use even
	// after the file is deleted). A reasonable choice to resume a pause
	// whose snapshot is deleted next. It is a hint; a driver may ignore
	// it.
	CopyMemory bool
}

// Disk is a block device, in order: the first is /dev/vda.
type Disk struct {
	Path     string
	Format   string // "raw" or "qcow2"
	ReadOnly bool
}

// NetAttachment connects the guest's eth0 to an already-configured TAP
// device (see package netslot).
type NetAttachment struct {
	// Tap is an open TAP file descriptor; the driver passes it to the VMM.
	// The caller keeps ownership and closes it after the machine started.
	Tap *os.File
	MAC string
}

// Snapshot is a saved machine on disk: memory and device state, and where
// the disk contents that go with them are.
type Snapshot struct {
	// Dir holds the snapshot's files (driver-specific layout).
	Dir string
	// MemoryMB and VCPUs are those of the saved machine; a restore must
	// use the same.
	MemoryMB, VCPUs int
	// Disks are the machine's disks as they were when its memory was
	// saved, in Spec order. Without keepRunning they are the machine's own
	// disk files, left untouched once the VMM exited. With keepRunning the
	// guest writes on, so the driver copies each writable disk into Dir
	// while the guest is paused (a qcow2 overlay keeps its backing file
	// reference, which must be an absolute path); read-only disks are
	// listed as they are. A restore needs disks with these contents: the
	// files themselves (resuming a pause in place) or copy-on-write
	// overlays on them (one per restored machine, for templates).
	Disks []Disk
	// Paused is how long the guest was stopped while the snapshot was
	// taken (with keepRunning, the hold its workload saw); zero when the
	// snapshot was read from disk rather than taken.
	Paused time.Duration
}

// Driver starts machines.
type Driver interface {
	Name() string
	Accel() Accel
	// Boot cold-boots a machine.
	Boot(ctx context.Context, spec Spec) (Machine, error)
	// Restore starts a new VMM process from snap with spec's runtime
	// resources (directory, disks, network); the guest resumes where it
	// was saved. Restoring the same snapshot many times yields independent
	// machines (snapshot templates); the snapshot files are not modified
	// and guest memory is mapped lazily (copy-on-write), so a restore does
	// not read the whole memory (unless spec.CopyMemory). Spec's kernel
	// and initrd are ignored; MemoryMB and VCPUs may be 0 (the snapshot's)
	// or must match it, and the disks and network must match the saved
	// machine's devices. The snapshot's files may be deleted while machines
	// restored from them run, but never modified.
	Restore(ctx context.Context, spec Spec, snap Snapshot) (Machine, error)
	// Cleanup kills the VMM that a previous process of the agent started
	// with runtime directory dir, if it still runs, and removes the
	// driver's files there. It is a no-op when nothing runs.
	Cleanup(ctx context.Context, dir string) error
}

// Adopter is a Driver whose machines outlive the process that started
// them (an agent restart): AdoptMachine takes over the machine that runs
// in runtime directory dir, as recorded there when it was started. A
// guest that an interrupted Snapshot left stopped runs again. It fails
// (wrapping ErrExited when the VMM is gone) when nothing can be adopted;
// Cleanup then removes what is left.
type Adopter interface {
	AdoptMachine(ctx context.Context, dir string) (Machine, error)
	// SnapshotComplete reports whether dir holds a complete snapshot (a
	// Snapshot interrupted by a crash leaves an incomplete one, which a
	// restore would refuse).
	SnapshotComplete(dir string) bool
}

// Preparer is a Driver that can start a restore's VMM ahead of time:
// Prepare does everything Restore does (the process, its devices, the
// snapshot's memory mapped) except load the snapshot's device state and
// run the guest, and Prepared.Start does that later. A warm pool of
// prepared machines takes the VMM's start-up (tens of milliseconds of CPU
// and a process exec) off the create path.
type Preparer interface {
	Prepare(ctx context.Context, spec Spec, snap Snapshot) (Prepared, error)
}

// Prepared is a VMM started for a restore whose guest has not run yet.
type Prepared interface {
	// Start loads the snapshot and runs the guest. spec must describe the
	// prepared machine, except for ID, Dir, ConsoleLog and the disks'
	// paths: the runtime directory is moved to spec.Dir (which must not
	// exist, on the same filesystem), the console goes to spec.ConsoleLog,
	// and the disks are recorded at their new paths (the caller renamed
	// the files; the VMM keeps them open). It fails with ErrStale when the
	// snapshot in snap.Dir was replaced since Prepare. When Start fails
	// the VMM is gone.
	Start(ctx context.Context, spec Spec) (Machine, error)
	// Discard stops the VMM. Discarding twice, or after Start, does
	// nothing.
	Discard(ctx context.Context) error
	// Done is closed when the VMM has exited.
	Done() <-chan struct{}
	// PID is the VMM process.
	PID() int
}

// ErrStale is returned by Prepared.Start when the snapshot it was prepared
// from has been replaced.
var ErrStale = errors.New("vmm: the prepared snapshot was replaced")

// Machine is a running VMM process.
type Machine interface {
	// PID is the VMM process (for metrics and cleanup).
	PID() int
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
	// Snapshot saves memory and device state into dir (created if needed;
	// files there are replaced atomically, so dir may be the snapshot this
	// machine was restored from). With keepRunning the guest resumes
	// afterwards (a snapshot template of a live sandbox); without, the VMM
	// exits (pause: CPU and RAM freed). The guest's clocks do not advance
	// while it is saved: whoever resumes it sets the time (envd's /init),
	// and so does, with keepRunning, whoever keeps using the machine (its
	// wall clock is behind by the pause).
	Snapshot(ctx context.Context, dir string, keepRunning bool) (Snapshot, error)
	// Kill stops the VMM at once. Killing an exited machine is a no-op.
	Kill(ctx context.Context) error
}

// ErrExited is returned for operations on a machine whose VMM has exited.
var ErrExited = errors.New("vmm: machine has exited")

// ErrNeverRan is returned by an adoption of a machine whose guest never
// ran: its restore from a snapshot was interrupted before the guest was
// continued, so the snapshot it was restored from is still its state.
var ErrNeverRan = errors.New("vmm: the guest never ran (its restore was interrupted)")
