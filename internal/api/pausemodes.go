package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/capsulehq/capsule/internal/service"
)

// memoryJSON is the optional body of pause and resume: memory false
// pauses the filesystem only (the resume boots cold from the disk), or
// resumes cold from the disk, dropping the memory that was kept. Absent:
// true.
type memoryJSON struct {
	Memory *bool `json:"memory"`
}

// decodeOptional is decode for a body that may be absent (empty).
func decodeOptional(r *http.Request, w http.ResponseWriter, v any) error {
	b, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &service.Error{Kind: service.ErrInvalid, Msg: "invalid JSON body: too large"}
		}
		return &service.Error{Kind: service.ErrInvalid, Msg: "cannot read the request body"}
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return &service.Error{Kind: service.ErrInvalid, Msg: "invalid JSON body: " + jsonProblem(err)}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return &service.Error{Kind: service.ErrInvalid, Msg: "invalid JSON body: trailing data"}
	}
	return nil
}

// keepsMemory reads the optional memory body; false asks for the disk
// only.
func keepsMemory(r *http.Request, w http.ResponseWriter) (bool, error) {
	var body memoryJSON
	if err := decodeOptional(r, w, &body); err != nil {
		return false, err
	}
	return body.Memory == nil || *body.Memory, nil
}

// pauseSandbox: {"memory": false} pauses the filesystem only.
func (s *Server) pauseSandbox(w http.ResponseWriter, r *http.Request, p service.Principal) {
	keep, err := keepsMemory(r, w)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.withSandbox(w, r, p, func(id service.SandboxID) (service.Sandbox, error) {
		return s.cfg.Sandboxes.PauseWith(r.Context(), p, id, service.PauseOptions{FilesystemOnly: !keep})
	}, http.StatusOK)
}

// resumeSandbox: {"memory": false} boots cold from the disk.
func (s *Server) resumeSandbox(w http.ResponseWriter, r *http.Request, p service.Principal) {
	keep, err := keepsMemory(r, w)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	s.withSandbox(w, r, p, func(id service.SandboxID) (service.Sandbox, error) {
		return s.cfg.Sandboxes.ResumeWith(r.Context(), p, id, service.ResumeOptions{Cold: !keep})
	}, http.StatusOK)
}
