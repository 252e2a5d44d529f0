package sandbox

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/capsulehq/capsule/internal/egress"
)

// State is a sandbox's lifecycle state.
type State string

const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	StatePausing  State = "pausing"
	StatePaused   State = "paused"
	StateResuming State = "resuming"
	// StateStopped: the sandbox's machine died (or an agent died in the
	// middle of starting it) and its memory is lost; its disk is kept.
	// Resume boots it cold from that disk; Destroy removes it.
	StateStopped State = "stopped"
	// StateError: the agent cannot use the sandbox (its state file was
	// unreadable and has been set aside as state.json.corrupt-<time>);
	// its directory and disk are kept for an operator. Only Destroy
	// applies.
	StateError State = "error"
)

// record is what state.json holds: everything needed to resume or clean a
// sandbox after the agent restarts.
type record struct {
	ID       string `json:"id"`
	State    State  `json:"state"`
	Template string `json:"template"`
	ImageID  string `json:"imageId"`
	Kernel   string `json:"kernel"`
	Initrd   string `json:"initrd"`
	VCPUs    int    `json:"vcpus"`
	MemoryMB int    `json:"memoryMB"`
	DiskMB   int    `json:"diskMB"`
	Egress   bool   `json:"egress"`
	// AccessToken and EnvVars are sealed on disk (Sealed, seal.go).
	AccessToken string `json:"-"`
	DefaultUser string `json:"defaultUser,omitempty"`
	// DefaultWorkdir: see CreateOptions.
	DefaultWorkdir string            `json:"defaultWorkdir,omitempty"`
	EnvVars        map[string]string `json:"-"`
	Sealed         string            `json:"sealed,omitempty"`
	// Plaintext fields of state files written before sealing, read once.
	LegacyAccessToken string            `json:"accessToken,omitempty"`
	LegacyEnvVars     map[string]string `json:"envVars,omitempty"`
	Metadata          map[string]string `json:"metadata,omitempty"`
	TimeoutSec        int               `json:"timeoutSec,omitempty"`
	CreatedAt         time.Time         `json:"createdAt"`
	// RestoredFrom names the snapshot template the sandbox was restored
	// from at creation ("" for a cold boot).
	RestoredFrom string `json:"restoredFrom,omitempty"`
	// Snapshot is the directory of the current memory snapshot while
	// paused (a new generation per pause).
	Snapshot   string `json:"snapshot,omitempty"`
	Generation int    `json:"generation"`
	// DiskOnly: paused without its memory (PauseFilesystem); resuming
	// boots it cold from its disk.
	DiskOnly bool `json:"diskOnly,omitempty"`
	// VMMPid and SlotIndex describe the running machine, for cleanup.
	VMMPid    int `json:"vmmPid,omitempty"`
	SlotIndex int `json:"slotIndex,omitempty"`
	// PendingSnapshot is the directory a pause is writing (State
	// pausing): after a crash it is the new state if complete, else
	// discarded.
	PendingSnapshot string `json:"pendingSnapshot,omitempty"`
	// StateReason says why a sandbox is stopped or in error.
	StateReason string `json:"stateReason,omitempty"`
	// Hostname is the guest's hostname set by /init (CreateOptions).
	Hostname string `json:"hostname,omitempty"`

	// Network are the egress rules; nil (state files from before rules,
	// and sandboxes created without) means Egress on or off.
	Network *egress.Rules `json:"network,omitempty"`
}

// writeRecord replaces dir/state.json durably: a temporary file, synced,
// renamed over the old one, and the directory synced, so that a crash at
// any moment leaves the old record or the new one, complete.
func (m *Manager) writeRecord(dir string, r *record) error {
	disk := *r
	disk.LegacyAccessToken, disk.LegacyEnvVars, disk.Sealed = "", nil, ""
	if r.AccessToken != "" || len(r.EnvVars) > 0 {
		sealed, err := seal(m.key, "sandbox:"+r.ID, recordSecrets{AccessToken: r.AccessToken, EnvVars: r.EnvVars})
		if err != nil {
			return fmt.Errorf("write state: %w", err)
		}
		disk.Sealed = sealed
	}
	b, err := json.MarshalIndent(&disk, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileDurable(filepath.Join(dir, "state.json"), b); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// writeFileDurable writes path through a synced temporary file, a rename
// and a sync of the directory.
func writeFileDurable(path string, b []byte) error {
	dir := filepath.Dir(path)
	tmp := filepath.Join(dir, "."+filepath.Base(path)+".tmp")
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(dir)
}

// syncDir makes the entries of dir (a rename, a new file) durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// quarantineRecord sets an unreadable dir/state.json aside (renamed to
// state.json.corrupt-<time>) for an operator, and returns the new name.
func quarantineRecord(dir string, now time.Time) (string, error) {
	name := "state.json.corrupt-" + now.UTC().Format("20060102T150405.000000000Z")
	if err := os.Rename(filepath.Join(dir, "state.json"), filepath.Join(dir, name)); err != nil {
		return "", err
	}
	return name, syncDir(dir)
}

func (m *Manager) readRecord(dir string) (*record, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse %s/state.json: %w", dir, err)
	}
	r.AccessToken, r.EnvVars = r.LegacyAccessToken, r.LegacyEnvVars
	r.LegacyAccessToken, r.LegacyEnvVars = "", nil
	if r.Sealed != "" {
		var sec recordSecrets
		if err := unseal(m.key, "sandbox:"+r.ID, r.Sealed, &sec); err != nil {
			return nil, fmt.Errorf("%s/state.json: %w", dir, err)
		}
		r.AccessToken, r.EnvVars = sec.AccessToken, sec.EnvVars
	}
	return &r, nil
}
