package guestinit

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Initramfs layout. The image builder writes envd as /init, the module
// files and their load order into InitramfsModulesDir, a /dev/console
// device node (so that init has a console), and the empty marker file
// InitramfsMarker by which envd knows it is the first stage.
const (
	InitramfsMarker     = "/capsule-initramfs"
	InitramfsModulesDir = "/lib/modules"
	// DefaultInit is the real init on the root filesystem: envd again.
	DefaultInit = "/usr/local/bin/envd"
	// DefaultNewRoot is where the initramfs mounts the root filesystem.
	DefaultNewRoot = "/newroot"
)

// InInitramfs reports whether this process is the first-stage init of a
// Capsule initramfs: it is PID 1, InitramfsMarker exists, and / is the
// kernel's initial ramfs/tmpfs. The marker alone would be a file a template
// could ship by mistake; the filesystem check rules that out, since a real
// root filesystem is never ramfs or tmpfs here.
func InInitramfs() bool {
	if os.Getpid() != 1 {
		return false
	}
	if _, err := os.Stat(InitramfsMarker); err != nil {
		return false
	}
	return rootIsRAM("/")
}

func rootIsRAM(path string) bool {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false
	}
	return st.Type == unix.RAMFS_MAGIC || st.Type == unix.TMPFS_MAGIC
}

// SwitchRootConfig says how the first stage finds and starts the real
// root. Empty fields take their values from the kernel command line, then
// from the defaults.
type SwitchRootConfig struct {
	ModulesDir  string   // default InitramfsModulesDir
	ModuleOrder []string // default: ModulesDir/modules.order
	// Device is the root block device; default root= (a /dev path or a
	// bare name such as vda), else /dev/vda. UUID= and LABEL= forms are
	// not supported.
	Device string
	// FSType defaults to rootfstype=, else ext4; Options to rootflags=.
	FSType, Options string
	// ReadOnly mounts the root read-only; it is also set by "ro" on the
	// command line. Unlike the kernel, the default is read-write.
	ReadOnly bool
	NewRoot  string // default DefaultNewRoot
	// Init is the program to execute in the new root: default init=, else
	// DefaultInit. Args are its arguments (default os.Args[1:]).
	Init string
	Args []string
	// DeviceWait bounds the wait for Device to appear; default 10s.
	DeviceWait time.Duration
}

// resolve fills the empty fields of c from the command line and defaults.
func (c SwitchRootConfig) resolve(bp *BootParams) (SwitchRootConfig, error) {
	if bp == nil {
		bp = &BootParams{}
	}
	if c.ModulesDir == "" {
		c.ModulesDir = InitramfsModulesDir
	}
	if c.Device == "" {
		c.Device = bp.Root
	}
	switch {
	case c.Device == "":
		c.Device = "/dev/vda"
	case strings.Contains(c.Device, "="):
		return c, fmt.Errorf("root=%s: only device paths are supported", c.Device)
	case !strings.HasPrefix(c.Device, "/"):
		c.Device = "/dev/" + c.Device
	}
	if c.FSType == "" {
		c.FSType = bp.RootFSType
	}
	if c.FSType == "" {
		c.FSType = "ext4"
	}
	if c.Options == "" {
		c.Options = bp.RootFlags
	}
	c.ReadOnly = c.ReadOnly || bp.ReadOnly
	if c.NewRoot == "" {
		c.NewRoot = DefaultNewRoot
	}
	if c.Init == "" {
		c.Init = bp.Init
	}
	if c.Init == "" {
		c.Init = DefaultInit
	}
	if !filepath.IsAbs(c.Init) {
		return c, fmt.Errorf("init %q is not an absolute path", c.Init)
	}
	if c.Args == nil && len(os.Args) > 1 {
		c.Args = os.Args[1:]
	}
	if c.DeviceWait <= 0 {
		c.DeviceWait = 10 * time.Second
	}
	return c, nil
}

// SwitchRoot is the first stage of a guest boot, run by envd as /init of
// the initramfs (see InInitramfs). It mounts /proc, /sys and /dev, loads
// the kernel modules, mounts the root device, moves /proc, /sys and /dev
// into it, frees the initramfs, makes the new root / (mount move + chroot)
// and executes the real init there, keeping PID 1. On success it does not
// return. An error before the switch leaves the initramfs in place; after
// the chroot only the exec can fail, and the caller may then carry on as
// the init of the new root.
func SwitchRoot(log *slog.Logger, cfg SwitchRootConfig) error {
	if log == nil {
		log = slog.Default()
	}
	if os.Getpid() != 1 || !rootIsRAM("/") {
		return errors.New("switch root: not PID 1 on an initramfs")
	}
	m := newMounter(log, "/")
	var errs []error
	for _, s := range baseMounts(-1)[:3] { // /proc, /sys, /dev
		if err := m.ensure(s); err != nil {
			errs = append(errs, err)
		}
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("switch root: %w", errors.Join(append(errs, err)...))
	}
	bp, perr := ParseCmdline(string(cmdline))
	if perr != nil {
		log.Warn("kernel command line", "err", perr)
	}
	if cfg, err = cfg.resolve(bp); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := LoadModules(log, cfg.ModulesDir, cfg.ModuleOrder); err != nil {
		// Modules may be built in; the device wait decides.
		log.Warn("loading modules", "err", err)
	}
	if err := waitPath(cfg.Device, cfg.DeviceWait); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	if err := os.MkdirAll(cfg.NewRoot, 0o755); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	flags := uintptr(0)
	if cfg.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	if err := unix.Mount(cfg.Device, cfg.NewRoot, cfg.FSType, flags, cfg.Options); err != nil {
		return fmt.Errorf("switch root: mount %s (%s) on %s: %w", cfg.Device, cfg.FSType, cfg.NewRoot, err)
	}
	if !cfg.ReadOnly && cfg.FSType == "ext4" {
		// A sandbox disk may be larger than its template's filesystem:
		// give the guest the space it was promised.
		if grown, err := GrowExt4(cfg.Device, cfg.NewRoot); err != nil {
			log.Warn("switch root: cannot grow the root filesystem", "err", err)
		} else if grown > 0 {
			log.Info("switch root: root filesystem grown", "bytes", grown)
		}
	}
	if fi, err := os.Stat(filepath.Join(cfg.NewRoot, cfg.Init)); err != nil || fi.Mode()&0o111 == 0 || !fi.Mode().IsRegular() {
		_ = unix.Unmount(cfg.NewRoot, 0)
		return fmt.Errorf("switch root: %s is not an executable file on %s", cfg.Init, cfg.Device)
	}
	for _, p := range []string{"/dev", "/proc", "/sys"} {
		if !m.mounted[p] {
			continue
		}
		dst := filepath.Join(cfg.NewRoot, p)
		err := os.MkdirAll(dst, 0o755)
		if err == nil {
			err = unix.Mount(p, dst, "", unix.MS_MOVE, "")
		}
		if err != nil {
			// The real init mounts it afresh; drop ours.
			log.Warn("switch root: cannot move mount; detaching it", "mount", p, "err", err)
			_ = unix.Unmount(p, unix.MNT_DETACH)
		}
	}
	if err := unix.Chdir(cfg.NewRoot); err != nil {
		return fmt.Errorf("switch root: %w", err)
	}
	// Free the initramfs's memory: delete its files, staying on its
	// filesystem (the new root and anything else mounted is skipped).
	if err := removeTreeOnDevice("/", cfg.NewRoot); err != nil {
		log.Warn("switch root: freeing the initramfs", "err", err)
	}
	if err := unix.Mount(".", "/", "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("switch root: move %s to /: %w", cfg.NewRoot, err)
	}
	if err := unix.Chroot("."); err != nil {
		return fmt.Errorf("switch root: chroot: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("switch root: chdir /: %w", err)
	}
	log.Info("switching root", "device", cfg.Device, "init", cfg.Init)
	argv := append([]string{cfg.Init}, cfg.Args...)
	if err := unix.Exec(cfg.Init, argv, os.Environ()); err != nil {
		return fmt.Errorf("switch root: exec %s: %w", cfg.Init, err)
	}
	return nil // not reached
}

// waitPath polls until path exists or d elapses.
func waitPath(path string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		_, err := os.Stat(path)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not appear within %s: %w", path, d, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// removeTreeOnDevice deletes everything under dir that is on dir's own
// filesystem, without following symlinks or crossing into other mounts,
// and never touching keep (which must be a directory under dir). dir
// itself remains. Failures are collected.
func removeTreeOnDevice(dir, keep string) error {
	var st unix.Stat_t
	if err := unix.Lstat(dir, &st); err != nil {
		return fmt.Errorf("stat %s: %w", dir, err)
	}
	return removeChildren(dir, st.Dev, filepath.Clean(keep))
}

func removeChildren(dir string, dev uint64, keep string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	var errs []error
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if p == keep {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			errs = append(errs, fmt.Errorf("stat %s: %w", p, err))
			continue
		}
		if st.Dev != dev {
			continue // a mount point (or on one): not ours to delete
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := removeChildren(p, dev, keep); err != nil {
				errs = append(errs, err)
				continue
			}
			if err := unix.Rmdir(p); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			}
			continue
		}
		if err := unix.Unlink(p); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	return errors.Join(errs...)
}
