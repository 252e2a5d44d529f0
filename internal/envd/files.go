package envd

// PLACEHOLDER: replaced by the /files implementation.

import "net/http"

func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request) {
	writeJSONError(w, http.StatusNotImplemented, "not implemented")
}
func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	writeJSONError(w, http.StatusNotImplemented, "not implemented")
}
func (s *Server) handleCompose(w http.ResponseWriter, r *http.Request) {
	writeJSONError(w, http.StatusNotImplemented, "not implemented")
}
