package agentreg

import (
	"context"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// Host is what the Client needs of the machine's sandboxes.
type Host interface {
	// Report is the host's resources and sandbox counts.
	Report() Report
	// PauseAll pauses every running sandbox, keeping its memory (it stays
	// resumable).
	PauseAll(ctx context.Context) error
	// DestroyAll destroys every sandbox.
	DestroyAll(ctx context.Context) error
}

// Report is a heartbeat's account of the host.
type Report struct {
	Total, Used hostapi.Resources
	// MaxVCPUs is the vCPU capacity the host declares (0: none; the
	// control plane applies its overcommit to Total.VCPUs).
	MaxVCPUs                   int32
	Running, Paused, Sandboxes int32
}

// ManagerHost is a sandbox.Manager as a Host.
type ManagerHost struct {
	Manager *sandbox.Manager
	// DataDir is the data directory, whose filesystem is the disk offered
	// when the manager's capacity leaves disk unlimited.
	DataDir string
	// DiskHeadroomMB is the free space the data disk keeps (not offered).
	DiskHeadroomMB int64
	// CPUs is the machine's CPU count (0: runtime.NumCPU()). The
	// heartbeat's total vCPUs are these CPUs, as at registration: the
	// control plane's scheduler applies its own CPU overcommit to them.
	// The manager's vCPU capacity (-max-vcpus), when set, is reported
	// apart (Report.MaxVCPUs): a count of vCPUs the host declares, which
	// the scheduler uses instead of CPUs × overcommit, and beyond which
	// the manager refuses (ResourceExhausted).
	CPUs int
}

var _ Host = ManagerHost{}

// Report implements Host: the manager's capacity and reservations. With
// no disk capacity set, the disk offered is the data directory's
// filesystem less the headroom, and what is used of it is what the
// filesystem says.
func (h ManagerHost) Report() Report {
	u := h.Manager.Usage()
	r := Report{
		Total:     hostapi.Resources{VCPUs: int32(h.cpus()), MemoryMB: int64(u.Capacity.MemoryMB), DiskMB: int64(u.Capacity.DiskMB)},
		Used:      hostapi.Resources{VCPUs: int32(u.Used.VCPUs), MemoryMB: int64(u.Used.MemoryMB), DiskMB: int64(u.Used.DiskMB)},
		MaxVCPUs:  int32(u.Capacity.VCPUs),
		Running:   int32(u.Running),
		Paused:    int32(u.Paused),
		Sandboxes: int32(u.Sandboxes),
	}
	if u.Capacity.DiskMB == 0 {
		if total, free, err := DiskMB(h.DataDir); err == nil {
			r.Total.DiskMB = max(total-h.DiskHeadroomMB, 0)
			r.Used.DiskMB = total - free
		}
	}
	return r
}

// cpus is CPUs or the machine's count.
func (h ManagerHost) cpus() int {
	if h.CPUs > 0 {
		return h.CPUs
	}
	return runtime.NumCPU()
}

// PauseAll implements Host.
func (h ManagerHost) PauseAll(ctx context.Context) error { return h.Manager.PauseAll(ctx) }

// DestroyAll implements Host.
func (h ManagerHost) DestroyAll(ctx context.Context) error { return h.Manager.DestroyAll(ctx) }

// DiskMB is the size and the free space (for unprivileged users) of the
// filesystem of dir, in MiB.
func DiskMB(dir string) (total, free int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, err
	}
	return int64(st.Blocks) * int64(st.Bsize) >> 20, int64(st.Bavail) * int64(st.Bsize) >> 20, nil
}
