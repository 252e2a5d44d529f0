// Package qemu is the reference vmm driver: QEMU's microvm machine
// (qemu-system-x86_64 -M microvm,acpi=on), controlled over QMP, under KVM
// where the host can run a stock guest and under TCG everywhere else.
//
// # Machines
//
// A machine is one QEMU process with, in this order of flags: guest RAM
// as the memory backend "mem" (see below), -cpu host (KVM) or max (TCG),
// the serial console on a unix socket that the driver copies into
// Spec.ConsoleLog (capped and rotated, see console.go), the kernel and initramfs
// (cold boots only), one virtio-blk-device per disk (virtio-mmio devices,
// which the guest finds through ACPI: the Debian cloud kernel lacks
// VIRTIO_MMIO_CMDLINE_DEVICES), and a virtio-net-device on the TAP
// descriptor of Spec.Net (-netdev tap,fd=N, passed with ExtraFiles) or,
// with Options.UserNet, on QEMU's user-mode network with envd's port 49983
// forwarded from 127.0.0.1 (tests and development hosts only), and last a
// virtio-balloon-device with free-page reporting (see Memory). QEMU runs
// in its own process group with -sandbox on (no spawning, no privilege
// changes), -no-reboot (a guest reboot or poweroff ends the process and
// closes Done) and its working directory in Spec.Dir.
//
// The command line is built by one pure function, qemuArgs (args.go), from
// a qemuCommand that launch.go fills in (opening the memory, network and
// state descriptors the process inherits); args_test.go asserts the exact
// arguments of every kind of start. The running machine is machine.go, its
// runtime record (vmm.json) record.go, and taking over or cleaning up a
// machine that outlived its agent adopt.go.
//
// QMP is our own small client (qmp.go): greeting, qmp_capabilities,
// commands with ids (so they may overlap), descriptors passed with
// SCM_RIGHTS (getfd), and asynchronous events fanned out to subscribers.
// A machine logs SHUTDOWN (with its reason) and GUEST_PANICKED, and
// migrations wait on MIGRATION events.
//
// Why not a QMP library: the Go one in use elsewhere,
// github.com/digitalocean/go-qemu/qmp (pseudo-versions only, no releases),
// runs a command as Run([]byte) without a context, one at a time, and
// streams events to one Events consumer. The driver needs commands that a
// context cancels (a migration wait must end when the caller gives up),
// that fail at once when the VMM exits (the exited channel, from a pidfd),
// overlapping commands matched by id, events fanned out to several
// subscribers (the machine's log and each migration) and typed errors
// (QMPError with QEMU's class). That is most of qmp.go; the rest, the
// greeting and qmp_capabilities, is a few lines. So the client stays ours,
// tested in qmp_test.go against a fake monitor that answers out of order,
// and in the driver's tests against QEMU.
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
//     QEMU 7.2).
//
// # Snapshots
//
// Machine.Snapshot(dir, keepRunning) stops the guest (QMP stop, which also
// drains and flushes its disks), then:
//
//  1. Saves the device state alone with xen-save-devices-state: despite
//     its name a generic command (COLO uses it too) that writes every
//     device's state and no RAM, in about a millisecond (≈ 15 KB).
//  2. Writes the guest memory into the new memory file. Shared RAM: a
//     sparse copy of the memfd (allocated ranges only, zero pages left as
//     holes). Private RAM: the mapped file (reopened through
//     /proc/<pid>/map_files, so it may have been unlinked or replaced),
//     reflinked or sparse-copied, then the pages the guest owns, which
//     /proc/<pid>/pagemap reports as anonymous (present and not
//     file-backed, or swapped), read from /proc/<pid>/mem and written over
//     it (private.go). Either way the cost is the memory in use, not the
//     RAM size. With keepRunning only what the guest could change is taken
//     while it is stopped, into RAM (a memfd: the shared memfd's pages, or
//     the private mapping's anonymous pages), and the file is written
//     after it resumed, so the guest's pause has no disk I/O in it.
//  3. With keepRunning, copies each writable disk into dir (reflink when
//     the filesystem can, else a sparse copy) while the guest is still
//     stopped, then resumes it (cont).
//  4. Fsyncs the files, renames them into place and writes snapshot.json
//     last; removes the state and memory files of the snapshot it
//     replaced in dir, if any.
//  5. Without keepRunning, quits QEMU (Done closes; CPU and RAM are
//     freed). Until then any failure resumes the guest instead: a pause
//     that fails leaves a running sandbox, not a lost one.
//
// A QEMU without xen-save-devices-state gets the fallback (also run by the
// tests): a migration with x-ignore-shared into a pipe, whose stream
// splitStream takes apart on the fly (stream.go): the pages of the guest
// RAM block go into the memory file, the rest into the state file. That
// is slower for private RAM, which x-ignore-shared does not skip: QEMU
// reads every page of the mapping (≈ 6 s for an idle 2 GiB guest here).
//
// Driver.Restore always proceeds the same way: a new QEMU with -S and
// -incoming defer (with migration.send-configuration=off for a device-only
// state, which has no configuration section; QEMU then logs "Expected
// vmdescription section, but got 0", which is harmless), the memory
// backend in the mode Spec.CopyMemory asks for, migrate-incoming from the
// state file, cont. A guest on a TAP is not announced after the load
// (migration.announce-rounds=0): announcing woke the restored guest for
// rounds of gratuitous ARP, ≈ 0.1 s of TCG work per restore, and the
// network slot holds the guest's fixed MAC as a permanent neighbour
// (package netslot), so the host's first packet needs no ARP either.
// Driver.Prepare (a vmm.Preparer) runs the first half ahead of time, at
// nice 19, and its Start the second (prepared.go): a warm pool's create
// skips QEMU's start-up. The state holds no guest page, so the guest's memory
// is whatever the backend maps, and no ROM is written into it while a
// migration is incoming. A restored machine can be snapshotted and
// restored again any number of times (the conformance suite runs 20
// pause/resume cycles, alternating the two restore modes, into one
// snapshot directory).
//
// Costs measured here (TCG, 2 cores, an idle guest has ≈ 105 MiB of
// 256 MiB or ≈ 135 MiB of 2 GiB in use; BenchmarkLifecycle): cold boot to
// envd ≈ 4–6.5 s; pause ≈ 0.15–0.35 s whatever the RAM size (≈ 4–5 s with
// 1 GiB in use, bound by writing and syncing it to disk); lazy restore ≈
// 40–85 ms to a running guest, ≈ 0.2–0.3 s to envd answering, whatever
// the RAM size and use; CopyMemory restore ≈ 0.1 s per 130 MiB in use;
// keepRunning pause seen by the guest ≈ 60–200 ms idle, ≈ 2.7 s with 1 GiB
// in use (a RAM copy on this machine). Hence: restore templates lazily
// (O(1), shared page cache); to resume a pause either mode works, and
// CopyMemory frees the pause's memory file from the machine.
//
// Snapshot directory layout (gen is a timestamp and random suffix, new
// for every snapshot, so a snapshot can replace an older one in the same
// directory, even the one the machine runs from: old files are unlinked,
// never overwritten, and mappings of them stay valid):
//
//	snapshot.json          format, state format, QEMU version, accel, CPU
//	                       model, memory, vCPUs, disks, network kind and
//	                       MAC, file names, sizes, the guest's pause
//	                       and when it stopped (its clocks stand there)
//	state-<gen>            device state (≈ 15 KB; or, with the fallback, a
//	                       migration stream without guest RAM, ≈ 60 KB)
//	memory-<gen>           guest RAM image, sparse (allocated ≈ RAM in use)
//	disk<i>-<gen>.<fmt>    disk copies (keepRunning only)
//
// Old disk copies are not removed when a snapshot is replaced (other
// machines' overlays may use them as backing files). Restore refuses a
// snapshot of another accelerator, memory size, vCPU count, disk count or
// network presence; the guest's clock stands still while it is saved, so
// whoever resumes it sets the time (envd's /init).
//
// Guest time across a snapshot. Under TCG the guest's TSC and QEMU's
// virtual clock (the LAPIC timer's) are both saved in the device state
// ("timer" section) as they were at stop, and continue from there at cont:
// the guest's CLOCK_MONOTONIC does not count the pause, pending timers
// keep what they had left and fire after it (measured: a `sleep 2` started
// just before a 3 s pause took 2.0–2.3 s of guest monotonic time; a
// `sleep 0.1` loop's only long gap is the one across the pause). On a
// loaded host (load average 10–25 on 2 cores) the same script took 2.7–3.4
// s of guest time across a pause against 2.2–2.3 s in a guest that had
// been running: a restored guest's code is translated afresh by TCG (its
// translation cache is not part of a snapshot) while it also serves the
// resume's envd calls, and that time passes on the guest's clock. The
// platform holds nothing back: the guest runs again (cont, ≈ 1.1 s into
// the resume call there) before the resume returns (≈ 1.3 s later: envd
// and /init in the restored guest), and the file was written 2.0–2.4 s
// after the resume returned (snapshot.json's "stopped" is the instant its
// clocks stand at; sandbox's TestBackgroundSleepAcrossPause logs the
// timeline). This is
// the semantics of a suspended Linux machine and of Firecracker's default
// restore. Advancing both clocks by the pause instead (rewriting the timer
// section on restore) was rejected: the guest's clocksource is the TSC
// (no kvm-clock under TCG), and Debian 12's 6.1 kernel converts TSC deltas
// with a 64-bit multiply that overflows past its max_cycles (the guest
// logs 0x1e368d1db5c here: 16.5 min at 2.1 GHz), so a longer pause would
// hand out wrong times until the next tick, and the soft-lockup detector
// would report every pause longer than its 20 s as a stuck CPU. Whatever keeps running a stopped guest sets its
// wall clock again (package sandbox does, with /init).
//
// # QEMU's own footprint
//
// What an idle machine costs the host is its VMM's proportional set size
// (PSS, as `capsule bench density` reports it: shared pages such as a
// template's memory file in the page cache count once across the clones
// that map them). Measured here for a 512 MiB guest of "minimal" (TCG):
// a clone restored from a template holds ≈ 50 MiB of which ≈ 18 MiB is
// the TCG translation cache, ≈ 12 MiB its share of the template's pages,
// ≈ 5 MiB QEMU's heap and ≈ 3 MiB its binary and libraries; a cold boot
// holds ≈ 260 MiB of which ≈ 96 MiB is the translation cache (everything
// the boot ran, translated) and most of the rest guest pages touched
// during boot and freed since (the decompressed kernel's staging, the
// initramfs).
//
// The translation cache is sized with -accel tcg,tb-size= (Options.TBSizeMB,
// DefaultTBSizeMB): QEMU 7.2's default is 1 GiB, filled as code is
// translated and never given back, so the cache of a long-lived machine
// grows with everything it ever ran. With a 32 MiB cache the cold boot
// above holds ≈ 46 MiB of cache instead of 96 (PSS ≈ 217 MiB instead of
// 260; QEMU counts ≈ 14 MiB beside the cache proper). Fitted on
// "minimal" with three workloads run twice after the boot (a shell loop of
// 20,000 iterations, a recursive listing of /bin and /sbin, md5sum of
// every binary), on a loaded 2-core host: QEMU's default took 8.3, 0.24
// and 16.6 s the first time; 32 MiB 1.1, 0.09 and 6.2 s (no slower within
// the noise); 12 MiB 13.9, 7.7 and 70 s — a cache smaller than the code
// running at once is flushed and retranslated over and over. 32 MiB is
// the default; Options.TBSizeMB changes it for heavier workloads.
//
// Free-page reporting. Every cold-booted machine has a virtio-balloon
// device with free-page-reporting=on (the last device on the command line,
// so that the others keep their virtio-mmio transports; Options.NoBalloon
// leaves it out), and the guest loads virtio_balloon from the initramfs
// (package image, GuestModules). The guest then reports the free blocks
// of its buddy allocator of at least 2 MiB (pageblock order; Debian 12's
// 6.1 kernel sets the order when the driver registers, so the kernel
// command line cannot lower it) and QEMU discards them: on the shared
// memfd a hole punch, so the pages go back to the host and stay out of
// every snapshot taken from the memfd (holes are skipped). Measured with
// `capsule bench density -idle 10` and `capsule bench vm` (512 MiB guests
// of "minimal", TCG, with and without the balloon back to back on the
// same 2-core machine at load 2.5–4): an idle cold boot's VMM holds
// ≈ 199 MiB PSS instead of ≈ 232 (bench vm: 180 instead of 216), its
// memfd ≈ 104 MiB instead of ≈ 132; a template's memory file ≈ 97 MiB
// instead of ≈ 115, and a pause's the same; clones are unchanged (≈ 42
// MiB: see the guard below). What remains in the memfd is what the guest uses
// (≈ 43 MiB: slab, page cache, processes), the memory the kernel reserved
// at boot (≈ 43 MiB of 512 are outside its MemTotal: its image, struct
// pages) as far as it was touched, and free blocks
// smaller than 2 MiB; a lower reporting order (0, set through sysfs at
// run time) gave nothing more within 15 s here.
//
// The balloon is part of the device state, so a snapshot says whether its
// machine had one — by its format: capsule-qemu-snapshot/2 (also
// "balloon": true), which an agent from before the balloon refuses by
// name — and its restores add the device exactly then; /1 snapshots, of
// machines without one, restore as before.
//
// The danger, and the guard. QEMU 7.2 discards guest RAM (free-page
// reports, and the inflate queue, which any guest can fill with the
// device present) with ram_block_discard_range, which punches a hole in
// the RAM's file whenever it has one, even one mapped MAP_PRIVATE (newer
// QEMUs only warn about it), and only then drops the mapping's pages. A
// clone restored lazily maps the template's memory file privately, so a
// guest freeing memory — or a hostile one filling the inflate queue —
// would zero pages of that file under every other clone of the template.
// Hence every VMM whose RAM is private (record "memory": "private") is
// started with a seccomp filter under which fallocate(2) fails with
// EOPNOTSUPP (guard.go: the filter lives on one locked OS thread that
// starts those VMMs, since Go has no hook between fork and exec). The
// punch fails, QEMU skips the discard and logs "ram_block_discard_range:
// Failed to fallocate"; the file is never changed, and the clone keeps
// the pages its guest reported (one line in qemu.log per failed discard:
// per 2–4 MiB block a clone frees, and as many as a hostile guest's
// balloon asks for; qemu.log is therefore capped: cut back to its first
// 256 KiB whenever it passes 4 MiB, qemulog.go). Its disks lose fallocate
// too: discards read as unsupported (ignored) and write-zeroes fall back
// to writing zeros. Shared-memory machines (boots, CopyMemory restores) are not
// filtered: their memfd is theirs alone. TestBalloonCannotPunchTemplate
// performs the attack: a template with 64 MiB of data in guest RAM, a
// clone that frees it — QEMU's log shows the failed punches, the
// template's file keeps its hash and allocation and another clone reads
// the data intact — and the same clone unguarded, on a copy of the
// template, which punches tens of MiB of holes into the copy.
//
// Where the rest of an idle machine goes (smaps, same setup): a cold boot
// holds, beside its guest RAM, the 32 MiB translation cache (full), the
// kernel image QEMU keeps for fw_cfg (≈ 14 MiB, anonymous), the mapped
// initramfs (≈ 10 MiB, shared with other cold boots of the image), QEMU's
// binary and libraries (≈ 12 MiB, mostly shared), its heap and thread
// arenas (≈ 10 MiB). A clone holds ≈ 16 MiB of translation cache (the
// code run since the restore, in 2 MiB huge pages), its share of the
// template's pages (≈ 35 MiB mapped, shared by every clone), ≈ 2 MiB of
// copy-on-write pages, QEMU's heap and arenas (≈ 7 MiB), the translation
// hash table and the softmmu TLB (≈ 4 MiB) and its libraries' private
// pages (≈ 4 MiB). A 16 MiB translation cache saved 16 MiB in a cold boot
// but made commands run again 3–9× slower (a shell loop 1.1 s instead of
// 0.4, ten short pipelines 1.9 s instead of 0.2): it stays at 32.
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
// removed when it exits), qmp.sock, console.sock, qemu.log (QEMU's stdout
// and stderr) and, by default, console.log. VMMs are not tied to the agent's life
// (Options.DieWithParent is for tests): a restarted agent calls
// Driver.Adopt on each machine directory it wants to keep (the process
// must be the recorded one: same pid and start time; the memfd is reopened
// through /proc/<pid>/fd) and Driver.Cleanup on the others, which kills
// through a pidfd and needs no working QMP. QEMU serves one QMP client
// (and one console client) at a time, so an agent that hands machines over
// without exiting calls Machine.Detach first. An adopted machine's console
// is logged again (appended, under the recorded cap); what the guest
// printed while no agent was attached is lost, by design: QEMU drops
// console output that no client reads rather than stall the guest.
package qemu
