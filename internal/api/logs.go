package api

import (
	"net/http"
	"time"

	"github.com/capsulehq/capsule/internal/service"
)

// sandboxLogEntryJSON is an entry of GET /v1/sandboxes/{id}/logs.
type sandboxLogEntryJSON struct {
	Time    time.Time         `json:"time"`
	Level   string            `json:"level"`
	Source  string            `json:"source"`
	Message string            `json:"message"`
	Fields  map[string]string `json:"fields"`
}

// sandboxLogs: a page of what the platform recorded of a sandbox of the
// team (lifecycle events, envd's log, the guest console), in any state,
// a destroyed one's too: ?since= (RFC 3339), ?cursor=, ?limit= (1..1000,
// 100), ?direction=forward|backward, ?level=, ?search=. Guest output is
// served as JSON only (escaped for HTML, nosniff).
func (s *Server) sandboxLogs(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := sandboxID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	lq := service.LogQuery{Cursor: q.Get("cursor"), MinLevel: q.Get("level"), Search: q.Get("search")}
	if lq.Limit, err = pageLimit(q); err != nil {
		s.writeError(w, r, err)
		return
	}
	if lq.Limit > service.MaxLogPage {
		s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "limit: 1 to 1000"})
		return
	}
	if v := q.Get("since"); v != "" {
		if lq.Start, err = time.Parse(time.RFC3339Nano, v); err != nil {
			s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "since: an RFC 3339 time"})
			return
		}
	}
	switch q.Get("direction") {
	case "", "forward":
	case "backward":
		lq.Backward = true
	default:
		s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "direction: forward or backward"})
		return
	}
	entries, next, err := s.cfg.Sandboxes.Logs(r.Context(), p, id, lq)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]sandboxLogEntryJSON, len(entries))
	for i, e := range entries {
		f := e.Fields
		if f == nil {
			f = map[string]string{}
		}
		out[i] = sandboxLogEntryJSON{Time: e.Time.UTC(), Level: e.Level, Source: e.Source, Message: e.Message, Fields: f}
	}
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; sandbox")
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, sandboxLogsJSON{Logs: out, NextCursor: next})
}

// sandboxLogsJSON is a page of a sandbox's logs.
type sandboxLogsJSON struct {
	Logs       []sandboxLogEntryJSON `json:"logs"`
	NextCursor string                `json:"next_cursor"`
}
