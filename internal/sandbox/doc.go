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
// before and after each transition, and New recovers what an agent that
// died left behind: paused sandboxes are adopted, VMMs whose sandbox
// cannot be resumed are killed and their resources released.
//
// Errors carry one of ErrNotFound, ErrConflict, ErrInvalid or ErrCapacity
// (errors.Is) so that the API edge can map them to statuses.
package sandbox
