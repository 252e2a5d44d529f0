package hosttest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/vmm"
	"github.com/capsulehq/capsule/internal/vmm/qemu"
)

// StoreDir is the image store shared by every package's VM tests (and by
// later runs): content-addressed and locked, so packages running in
// parallel and an unchanged envd reuse everything.
var StoreDir = filepath.Join(os.TempDir(), "capsule-test-store")

// buildEnvd builds this tree's envd (static) at path.
func buildEnvd(ctx context.Context, path string) error {
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", path, "github.com/capsulehq/capsule/cmd/envd")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build envd: %w: %s", err, out)
	}
	return nil
}

// Envd builds this tree's envd into a directory of t's own and returns its
// path (for a test that assembles a host itself, as the commands do).
func Envd(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	path := filepath.Join(t.TempDir(), "envd")
	if err := buildEnvd(ctx, path); err != nil {
		t.Fatal(err)
	}
	return path
}

var images struct {
	once  sync.Once
	store *image.Store
	err   error
}

// Images returns the shared test image store (StoreDir) holding the
// minimal template built from this tree's envd; the build runs once per
// process.
func Images(t testing.TB) *image.Store {
	t.Helper()
	images.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		dir, err := os.MkdirTemp("", "capsule-hosttest-envd-")
		if err != nil {
			images.err = err
			return
		}
		defer os.RemoveAll(dir)
		bin := filepath.Join(dir, "envd")
		if images.err = buildEnvd(ctx, bin); images.err != nil {
			return
		}
		if images.store, images.err = image.Open(StoreDir, nil); images.err != nil {
			return
		}
		_, images.err = images.store.Build(ctx, image.BuildOptions{Template: "minimal", EnvdBin: bin})
	})
	if images.err != nil {
		t.Fatalf("test images: %v", images.err)
	}
	return images.store
}

// NewDriver returns a QEMU driver probed with the minimal image's kernel,
// logging to log (nil: the default logger).
func NewDriver(t testing.TB, log *slog.Logger) vmm.Driver {
	t.Helper()
	testenv.RequireCommand(t, "qemu-system-x86_64")
	img, err := Images(t).Get(context.Background(), "minimal")
	if err != nil {
		t.Fatal(err)
	}
	drv, err := qemu.New(context.Background(), qemu.Options{ProbeKernel: img.Kernel, Logger: log})
	if err != nil {
		t.Fatalf("qemu driver: %v", err)
	}
	return drv
}

var driver struct {
	sync.Mutex
	drv vmm.Driver
}

// Driver returns a QEMU driver shared by the process' tests (probed once).
func Driver(t testing.TB) vmm.Driver {
	t.Helper()
	driver.Lock()
	defer driver.Unlock()
	if driver.drv == nil {
		driver.drv = NewDriver(t, nil)
	}
	return driver.drv
}

// Pool names a network slot pool of one package's tests: Name prefixes
// its namespaces, Veth its host interfaces; HostCIDR and LinkCIDR are
// address ranges no other package's tests use.
type Pool struct {
	Name, Veth         string
	HostCIDR, LinkCIDR netip.Prefix
	// MaxSlots is the most slots (netslot's default when zero).
	MaxSlots int
	// KeepSlots leaves the slots in place at Close, for a manager
	// restarted by the test to adopt its machines.
	KeepSlots bool
	// DNSUpstream is the slots' resolvers' upstream (netslot.Config).
	DNSUpstream []netip.AddrPort
}

// NewSlots creates the network slot pool p; the caller closes it.
func NewSlots(t testing.TB, p Pool, log *slog.Logger) *netslot.Pool {
	t.Helper()
	slots, err := netslot.NewPool(context.Background(), netslot.Config{
		Name: p.Name, VethPrefix: p.Veth, HostCIDR: p.HostCIDR, LinkCIDR: p.LinkCIDR, MaxSlots: p.MaxSlots,
		KeepSlots: p.KeepSlots, Logger: log, DNSUpstream: p.DNSUpstream,
	})
	if err != nil {
		t.Fatalf("network pool: %v", err)
	}
	return slots
}

// AssertNoVMM fails t if a VMM process of one of dirs is still alive (its
// command line names its console log, under the data directory, or its
// runtime directory).
func AssertNoVMM(t testing.TB, dirs ...string) {
	t.Helper()
	out, _ := exec.Command("pgrep", "-af", "qemu-system").Output()
	for line := range strings.SplitSeq(string(out), "\n") {
		for _, d := range dirs {
			if strings.Contains(line, d) {
				t.Errorf("VMM left running: %.300s", line)
			}
		}
	}
}

// SandboxVMMs returns the QEMU processes of sandbox id, as "pid command
// line" lines: those whose command line names it (a cold boot or a
// restore) or whose working directory is its runtime directory (a VMM
// prepared ahead names its own directory, renamed to the sandbox's when a
// create took it).
func SandboxVMMs(id string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		pid := e.Name()
		if pid == "" || pid[0] < '0' || pid[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
		if err != nil || !bytes.Contains(b, []byte("qemu-system")) {
			continue
		}
		cmdline := string(bytes.ReplaceAll(b, []byte{0}, []byte{' '}))
		cwd, _ := os.Readlink(filepath.Join("/proc", pid, "cwd"))
		if strings.Contains(cmdline, id) || filepath.Base(cwd) == id {
			out = append(out, pid+" "+cmdline)
		}
	}
	return out
}

// AssertNoSlots fails t if a network namespace or host interface of the
// pool p is left.
func AssertNoSlots(t testing.TB, p Pool) {
	t.Helper()
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), p.Name+"-") {
				t.Errorf("network namespace left: %s", e.Name())
			}
		}
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifaces {
		if strings.HasPrefix(i.Name, p.Veth) {
			t.Errorf("interface left: %s", i.Name)
		}
	}
}

// SyncBuffer is a bytes.Buffer safe for concurrent writers (a logger's
// output read by the test).
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
