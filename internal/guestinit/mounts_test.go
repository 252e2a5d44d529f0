package guestinit

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mountHelperEnv, when set to a directory, makes the test binary run
// mountHelper on it instead of the tests (see TestMain).
const mountHelperEnv = "GUESTINIT_TEST_MOUNT_ROOT"

// parentNSEnv carries the parent's mount namespace to the helper, which
// refuses to mount anything unless its own namespace differs.
const parentNSEnv = "GUESTINIT_TEST_PARENT_MNTNS"

func TestMain(m *testing.M) {
	if root := os.Getenv(mountHelperEnv); root != "" {
		if err := mountHelper(root); err != nil {
			fmt.Fprintln(os.Stderr, "mount helper:", err)
			os.Exit(1)
		}
		fmt.Println("mount helper: ok")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// requireRoot skips a test that needs root, or fails it when
// CAPSULE_TEST_STRICT=1.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CAPSULE_TEST_STRICT") == "1" {
		t.Fatal("needs root (CAPSULE_TEST_STRICT=1)")
	}
	t.Skip("needs root")
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestMountAll runs the init-mode mounts under a temporary root inside a
// child process that has its own private mount namespace, so nothing
// reaches the host's mount table.
func TestMountAll(t *testing.T) {
	requireRoot(t)
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\ntty:x:5:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	ns, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), mountHelperEnv+"="+root, parentNSEnv+"="+ns)
	// Unshareflags with CLONE_NEWNS also makes / recursively private in
	// the child before exec, so no mount propagates back.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "mount helper: ok") {
		t.Fatalf("mount helper: %v\n%s", err, out)
	}
	// The host saw none of it.
	ms, err := readMountInfo()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if strings.HasPrefix(m.MountPoint, root) {
			t.Errorf("mount leaked into the test's namespace: %+v", m)
		}
	}
}

// mountHelper runs in the child process of TestMountAll.
func mountHelper(root string) error {
	ns, err := os.Readlink("/proc/self/ns/mnt")
	if err != nil {
		return err
	}
	if parent := os.Getenv(parentNSEnv); parent == "" || parent == ns {
		return fmt.Errorf("refusing to mount: not in a private mount namespace (%s)", ns)
	}
	// Belt and braces: Unshareflags already did this.
	if err := unix.Mount("none", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private: %w", err)
	}
	log := quietLog()
	newTestMounter := func() *mounter {
		m := newMounter(log, root)
		m.mount = func(s mountSpec, target string) error {
			if s.FSType == "devtmpfs" {
				// devtmpfs is one instance shared with the host's /dev; the
				// symlinks below would change the host. Stand in a tmpfs.
				s.FSType, s.Source = "tmpfs", "fake-devtmpfs"
			}
			return sysMount(s, target)
		}
		return m
	}
	m := newTestMounter()
	if err := m.mountAll(); err != nil {
		return fmt.Errorf("mountAll: %w", err)
	}
	ms, err := readMountInfo()
	if err != nil {
		return err
	}
	byPoint := map[string]MountInfo{}
	for _, mi := range ms {
		byPoint[mi.MountPoint] = mi
	}
	want := map[string]string{
		"/proc": "proc", "/sys": "sysfs", "/dev": "tmpfs", "/dev/pts": "devpts",
		"/dev/shm": "tmpfs", "/run": "tmpfs", "/sys/fs/cgroup": "cgroup2",
	}
	for p, fstype := range want {
		mi, ok := byPoint[root+p]
		if !ok {
			return fmt.Errorf("%s not mounted", p)
		}
		if mi.FSType != fstype {
			return fmt.Errorf("%s is %s, want %s", p, mi.FSType, fstype)
		}
	}
	if len(m.done) != len(want) {
		return fmt.Errorf("mounted %v, want %d mounts", m.done, len(want))
	}
	if so := byPoint[root+"/dev/pts"].SuperOptions; !strings.Contains(so, "ptmxmode=666") || !strings.Contains(so, "gid=5") {
		return fmt.Errorf("devpts options %q", so)
	}
	if fi, err := os.Stat(filepath.Join(root, "dev/shm")); err != nil || fi.Mode()&(fs.ModePerm|fs.ModeSticky) != 0o777|fs.ModeSticky {
		return fmt.Errorf("/dev/shm mode: %v %v", fi, err)
	}
	if _, ok := byPoint[root+"/tmp"]; ok {
		return errors.New("/tmp was mounted although it is a writable directory")
	}
	if fi, err := os.Stat(filepath.Join(root, "tmp")); err != nil || fi.Mode()&(fs.ModePerm|fs.ModeSticky) != 0o777|fs.ModeSticky {
		return fmt.Errorf("/tmp mode: %v %v", fi, err)
	}
	for link, target := range map[string]string{
		"/dev/ptmx": "pts/ptmx", "/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		if got, err := os.Readlink(filepath.Join(root, link)); err != nil || got != target {
			return fmt.Errorf("%s -> %q (%v), want %q", link, got, err, target)
		}
	}

	// Idempotent: a second run mounts nothing and fails nothing.
	m2 := newTestMounter()
	if err := m2.mountAll(); err != nil {
		return fmt.Errorf("second mountAll: %w", err)
	}
	if len(m2.done) != 0 {
		return fmt.Errorf("second mountAll mounted %v", m2.done)
	}

	// A read-only /tmp gets a tmpfs.
	if err := unix.Mount(filepath.Join(root, "tmp"), filepath.Join(root, "tmp"), "", unix.MS_BIND, ""); err != nil {
		return err
	}
	if err := unix.Mount("", filepath.Join(root, "tmp"), "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		return err
	}
	m3 := newTestMounter()
	delete(m3.mounted, filepath.Join(root, "tmp")) // pretend the bind mount is the root fs
	if err := m3.ensureTmp(); err != nil {
		return fmt.Errorf("ensureTmp on read-only /tmp: %w", err)
	}
	if len(m3.done) != 1 || m3.done[0] != filepath.Join(root, "tmp") {
		return fmt.Errorf("read-only /tmp: mounted %v", m3.done)
	}

	// Unmount everything under root, children first.
	if ms, err = readMountInfo(); err != nil {
		return err
	}
	if err := unmountAll(log, unmountPlan(ms, root)); err != nil {
		return fmt.Errorf("unmountAll: %w", err)
	}
	if ms, err = readMountInfo(); err != nil {
		return err
	}
	for _, mi := range ms {
		if strings.HasPrefix(mi.MountPoint, root+"/") {
			return fmt.Errorf("still mounted after unmountAll: %s", mi.MountPoint)
		}
	}
	return nil
}

func TestLookupGroupID(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "group")
	if err := os.WriteFile(p, []byte("# comment\nroot:x:0:\nttyx:x:9:\ntty:x:5:user\nbad:x:nope:\nshort\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if gid, err := lookupGroupID(p, "tty"); err != nil || gid != 5 {
		t.Errorf("tty: %d %v", gid, err)
	}
	if _, err := lookupGroupID(p, "bad"); err == nil {
		t.Error("bad gid accepted")
	}
	if _, err := lookupGroupID(p, "wheel"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing group: %v", err)
	}
	if _, err := lookupGroupID(filepath.Join(dir, "none"), "tty"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestBaseMounts(t *testing.T) {
	ms := baseMounts(5)
	for i, m := range ms {
		for j, other := range ms {
			if strings.HasPrefix(m.Target, other.Target+"/") && j > i {
				t.Errorf("%s is mounted before %s, which contains it", m.Target, other.Target)
			}
		}
	}
	if !strings.Contains(ms[3].Data, "gid=5") || strings.Contains(baseMounts(-1)[3].Data, "gid=") {
		t.Errorf("devpts data: %q / %q", ms[3].Data, baseMounts(-1)[3].Data)
	}
}

func TestReplaceWithSymlink(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "ptmx")
	if err := os.WriteFile(p, nil, 0o666); err != nil { // stands in for the device node
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := replaceWithSymlink("pts/ptmx", p); err != nil {
			t.Fatal(err)
		}
		if got, _ := os.Readlink(p); got != "pts/ptmx" {
			t.Fatalf("link = %q", got)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := replaceWithSymlink("/proc/self/fd", filepath.Join(dir, "fd")); err == nil {
		t.Error("replaced a directory")
	}
}
