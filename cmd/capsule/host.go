package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/agent"
	"github.com/capsulehq/capsule/internal/dirlock"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/logctx"
	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/vmm/qemu"
)

// hostOptions are the settings of a host's sandbox stack, shared by
// `capsule agent` and the agent embedded in `capsule serve`.
type hostOptions struct {
	dataDir, runDir string
	// imagesDir holds the image store (dataDir when empty): `capsule bench
	// api` shares the platform's images but keeps its sandboxes apart.
	imagesDir  string
	envdBin    string
	base       bool
	warmImages bool
	// preparedVMMs: VMMs kept started per snapshot template and shape.
	preparedVMMs int
	// consoleLogMaxMB caps each sandbox's console log (MiB).
	consoleLogMaxMB int
	capacity        sandbox.Capacity
	// diskHeadroomMB is the free space the data disk keeps (creates,
	// pauses and snapshots that would leave less are refused).
	diskHeadroomMB int64
	netName        string
	netHostCIDR    string
	netLinkCIDR    string
	netMaxSlots    int
	// netVethPrefix names the pool's host interfaces (derived from netName
	// when empty).
	netVethPrefix string
}

// defaultCapacity fills unset capacities from the host: 3/4 of its
// memory. vCPUs stay unset unless -max-vcpus declares them: the control
// plane's scheduler then places its CPUs × its -cpu-overcommit.
func (o *hostOptions) defaultCapacity() {
	if o.capacity.MemoryMB == 0 {
		o.capacity.MemoryMB = hostMemoryMB() * 3 / 4
	}
}

// hostStack is one machine's sandbox stack: guest images, the VMM driver,
// the network slots and the sandbox manager over them.
type hostStack struct {
	images *image.Store
	driver *qemu.Driver
	slots  *netslot.Pool
	mgr    *sandbox.Manager
	log    *slog.Logger
}

// startHost builds (or reuses) the guest images and starts the stack. The
// manager recovers what an earlier agent left in the data directory.
func startHost(ctx context.Context, o *hostOptions, log *slog.Logger) (*hostStack, error) {
	imagesDir := o.imagesDir
	if imagesDir == "" {
		imagesDir = o.dataDir
	}
	images, err := image.Open(imagesDir, log)
	if err != nil {
		return nil, err
	}
	// minimal always (tests, probes), base unless disabled; both are
	// rebuilt only when their inputs change.
	minimal, err := images.Build(ctx, image.BuildOptions{Template: "minimal", EnvdBin: o.envdBin})
	if err != nil {
		return nil, fmt.Errorf("minimal image: %w", err)
	}
	if o.base {
		if _, err := images.Build(ctx, image.BuildOptions{Template: "base", EnvdBin: o.envdBin}); err != nil {
			return nil, fmt.Errorf("base image (start with --base=false to go without it): %w", err)
		}
	}
	driver, err := qemu.New(ctx, qemu.Options{ProbeKernel: minimal.Kernel, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	// Slots of machines that outlived an earlier agent are kept for the
	// manager to adopt (it drops the rest).
	netCfg := netslot.Config{Name: o.netName, MaxSlots: o.netMaxSlots, Logger: log, KeepSlots: true}
	if o.netHostCIDR != "" {
		if netCfg.HostCIDR, err = netip.ParsePrefix(o.netHostCIDR); err != nil {
			return nil, fmt.Errorf("--net-host-cidr: %w", err)
		}
	}
	if o.netLinkCIDR != "" {
		if netCfg.LinkCIDR, err = netip.ParsePrefix(o.netLinkCIDR); err != nil {
			return nil, fmt.Errorf("--net-link-cidr: %w", err)
		}
	}
	switch {
	case o.netVethPrefix != "":
		netCfg.VethPrefix = o.netVethPrefix
	case o.netName != "":
		// A second pool on the host needs its own interface names too.
		netCfg.VethPrefix = strings.ReplaceAll(o.netName, "-", "") + "v"
	}
	slots, err := netslot.NewPool(ctx, netCfg)
	if err != nil {
		return nil, fmt.Errorf("network slots: %w", err)
	}
	mgr, err := sandbox.New(ctx, sandbox.Config{
		DataDir: o.dataDir, RunDir: o.runDir, Driver: driver, Images: images, Slots: slots,
		Capacity: o.capacity, DiskHeadroomMB: o.diskHeadroomMB, WarmImages: o.warmImages, PreparedVMMs: o.preparedVMMs, ConsoleLogMax: int64(o.consoleLogMaxMB) << 20, Log: log,
	})
	if err != nil {
		_ = slots.Close(context.Background())
		return nil, err
	}
	return &hostStack{images: images, driver: driver, slots: slots, mgr: mgr, log: log}, nil
}

// stop pauses every sandbox, so that the next start resumes them without
// loss, then stops the manager. Sandboxes that could not be paused keep
// running with their network slots; with none left the pool is closed,
// leaving the host clean.
func (h *hostStack) stop() {
	pctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	if err := h.mgr.PauseAll(pctx); err != nil {
		h.log.Error("pause sandboxes before stopping", "err", err)
	}
	cancel()
	h.mgr.Close()
	for _, in := range h.mgr.List() {
		if in.State != sandbox.StatePaused && in.State != sandbox.StateStopped && in.State != sandbox.StateError {
			h.log.Info("leaving running sandboxes and their network to the next start", "sandboxes", len(h.mgr.List()))
			return
		}
	}
	if err := h.slots.Close(context.Background()); err != nil {
		h.log.Error("close the network slot pool", "err", err)
	}
}

// lockDataDir makes this process the only instance on dataDir (created if
// missing): `capsule serve` and `capsule agent` call it before anything
// else, so that a second instance exits having changed nothing. The
// returned function releases the lock.
func lockDataDir(dataDir string) (func(), error) {
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, err
	}
	l, err := dirlock.Acquire(dataDir)
	if err != nil {
		return nil, err
	}
	return func() { _ = l.Release() }, nil
}

// servedAgent is a host's agent served over HTTP (h2c) on a listener.
type servedAgent struct {
	agent  *agent.Agent
	srv    *http.Server
	addr   net.Addr
	served chan error
}

// serveAgent serves the host's agent, with its bearer token, on addr:
// `capsule agent` on its -listen address, `capsule serve` on a loopback
// port.
func (h *hostStack) serveAgent(addr, token string, capacity sandbox.Capacity, log *slog.Logger) (*servedAgent, error) {
	a, err := agent.New(agent.Config{Manager: h.mgr, Token: token, Images: h.images, Driver: h.driver, Capacity: capacity, Log: log})
	if err != nil {
		return nil, err
	}
	return serveAgentHandler(addr, a, nil, log)
}

// serveAgentHandler serves an agent's handler on addr: over TLS with
// tlsCfg (a registered agent's mTLS), else cleartext (h2c).
func serveAgentHandler(addr string, a *agent.Agent, tlsCfg *tls.Config, log *slog.Logger) (*servedAgent, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return serveAgentOn(ln, a, tlsCfg, log), nil
}

// serveAgentOn serves an agent's handler on ln, as serveAgentHandler.
func serveAgentOn(ln net.Listener, a *agent.Agent, tlsCfg *tls.Config, log *slog.Logger) *servedAgent {
	s := &servedAgent{agent: a, srv: agent.NewServer(ln.Addr().String(), a, log), addr: ln.Addr(), served: make(chan error, 1)}
	if tlsCfg != nil {
		s.srv.TLSConfig = tlsCfg
		go func() { s.served <- s.srv.ServeTLS(ln, "", "") }()
		return s
	}
	go func() { s.served <- s.srv.Serve(ln) }()
	return s
}

// stop shuts the server down, cutting the calls still in progress (an
// exec that runs on) after 10 s, and returns the error serving ended with
// (none when it was the shutdown).
func (s *servedAgent) stop(log *slog.Logger) error {
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		log.Warn("closing the calls still in progress", "err", err)
		_ = s.srv.Close()
	}
	if err := <-s.served; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// commandLogger is the logger of `capsule serve` and `capsule agent`: text
// on stderr, debug with -v, with the request ID, team and sandbox of the
// context on every line (logctx).
func commandLogger(verbose bool) *slog.Logger {
	level := slog.LevelInfo
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(logctx.NewHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})))
}
