package sandbox

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Capacity is what a host may give to sandboxes. Zero fields are
// unlimited.
type Capacity struct {
	VCPUs    int
	MemoryMB int
	DiskMB   int
}

// usage tracks reservations: CPU and memory for machines that run (or are
// starting), disk for every sandbox that exists.
type usage struct {
	vcpus, memMB, diskMB int
}

// reserve adds a request if it fits; it never overcommits.
func (u *usage) reserve(limit Capacity, vcpus, memMB, diskMB int) error {
	if limit.VCPUs > 0 && u.vcpus+vcpus > limit.VCPUs {
		return fmt.Errorf("%w: %d of %d vCPUs in use, %d more requested", ErrCapacity, u.vcpus, limit.VCPUs, vcpus)
	}
	if limit.MemoryMB > 0 && u.memMB+memMB > limit.MemoryMB {
		return fmt.Errorf("%w: %d of %d MiB of memory in use, %d more requested", ErrCapacity, u.memMB, limit.MemoryMB, memMB)
	}
	if limit.DiskMB > 0 && u.diskMB+diskMB > limit.DiskMB {
		return fmt.Errorf("%w: %d of %d MiB of disk in use, %d more requested", ErrCapacity, u.diskMB, limit.DiskMB, diskMB)
	}
	u.vcpus += vcpus
	u.memMB += memMB
	u.diskMB += diskMB
	return nil
}

func (u *usage) release(vcpus, memMB, diskMB int) {
	u.vcpus -= vcpus
	u.memMB -= memMB
	u.diskMB -= diskMB
}

// checkDisk refuses an operation that writes about needMB MiB into the
// data directory when its filesystem would then have less than
// Config.DiskHeadroomMB free (ErrNoSpace). Creates pass 0: an overlay is
// small, but the guest's writes land in it, so a host at its headroom
// takes no new sandbox. Pauses and snapshots pass the memory they write
// (and the disk copy of a snapshot). A headroom of 0 checks nothing.
func (m *Manager) checkDisk(op string, needMB int64) error {
	headroom := m.headroomMB.Load()
	if headroom <= 0 {
		return nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(m.cfg.DataDir, &st); err != nil {
		return fmt.Errorf("%s: free space of %s: %w", op, m.cfg.DataDir, err)
	}
	freeMB := int64(st.Bavail) * int64(st.Bsize) >> 20
	if freeMB-needMB < headroom {
		return fmt.Errorf("%w: %s needs about %d MiB; the host's data disk has %d MiB free and keeps %d MiB free",
			ErrNoSpace, op, needMB, freeMB, headroom)
	}
	return nil
}
