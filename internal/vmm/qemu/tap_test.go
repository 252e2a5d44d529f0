package qemu_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/vmm"

	"github.com/capsulehq/capsule/internal/vmm/vmmtest"
)

// envInNetns marks the re-executed test binary that runs in a fresh
// network namespace.
const envInNetns = "CAPSULE_VMM_TEST_IN_NETNS"

// TestTapNetwork boots, pauses and resumes a machine on a TAP device, the
// way production attaches guests (network slots hand the driver a TAP
// descriptor). It runs itself again in a new network namespace (unshare
// --net), so the TAP and its address never touch the host's network.
func TestTapNetwork(t *testing.T) {
	if os.Getenv(envInNetns) != "1" {
		testenv.RequireRoot(t)
		unshare := testenv.RequireCommand(t, "unshare")
		testenv.RequireCommand(t, "ip")
		setup(t) // build the image here, in this run's directory
		cmd := exec.Command(unshare, "--net", "--", os.Args[0], "-test.run=^TestTapNetwork$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), envInNetns+"=1", envRunDir+"="+runDir)
		out, err := cmd.CombinedOutput()
		t.Logf("in a new network namespace:\n%s", out)
		if err != nil {
			t.Fatalf("the test in a network namespace failed: %v", err)
		}
		return
	}
	d, img := setup(t)
	ctx := context.Background()
	ipCmd(t, "link", "set", "lo", "up")
	tap := openTap(t, "tap0")
	ipCmd(t, "addr", "add", "10.200.0.1/24", "dev", "tap0")
	ipCmd(t, "link", "set", "tap0", "up")

	dir := t.TempDir()
	spec := bootSpec(t, img, dir, "tap", 256)
	spec.Cmdline = "ip=10.200.0.2::10.200.0.1:255.255.255.0::eth0:off"
	spec.Net = &vmm.NetAttachment{Tap: tap, MAC: "02:00:00:00:00:02"}
	m := boot(t, d, spec)
	url := "http://10.200.0.2:49983"
	run := func(script string) string {
		t.Helper()
		var out string
		var err error
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			out, err = vmmtest.RunInGuest(rctx, url, script)
			cancel()
			if err == nil {
				return out
			}
		}
		t.Fatalf("run %q: %v", script, err)
		return ""
	}
	if mac := strings.TrimSpace(run("cat /sys/class/net/eth0/address")); mac != "02:00:00:00:00:02" {
		t.Fatalf("guest MAC %q", mac)
	}
	run("echo kept > /dev/shm/kept")

	snap, err := m.Snapshot(ctx, filepath.Join(dir, "snap"), false)
	if err != nil {
		t.Fatal(err)
	}
	spec.Disks = snap.Disks
	spec.Dir = filepath.Join(dir, "tap-2")
	spec.Net = &vmm.NetAttachment{Tap: tap} // the MAC comes from the snapshot
	r, err := d.Restore(ctx, spec, snap)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = r.Kill(ctx) })
	if got := run("cat /dev/shm/kept; cat /sys/class/net/eth0/address"); got != "kept\n02:00:00:00:00:02\n" {
		t.Fatalf("after the resume: %q", got)
	}
	if err := r.Kill(ctx); err != nil {
		t.Fatal(err)
	}
}

// openTap creates a TAP device (with virtio-net headers, as QEMU uses
// them) and returns its descriptor.
func openTap(t *testing.T, name string) *os.File {
	t.Helper()
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var req struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI | unix.IFF_VNET_HDR
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.TUNSETIFF, uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		t.Fatalf("TUNSETIFF: %v", errno)
	}
	f := os.NewFile(uintptr(fd), "tap:"+name)
	t.Cleanup(func() { f.Close() })
	return f
}

func ipCmd(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}
