package api

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

type auditLogJSON struct {
	ID           string          `json:"id"`
	ActorType    string          `json:"actor_type"`
	ActorID      string          `json:"actor_id"`
	ActorName    string          `json:"actor_name"`
	ResourceType string          `json:"resource_type"`
	ResourceID   string          `json:"resource_id"`
	Action       string          `json:"action"`
	Scope        string          `json:"scope"`
	Status       string          `json:"status"`
	Metadata     json.RawMessage `json:"metadata"`
	CreatedAt    time.Time       `json:"created_at"`
}

func auditLogOf(l db.AuditLog) auditLogJSON {
	return auditLogJSON{
		ID: wireid.Format(wireid.Sandbox, l.ID), ActorType: l.ActorType, ActorID: l.ActorID, ActorName: l.ActorName,
		ResourceType: l.ResourceType, ResourceID: l.ResourceID, Action: l.Action, Scope: l.Scope, Status: l.Status,
		Metadata: l.Metadata, CreatedAt: l.CreatedAt,
	}
}

// MultiValue collects a multi-value query parameter: repeated and/or
// comma-separated (?action=a,b&action=c), blanks dropped.
func MultiValue(q map[string][]string, name string) []string {
	var out []string
	for _, v := range q[name] {
		for x := range strings.SplitSeq(v, ",") {
			if x = strings.TrimSpace(x); x != "" {
				out = append(out, x)
			}
		}
	}
	return out
}

// pageLimit parses ?limit= (0 when absent).
func pageLimit(q map[string][]string) (int, error) {
	l := ""
	if v := q["limit"]; len(v) > 0 {
		l = v[0]
	}
	if l == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(l)
	if err != nil || n < 1 {
		return 0, &service.Error{Kind: service.ErrInvalid, Msg: "limit: a positive integer"}
	}
	return n, nil
}

// listAuditLogs: ?resource_type=, ?action= (multi-value), ?limit= (≤200),
// ?cursor=.
func (s *Server) listAuditLogs(w http.ResponseWriter, r *http.Request, p service.Principal) {
	q := r.URL.Query()
	limit, err := pageLimit(q)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	items, next, err := s.cfg.Audit.List(r.Context(), p, service.AuditFilter{
		ResourceTypes: MultiValue(q, "resource_type"), Actions: MultiValue(q, "action"), Cursor: q.Get("cursor"), Limit: limit,
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]auditLogJSON, len(items))
	for i, it := range items {
		out[i] = auditLogOf(it)
	}
	writeJSON(w, http.StatusOK, map[string]any{"audit_logs": out, "next_cursor": next})
}
