package e2bapi

import (
	"crypto/rand"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

type snapshotRequestJSON struct {
	Name string `json:"name"`
}

// createSnapshot: a snapshot template (memory and disk) of a running
// sandbox, which goes on running. Its snapshotID is its full name
// ("<slug>/<name>:default"), usable as templateID; a name in use is taken
// over by the new snapshot (E2B points a name at its newest build).
// Without a name one is made up.
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
	} else {
		local, ok, err := h.localName(r, p, name)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		if !ok {
			h.fail(w, r, invalid("name: a name of this team with the tag \"default\" (name, name:default or <team>/name:default)"))
			return
		}
		name = local
	}
	slug, err := h.cfg.Sandboxes.TeamSlug(r.Context(), p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	snap, _, err := h.cfg.Sandboxes.CreateSnapshot(r.Context(), p, service.CreateSnapshotRequest{SandboxID: id, Name: name, Overwrite: true})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	full := fullName(slug, snap.Name)
	writeJSON(w, http.StatusCreated, snapshotInfoJSON{SnapshotID: full, Names: []string{full}})
}

// listSnapshots: the team's own snapshots of sandboxes newest first;
// ?sandboxID= and ?name= filter (a filter naming nothing: no snapshot),
// ?limit= (1..100, 100) and ?nextToken= page, the next page's token in
// X-Next-Token only when there is one.
func (h *Handler) listSnapshots(w http.ResponseWriter, r *http.Request, p service.Principal) {
	q := r.URL.Query()
	f := service.SnapshotFilter{Limit: maxListLimit, Cursor: q.Get("nextToken")}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxListLimit {
			h.fail(w, r, invalid("limit: 1 to %d", maxListLimit))
			return
		}
		f.Limit = n
	}
	none := false
	if v := q.Get("sandboxID"); v != "" {
		raw, _, _ := strings.Cut(v, "-")
		id, err := wireid.ParseSandboxID(raw)
		if err != nil {
			none = true // names no sandbox: no snapshot of it
		}
		f.SandboxID = id
	}
	if v := q.Get("name"); v != "" {
		name, ok, err := h.localName(r, p, v)
		if err != nil {
			h.fail(w, r, err)
			return
		}
		none = none || !ok
		f.Name = name
	}
	slug, err := h.cfg.Sandboxes.TeamSlug(r.Context(), p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := []snapshotInfoJSON{}
	if none {
		writeJSON(w, http.StatusOK, out)
		return
	}
	items, next, err := h.cfg.Sandboxes.ListSnapshotPage(r.Context(), p, f)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	for _, s := range items {
		full := fullName(slug, s.Name)
		out = append(out, snapshotInfoJSON{SnapshotID: full, Names: []string{full}})
	}
	if next != "" {
		w.Header().Set("X-Next-Token", next)
	}
	writeJSON(w, http.StatusOK, out)
}

// deleteTemplate deletes a template of the team (E2B's deleteSnapshot
// and template delete) by any of its names ("name", "name:default",
// "<slug>/name:default", URL-encoded in the path): 204; 404 when the team
// has none of that name (deleted already); 403 for a public one.
func (h *Handler) deleteTemplate(w http.ResponseWriter, r *http.Request, p service.Principal) {
	name, ok, err := h.localName(r, p, r.PathValue("templateID"))
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if !ok {
		h.fail(w, r, &service.Error{Kind: service.ErrNotFound, Msg: "template " + strconv.Quote(r.PathValue("templateID")) + " not found"})
		return
	}
	if err := h.cfg.Sandboxes.DeleteSnapshot(r.Context(), p, name); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
