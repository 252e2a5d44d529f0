package api

import (
	"net/http"

	"github.com/capsulehq/capsule/internal/service"
)

// forkJSON is ForkRequest: count defaults to 1, timeout_sec to the
// source's.
type forkJSON struct {
	Count      *int   `json:"count"`
	TimeoutSec *int32 `json:"timeout_sec"`
}

// forkResultJSON is ForkResult: exactly one of the two is set.
type forkResultJSON struct {
	Sandbox *sandboxJSON `json:"sandbox,omitempty"`
	Error   *errorBody   `json:"error,omitempty"`
}

// forksJSON is ForkResponse.
type forksJSON struct {
	// SourceHoldMS is how long the source's guest was stopped.
	SourceHoldMS float64          `json:"source_hold_ms"`
	Forks        []forkResultJSON `json:"forks"`
}

// forkSandbox makes running copies of a running sandbox (service.Fork):
// 201 with one entry per requested fork, in order.
func (s *Server) forkSandbox(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := sandboxID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var body forkJSON
	if err := decode(r, w, &body); err != nil {
		s.writeError(w, r, err)
		return
	}
	req := service.ForkRequest{Count: 1}
	if body.Count != nil {
		req.Count = *body.Count
	}
	if body.TimeoutSec != nil {
		req.TimeoutSec = *body.TimeoutSec
	} else {
		src, err := s.cfg.Sandboxes.Get(r.Context(), p, id)
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		req.TimeoutSec = src.TimeoutSec
	}
	res, err := s.cfg.Sandboxes.Fork(r.Context(), p, id, req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := forksJSON{SourceHoldMS: float64(res.SourceHold.Microseconds()) / 1000, Forks: make([]forkResultJSON, len(res.Forks))}
	for i, f := range res.Forks {
		if f.Err != nil {
			status, msg := Problem(s.log, r, f.Err)
			out.Forks[i].Error = &errorBody{Code: status, Message: msg}
			continue
		}
		sb := sandboxOf(f.Sandbox, true)
		out.Forks[i].Sandbox = &sb
	}
	writeJSON(w, http.StatusCreated, out)
}
