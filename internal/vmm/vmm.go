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
)

// Accel names how guest code executes.
type Accel string

const (
	AccelKVM Accel = "kvm" // hardware virtualization
	AccelTCG Accel = "tcg" // software emulation (QEMU only)
)

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
	ConsoleLog string
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

// Snapshot is a saved machine on disk: memory and device state. Disks are
// not part of it; the caller saves them alongside.
type Snapshot struct {
	// Dir holds the snapshot's files (driver-specific layout).
	Dir string
	// MemoryMB and VCPUs are those of the saved machine; a restore must
	// use the same.
	MemoryMB, VCPUs int
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
	// not read the whole memory.
	Restore(ctx context.Context, spec Spec, snap Snapshot) (Machine, error)
}

// Machine is a running VMM process.
type Machine interface {
	// PID is the VMM process (for metrics and cleanup).
	PID() int
	// Done is closed when the VMM process has exited.
	Done() <-chan struct{}
	// Snapshot saves memory and device state into dir (created if needed).
	// With keepRunning the guest resumes afterwards (a snapshot template of
	// a live sandbox); without, the VMM exits (pause: CPU and RAM freed).
	Snapshot(ctx context.Context, dir string, keepRunning bool) (Snapshot, error)
	// Kill stops the VMM at once. Killing an exited machine is a no-op.
	Kill(ctx context.Context) error
}

// ErrExited is returned for operations on a machine whose VMM has exited.
var ErrExited = errors.New("vmm: machine has exited")
