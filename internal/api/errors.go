package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/capsulehq/capsule/internal/service"
)

// errorBody is the one JSON error shape; Code equals the HTTP status.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

var statuses = []struct {
	kind   error
	status int
}{
	{service.ErrInvalid, http.StatusBadRequest},
	{service.ErrUnauthorized, http.StatusUnauthorized},
	{service.ErrForbidden, http.StatusForbidden},
	{service.ErrNotFound, http.StatusNotFound},
	{service.ErrConflict, http.StatusConflict},
	{service.ErrQuota, http.StatusTooManyRequests},
	{service.ErrUnavailable, http.StatusServiceUnavailable},
}

// StatusOf maps a service error to its HTTP status (500 when unclassified):
// the one mapping, which the E2B facade (internal/e2bapi) shares.
func StatusOf(err error) int {
	for _, s := range statuses {
		if errors.Is(err, s.kind) {
			return s.status
		}
	}
	return http.StatusInternalServerError
}

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status := StatusOf(err)
	msg, ok := service.PublicMessage(err)
	if status == http.StatusInternalServerError || !ok {
		var b [8]byte
		_, _ = rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		s.log.ErrorContext(r.Context(), "internal error", "error_id", id, "method", r.Method, "path", r.URL.Path, "err", err)
		status, msg = http.StatusInternalServerError, "internal error (id "+id+")"
	} else if status >= 500 {
		s.log.WarnContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, status, errorBody{Code: status, Message: msg})
}

func writeProblem(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Code: status, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
