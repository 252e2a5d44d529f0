package netslot

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"

	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 (and we) bind-mount named namespaces.
const netnsDir = "/run/netns"

// inNetNS runs fn on a dedicated OS thread that entered the network
// namespace at path. The thread is never unlocked: it exits with its
// goroutine, so no other goroutine can ever run in the namespace by
// accident, whatever fn does.
func inNetNS(path string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: the thread dies with this goroutine.
		errc <- func() error {
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("open namespace %s: %w", path, err)
			}
			defer unix.Close(fd)
			if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("enter namespace %s: %w", path, err)
			}
			return fn()
		}()
	}()
	return <-errc
}

// prepareNetNSDir creates /run/netns and makes it a shared mount point, as
// `ip netns add` does, so namespaces mounted there are visible from other
// mount namespaces (e.g. `ip netns exec` from a systemd unit).
func prepareNetNSDir() error {
	if err := os.MkdirAll(netnsDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", netnsDir, err)
	}
	err := unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	if errors.Is(err, unix.EINVAL) { // not a mount point yet
		if err := unix.Mount(netnsDir, netnsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind-mount %s on itself: %w", netnsDir, err)
		}
		err = unix.Mount("", netnsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
	}
	if err != nil {
		return fmt.Errorf("make %s a shared mount: %w", netnsDir, err)
	}
	return nil
}

// createNetNS creates a new network namespace bind-mounted at
// /run/netns/<name> and returns its path. On failure nothing is left.
func createNetNS(name string) (string, error) {
	path := filepath.Join(netnsDir, name)
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o444)
	if err != nil {
		return "", fmt.Errorf("create namespace file: %w", err)
	}
	f.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// No UnlockOSThread: this thread leaves the host namespace and
		// must die with the goroutine.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare network namespace: %w", err)
			return
		}
		if err := unix.Mount("/proc/thread-self/ns/net", path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind-mount namespace on %s: %w", path, err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		os.Remove(path)
		return "", err
	}
	return path, nil
}

// deleteNetNS unmounts and removes a named namespace. The namespace itself
// is freed by the kernel when nothing else references it (a process in
// it, an open descriptor). A missing namespace is not an error.
func deleteNetNS(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove namespace %s: %w", path, err)
	}
	return nil
}

// listNetNS returns the indices of the namespaces named <name>-<index> in
// /run/netns, sorted.
func listNetNS(name string) ([]int, error) {
	entries, err := os.ReadDir(netnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", netnsDir, err)
	}
	var idx []int
	for _, e := range entries {
		if i := parseIndex(e.Name(), name+"-"); i > 0 {
			idx = append(idx, i)
		}
	}
	sort.Ints(idx)
	return idx, nil
}

// writeSysctl writes a /proc/sys value. The net.* values belong to the
// network namespace of the calling thread.
func writeSysctl(key, value string) error {
	path := filepath.Join("/proc/sys", filepath.FromSlash(key))
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// readSysctl reads a /proc/sys value.
func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys", filepath.FromSlash(key)))
	if err != nil {
		return "", fmt.Errorf("sysctl %s: %w", key, err)
	}
	return string(trimNL(b)), nil
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
