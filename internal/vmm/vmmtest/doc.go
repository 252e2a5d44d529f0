// Package vmmtest is the conformance suite that every vmm.Driver must
// pass, in the way containerd runs one test suite against every
// snapshotter: Run(t, driver, guest).
//
// A Guest names the kernel, initramfs and root filesystem to boot (the
// Capsule images of package image; MinimalImage builds the "minimal" one
// with an envd from this tree) and says how the host reaches envd in a
// machine (for QEMU in tests: user-mode networking with a forwarded
// port; the suite itself never touches network slots). Every machine
// boots from its own copy-on-write overlay of the root filesystem
// (package disk's qcow2 overlays unless Guest.Overlay says otherwise).
//
// The tests, each with its own machines:
//
//   - KillWhileBooting: Kill right after Boot; Done closes, the process is
//     gone, a second Kill is a no-op, Snapshot reports vmm.ErrExited.
//   - Cleanup: Driver.Cleanup of a machine's directory kills it; of a
//     directory where nothing runs, it does nothing.
//   - BootRunPauseResumePoweroff: cold boot to envd's /health; a process
//     run through envd's process service (stdout, stderr, exit code); a
//     file written and read back through /files; then Guest.PauseCycles
//     pause/resume cycles (Snapshot without keepRunning, Restore of the
//     snapshot with its own disks, alternately lazily and with
//     CopyMemory, always into the same snapshot directory), after each of
//     which a counter process whose count lives only in its memory is
//     still there and did not start over, and files in guest RAM (tmpfs)
//     and on disk are intact; finally a poweroff from inside closes Done.
//   - SnapshotTemplate: Snapshot with keepRunning of a running machine,
//     which goes on; three restores from it, each on its own overlay of
//     the snapshot's disk, see the saved memory and files (and nothing the
//     source did afterwards) and diverge independently; a restored machine
//     is snapshotted and restored in turn; the snapshot's files are
//     byte-for-byte unchanged at the end.
//
// Each test keeps all its files in its t.TempDir() and checks at the end
// that no VMM it started still runs, that no process refers to its
// directory, and that nothing appeared in /dev/shm. The suite logs the
// timings it sees (cold boot, pause, resume, template restore).
package vmmtest
