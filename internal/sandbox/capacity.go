package sandbox

import "fmt"

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
