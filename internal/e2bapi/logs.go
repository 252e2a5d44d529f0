package e2bapi

import (
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/capsulehq/capsule/internal/service"
)

// Sandbox logs (E2B's GET /sandboxes/{id}/logs and GET
// /v2/sandboxes/{id}/logs): what the platform records of the sandbox
// (service.Sandboxes.Logs: lifecycle events, envd's log, the guest
// console), for a sandbox of the team in any state, a killed one's too.
// Guest output is served as JSON only, escaped for HTML and marked
// nosniff, never as a page of the API's origin.

// maxE2BLogPage is E2B's page size cap (and default) for logs.
const maxE2BLogPage = 1000

// sandboxLogJSON is E2B's SandboxLog (v1's raw lines).
type sandboxLogJSON struct {
	Timestamp time.Time `json:"timestamp"`
	Line      string    `json:"line"`
}

// sandboxLogEntryJSON is E2B's SandboxLogEntry.
type sandboxLogEntryJSON struct {
	Timestamp time.Time         `json:"timestamp"`
	Level     string            `json:"level"`
	Message   string            `json:"message"`
	Fields    map[string]string `json:"fields"`
}

func logEntryOf(e service.LogEntry) sandboxLogEntryJSON {
	f := e.Fields
	if f == nil {
		f = map[string]string{}
	}
	return sandboxLogEntryJSON{Timestamp: e.Time.UTC(), Level: e.Level, Message: e.Message, Fields: f}
}

// logsHeaders mark an answer carrying guest output as data only.
func logsHeaders(w http.ResponseWriter) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; sandbox")
	w.Header().Set("Cache-Control", "no-store")
}

// msParam reads an optional int64 of unix milliseconds.
func msParam(q url.Values, name string) (time.Time, error) {
	v := q.Get(name)
	if v == "" {
		return time.Time{}, nil
	}
	ms, err := strconv.ParseInt(v, 10, 64)
	if err != nil || ms < 0 || ms > 1<<50 {
		return time.Time{}, invalid("%s: unix milliseconds", name)
	}
	return time.UnixMilli(ms), nil
}

// limitParam reads E2B's logs limit: 0..1000, 1000 when absent.
func limitParam(q url.Values) (int, error) {
	v := q.Get("limit")
	if v == "" {
		return maxE2BLogPage, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > maxE2BLogPage {
		return 0, invalid("limit: 0 to %d", maxE2BLogPage)
	}
	return n, nil
}

// logs (v1): ?start= (unix ms: entries at or after it) &limit= (0..1000,
// 1000), oldest first, as raw lines and as entries.
func (h *Handler) logs(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := sandboxID(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	start, err := msParam(q, "start")
	if err != nil {
		h.fail(w, r, err)
		return
	}
	limit, err := limitParam(q)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := struct {
		Logs       []sandboxLogJSON      `json:"logs"`
		LogEntries []sandboxLogEntryJSON `json:"logEntries"`
	}{Logs: []sandboxLogJSON{}, LogEntries: []sandboxLogEntryJSON{}}
	entries, err := h.logEntries(r, p, id, service.LogQuery{Start: start, Limit: limit})
	if err != nil {
		h.fail(w, r, err)
		return
	}
	for _, e := range entries {
		out.Logs = append(out.Logs, sandboxLogJSON{Timestamp: e.Time.UTC(), Line: e.Message})
		out.LogEntries = append(out.LogEntries, logEntryOf(e))
	}
	logsHeaders(w)
	writeJSON(w, http.StatusOK, out)
}

// logsV2: ?cursor= (unix ms: forward, entries at or after it; backward,
// at or before it) &limit= (0..1000, 1000) &direction=forward|backward
// (forward) &level=debug|info|warn|error (that level or a more severe
// one) &search= (in the message, ignoring case; at most 256 bytes).
func (h *Handler) logsV2(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := sandboxID(r)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	q := r.URL.Query()
	lq := service.LogQuery{MinLevel: q.Get("level"), Search: q.Get("search")}
	if lq.Start, err = msParam(q, "cursor"); err != nil {
		h.fail(w, r, err)
		return
	}
	if lq.Limit, err = limitParam(q); err != nil {
		h.fail(w, r, err)
		return
	}
	switch q.Get("direction") {
	case "", "forward":
	case "backward":
		lq.Backward = true
	default:
		h.fail(w, r, invalid("direction: forward or backward"))
		return
	}
	entries, err := h.logEntries(r, p, id, lq)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	out := struct {
		Logs []sandboxLogEntryJSON `json:"logs"`
	}{Logs: make([]sandboxLogEntryJSON, len(entries))}
	for i, e := range entries {
		out.Logs[i] = logEntryOf(e)
	}
	logsHeaders(w)
	writeJSON(w, http.StatusOK, out)
}

// logEntries reads a page; limit 0 is an empty page (E2B allows it).
func (h *Handler) logEntries(r *http.Request, p service.Principal, id service.SandboxID, q service.LogQuery) ([]service.LogEntry, error) {
	if q.Limit == 0 {
		// Still a 404 for a sandbox the team does not have.
		if _, err := h.cfg.Sandboxes.Get(r.Context(), p, id); err != nil {
			return nil, err
		}
		return nil, nil
	}
	entries, _, err := h.cfg.Sandboxes.Logs(r.Context(), p, id, q)
	return entries, err
}
