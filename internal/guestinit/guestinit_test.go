package guestinit

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestSetup runs Setup's whole sequence against a temporary root with
// recorded (not performed) mounts and a private network namespace.
func TestSetup(t *testing.T) {
	h := testNetns(t)
	mustAddLink(t, h, "eth0")
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/group"), []byte("tty:x:5:\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/hosts"), []byte("127.0.0.1 localhost\n::1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var mounted []string
	var devptsData string
	var hostname string
	env := setupEnv{
		root: root,
		mount: func(s mountSpec, target string) error {
			mu.Lock()
			defer mu.Unlock()
			mounted = append(mounted, strings.TrimPrefix(target, root)+" "+s.FSType)
			if s.FSType == "devpts" {
				devptsData = s.Data
			}
			return nil
		},
		cmdline: func() ([]byte, error) {
			return []byte("console=ttyS0 ip=169.254.0.21::169.254.0.22:30:sb-xyz:eth0:off:1.1.1.1:8.8.4.4 " +
				"capsule.sandbox_id=sb-xyz capsule.template_id=base\n"), nil
		},
		network: func(ctx context.Context, log *slog.Logger, cfg *IPConfig) error {
			return ConfigureNetwork(ctx, log, h, cfg, time.Second)
		},
		sethostname: func(h string) error { hostname = h; return nil },
	}
	sys, err := setup(context.Background(), quietLog(), env)
	if err != nil {
		t.Fatal(err)
	}
	defer sys.Shutdown(quietLog()) // not PID 1: just stops the reaper

	wantMounts := []string{"/proc proc", "/sys sysfs", "/dev devtmpfs", "/dev/pts devpts", "/dev/shm tmpfs",
		"/run tmpfs", "/sys/fs/cgroup cgroup2", "/tmp tmpfs"} // no /tmp in root: tmpfs
	if !reflect.DeepEqual(mounted, wantMounts) {
		t.Errorf("mounts\n got %q\nwant %q", mounted, wantMounts)
	}
	if !strings.Contains(devptsData, "gid=5") || !strings.Contains(devptsData, "newinstance") || !strings.Contains(devptsData, "ptmxmode=0666") {
		t.Errorf("devpts data %q", devptsData)
	}
	if l, _ := os.Readlink(filepath.Join(root, "dev/ptmx")); l != "pts/ptmx" {
		t.Errorf("/dev/ptmx -> %q", l)
	}
	if sys.Param("sandbox_id") != "sb-xyz" || sys.Param("template_id") != "base" {
		t.Errorf("params %v", sys.Boot.Capsule)
	}
	if hostname != "sb-xyz" {
		t.Errorf("kernel hostname %q", hostname)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(root, "etc", name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("resolv.conf"); !strings.Contains(got, "nameserver 1.1.1.1\nnameserver 8.8.4.4\n") {
		t.Errorf("resolv.conf %q", got)
	}
	if got := read("hostname"); got != "sb-xyz\n" {
		t.Errorf("hostname %q", got)
	}
	if got := read("hosts"); !strings.HasSuffix(got, "169.254.0.21\tsb-xyz\t# capsule\n") {
		t.Errorf("hosts %q", got)
	}
	checkNet(t, h, "eth0", "169.254.0.21/30", "169.254.0.22", false)
	if sys.Reaper == nil {
		t.Fatal("no reaper")
	}
}

// TestSetupCollectsFailures checks that every step runs and reports when
// others fail, and that the System is still usable.
func TestSetupCollectsFailures(t *testing.T) {
	root := t.TempDir()
	netCalled := false
	env := setupEnv{
		root:    root,
		mount:   func(s mountSpec, _ string) error { return errors.New("EPERM " + s.FSType) },
		cmdline: func() ([]byte, error) { return nil, os.ErrNotExist },
		network: func(_ context.Context, _ *slog.Logger, cfg *IPConfig) error {
			netCalled = true
			if cfg != nil {
				t.Errorf("network got %+v without a command line", cfg)
			}
			return errors.New("no netlink")
		},
		sethostname: func(string) error { t.Error("sethostname without a hostname"); return nil },
	}
	sys, err := setup(context.Background(), quietLog(), env)
	if sys == nil || sys.Boot == nil || sys.Reaper == nil {
		t.Fatalf("unusable System %+v", sys)
	}
	defer sys.Shutdown(quietLog())
	if !netCalled {
		t.Error("network step skipped")
	}
	for _, want := range []string{"EPERM proc", "cgroup2", "kernel command line", "no netlink"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	if sys.Param("sandbox_id") != "" {
		t.Error("param without a command line")
	}
}
