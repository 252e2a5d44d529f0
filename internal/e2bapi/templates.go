package e2bapi

import (
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
			TemplateID: s.Name, BuildID: s.ID.String(), CPUCount: s.VCPUs, MemoryMB: s.MemoryMB,
			DiskSizeMB: s.DiskMB, Public: s.Public, Aliases: []string{s.Name}, Names: []string{s.Name},
			CreatedAt: s.CreatedAt.UTC(), UpdatedAt: s.CreatedAt.UTC(), BuildCount: 1,
			EnvdVersion: envdapi.Version, BuildStatus: "ready",
		})
	}
	writeJSON(w, http.StatusOK, out)
}

// templateAlias: {templateID, public} of a template the team can create
// sandboxes from; 404 otherwise.
func (h *Handler) templateAlias(w http.ResponseWriter, r *http.Request, p service.Principal, alias string) {
	// A name with only tagged versions exists too (Template.exists).
	ref, ok, err := h.cfg.Sandboxes.TemplateNameExists(r.Context(), p, alias)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if !ok {
		h.fail(w, r, &service.Error{Kind: service.ErrNotFound, Msg: "template " + strconv.Quote(alias) + " not found"})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"templateID": ref.Name, "public": ref.Public})
}
