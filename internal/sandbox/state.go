package sandbox

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// State is a sandbox's lifecycle state.
type State string

const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	StatePausing  State = "pausing"
	StatePaused   State = "paused"
	StateResuming State = "resuming"
)

// record is what state.json holds: everything needed to resume or clean a
// sandbox after the agent restarts.
type record struct {
	ID          string            `json:"id"`
	State       State             `json:"state"`
	Template    string            `json:"template"`
	ImageID     string            `json:"imageId"`
	Kernel      string            `json:"kernel"`
	Initrd      string            `json:"initrd"`
	VCPUs       int               `json:"vcpus"`
	MemoryMB    int               `json:"memoryMB"`
	DiskMB      int               `json:"diskMB"`
	Egress      bool              `json:"egress"`
	AccessToken string            `json:"accessToken,omitempty"`
	DefaultUser string            `json:"defaultUser,omitempty"`
	EnvVars     map[string]string `json:"envVars,omitempty"`
	Metadata    map[string]string `json:"metadata,omitempty"`
	TimeoutSec  int               `json:"timeoutSec,omitempty"`
	CreatedAt   time.Time         `json:"createdAt"`
	// RestoredFrom names the snapshot template the sandbox was restored
	// from at creation ("" for a cold boot).
	RestoredFrom string `json:"restoredFrom,omitempty"`
	// Snapshot is the directory of the current memory snapshot while
	// paused (a new generation per pause).
	Snapshot   string `json:"snapshot,omitempty"`
	Generation int    `json:"generation"`
	// VMMPid and SlotIndex describe the running machine, for cleanup.
	VMMPid    int `json:"vmmPid,omitempty"`
	SlotIndex int `json:"slotIndex,omitempty"`
}

func writeRecord(dir string, r *record) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "state.json")); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

func readRecord(dir string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse %s/state.json: %w", dir, err)
	}
	return &r, nil
}
