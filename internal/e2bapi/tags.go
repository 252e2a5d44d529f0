package e2bapi

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/service"
)

// E2B's template tags (spec e2b-compat-2 §1): Template.assignTags,
// removeTags and getTags, over service's tags (templatetags.go). A
// template reference may carry the team's namespace ("<slug>/name:tag").

type assignTagsJSON struct {
	Target string   `json:"target"`
	Tags   []string `json:"tags"`
}

type removeTagsJSON struct {
	Name string   `json:"name"`
	Tags []string `json:"tags"`
}

// tagRef splits "[<slug>/]name[:tag]" into the team's template name and
// the tag ("" none); ok false: nothing of the team.
func (h *Handler) tagRef(r *http.Request, p service.Principal, ref string) (name, tag string, ok bool, err error) {
	base, tag, _ := strings.Cut(ref, ":")
	name, ok, err = h.localName(r, p, base)
	return name, tag, ok, err
}

// assignTags: POST /templates/tags {target: "name:tag", tags} → 201
// {buildID, tags}.
func (h *Handler) assignTags(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req assignTagsJSON
	if _, err := decode(w, r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	if req.Target == "" || len(req.Tags) == 0 {
		h.fail(w, r, invalid("target and tags: required"))
		return
	}
	name, from, ok, err := h.tagRef(r, p, req.Target)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if !ok {
		h.fail(w, r, &service.Error{Kind: service.ErrNotFound, Msg: "template " + strconv.Quote(req.Target) + " not found"})
		return
	}
	tags, err := service.NormalizeTags(req.Tags)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	build, err := h.cfg.Sandboxes.AssignTemplateTags(r.Context(), p, name, from, tags)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]any{"buildID": build, "tags": tags})
}

// removeTags: DELETE /templates/tags {name, tags} → 204.
func (h *Handler) removeTags(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req removeTagsJSON
	if _, err := decode(w, r, &req); err != nil {
		h.fail(w, r, err)
		return
	}
	if req.Name == "" || len(req.Tags) == 0 {
		h.fail(w, r, invalid("name and tags: required"))
		return
	}
	name, tag, ok, err := h.tagRef(r, p, req.Name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if !ok || (tag != "" && tag != defaultTag) {
		h.fail(w, r, &service.Error{Kind: service.ErrNotFound, Msg: "template " + strconv.Quote(req.Name) + " not found"})
		return
	}
	if err := h.cfg.Sandboxes.RemoveTemplateTags(r.Context(), p, name, req.Tags); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type templateTagJSON struct {
	Tag       string    `json:"tag"`
	BuildID   string    `json:"buildID"`
	CreatedAt time.Time `json:"createdAt"`
}

// templateAliasOrTags serves GET /templates/aliases/{alias}
// (templateAlias) and GET /templates/{templateID}/tags (templateTags).
func (h *Handler) templateAliasOrTags(w http.ResponseWriter, r *http.Request, p service.Principal) {
	switch id, what := r.PathValue("templateID"), r.PathValue("what"); {
	case id == "aliases":
		h.templateAlias(w, r, p, what)
	case what == "tags":
		h.templateTags(w, r, p, id)
	default:
		writeError(w, http.StatusNotFound, "no such route")
	}
}

// templateTags: GET /templates/{templateID}/tags → [{tag, buildID, createdAt}].
func (h *Handler) templateTags(w http.ResponseWriter, r *http.Request, p service.Principal, ref string) {
	name, _, ok, err := h.tagRef(r, p, ref)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if !ok {
		h.fail(w, r, &service.Error{Kind: service.ErrNotFound, Msg: "template " + strconv.Quote(ref) + " not found"})
		return
	}
	tags, err := h.cfg.Sandboxes.TemplateTags(r.Context(), p, name)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]templateTagJSON, len(tags))
	for i, t := range tags {
		out[i] = templateTagJSON{Tag: t.Tag, BuildID: t.BuildID, CreatedAt: t.CreatedAt}
	}
	writeJSON(w, http.StatusOK, out)
}
