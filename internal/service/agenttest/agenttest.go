// Package agenttest runs a real host agent for the control plane's
// integration tests: the image store shared with the other packages' VM
// tests (minimal template built from this tree's envd), the QEMU driver, a
// network slot pool of the caller's own (name and address ranges no other
// package's tests use), a sandbox.Manager, and the agent handler served
// over h2c by httptest. Cleanup checks that no VMM, network namespace or
// interface of the pool is left.
package agenttest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/agent"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/vmm/qemu"
)

// Token is the agent's bearer token.
const Token = "agenttest-integration-token-0123456789"

// Pool names a network slot pool: Name prefixes its namespaces, Veth its
// host interfaces.
type Pool struct {
	Name, Veth         string
	HostCIDR, LinkCIDR netip.Prefix
}

var (
	imagesOnce sync.Once
	images     *image.Store
	imagesErr  error
)

func testImages(t testing.TB) *image.Store {
	t.Helper()
	imagesOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		bin := filepath.Join(os.TempDir(), fmt.Sprintf("capsule-agenttest-envd-%d", os.Getpid()))
		defer os.Remove(bin)
		build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "github.com/capsulehq/capsule/cmd/envd")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			imagesErr = fmt.Errorf("build envd: %w: %s", err, out)
			return
		}
		images, imagesErr = image.Open(filepath.Join(os.TempDir(), "capsule-test-store"), nil)
		if imagesErr != nil {
			return
		}
		_, imagesErr = images.Build(ctx, image.BuildOptions{Template: "minimal", EnvdBin: bin})
	})
	if imagesErr != nil {
		t.Fatalf("test images: %v", imagesErr)
	}
	return images
}

// Start runs an agent for t (skipped without root or QEMU, failed under
// CAPSULE_TEST_STRICT=1) and returns its URL; the agent stops when t ends.
// Each of configure may change the manager's configuration (a data
// directory of the test's own, a disk headroom) before it starts.
func Start(t testing.TB, p Pool, configure ...func(*sandbox.Config)) string {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "qemu-system-x86_64")
	testenv.RequireCommand(t, "qemu-img")
	imgs := testImages(t)
	img, err := imgs.Get(context.Background(), "minimal")
	if err != nil {
		t.Fatal(err)
	}
	dataDir, runDir := t.TempDir(), t.TempDir()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	drv, err := qemu.New(context.Background(), qemu.Options{ProbeKernel: img.Kernel, Logger: log})
	if err != nil {
		t.Fatalf("qemu driver: %v", err)
	}
	slots, err := netslot.NewPool(context.Background(), netslot.Config{
		Name: p.Name, VethPrefix: p.Veth, HostCIDR: p.HostCIDR, LinkCIDR: p.LinkCIDR, MaxSlots: 8, Logger: log,
	})
	if err != nil {
		t.Fatalf("network pool: %v", err)
	}
	capacity := sandbox.Capacity{VCPUs: 8, MemoryMB: 2048}
	cfg := sandbox.Config{
		DataDir: dataDir, RunDir: runDir, Driver: drv, Images: imgs, Slots: slots, Capacity: capacity, Log: log,
	}
	for _, f := range configure {
		f(&cfg)
	}
	dataDir = cfg.DataDir
	mgr, err := sandbox.New(context.Background(), cfg)
	if err != nil {
		_ = slots.Close(context.Background())
		t.Fatalf("manager: %v", err)
	}
	a, err := agent.New(agent.Config{Manager: mgr, Token: Token, Images: imgs, Driver: drv, Capacity: capacity, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(a)
	srv.Config.Protocols = agent.Protocols()
	srv.Start()
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := mgr.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := slots.Close(ctx); err != nil {
			t.Errorf("close pool: %v", err)
		}
		assertNoVMM(t, runDir, dataDir)
		assertNoSlots(t, p.Name+"-", p.Veth)
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	return srv.URL
}

func assertNoVMM(t testing.TB, dirs ...string) {
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

func assertNoSlots(t testing.TB, netnsPrefix, vethPrefix string) {
	t.Helper()
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), netnsPrefix) {
				t.Errorf("network namespace left: %s", e.Name())
			}
		}
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ifaces {
		if strings.HasPrefix(i.Name, vethPrefix) {
			t.Errorf("interface left: %s", i.Name)
		}
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
