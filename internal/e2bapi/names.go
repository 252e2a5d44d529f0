package e2bapi

import (
	"net/http"
	"strings"

	"github.com/capsulehq/capsule/internal/service"
)

// E2B names templates and snapshots "[<team slug>/]<name>[:<tag>]". Here a
// template is a name within the team (its own, a public one or a built-in
// image), the team's namespace is its slug, and the only tag is
// "default". A snapshot's snapshotID is its full name,
// "<slug>/<name>:default", which the SDK URL-encodes into paths
// (DELETE /templates/team%2Fname%3Adefault): Go's mux decodes a path
// value, so each route sees the name as it was sent.

// defaultTag is the one tag a template has here.
const defaultTag = "default"

// localName turns an E2B template reference into a template name of p's
// team: "name", "name:default", "<its slug>/name[:default]". ok is false
// when the reference names nothing the team can have (another team's
// namespace, another tag).
func (h *Handler) localName(r *http.Request, p service.Principal, ref string) (name string, ok bool, err error) {
	name, tag, hasTag := strings.Cut(ref, ":")
	if hasTag && tag != defaultTag {
		return "", false, nil
	}
	if ns, rest, namespaced := strings.Cut(name, "/"); namespaced {
		slug, err := h.cfg.Sandboxes.TeamSlug(r.Context(), p)
		if err != nil {
			return "", false, err
		}
		if ns != slug {
			return "", false, nil
		}
		name = rest
	}
	if name == "" || strings.ContainsAny(name, "/:") {
		return "", false, nil
	}
	return name, true, nil
}

// fullName is a snapshot's E2B name (its snapshotID): "<slug>/<name>:default".
func fullName(slug, name string) string { return slug + "/" + name + ":" + defaultTag }
