// Package sandbox is the host-side lifecycle manager: it turns templates
// into running microVMs and back. A Manager owns, per sandbox, a directory
// in DataDir/sandboxes/<id> (state.json, the qcow2 disk overlay, the
// console log and, while paused, the memory snapshot), a network slot and a
// VMM process.
//
// Templates live in DataDir/templates/<name>: an image template is a raw
// root filesystem plus the kernel and initramfs of a guest image (cold
// boot); a snapshot template adds the memory and device state of a saved
// machine, restored lazily so that creating a sandbox from it costs about
// the same whatever its size. With Config.WarmImages the manager also
// keeps a hidden snapshot template of each image per machine shape
// ("warm-<image>-<vcpus>c<mem>m-<image id>", built in the background after
// the first cold create), so that creates of an image restore instead of
// booting (warm.go). With Config.PreparedVMMs it keeps VMMs started for
// each snapshot template and shape created from lately, each with its
// slot and disk overlay, waiting to load the snapshot: a create takes one
// and skips QEMU's start-up (prepared.go).
//
// Template chains. A snapshot template's disk is a copy of its source
// sandbox's qcow2 overlay, which backs onto the template that sandbox was
// created from: templates made of sandboxes of templates form a backing
// chain (template → parent template → … → image). A template directory
// therefore stays, after its template is deleted or replaced, for as long
// as anything reads through it: an indexed template's root filesystem or
// a sandbox's disk (running or paused), directly or down its chain
// (disk.BackingChain reads the qcow2 headers). Such directories are
// collected when the last dependant goes (template delete or replace,
// sandbox destroy) and at start-up (collectTemplateDirs), by the same rule.
// The alternative, self-contained snapshot disks, was measured on a
// base-sized root filesystem (443 MB allocated, a 20 MiB parent and a
// 20 MiB child delta): the chained copy takes 0.32 s and 21 MB per
// snapshot, a qemu-img convert of the whole chain 6.3 s and 411 MB, a
// rebase onto the image 0.89 s and 42 MB (every ancestor's delta, again
// per snapshot). Keeping parents costs only the bytes of deleted parents
// while something still uses them, so chains are kept.
//
// Replication (replicate.go): ExportTemplate streams a template as a
// manifest and data chunks, with the layers of its disk's chain that live
// in other template directories (the image excepted: the importing host
// has its own, by ID); ImportTemplate writes them into a new directory,
// checks each file's SHA-256, rebases the layers onto their new paths and
// publishes the template last, as a replica: the host's cache, whose
// least recently used entries are evicted when an import needs room,
// never one a sandbox or another template reads through.
//
// Forks (fork.go): Fork saves a running sandbox into a hidden snapshot
// template ("fork-…", its guest held only while its memory is copied),
// creates every fork from it as from any snapshot template, and deletes
// the template's name at once; its files then live exactly as long as a
// fork's disk chains onto them. Every /init (create, resume, fork) carries
// fresh entropy that envd feeds to the guest kernel's RNG, and a fork's a
// hostname of its own.
//
// Every step that creates something has a rollback, state is persisted
// durably (fsync of file and directory) before and after each transition,
// and New recovers what an agent that died left behind without deleting
// any sandbox's disk (recover.go): machines that outlived the agent are
// adopted with their network slots and keep running, paused sandboxes
// stay paused, a sandbox whose machine died is kept stopped with its disk
// (Resume boots it cold), an interrupted pause ends as the old state or
// the new one, a resume cut short before its guest ran stays paused
// (vmm.ErrNeverRan: the snapshot is still its state), and an unreadable state file is set aside with the sandbox
// in error. Access tokens and environment variables are sealed at rest
// with a key of the manager's (seal.go).
//
// Guest time. A pause stops the guest as a suspend stops a machine: its
// processes and their timers are kept, CLOCK_MONOTONIC does not count the
// pause (a timer goes on with the time it had left) and the resume's /init
// steps the wall clock to the host's (initEnvd). A snapshot template of a
// running sandbox stops its guest too (for as long as its memory takes to
// save: seconds with much memory in use), so the manager sends the source
// its /init again afterwards (resyncClock); sandboxes created from the
// template get theirs at create. Why the monotonic clock is not advanced
// by the pause instead is in package qemu's documentation (Snapshots).
// Pauses without memory (diskpause.go): PauseFilesystem syncs the guest's
// file systems and stops its machine, keeping the disk only (record
// DiskOnly); Resume boots such a sandbox cold. ResumeCold boots a paused
// sandbox cold even when it has a memory snapshot, which it drops, after
// restoring, syncing and stopping it (a memory pause does not sync: its
// disk alone may lack what the guest had not written back).
//
// Metrics: one sampler (package sandbox/metrics) samples every running
// sandbox every 0.5 s into the sandbox's three-tier history, which lives
// as long as the sandbox on this host (across pauses); Manager.Metrics
// returns it (metrics.go).
//
// Errors carry one of ErrNotFound, ErrConflict, ErrInvalid, ErrCapacity or
// ErrNoSpace (the data disk's headroom, Config.DiskHeadroomMB)
// (errors.Is) so that the API edge can map them to statuses.
package sandbox
