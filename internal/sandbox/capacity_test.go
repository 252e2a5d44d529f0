package sandbox

import (
	"errors"
	"testing"
)

func TestUsageNeverOvercommits(t *testing.T) {
	limit := Capacity{VCPUs: 4, MemoryMB: 1024, DiskMB: 2048}
	tests := []struct {
		name             string
		vcpus, mem, disk int
		ok               bool
	}{
		{"fits", 2, 512, 1024, true},
		{"fits exactly", 2, 512, 1024, true},
		{"one vCPU too many", 1, 0, 0, false},
		{"memory too much", 0, 1, 0, false},
		{"disk too much", 0, 0, 1, false},
	}
	var u usage
	for _, tc := range tests {
		err := u.reserve(limit, tc.vcpus, tc.mem, tc.disk)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrCapacity)) {
			t.Fatalf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	u.release(2, 512, 1024)
	if err := u.reserve(limit, 2, 512, 1024); err != nil {
		t.Fatalf("after release: %v", err)
	}
	var unlimited usage
	if err := unlimited.reserve(Capacity{}, 1000, 1<<20, 1<<30); err != nil {
		t.Fatalf("zero capacity means unlimited: %v", err)
	}
}
