package e2bapi

import (
	"net/http"

	"github.com/capsulehq/capsule/internal/api"
	"github.com/capsulehq/capsule/internal/service"
)

// Fork (spec e2b-compat-2 §2, SDK Sandbox.fork / sandbox.fork):
// POST /sandboxes/{id}/fork {timeout (seconds, default 15), count (default
// 1)} → 201 with one SandboxForkResult per requested fork, in order:
// {sandbox} (the Sandbox of a create) or {error: {code, message}} (code
// is the HTTP status the fork's failure would have had alone). A
// sandbox this team cannot see, or that was killed, is 404 (the SDK's
// SandboxNotFoundError); a paused one 409; a bad count or timeout 400;
// quotas (each fork counts as a sandbox) 429-style errors of the native
// API. A non-201 answer means no fork was attempted.

// forkJSON is SandboxForkRequest.
type forkJSON struct {
	Timeout *int32 `json:"timeout"`
	Count   *int   `json:"count"`
}

// forkResultJSON is SandboxForkResult: exactly one of the two is set.
type forkResultJSON struct {
	Sandbox *sandboxJSON `json:"sandbox,omitempty"`
	Error   *errorBody   `json:"error,omitempty"`
}

// defaultForkTimeout is SandboxForkRequest.timeout's default.
const defaultForkTimeout = 15

func (h *Handler) fork(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, _, err := h.visible(r, p)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	var body forkJSON
	if _, err := decode(w, r, &body); err != nil {
		h.fail(w, r, err)
		return
	}
	req := service.ForkRequest{Count: 1, TimeoutSec: defaultForkTimeout}
	if body.Count != nil {
		if req.Count = *body.Count; req.Count < 1 || req.Count > service.MaxForks {
			h.fail(w, r, invalid("count: 1 to %d forks", service.MaxForks))
			return
		}
	}
	if body.Timeout != nil {
		if req.TimeoutSec = *body.Timeout; req.TimeoutSec <= 0 {
			h.fail(w, r, invalid("timeout: must be positive (seconds)"))
			return
		}
	}
	res, err := h.cfg.Sandboxes.Fork(r.Context(), p, id, req)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := make([]forkResultJSON, len(res.Forks))
	for i, f := range res.Forks {
		if f.Err != nil {
			status, msg := api.Problem(h.log, r, f.Err)
			out[i].Error = &errorBody{Code: status, Message: msg}
			continue
		}
		sb := h.sandboxOf(f.Sandbox)
		out[i].Sandbox = &sb
	}
	writeJSON(w, http.StatusCreated, out)
}
