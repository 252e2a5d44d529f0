package e2bapi

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/api"
	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

// maxMetricsIDs bounds GET /sandboxes/metrics?sandbox_ids=.
const maxMetricsIDs = 100

// metrics: the sandbox's samples within start..end (unix seconds; both
// optional), from its metrics history.
func (h *Handler) metrics(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := sandboxID(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var window [2]time.Time
	for i, name := range []string{"start", "end"} {
		v := r.URL.Query().Get(name)
		if v == "" {
			continue
		}
		sec, err := strconv.ParseInt(v, 10, 64)
		if err != nil || sec < 0 || sec > 1<<40 {
			h.fail(w, r, invalid("%s: unix seconds", name))
			return
		}
		window[i] = time.Unix(sec, 0)
	}
	if !window[0].IsZero() && !window[1].IsZero() && window[1].Before(window[0]) {
		h.fail(w, r, invalid("end is before start"))
		return
	}
	ms, err := h.cfg.Sandboxes.Metrics(r.Context(), p, id, window[0], window[1])
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]metricJSON, len(ms))
	for i, m := range ms {
		out[i] = metricOf(m)
	}
	writeJSON(w, http.StatusOK, out)
}

// metricsMany: the latest sample of each running sandbox named in
// sandbox_ids (comma-separated, at most 100); others are left out.
func (h *Handler) metricsMany(w http.ResponseWriter, r *http.Request, p service.Principal) {
	ids := api.MultiValue(r.URL.Query(), "sandbox_ids")
	if len(ids) == 0 || len(ids) > maxMetricsIDs {
		h.fail(w, r, invalid("sandbox_ids: 1 to %d comma-separated sandbox IDs", maxMetricsIDs))
		return
	}
	out := map[string]metricJSON{}
	for _, raw := range ids {
		wire, _, _ := strings.Cut(raw, "-")
		id, err := wireid.ParseSandboxID(wire)
		if err != nil {
			continue
		}
		// The latest sample: the last 10 seconds.
		now := time.Now()
		ms, err := h.cfg.Sandboxes.Metrics(r.Context(), p, id, now.Add(-10*time.Second), now)
		if errors.Is(err, service.ErrNotFound) {
			continue
		}
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if len(ms) > 0 {
			out[wire] = metricOf(ms[len(ms)-1])
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"sandboxes": out})
}

type snapshotRequestJSON struct {
	Name string `json:"name"`
}

// createSnapshot: a snapshot template (memory and disk) of a running
// sandbox, which goes on running. Its snapshotID is its name, usable as
// templateID; a name in use is taken over by the new snapshot (E2B points
// a name at its newest build). Without a name one is made up.
func (h *Handler) createSnapshot(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, _, err := h.visible(r, p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var body snapshotRequestJSON
	if _, err := decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	name := body.Name
	if name == "" {
		var b [6]byte
		_, _ = rand.Read(b[:])
		name = "snapshot-" + hex.EncodeToString(b[:])
	} else if name, err = templateName(name); err != nil {
		h.fail(w, r, invalid("name: only the tag \"default\" is supported"))
		return
	}
	snap, _, err := h.cfg.Sandboxes.CreateSnapshot(r.Context(), p, service.CreateSnapshotRequest{SandboxID: id, Name: name, Overwrite: true})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, snapshotInfoJSON{SnapshotID: snap.Name, Names: []string{snap.Name}})
}

// listSnapshots: the team's own snapshots by name, ?sandboxID= and ?name=
// filter, ?limit= (1..100, 100) and ?nextToken= page (X-Next-Token when
// there is a next page).
func (h *Handler) listSnapshots(w http.ResponseWriter, r *http.Request, p service.Principal) {
	q := r.URL.Query()
	limit := maxListLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			h.fail(w, r, invalid("limit: 1 to %d", maxListLimit))
			return
		}
		limit = n
	}
	var after string
	if tok := q.Get("nextToken"); tok != "" {
		b, err := base64.RawURLEncoding.DecodeString(tok)
		if err != nil || len(b) == 0 {
			h.fail(w, r, invalid("nextToken: malformed"))
			return
		}
		after = string(b)
	}
	source := q.Get("sandboxID")
	if source != "" {
		source, _, _ = strings.Cut(source, "-")
	}
	name := q.Get("name")
	if name != "" {
		var err error
		if name, err = templateName(name); err != nil {
			writeJSON(w, http.StatusOK, []snapshotInfoJSON{})
			return
		}
	}
	all, err := h.cfg.Sandboxes.ListSnapshots(r.Context(), p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := []snapshotInfoJSON{}
	next := ""
	for _, s := range all { // by name
		switch {
		case s.Public, s.Name <= after && after != "",
			source != "" && service.ID(s.SourceSandboxID) != source,
			name != "" && s.Name != name:
			continue
		}
		if len(out) == limit {
			next = base64.RawURLEncoding.EncodeToString([]byte(out[len(out)-1].SnapshotID))
			break
		}
		out = append(out, snapshotInfoJSON{SnapshotID: s.Name, Names: []string{s.Name}})
	}
	if next != "" {
		w.Header().Set("X-Next-Token", next)
	}
	writeJSON(w, http.StatusOK, out)
}

// deleteTemplate deletes a snapshot of the team (E2B's deleteSnapshot):
// 204, 404 when the team has none of that name.
func (h *Handler) deleteTemplate(w http.ResponseWriter, r *http.Request, p service.Principal) {
	name, err := templateName(r.PathValue("templateID"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if err := h.cfg.Sandboxes.DeleteSnapshot(r.Context(), p, name); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// listTemplates: the built-in images, then the team's and the public
// snapshot templates by name.
func (h *Handler) listTemplates(w http.ResponseWriter, r *http.Request, p service.Principal) {
	snaps, err := h.cfg.Sandboxes.ListSnapshots(r.Context(), p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	builtin, err := h.cfg.Sandboxes.BuiltinTemplates(r.Context())
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := []templateJSON{}
	for _, name := range builtin {
		out = append(out, templateJSON{
			TemplateID: name, BuildID: name, CPUCount: service.DefaultVCPUs, MemoryMB: service.DefaultMemoryMB,
			Public: true, Aliases: []string{name}, Names: []string{name}, BuildCount: 1,
			EnvdVersion: envdapi.Version, BuildStatus: "ready",
		})
	}
	seen := map[string]bool{}
	for _, s := range snaps {
		if seen[s.Name] { // the team's own shadows a public one
			continue
		}
		seen[s.Name] = true
		out = append(out, templateJSON{
			TemplateID: s.Name, BuildID: service.TemplateID(s.ID), CPUCount: s.VCPUs, MemoryMB: s.MemoryMB,
			DiskSizeMB: s.DiskMB, Public: s.Public, Aliases: []string{s.Name}, Names: []string{s.Name},
			CreatedAt: s.CreatedAt.UTC(), UpdatedAt: s.CreatedAt.UTC(), BuildCount: 1,
			EnvdVersion: envdapi.Version, BuildStatus: "ready",
		})
	}
	writeJSON(w, http.StatusOK, out)
}

// templateAlias: {templateID, public} of a template the team can create
// sandboxes from; 404 otherwise.
func (h *Handler) templateAlias(w http.ResponseWriter, r *http.Request, p service.Principal) {
	ref, err := h.cfg.Sandboxes.LookupTemplate(r.Context(), p, r.PathValue("alias"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"templateID": ref.Name, "public": ref.Public})
}
