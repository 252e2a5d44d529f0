package guestinit

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mountSpec is one filesystem that init mode mounts.
type mountSpec struct {
	Target string // absolute, relative to the root being set up
	FSType string
	Source string
	Flags  uintptr
	Data   string
	Mode   os.FileMode // of the mount point when it must be created
}

// baseMounts is the filesystem layout of a running guest, parents first.
// ttyGID is the gid given to pseudo-terminals (-1: leave devpts' default).
func baseMounts(ttyGID int) []mountSpec {
	const nosuidNodevNoexec = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC
	pts := "newinstance,ptmxmode=0666,mode=0620"
	if ttyGID >= 0 {
		pts += ",gid=" + strconv.Itoa(ttyGID)
	}
	return []mountSpec{
		{Target: "/proc", FSType: "proc", Source: "proc", Flags: nosuidNodevNoexec, Mode: 0o555},
		{Target: "/sys", FSType: "sysfs", Source: "sysfs", Flags: nosuidNodevNoexec, Mode: 0o555},
		{Target: "/dev", FSType: "devtmpfs", Source: "devtmpfs", Flags: unix.MS_NOSUID, Data: "mode=0755", Mode: 0o755},
		{Target: "/dev/pts", FSType: "devpts", Source: "devpts", Flags: unix.MS_NOSUID | unix.MS_NOEXEC, Data: pts, Mode: 0o755},
		{Target: "/dev/shm", FSType: "tmpfs", Source: "shm", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=1777", Mode: 0o1777},
		{Target: "/run", FSType: "tmpfs", Source: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=0755", Mode: 0o755},
		{Target: "/sys/fs/cgroup", FSType: "cgroup2", Source: "cgroup2", Flags: nosuidNodevNoexec, Mode: 0o555},
	}
}

// tmpMount is mounted on /tmp only when the root filesystem's /tmp is not
// a writable directory (see ensureTmp).
var tmpMount = mountSpec{Target: "/tmp", FSType: "tmpfs", Source: "tmpfs", Flags: unix.MS_NOSUID | unix.MS_NODEV, Data: "mode=1777", Mode: 0o1777}

// mounter performs the mounts of init mode under root. Its mount function
// is a field so that tests can run it inside a private mount namespace
// with fake filesystem types.
type mounter struct {
	log     *slog.Logger
	root    string                        // "/" in a guest
	mount   func(mountSpec, string) error // performs one mount at the given path
	mounted map[string]bool               // mount points already present
	done    []string                      // what this mounter mounted, in order
}

func newMounter(log *slog.Logger, root string) *mounter {
	m := &mounter{log: log, root: root, mount: sysMount, mounted: map[string]bool{"/": true}}
	// Without /proc there is no table to read yet: a fresh boot, where
	// nothing but / is mounted.
	if ms, err := readMountInfo(); err == nil {
		m.mounted = mountedSet(ms)
	}
	return m
}

func sysMount(s mountSpec, target string) error {
	return unix.Mount(s.Source, target, s.FSType, s.Flags, s.Data)
}

// path is the absolute path of target under the mounter's root.
func (m *mounter) path(target string) string {
	return filepath.Join(m.root, target)
}

// ensure mounts s unless its mount point is already mounted. It creates the
// mount point when missing.
func (m *mounter) ensure(s mountSpec) error {
	p := m.path(s.Target)
	if m.mounted[p] {
		m.log.Debug("already mounted", "target", p)
		return nil
	}
	if err := os.MkdirAll(p, s.Mode.Perm()); err != nil {
		return fmt.Errorf("mount %s on %s: %w", s.FSType, p, err)
	}
	if err := m.mount(s, p); err != nil {
		return fmt.Errorf("mount %s on %s: %w", s.FSType, p, err)
	}
	m.mounted[p] = true
	m.done = append(m.done, p)
	m.log.Debug("mounted", "target", p, "fstype", s.FSType)
	return nil
}

// mountAll mounts the base layout. Every failure is collected; later mounts
// are still attempted (a missing cgroup2 must not cost the guest its /tmp).
func (m *mounter) mountAll() error {
	var errs []error
	ttyGID := -1
	if gid, err := lookupGroupID(m.path("/etc/group"), "tty"); err == nil {
		ttyGID = gid
	}
	for _, s := range baseMounts(ttyGID) {
		if err := m.ensure(s); err != nil {
			errs = append(errs, err)
		}
	}
	if err := m.devLinks(); err != nil {
		errs = append(errs, err)
	}
	if err := m.ensureTmp(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// devLinks creates the /dev symlinks that devtmpfs lacks: ptmx pointing at
// the devpts instance, and fd, stdin, stdout, stderr (bash process
// substitution needs /dev/fd). Existing correct links are left alone.
func (m *mounter) devLinks() error {
	if !m.mounted[m.path("/dev")] {
		return nil
	}
	links := [][2]string{
		{"/dev/fd", "/proc/self/fd"},
		{"/dev/stdin", "/proc/self/fd/0"},
		{"/dev/stdout", "/proc/self/fd/1"},
		{"/dev/stderr", "/proc/self/fd/2"},
	}
	if m.mounted[m.path("/dev/pts")] {
		links = append(links, [2]string{"/dev/ptmx", "pts/ptmx"})
	}
	var errs []error
	for _, l := range links {
		if err := replaceWithSymlink(l[1], m.path(l[0])); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// replaceWithSymlink makes path a symlink to target, replacing whatever
// non-directory is there (devtmpfs provides /dev/ptmx as a device node).
func replaceWithSymlink(target, path string) error {
	if cur, err := os.Readlink(path); err == nil && cur == target {
		return nil
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.IsDir() {
			return fmt.Errorf("symlink %s: a directory is in the way", path)
		}
		if err := os.Remove(path); err != nil {
			return fmt.Errorf("symlink %s: %w", path, err)
		}
	}
	if err := os.Symlink(target, path); err != nil {
		return fmt.Errorf("symlink %s: %w", path, err)
	}
	return nil
}

// ensureTmp keeps the root filesystem's /tmp when it is a writable
// directory (so that large files do not eat guest RAM and files a template
// left there survive), setting its mode to 1777; otherwise it mounts a
// tmpfs there.
func (m *mounter) ensureTmp() error {
	p := m.path("/tmp")
	if m.mounted[p] {
		return nil
	}
	if fi, err := os.Lstat(p); err == nil && fi.IsDir() {
		if f, err := os.CreateTemp(p, ".envd-probe-*"); err == nil {
			name := f.Name()
			f.Close()
			os.Remove(name)
			if fi.Mode()&(fs.ModePerm|fs.ModeSticky) != fs.ModePerm|fs.ModeSticky {
				if err := os.Chmod(p, 0o777|fs.ModeSticky); err != nil {
					return fmt.Errorf("chmod /tmp: %w", err)
				}
			}
			return nil
		}
	}
	return m.ensure(tmpMount)
}

// lookupGroupID finds a group's gid in an /etc/group-format file.
func lookupGroupID(path, name string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return -1, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Split(line, ":")
		if len(fields) < 3 || fields[0] != name {
			continue
		}
		gid, err := strconv.Atoi(fields[2])
		if err != nil || gid < 0 {
			return -1, fmt.Errorf("group %s in %s: bad gid %q", name, path, fields[2])
		}
		return gid, nil
	}
	if err := sc.Err(); err != nil {
		return -1, fmt.Errorf("read %s: %w", path, err)
	}
	return -1, fmt.Errorf("group %s not in %s: %w", name, path, fs.ErrNotExist)
}

// unmountPlan lists the mount points to unmount at shutdown: every mount
// point below root except root itself, children before their parents
// (reverse mount order).
func unmountPlan(ms []MountInfo, root string) []string {
	root = filepath.Clean(root)
	var out []string
	for i := len(ms) - 1; i >= 0; i-- {
		p := ms[i].MountPoint
		if p == root {
			continue
		}
		if root != "/" && !strings.HasPrefix(p, root+"/") {
			continue
		}
		out = append(out, p)
	}
	return out
}

// unmountAll unmounts the given mount points in order, detaching lazily
// those that are busy. It returns the collected failures.
func unmountAll(log *slog.Logger, points []string) error {
	var errs []error
	for _, p := range points {
		err := unix.Unmount(p, 0)
		if errors.Is(err, unix.EBUSY) {
			err = unix.Unmount(p, unix.MNT_DETACH)
		}
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			// EINVAL: no longer a mount point (a parent went first, or it
			// was detached with one); ENOENT: gone with a lazy parent.
			errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
			continue
		}
		log.Debug("unmounted", "target", p)
	}
	return errors.Join(errs...)
}
