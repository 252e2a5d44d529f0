// Package disk manages the per-sandbox disks of the QEMU driver: a qcow2
// overlay on a template's raw root filesystem image (see package image).
//
// CreateOverlay makes the overlay with
//
//	qemu-img create -f qcow2 -F raw -b <absolute base> <overlay> [size]
//
// which writes only qcow2 metadata (a few hundred KiB), so creating a
// sandbox's disk costs the same whatever the template's size. Overlays
// does the same without a qemu-img process per disk: it keeps the bytes
// of the first overlay made of each base and size (an overlay holds
// nothing of its own path or of the time) and writes copies of them. The guest's
// writes land in the overlay; the base image is only read and must never
// change while overlays use it (the image store never rewrites an
// artifact). An overlay may be given a larger virtual size than its base;
// the guest then has to grow its filesystem itself (resize2fs).
//
// Flatten turns an overlay (with its base) into a new standalone raw image
// with qemu-img convert, which skips zero blocks, so the result is sparse:
// that is how a sandbox's disk becomes a new template. Inspect reports
// what qemu-img info says of an image; Remove deletes a disk file.
//
// Every step writes to a temporary file next to its destination and
// renames it into place without replacing anything, so a failure or a
// cancelled context leaves no partial disk behind (the rollback removes
// the temporary file), and an existing disk is never overwritten. An
// overlay or image being written by a running VM must not be flattened:
// pause the VM first (QEMU's image locking makes qemu-img fail otherwise).
//
// Errors wrap the underlying cause (%w): errors.Is(err, fs.ErrExist) holds
// when the destination exists, fs.ErrNotExist when a source is missing.
package disk
