// Package qemu is the reference vmm driver: QEMU's microvm machine
// (qemu-system-x86_64 -M microvm,acpi=on), controlled over QMP, under KVM
// where the host can run a stock guest and under TCG everywhere else.
//
// # Machines
//
// A machine is one QEMU process with, in this order of flags: guest RAM
// as the memory backend "mem" (see below), -cpu host (KVM) or max (TCG),
// the serial console appended to Spec.ConsoleLog, the kernel and initramfs
// (cold boots only), one virtio-blk-device per disk (virtio-mmio devices,
// which the guest finds through ACPI: the Debian cloud kernel lacks
// VIRTIO_MMIO_CMDLINE_DEVICES), and a virtio-net-device on the TAP
// descriptor of Spec.Net (-netdev tap,fd=N, passed with ExtraFiles) or,
// with Options.UserNet, on QEMU's user-mode network with envd's port 49983
// forwarded from 127.0.0.1 (tests and development hosts only). QEMU runs
// in its own process group with -sandbox on (no spawning, no privilege
// changes), -no-reboot (a guest reboot or poweroff ends the process and
// closes Done) and its working directory in Spec.Dir.
//
// QMP is our own small client (qmp.go): greeting, qmp_capabilities,
// commands with ids (so they may overlap), descriptors passed with
// SCM_RIGHTS (getfd), and asynchronous events fanned out to subscribers.
// A machine logs SHUTDOWN (with its reason) and GUEST_PANICKED, and
// migrations wait on MIGRATION events.
//
// # Memory model
//
// Every machine's RAM is a memory-backend-file, in one of two modes:
//
//   - shared: a memfd created by the driver (memfd_create, sized to the
//     guest), handed to QEMU as mem-path=/dev/fd/N with share=on. Boots use
//     it, and so do restores with Spec.CopyMemory (the memfd is filled from
//     the snapshot first). Because the RAM is shared, the migration
//     capability x-ignore-shared leaves it out of the migration stream, and
//     the driver, which holds the memfd, copies it itself. A memfd is no
//     file: nothing is left in /dev/shm or anywhere when an agent or QEMU
//     dies, and its pages go when the last descriptor does.
//   - private: the snapshot's memory file with share=off, that is a
//     MAP_PRIVATE copy-on-write mapping. Restores use it by default: QEMU
//     starts at once, reads only the pages the guest touches, and every
//     machine restored from one snapshot shares its page cache; writes go
//     to anonymous pages of that machine. The snapshot file is never
//     written (not readonly=on, which makes the guest's RAM read-only on
//     QEMU 7.2). x-ignore-shared does not apply to private RAM, so a
//     snapshot of such a machine carries all its RAM in the migration
//     stream; see below for how that still yields a lazy snapshot.
//
// # Snapshots
//
// Machine.Snapshot(dir, keepRunning) does, with the guest stopped (QMP
// stop) from the first step to the resume:
//
//  1. migrate, with x-ignore-shared and no bandwidth limit, into a pipe
//     whose reading end goes through splitStream (stream.go): pages of the
//     "mem" RAM block are written into the new memory file at their
//     offsets (zero pages stay holes), everything else (the RAM block list,
//     the few pages of ROM blocks, all device state) into the new state
//     file. For shared RAM the stream has no guest page and the driver
//     copies the memfd into the memory file meanwhile, reading only its
//     allocated ranges and writing only non-zero pages.
//  2. With keepRunning, copy each writable disk into dir (reflink when the
//     filesystem can, else a sparse copy): the migration left the disks
//     flushed and inactive, so the copies match the memory. Then cont.
//  3. fsync the files, rename them into place, write snapshot.json last.
//  4. Without keepRunning, quit (Done closes; CPU and RAM are freed). The
//     snapshot then lists the machine's own disk files, untouched since.
//
// Every snapshot thus has one layout, whatever the machine's memory mode,
// and Driver.Restore always restores it the same way: a new QEMU with
// -incoming defer, the memory backend in the mode Spec.CopyMemory asks
// for, x-ignore-shared, migrate-incoming from the state file (the stream
// holds no guest page, so the memory is whatever the backend maps), cont.
// A restored machine can be snapshotted again and restored again any
// number of times (the conformance suite runs 20 pause/resume cycles,
// alternating the two restore modes, into one snapshot directory).
//
// Costs (measured here, TCG, 2 cores, guests of 256 MiB with about 115
// MiB in use):
// pausing a machine with shared RAM ≈ 0.15–0.3 s (tiny state, memfd
// copy, fsync); pausing one with private RAM ≈ 0.4–0.7 s (QEMU streams
// its RAM at ≈ 250–500 MB/s); a lazy restore ≈ 45–85 ms to a running
// guest whatever the RAM size; a CopyMemory restore ≈ 100 ms per 115 MiB
// in use. Hence the advice on Spec.CopyMemory: lazy for templates (O(1),
// shared page cache), copy to resume a pause (the next pause is cheap).
//
// Snapshot directory layout (gen is a timestamp and random suffix, new
// for every snapshot, so a snapshot can replace an older one in the same
// directory, even the one the machine runs from: old files are unlinked,
// never overwritten, and mappings of them stay valid):
//
//	snapshot.json          format, QEMU version, accel, CPU model, memory,
//	                       vCPUs, disks, network kind and MAC, file names
//	state-<gen>            QEMU migration stream without guest RAM (≈ 60 KB)
//	memory-<gen>           guest RAM image, sparse (allocated ≈ RAM in use)
//	disk<i>-<gen>.<fmt>    disk copies (keepRunning only)
//
// Old disk copies are not removed when a snapshot is replaced (other
// machines' overlays may use them as backing files). Restore refuses a
// snapshot of another accelerator, memory size, vCPU count, disk count or
// network presence; the guest's clock stands still while it is saved, so
// whoever resumes it sets the time (envd's /init).
//
// # Accelerator and deterministic boots
//
// New picks the accelerator (DetectAccel): CAPSULE_ACCEL, else TCG
// without a usable /dev/kvm or with /sys/module/kvm_pvm (PVM-backed KVM,
// where stock guest kernels hang after "Probing EDD"), else a probe: the
// kernel is booted under KVM with no initramfs and root=/dev/capsule-
// accel-probe, runs its whole initialization, panics for want of a root
// and, with panic=-1 and -no-reboot, ends QEMU; "Kernel panic" on the
// console within Options.ProbeTimeout means KVM works. Results are cached
// per process. Under TCG the kernel command line pins the timer (see
// timerCmdline): tsc_early_khz=<host TSC kHz, measured with RDTSC>,
// tsc=reliable, no_timer_check. Boots then no longer depend on how fast
// the emulation runs.
//
// # Runtime directory and agent restarts
//
// Spec.Dir holds vmm.json (pid, process start time, arguments, memory
// mode and memfd number, devices; written atomically when QEMU starts,
// removed when it exits), qmp.sock, qemu.log (QEMU's stdout and stderr)
// and, by default, console.log. VMMs are not tied to the agent's life
// (Options.DieWithParent is for tests): a restarted agent calls
// Driver.Adopt on each machine directory it wants to keep (the process
// must be the recorded one: same pid and start time; the memfd is reopened
// through /proc/<pid>/fd) and Cleanup on the others, which kills through
// a pidfd and needs no working QMP.
package qemu
