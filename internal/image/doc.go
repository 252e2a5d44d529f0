// Package image builds and stores the guest images sandboxes boot: a
// kernel, an initramfs whose init is envd, and a raw ext4 root filesystem
// per template. The host side only; the guest side of the boot is package
// guestinit.
//
// # Artifacts and keys
//
// Each artifact is named by a key, a hash of everything it is built from
// (BuilderVersion included), and is built only when the store has no
// artifact of that key:
//
//   - kernel: the bzImage and the kernel modules the guest needs
//     (GuestModules: virtio transport, block, net and balloon — whose
//     free-page reporting returns the pages the guest frees to the host,
//     see package qemu — and their dependencies, read from each module's ELF
//     .modinfo, with a modules.order in dependency order). Key: the apt
//     package name and version (resolved with apt-cache, remembered while
//     the apt lists are unchanged), or the hash of a given .deb or bzImage
//     file.
//   - initrd: an uncompressed newc cpio archive (written by this package,
//     no cpio tool) with envd as /init, the modules in /lib/modules with
//     modules.order, /dev/console (5,1) and the marker /capsule-initramfs.
//     Key: kernel key + envd hash.
//   - rootfs: a sparse raw ext4 image made with mkfs.ext4 -d from a
//     staging tree (nothing is mounted), with envd at GuestEnvdPath. Key:
//     template, size, envd hash and the template's own inputs: for
//     "minimal" the static busybox binary; for "base" the debootstrap
//     suite, mirror and package list.
//
// An image is a record binding three artifacts to a template name; its ID
// is the hash of the three keys. Changing envd therefore rebuilds the
// initramfs and the rootfs but reuses the kernel, and the expensive
// debootstrap of "base" is cached as a tarball keyed by its own inputs, so
// a new envd costs only the tar extraction and mkfs.
//
// # Templates
//
//   - minimal: busybox-static and its applet links, envd, root and user
//     (uid/gid 1000, /home/user, /bin/sh) in /etc/passwd, group and
//     shadow, /etc/hostname and hosts, /tmp 1777, empty /proc /sys /dev
//     /run. 128 MiB by default.
//   - base: Debian bookworm (debootstrap --variant=minbase) with
//     BasePackages, user "user" (uid 1000, /bin/bash, member of sudo,
//     NOPASSWD in /etc/sudoers.d/user), /home/user from /etc/skel, /code
//     owned by user, /usr/local writable by all, envd; no mcp-gateway —
//     what E2B's SDK tests expect of "base" (docs/e2b-compat.md §10). 2 GiB
//     by default.
//
// The size is the filesystem's size, so the free space inside is real;
// the file is sparse (mke2fs marks the inode tables zeroed, so the guest
// kernel does not write them lazily into every overlay).
//
// # Store layout
//
// Open(dataDir) uses dataDir/images (dataDir defaults to DefaultDataDir):
//
//	lock                      flock(2) held by Build and Remove
//	kernel/<key>/vmlinuz, kernel.json, modules/<name>.ko, modules/modules.order
//	initrd/<key>/initrd.img
//	rootfs/<key>/rootfs.ext4
//	image/<id>.json           image records (artifact keys, template, size)
//	cache/deb/*.deb           downloaded kernel packages
//	cache/apt/<key>.json      apt-cache resolutions, keyed by the apt state
//	cache/debootstrap/<key>.tar  debootstrap results (numeric owners, xattrs)
//	tmp/                      private build directories
//
// Artifacts are built in tmp/ and published by rename(2); records and
// cache entries are written to temporary files and renamed, so readers
// (Get, List) need no lock and never see a partial file. Builders and
// removers serialize on the lock file; the holder clears tmp/, so a
// crashed build leaves nothing behind for long. Remove deletes records and
// then every artifact that no remaining record references; caches are
// kept. Artifacts are never modified once published: sandboxes may point
// qcow2 overlays at a rootfs (package disk), and the caller must not
// remove an image that a sandbox still uses.
//
// # Requirements
//
// Building a rootfs needs root (files owned by uid 1000, debootstrap) and
// mkfs.ext4 (e2fsprogs); the minimal template needs busybox-static, the
// base template debootstrap and network access to the mirror; the apt
// kernel needs apt-get and dpkg-deb. debootstrap runs in a private mount
// namespace, so the /proc it mounts in its tree cannot outlive it, and
// staging trees are never deleted while anything is mounted below them.
package image
