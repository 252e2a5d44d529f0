package api

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/capsulehq/capsule/internal/errdefs"
)

// errorBody is the one JSON error shape; Code equals the HTTP status.
type errorBody struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// StatusOf maps a service error to its HTTP status (500 when unclassified):
// errdefs' one codec (errdefs.HTTPStatus), which the E2B facade
// (internal/e2bapi) shares through Problem.
func StatusOf(err error) int { return errdefs.HTTPStatus(err) }

func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := Problem(s.log, r, err)
	writeJSON(w, status, errorBody{Code: status, Message: msg})
}

// Problem is what a client is told of err: its HTTP status (StatusOf) and
// public message. An unclassified error, or one without a public message,
// is logged under a fresh error ID and answered 500 with only that ID; a
// classified 5xx is logged as a warning. Every error answer of the APIs
// (this one, the WebSocket stream, the E2B facade) comes from here.
func Problem(log *slog.Logger, r *http.Request, err error) (status int, msg string) {
	status = StatusOf(err)
	msg, ok := errdefs.PublicMessage(err)
	if status == http.StatusInternalServerError || !ok {
		var b [8]byte
		_, _ = rand.Read(b[:])
		id := hex.EncodeToString(b[:])
		log.ErrorContext(r.Context(), "internal error", "error_id", id, "method", r.Method, "path", r.URL.Path, "err", err)
		return http.StatusInternalServerError, "internal error (id " + id + ")"
	}
	if status >= 500 {
		log.WarnContext(r.Context(), "request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	return status, msg
}

func writeProblem(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, errorBody{Code: status, Message: msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
