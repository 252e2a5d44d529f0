package e2bapi

import (
	"encoding/json"
	"net/http"

	"github.com/capsulehq/capsule/internal/egress"
	"github.com/capsulehq/capsule/internal/service"
)

// egressJSON is E2B's egress part of SandboxNetworkConfig (create's
// network, and the body of PUT /sandboxes/{id}/network with
// allow_internet_access).
type egressJSON struct {
	AllowOut []string `json:"allowOut"`
	DenyOut  []string `json:"denyOut"`
	// Header transforms and SOCKS5 egress proxies are not supported: set,
	// they are a 400 rather than silently ignored.
	Rules       json.RawMessage `json:"rules"`
	EgressProxy json.RawMessage `json:"egressProxy"`
}

// rules returns the egress rules; internet is allow_internet_access (nil:
// true).
func (e egressJSON) rules(internet *bool) (egress.Rules, error) {
	if isSet(e.Rules) {
		return egress.Rules{}, invalid("network.rules: request transforms are not supported by this server")
	}
	if isSet(e.EgressProxy) {
		return egress.Rules{}, invalid("network.egressProxy: egress proxies are not supported by this server")
	}
	r := egress.Rules{AllowInternet: internet == nil || *internet, AllowOut: e.AllowOut, DenyOut: e.DenyOut}
	if err := service.CheckNetwork(r); err != nil {
		return egress.Rules{}, err
	}
	return r, nil
}

// updateNetworkJSON is the body of PUT /sandboxes/{id}/network.
type updateNetworkJSON struct {
	egressJSON
	AllowInternetAccess *bool `json:"allow_internet_access"`
}

// updateNetwork replaces the sandbox's egress configuration: fields left
// out clear it (allow_internet_access left out is true). 204; 404 for a
// sandbox the team cannot see or that was killed.
func (h *Handler) updateNetwork(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, _, err := h.visible(r, p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var body updateNetworkJSON
	if _, err := decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	rules, err := body.rules(body.AllowInternetAccess)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	if _, err := h.cfg.Sandboxes.SetNetwork(r.Context(), p, id, rules); err != nil {
		h.fail(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// networkOf is a sandbox's network configuration as E2B shows it.
func networkOf(sb service.Sandbox) networkJSON {
	r := sb.Network
	return networkJSON{AllowPublicTraffic: sb.AllowPublicTraffic, AllowOut: r.AllowOut, DenyOut: r.DenyOut}
}
