// Package guestinit is what envd does as the init system of a Capsule
// microVM. It is Linux-only and needs no cgo.
//
// # Boot
//
// A guest boots in two stages, both run by the same envd binary:
//
//  1. The kernel starts /init of the initramfs. InInitramfs reports that
//     case: PID 1, the marker file InitramfsMarker (/capsule-initramfs)
//     exists, and / is the kernel's ramfs/tmpfs — the filesystem check makes
//     a marker shipped by mistake in a template harmless. SwitchRoot then
//     mounts /proc, /sys and /dev, loads the modules in InitramfsModulesDir
//     with finit_module (LoadModules: dependencies from each module's
//     .modinfo come first, otherwise the order of modules.order, then by
//     name), waits for the root= device (default /dev/vda), mounts it
//     (rootfstype=, default ext4; read-write unless "ro" is given), moves
//     /proc, /sys and /dev into it, deletes the initramfs's files to free
//     their memory, moves the new root onto / and chroots into it, and
//     executes the real init (init=, default /usr/local/bin/envd), which
//     stays PID 1. The image builder must put /dev/console into the
//     initramfs, or init runs without a console.
//  2. envd, PID 1 on the real root, calls Setup, then serves, and calls
//     (*System).Shutdown on SIGTERM.
//
// # Setup
//
// Setup mounts /proc, /sys, /dev (devtmpfs), /dev/pts (a new devpts
// instance, ptmxmode=0666, group tty when /etc/group has one, with
// /dev/ptmx a symlink to pts/ptmx), /dev/shm, /run and cgroup2 on
// /sys/fs/cgroup, and creates the /dev/fd and /dev/std* links. A mount
// point already in /proc/self/mountinfo is left alone, so Setup is safe
// after SwitchRoot, and each failure is collected rather than fatal. /tmp
// stays on the root filesystem when it is a writable directory there (its
// mode is set to 1777): files there then survive in a template and do not
// use guest RAM. Only a read-only or missing /tmp gets a tmpfs.
//
// It then reads /proc/cmdline (ParseCmdline). The network comes from the
// kernel's standard parameter
//
//	ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
//
// where every field may be empty, the netmask is a dotted quad or a prefix
// length (the classful mask when empty, as in the kernel) and the device
// defaults to eth0. ConfigureNetwork applies it through netlink (no
// shell-outs): lo up, the device up, the address, and a default route via
// the gateway (on-link when the gateway is outside the subnet). DHCP-style
// autoconf is not supported. /etc/resolv.conf is written from dns0/dns1, or
// from capsule.dns=a,b when given; the hostname (capsule.hostname=, else
// the ip= field) is set in the kernel, /etc/hostname and /etc/hosts, where
// the lines envd writes end in "# capsule" and are replaced on the next
// boot; without either, the kernel's hostname is /etc/hostname's (as a
// distribution's init sets it; else it would stay "(none)"). Files are replaced atomically (temporary file and rename), which
// also replaces a resolv.conf symlink instead of writing through it.
// Every capsule.<key>=<value> parameter is available as
// (*System).Param(key); envd uses sandbox_id and template_id.
//
// # Reaping orphans without stealing exit statuses
//
// As PID 1, envd inherits every orphaned process and must wait for it, or
// zombies pile up. But envd also starts processes with os/exec (and
// creack/pty, which uses os/exec) and needs their exit statuses from
// exec.Cmd.Wait. A plain wait4(-1) loop would take those statuses away:
// Wait would then fail with ECHILD and the process's exit code would be
// lost. The Reaper avoids that in two layers:
//
//   - Ownership registry. The process manager starts every child through
//     (*Reaper).Start(spawn) — spawn calls cmd.Start and returns the pid —
//     and calls (*Reaper).Done(pid) after cmd.Wait returns. Start holds a
//     read lock across fork and registration, and a reap pass holds the
//     write lock, so no pass can see a child between its fork and its
//     registration, even if it exits at once. Registrations are counted,
//     so a recycled pid registered again before the old Done is safe.
//     These two methods implement envd.ChildTracker; StartCmd is a
//     shortcut for a bare exec.Cmd.
//   - pidfd check. Go's os.StartProcess (Go 1.23 and later, on kernels with
//     pidfd) creates every child with CLONE_PIDFD and holds that pidfd until
//     Wait has reaped the child. A pass reads the pids of this process's
//     pidfds from /proc/self/fdinfo and leaves those alone too, so an
//     os/exec child started without Start (by a library, say) is still
//     safe.
//
// A pass peeks with waitid(P_ALL, WEXITED|WNOHANG|WNOWAIT), which reports a
// zombie without reaping it, and reaps it with wait4(pid) only when it is
// not owned by either test. Since waitid keeps reporting the same first
// zombie, an owned zombie whose Wait has not run yet would hide the ones
// behind it; the pass then scans /proc/<pid>/stat for zombies whose parent
// is this process and reaps the unowned ones by pid. Passes run on SIGCHLD,
// after every Done, and every 10 seconds as a safety net.
//
// Rejected alternatives: a separate tiny init that forks envd (tini style)
// would keep envd's children out of PID 1's way, but adds a process, signal
// forwarding, and a second binary mode to every snapshot; a
// PR_SET_CHILD_SUBREAPER-only design does not apply to PID 1, which reaps
// by definition. (Tests use PR_SET_CHILD_SUBREAPER to make orphans
// re-parent to the test process and so exercise the same code.)
//
// # Shutdown
//
// (*System).Shutdown sends SIGTERM to every process (kill(-1)), reaps for
// up to 3 s, sends SIGKILL and reaps for up to 2 s more (owned children
// included: nobody waits for them any more), syncs, unmounts every mount
// point but / in reverse mount order (lazily when busy), remounts /
// read-only, syncs again and powers off with reboot(2) (falling back to a
// restart, then parking forever: PID 1 must not exit). Every system-wide
// step is guarded: the real operations can only be constructed when
// os.Getpid() == 1, and kill(-1) and reboot check again themselves, so a
// test or a developer running envd by hand can never signal the host's
// processes or power it off; Shutdown then just stops the reaper.
//
// # Testing
//
// Tests cover the parsers and renderers, module ordering, the reaper with
// real children (via PR_SET_CHILD_SUBREAPER), the mounts inside a child
// process in its own private mount namespace, and the netlink
// configuration inside a fresh network namespace. Those needing root skip
// without it unless CAPSULE_TEST_STRICT=1. Nothing touches the host's
// network, mounts, hostname or /etc.
package guestinit
