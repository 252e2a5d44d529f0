package api

import (
	"net/http"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

type createSandboxJSON struct {
	Template   string            `json:"template"`
	VCPUs      int32             `json:"vcpus"`
	MemoryMB   int32             `json:"memory_mb"`
	TimeoutSec int32             `json:"timeout_sec"`
	EnvVars    map[string]string `json:"env_vars"`
	Metadata   map[string]string `json:"metadata"`
	Internet   *bool             `json:"allow_internet_access"`
	// AutoPause: pause at the timeout (default), else destroy.
	AutoPause *bool `json:"auto_pause"`
	// AutoPauseMemory: the timeout's pause keeps the memory (default);
	// false keeps the disk only (the resume boots cold).
	AutoPauseMemory *bool `json:"auto_pause_memory"`
	// AutoResume: proxied traffic resumes the sandbox when paused.
	AutoResume bool `json:"auto_resume"`
	// PublicTraffic opens the sandbox's ports (not envd's) to anyone.
	PublicTraffic bool `json:"allow_public_traffic"`
	// Network are egress rules (network.go).
	Network *networkJSON `json:"network"`
}

type sandboxJSON struct {
	// ID is the sandbox's E2B-form ID (32 lowercase hex digits).
	ID                  string            `json:"id"`
	Template            string            `json:"template"`
	State               string            `json:"state"`
	StateReason         string            `json:"state_reason,omitempty"`
	VCPUs               int32             `json:"vcpus"`
	MemoryMB            int32             `json:"memory_mb"`
	TimeoutSec          int32             `json:"timeout_sec"`
	AllowInternetAccess bool              `json:"allow_internet_access"`
	AllowPublicTraffic  bool              `json:"allow_public_traffic"`
	AutoPause           bool              `json:"auto_pause"`
	AutoPauseMemory     bool              `json:"auto_pause_memory"`
	AutoResume          bool              `json:"auto_resume"`
	Metadata            map[string]string `json:"metadata"`
	CreatedAt           time.Time         `json:"created_at"`
	StartedAt           *time.Time        `json:"started_at,omitempty"`
	EndAt               *time.Time        `json:"end_at,omitempty"`
	PausedAt            *time.Time        `json:"paused_at,omitempty"`
	StoppedAt           *time.Time        `json:"stopped_at,omitempty"`
	EnvdAccessToken     string            `json:"envd_access_token,omitempty"`
	TrafficAccessToken  string            `json:"traffic_access_token,omitempty"`
	EnvdURL             string            `json:"envd_url,omitempty"`
}

func tsPtr(valid bool, t time.Time) *time.Time {
	if !valid {
		return nil
	}
	return &t
}

// timePtr is t, nil when zero (absent).
func timePtr(t time.Time) *time.Time { return tsPtr(!t.IsZero(), t) }

func sandboxOf(sb service.Sandbox, withToken bool) sandboxJSON {
	out := sandboxJSON{
		ID: sb.ID.String(), Template: sb.Template, State: string(sb.State), StateReason: sb.StateReason,
		VCPUs: sb.VCPUs, MemoryMB: sb.MemoryMB, TimeoutSec: sb.TimeoutSec, AllowInternetAccess: sb.AllowInternetAccess,
		AllowPublicTraffic: sb.AllowPublicTraffic, AutoPause: sb.AutoPause, AutoPauseMemory: sb.AutoPauseMemory,
		AutoResume: sb.AutoResume, CreatedAt: sb.CreatedAt, EnvdURL: sb.EnvdURL,
		StartedAt: timePtr(sb.StartedAt), EndAt: timePtr(sb.EndAt),
		PausedAt: timePtr(sb.PausedAt), StoppedAt: timePtr(sb.StoppedAt), Metadata: sb.Metadata,
	}
	if withToken {
		out.EnvdAccessToken, out.TrafficAccessToken = sb.EnvdAccessToken, sb.TrafficToken
	}
	return out
}

// sandboxID parses the {id} path value; a malformed ID cannot name any
// sandbox, so it is 404 like another team's.
func sandboxID(r *http.Request) (service.SandboxID, error) {
	id, err := wireid.ParseSandboxID(r.PathValue("id"))
	if err != nil {
		return id, &service.Error{Kind: service.ErrNotFound, Msg: "sandbox not found"}
	}
	return id, nil
}

func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request, p service.Principal) {
	start := time.Now()
	var req createSandboxJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := s.cfg.Sandboxes.Create(r.Context(), p, service.CreateSandbox{
		Template: req.Template, VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, TimeoutSec: req.TimeoutSec,
		EnvVars: req.EnvVars, Metadata: req.Metadata, Internet: req.Internet,
		AutoPause: req.AutoPause, AutoResume: req.AutoResume, PublicTraffic: req.PublicTraffic,
		PauseWithoutMemory: req.AutoPauseMemory != nil && !*req.AutoPauseMemory,
		Network:            req.createNetwork(),
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Server-Timing", service.ServerTiming(sb.Phases, time.Since(start)))
	writeJSON(w, http.StatusCreated, sandboxOf(sb, true))
}

func (s *Server) getSandbox(w http.ResponseWriter, r *http.Request, p service.Principal) {
	s.withSandbox(w, r, p, func(id service.SandboxID) (service.Sandbox, error) {
		return s.cfg.Sandboxes.Get(r.Context(), p, id)
	}, http.StatusOK)
}

// pingSandbox marks a running sandbox active (409 unless running).
func (s *Server) pingSandbox(w http.ResponseWriter, r *http.Request, p service.Principal) {
	s.withSandbox(w, r, p, func(id service.SandboxID) (service.Sandbox, error) {
		return s.cfg.Sandboxes.Ping(r.Context(), p, id)
	}, http.StatusOK)
}

type timeoutJSON struct {
	// TimeoutSec is required: 0 means never.
	TimeoutSec *int32 `json:"timeout_sec"`
}

// setSandboxTimeout: {"timeout_sec": N} counted from now (0: never).
func (s *Server) setSandboxTimeout(w http.ResponseWriter, r *http.Request, p service.Principal) {
	b, err := sandboxID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req timeoutJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.TimeoutSec == nil {
		s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "timeout_sec: required (0: never)"})
		return
	}
	sb, err := s.cfg.Sandboxes.SetTimeout(r.Context(), p, b, *req.TimeoutSec)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, sandboxOf(sb, true))
}

func (s *Server) withSandbox(w http.ResponseWriter, r *http.Request, _ service.Principal,
	fn func(id service.SandboxID) (service.Sandbox, error), status int) {
	b, err := sandboxID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sb, err := fn(b)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, status, sandboxOf(sb, true))
}

func (s *Server) destroySandbox(w http.ResponseWriter, r *http.Request, p service.Principal) {
	b, err := sandboxID(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.cfg.Sandboxes.Destroy(r.Context(), p, b); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// listSandboxes: ?state=running,paused (or repeated), ?metadata=k=v&metadata=…,
// ?limit=, ?cursor=.
func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request, p service.Principal) {
	f, err := sandboxFilter(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	items, next, err := s.cfg.Sandboxes.List(r.Context(), p, f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeSandboxList(w, items, next)
}

// sandboxFilter parses a sandbox listing's ?state= (multi-value),
// ?metadata=key=value (repeated), ?order=asc|desc (by creation time,
// newest first by default), ?started_after= (RFC 3339), ?template=,
// ?limit= and ?cursor=.
func sandboxFilter(r *http.Request) (service.ListFilter, error) {
	q := r.URL.Query()
	f := service.ListFilter{Cursor: q.Get("cursor")}
	f.States = MultiValue(q, "state")
	for _, kv := range q["metadata"] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return service.ListFilter{}, &service.Error{Kind: service.ErrInvalid, Msg: "metadata: want key=value"}
		}
		if f.Metadata == nil {
			f.Metadata = map[string]string{}
		}
		f.Metadata[k] = v
	}
	var err error
	if f.Limit, err = pageLimit(q); err != nil {
		return service.ListFilter{}, err
	}
	switch q.Get("order") {
	case "", "desc":
	case "asc":
		f.Ascending = true
	default:
		return service.ListFilter{}, &service.Error{Kind: service.ErrInvalid, Msg: "order: asc or desc"}
	}
	if v := q.Get("started_after"); v != "" {
		if f.StartedAfter, err = time.Parse(time.RFC3339Nano, v); err != nil {
			return service.ListFilter{}, &service.Error{Kind: service.ErrInvalid, Msg: "started_after: an RFC 3339 time (2006-01-02T15:04:05.999Z07:00)"}
		}
	}
	f.Template = q.Get("template")
	return f, nil
}

// writeSandboxList answers a page of sandboxes (without their tokens).
func writeSandboxList(w http.ResponseWriter, items []service.Sandbox, next string) {
	out := make([]sandboxJSON, len(items))
	for i, it := range items {
		out[i] = sandboxOf(it, false)
	}
	writeJSON(w, http.StatusOK, map[string]any{"sandboxes": out, "next_cursor": next})
}
