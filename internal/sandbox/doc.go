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
// booting (warm.go).
//
// Every step that creates something has a rollback, state is persisted
// durably (fsync of file and directory) before and after each transition,
// and New recovers what an agent that died left behind without deleting
// any sandbox's disk (recover.go): machines that outlived the agent are
// adopted with their network slots and keep running, paused sandboxes
// stay paused, a sandbox whose machine died is kept stopped with its disk
// (Resume boots it cold), an interrupted pause ends as the old state or
// the new one, and an unreadable state file is set aside with the sandbox
// in error. Access tokens and environment variables are sealed at rest
// with a key of the manager's (seal.go).
//
// Errors carry one of ErrNotFound, ErrConflict, ErrInvalid or ErrCapacity
// (errors.Is) so that the API edge can map them to statuses.
package sandbox
