package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"

	"github.com/capsulehq/capsule/internal/agent"
	"github.com/capsulehq/capsule/internal/agentreg"
)

// exitHostDeleted is the exit status of an agent whose host the control
// plane deleted (it destroyed its sandboxes first).
const exitHostDeleted = 3

// runRegisteredAgent is `capsule agent --control-plane URL`: it registers
// (once), serves the agent over mutual TLS with the issued certificate,
// and beats until it is stopped or the host is deleted.
func runRegisteredAgent(ctx context.Context, o *agentOptions, log *slog.Logger) error {
	hc, err := agentreg.NewHTTPClient(o.caFile)
	if err != nil {
		return fmt.Errorf("agent: --ca-file: %w", err)
	}
	total, _, err := agentreg.DiskMB(o.dataDir)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	host := &agentreg.ManagerHost{DataDir: o.dataDir, DiskHeadroomMB: o.diskHeadroomMB}
	cl, err := agentreg.Open(agentreg.Config{
		ControlPlane: o.controlPlane, HTTPClient: hc, Dir: filepath.Join(o.dataDir, "agent"), Host: host,
		Facts: agentreg.Facts{Arch: runtime.GOARCH, VCPUs: int32(runtime.NumCPU()), MemoryMB: int64(hostMemoryMB()),
			DiskMB: total, Address: o.address},
		Version: agent.BinaryVersion(), Log: log,
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	// Before the images are built: a missing token is said at once.
	if !cl.Registered() && o.registerToken == "" {
		return fmt.Errorf("agent: %w", agentreg.ErrNotRegistered)
	}

	hs, err := startHost(ctx, &o.hostOptions, log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer hs.stop()
	host.Manager = hs.mgr
	if err := cl.EnsureRegistered(ctx, o.registerToken); err != nil {
		return fmt.Errorf("agent: %w", err)
	}

	a, err := agent.New(agent.Config{Manager: hs.mgr, ClientCertAuth: true, Images: hs.images, Driver: hs.driver,
		Capacity: o.capacity, Log: log})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	sa, err := serveAgentHandler(o.listen, a, cl.TLSConfig(), log)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	log.InfoContext(ctx, "agent listening (mTLS)", "url", "https://"+sa.addr.String(), "host", cl.HostID(),
		"control_plane", o.controlPlane, "accel", hs.driver.Accel(), "max_vcpus", o.capacity.VCPUs,
		"max_memory_mb", o.capacity.MemoryMB, "max_disk_mb", o.capacity.DiskMB)
	fmt.Printf("capsule agent: host %s listening on https://%s\n", cl.HostID(), sa.addr)

	rctx, stopBeats := context.WithCancel(ctx)
	defer stopBeats()
	beats := make(chan error, 1)
	go func() { beats <- cl.Run(rctx) }()

	var result error
	select {
	case err := <-sa.served:
		result = fmt.Errorf("agent: serve: %w", err)
	case err := <-beats:
		if errors.Is(err, agentreg.ErrHostDeleted) {
			result = fmt.Errorf("agent: %w", err)
		}
	case <-ctx.Done():
	}
	stopBeats()
	log.Info("agent stopping")
	if err := sa.stop(log); err != nil && result == nil {
		result = fmt.Errorf("agent: serve: %w", err)
	}
	return result
}
