package api

import (
	"net/http"
	"time"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

type createSnapshotJSON struct {
	SandboxID string `json:"sandbox_id"`
	Name      string `json:"name"`
	Overwrite bool   `json:"overwrite"`
}

type snapshotJSON struct {
	// ID is "tpl-" and 32 hex digits.
	ID       string `json:"id"`
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	VCPUs    int32  `json:"vcpus"`
	MemoryMB int32  `json:"memory_mb"`
	// DiskMB is the root filesystem's size as sandboxes see it; SizeBytes
	// what the template's files take on the host.
	DiskMB          int32     `json:"disk_mb"`
	SizeBytes       int64     `json:"size_bytes"`
	SourceSandboxID string    `json:"source_sandbox_id,omitempty"`
	Public          bool      `json:"public"`
	CreatedAt       time.Time `json:"created_at"`
	UpdatedAt       time.Time `json:"updated_at"`
}

func snapshotOf(t service.Snapshot) snapshotJSON {
	return snapshotJSON{
		ID: service.TemplateID(t.ID), Name: t.Name, Kind: t.Kind, VCPUs: t.VCPUs, MemoryMB: t.MemoryMB,
		DiskMB: t.DiskMB, SizeBytes: t.SizeBytes, SourceSandboxID: wireid.Format(wireid.Sandbox, t.SourceSandboxID),
		Public: t.Public, CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt,
	}
}

// createSnapshot: {"sandbox_id", "name", "overwrite"?} → 201, or 200 when
// it replaced the team's snapshot of that name.
func (s *Server) createSnapshot(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req createSnapshotJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	id, err := wireid.ParseSandboxID(req.SandboxID)
	if err != nil {
		s.writeError(w, r, &service.Error{Kind: service.ErrNotFound, Msg: "sandbox not found"})
		return
	}
	snap, replaced, err := s.cfg.Sandboxes.CreateSnapshot(r.Context(), p, service.CreateSnapshotRequest{
		SandboxID: id, Name: req.Name, Overwrite: req.Overwrite,
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	status := http.StatusCreated
	if replaced {
		status = http.StatusOK
	}
	writeJSON(w, status, snapshotOf(snap))
}

// listSnapshots: the team's templates and the public ones.
func (s *Server) listSnapshots(w http.ResponseWriter, r *http.Request, p service.Principal) {
	items, err := s.cfg.Sandboxes.ListSnapshots(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]snapshotJSON, len(items))
	for i, it := range items {
		out[i] = snapshotOf(it)
	}
	writeJSON(w, http.StatusOK, map[string]any{"snapshots": out})
}

func (s *Server) getSnapshot(w http.ResponseWriter, r *http.Request, p service.Principal) {
	snap, err := s.cfg.Sandboxes.GetSnapshot(r.Context(), p, r.PathValue("name"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, snapshotOf(snap))
}

// deleteSnapshot: the team's own only (a public one is 403).
func (s *Server) deleteSnapshot(w http.ResponseWriter, r *http.Request, p service.Principal) {
	if err := s.cfg.Sandboxes.DeleteSnapshot(r.Context(), p, r.PathValue("name")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
