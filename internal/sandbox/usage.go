package sandbox

import (
	"context"
	"errors"
)

// Usage is what a host offers and what its sandboxes hold now, as a host
// agent reports it to the control plane.
type Usage struct {
	// Capacity is Config.Capacity (zero fields: unlimited).
	Capacity Capacity
	// Used is what the sandboxes hold: CPU and memory of the machines
	// that run or are on their way, disk of every sandbox (the same
	// reservations that admission counts).
	Used Capacity
	// Running counts sandboxes with a machine (starting, running,
	// pausing, resuming), Paused those paused; Sandboxes all of them
	// (stopped and error included).
	Running, Paused, Sandboxes int
}

// Usage reports the host's capacity, its reservations and its sandboxes.
func (m *Manager) Usage() Usage {
	m.mu.Lock()
	u := Usage{Capacity: m.cfg.Capacity,
		Used: Capacity{VCPUs: m.used.vcpus, MemoryMB: m.used.memMB, DiskMB: m.used.diskMB}}
	m.mu.Unlock()
	for _, in := range m.List() {
		u.Sandboxes++
		switch in.State {
		case StatePaused:
			u.Paused++
		case StateStarting, StateRunning, StatePausing, StateResuming:
			u.Running++
		}
	}
	return u
}

// DestroyAll destroys every sandbox of the host (a host deleted from the
// control plane keeps nothing). It goes on past failures and reports them
// all.
func (m *Manager) DestroyAll(ctx context.Context) error {
	var errs []error
	for _, in := range m.List() {
		if err := m.Destroy(ctx, in.ID); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
