package capsule

import (
	"context"
	"net/http"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// Snapshot is a template: a snapshot of a sandbox (memory and disk: new
// sandboxes start where it was) or an image (a disk that boots).
type Snapshot struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Kind is "snapshot" or "image".
	Kind     string `json:"kind"`
	VCPUs    int    `json:"vcpus"`
	MemoryMB int    `json:"memory_mb"`
	DiskMB   int    `json:"disk_mb"`
	// SizeBytes is what its files take on the host.
	SizeBytes int64 `json:"size_bytes"`
	// Public: a platform template every team can use and none can delete.
	Public bool `json:"public"`
	// SourceSandboxID is the sandbox it was taken from ("" for an image).
	SourceSandboxID string    `json:"source_sandbox_id,omitempty"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
}

func snapshotFrom(w wire.Snapshot) Snapshot {
	return Snapshot{ID: w.Id, Name: w.Name, Kind: string(w.Kind), VCPUs: w.Vcpus, MemoryMB: w.MemoryMb, DiskMB: w.DiskMb,
		SizeBytes: int64(w.SizeBytes), Public: w.Public, SourceSandboxID: deref(w.SourceSandboxId),
		CreatedAt: w.CreatedAt, UpdatedAt: w.UpdatedAt}
}

// SnapshotService manages snapshot templates (Client.Snapshots).
type SnapshotService struct{ c *Client }

// Create takes a snapshot of the running sandbox sandboxID under name (a
// template of the team: Sandboxes.Create with Template: name starts from
// it). The sandbox goes on running. overwrite replaces the team's snapshot
// of that name.
func (s *SnapshotService) Create(ctx context.Context, sandboxID, name string, overwrite bool) (Snapshot, error) {
	var out wire.Snapshot
	resp, err := s.c.wire.CreateSnapshot(ctx, wire.CreateSnapshotRequest{SandboxId: sandboxID, Name: name, Overwrite: ptrOrNil(overwrite)})
	if err := decode(resp, err, http.StatusCreated, &out); err != nil {
		return Snapshot{}, err
	}
	return snapshotFrom(out), nil
}

// List returns the templates the team can use: its snapshots and the
// public images.
func (s *SnapshotService) List(ctx context.Context) ([]Snapshot, error) {
	var out wire.SnapshotList
	resp, err := s.c.wire.ListSnapshots(ctx)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	list := make([]Snapshot, len(out.Snapshots))
	for i, w := range out.Snapshots {
		list[i] = snapshotFrom(w)
	}
	return list, nil
}

// Get returns the template name.
func (s *SnapshotService) Get(ctx context.Context, name string) (Snapshot, error) {
	var out wire.Snapshot
	resp, err := s.c.wire.GetSnapshot(ctx, name)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Snapshot{}, err
	}
	return snapshotFrom(out), nil
}

// Delete removes the team's snapshot name.
func (s *SnapshotService) Delete(ctx context.Context, name string) error {
	resp, err := s.c.wire.DeleteSnapshot(ctx, name)
	return decode(resp, err, http.StatusNoContent, nil)
}
