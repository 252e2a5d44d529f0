package api

import (
	"net/http"

	"github.com/capsulehq/capsule/internal/egress"
	"github.com/capsulehq/capsule/internal/service"
)

// networkJSON is a sandbox's egress rules on the /v1 API: the body and
// answer of GET and PUT /v1/sandboxes/{id}/network, and (without
// allow_internet_access, which is the create body's own field) the
// create body's "network".
type networkJSON struct {
	// AllowInternetAccess: false (or "0.0.0.0/0" in deny_out) denies what
	// no list names; absent in a PUT: true.
	AllowInternetAccess *bool `json:"allow_internet_access,omitempty"`
	// AllowOut and DenyOut hold IPv4 addresses, CIDRs and domain names
	// ("*.example.com" too).
	AllowOut []string `json:"allow_out"`
	DenyOut  []string `json:"deny_out"`
}

func (n networkJSON) rules(internet *bool) egress.Rules {
	if n.AllowInternetAccess != nil {
		internet = n.AllowInternetAccess
	}
	return egress.Rules{AllowInternet: internet == nil || *internet, AllowOut: n.AllowOut, DenyOut: n.DenyOut}
}

func networkOf(r egress.Rules) networkJSON {
	out := networkJSON{AllowInternetAccess: &r.AllowInternet, AllowOut: r.AllowOut, DenyOut: r.DenyOut}
	if out.AllowOut == nil {
		out.AllowOut = []string{}
	}
	if out.DenyOut == nil {
		out.DenyOut = []string{}
	}
	return out
}

func (s *Server) getSandboxNetwork(w http.ResponseWriter, r *http.Request, p service.Principal) {
	b, err := sandboxID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	rules, err := s.cfg.Sandboxes.GetNetwork(r.Context(), p, b)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, networkOf(rules))
}

// setSandboxNetwork replaces the sandbox's egress rules, all of them.
func (s *Server) setSandboxNetwork(w http.ResponseWriter, r *http.Request, p service.Principal) {
	b, err := sandboxID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req networkJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	rules, err := s.cfg.Sandboxes.SetNetwork(r.Context(), p, b, req.rules(nil))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, networkOf(rules))
}

// createNetwork is a create body's rules (nil without "network").
func (req createSandboxJSON) createNetwork() *egress.Rules {
	if req.Network == nil {
		return nil
	}
	r := req.Network.rules(req.Internet)
	return &r
}
