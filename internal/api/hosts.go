package api

import (
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Hosts. The management routes (/v1/hosts, /v1/hosts/{id}…) act for a
// user and take a session token only, as the team routes do; who may do
// what is read from the database (service.Hosts). The agents' routes
// (register, refresh, heartbeat: internal/hostapi) authenticate by the
// token in their body or the host's access JWT, never by a user's
// credentials.

// registerHostRoutes registers the host routes (called by register).
func (s *Server) registerHostRoutes() {
	s.handle("POST "+hostapi.PathRegister, http.HandlerFunc(s.registerHost))
	s.handle("POST "+hostapi.PathRefresh, http.HandlerFunc(s.refreshHost))
	s.handle("POST "+hostapi.PathHeartbeat, http.HandlerFunc(s.hostHeartbeat))
	s.handle("POST /v1/hosts", s.userAuthed(s.createHost))
	s.handle("GET /v1/hosts", s.userAuthed(s.listHosts))
	s.handle("GET /v1/hosts/{id}", s.userAuthed(s.getHost))
	s.handle("PATCH /v1/hosts/{id}", s.userAuthed(s.updateHost))
	s.handle("DELETE /v1/hosts/{id}", s.userAuthed(s.deleteHost))
	s.handle("GET /v1/hosts/{id}/delete-preview", s.userAuthed(s.hostDeletePreview))
	s.handle("POST /v1/hosts/{id}/token", s.userAuthed(s.regenerateHostToken))
	s.handle("POST /v1/hosts/{id}/drain", s.userAuthed(s.drainHost))
}

type hostResourcesJSON struct {
	VCPUs    int32 `json:"vcpus"`
	MemoryMB int64 `json:"memory_mb"`
	DiskMB   int64 `json:"disk_mb"`
}

type hostJSON struct {
	ID      string   `json:"id"`
	Name    string   `json:"name"`
	Type    string   `json:"type"`
	TeamID  string   `json:"team_id"`
	Address string   `json:"address"`
	Status  string   `json:"status"`
	Tags    []string `json:"tags"`
	Arch    string   `json:"arch"`
	Version string   `json:"version"`
	// ClaimedAddress is what the agent said of itself at registration
	// (never dialled).
	ClaimedAddress  string            `json:"claimed_address"`
	Total           hostResourcesJSON `json:"total"`
	MaxVCPUs        int32             `json:"max_vcpus"`
	Used            hostResourcesJSON `json:"used"`
	Running         int32             `json:"running"`
	Paused          int32             `json:"paused"`
	Sandboxes       int32             `json:"sandboxes"`
	RegisteredAt    *time.Time        `json:"registered_at"`
	LastHeartbeatAt *time.Time        `json:"last_heartbeat_at"`
	CertExpiresAt   *time.Time        `json:"cert_expires_at"`
	CreatedAt       time.Time         `json:"created_at"`
}

func hostOf(h service.Host) hostJSON {
	opt := func(valid bool, t time.Time) *time.Time {
		if !valid {
			return nil
		}
		return &t
	}
	tags := h.Tags
	if tags == nil {
		tags = []string{}
	}
	return hostJSON{
		ID: wireid.Format(wireid.Host, h.ID), Name: h.Name, Type: h.Type, TeamID: wireid.Format(wireid.Team, h.TeamID), Address: h.Address,
		Status: h.Status, Tags: tags, Arch: h.Arch, Version: h.Version, ClaimedAddress: h.ClaimedAddress,
		Total: hostResourcesJSON{VCPUs: h.TotalVCPUs, MemoryMB: h.TotalMemoryMB, DiskMB: h.TotalDiskMB}, MaxVCPUs: h.MaxVCPUs,
		Used:    hostResourcesJSON{VCPUs: h.UsedVCPUs, MemoryMB: h.UsedMemoryMB, DiskMB: h.UsedDiskMB},
		Running: h.RunningSandboxes, Paused: h.PausedSandboxes, Sandboxes: h.SandboxCount,
		RegisteredAt:    opt(h.RegisteredAt.Valid, h.RegisteredAt.Time),
		LastHeartbeatAt: opt(h.LastHeartbeatAt.Valid, h.LastHeartbeatAt.Time),
		CertExpiresAt:   opt(h.CertExpiresAt.Valid, h.CertExpiresAt.Time),
		CreatedAt:       h.CreatedAt,
	}
}

// createdHostJSON answers a create or a new token: the registration token
// is shown this once.
type createdHostJSON struct {
	Host                       hostJSON  `json:"host"`
	RegistrationToken          string    `json:"registration_token"`
	RegistrationTokenExpiresAt time.Time `json:"registration_token_expires_at"`
}

func createdHostOf(n service.NewHost) createdHostJSON {
	return createdHostJSON{Host: hostOf(n.Host), RegistrationToken: n.RegistrationToken, RegistrationTokenExpiresAt: n.RegistrationTokenExpiresAt}
}

type createHostJSON struct {
	Name    string   `json:"name"`
	Type    string   `json:"type"`
	Address string   `json:"address"`
	Tags    []string `json:"tags"`
}

type updateHostJSON struct {
	Tags   *[]string `json:"tags"`
	Status *string   `json:"status"`
}

// hostSandboxJSON is a sandbox a host's deletion affects.
type hostSandboxJSON struct {
	ID       string `json:"id"`
	TeamID   string `json:"team_id"`
	Template string `json:"template"`
	State    string `json:"state"`
}

func hostSandboxesOf(sbs []service.Sandbox) []hostSandboxJSON {
	out := make([]hostSandboxJSON, len(sbs))
	for i, sb := range sbs {
		out[i] = hostSandboxJSON{ID: sb.ID.String(), TeamID: sb.TeamID.String(), Template: sb.Template, State: string(sb.State)}
	}
	return out
}

type hostDeletionJSON struct {
	ID                    string            `json:"id"`
	Deleted               bool              `json:"deleted"`
	Sandboxes             []hostSandboxJSON `json:"sandboxes"`
	SandboxesDestroyed    int               `json:"sandboxes_destroyed"`
	SandboxesNotDestroyed int               `json:"sandboxes_not_destroyed"`
}

func (s *Server) createHost(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req createHostJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	n, err := s.cfg.Hosts.Create(r.Context(), p, service.CreateHost{Name: req.Name, Type: req.Type, Address: req.Address, Tags: req.Tags})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, createdHostOf(n))
}

func (s *Server) listHosts(w http.ResponseWriter, r *http.Request, p service.Principal) {
	hs, err := s.cfg.Hosts.List(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]hostJSON, len(hs))
	for i, h := range hs {
		out[i] = hostOf(h)
	}
	writeJSON(w, http.StatusOK, map[string]any{"hosts": out})
}

func (s *Server) getHost(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindHost](r, "id", "host")
	if err == nil {
		var h service.Host
		if h, err = s.cfg.Hosts.Get(r.Context(), p, id); err == nil {
			writeJSON(w, http.StatusOK, hostOf(h))
			return
		}
	}
	s.writeError(w, r, err)
}

func (s *Server) updateHost(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindHost](r, "id", "host")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req updateHostJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	h, err := s.cfg.Hosts.Update(r.Context(), p, id, service.UpdateHost{Tags: req.Tags, Status: req.Status})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, hostOf(h))
}

// hostEvacuationJSON is what POST /v1/hosts/{id}/drain answers.
type hostEvacuationJSON struct {
	Host   hostJSON                `json:"host"`
	Moved  []string                `json:"moved"`
	Failed []hostEvacuationFailure `json:"failed"`
}

type hostEvacuationFailure struct {
	SandboxID string `json:"sandbox_id"`
	Error     string `json:"error"`
}

// drainHost: POST /v1/hosts/{id}/drain — the host drains (as PATCH
// {"status":"draining"}: who may manage it) and its paused sandboxes move
// to other hosts, paused (service.Sandboxes.Evacuate).
func (s *Server) drainHost(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindHost](r, "id", "host")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	draining := "draining"
	h, err := s.cfg.Hosts.Update(r.Context(), p, id, service.UpdateHost{Status: &draining})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ev, err := s.cfg.Sandboxes.Evacuate(r.Context(), p, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := hostEvacuationJSON{Host: hostOf(h), Moved: make([]string, len(ev.Moved)), Failed: []hostEvacuationFailure{}}
	for i, sb := range ev.Moved {
		out.Moved[i] = sb.String()
	}
	for sb, err := range ev.Failed {
		out.Failed = append(out.Failed, hostEvacuationFailure{SandboxID: sb.String(), Error: service.PublicText(err)})
	}
	slices.SortFunc(out.Failed, func(a, b hostEvacuationFailure) int { return strings.Compare(a.SandboxID, b.SandboxID) })
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) hostDeletePreview(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindHost](r, "id", "host")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	sbs, err := s.cfg.Hosts.DeletePreview(r.Context(), p, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"sandboxes": hostSandboxesOf(sbs)})
}

// maxListedSandboxes bounds the sandbox IDs a 409 names.
const maxListedSandboxes = 20

// deleteHost: 409 naming the affected sandboxes unless ?force=true.
func (s *Server) deleteHost(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindHost](r, "id", "host")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	force := false
	switch v := r.URL.Query().Get("force"); v {
	case "", "false":
	case "true":
		force = true
	default:
		s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "force: true or false"})
		return
	}
	res, err := s.cfg.Hosts.Delete(r.Context(), p, id, force)
	if err != nil {
		if msg, ok := service.PublicMessage(err); ok && StatusOf(err) == http.StatusConflict && len(res.Sandboxes) > 0 {
			ids := make([]string, 0, maxListedSandboxes)
			for i, sb := range res.Sandboxes {
				if i == maxListedSandboxes {
					ids = append(ids, "…")
					break
				}
				ids = append(ids, sb.ID.String())
			}
			err = &service.Error{Kind: service.ErrConflict, Msg: msg + "; affected sandboxes: " + strings.Join(ids, ", "), Err: err}
		}
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, hostDeletionJSON{ID: id.String(), Deleted: true, Sandboxes: hostSandboxesOf(res.Sandboxes),
		SandboxesDestroyed: res.Destroyed, SandboxesNotDestroyed: len(res.Sandboxes) - res.Destroyed})
}

func (s *Server) regenerateHostToken(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindHost](r, "id", "host")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	n, err := s.cfg.Hosts.RegenerateToken(r.Context(), p, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, createdHostOf(n))
}

// registerHost: POST /v1/hosts/register (hostapi.RegisterRequest).
func (s *Server) registerHost(w http.ResponseWriter, r *http.Request) {
	var req hostapi.RegisterRequest
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	resp, err := s.cfg.Hosts.Register(r.Context(), req)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, resp)
}

// refreshHost: POST /v1/hosts/refresh (hostapi.RefreshRequest).
func (s *Server) refreshHost(w http.ResponseWriter, r *http.Request) {
	var req hostapi.RefreshRequest
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	creds, err := s.cfg.Hosts.Refresh(r.Context(), req.RefreshToken)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, creds)
}

var errNoHostToken = &service.Error{Kind: service.ErrUnauthorized, Msg: "authentication required: send Authorization: Bearer <host access token>"}

// hostHeartbeat: POST /v1/hosts/heartbeat (hostapi.Heartbeat), with the
// host's access JWT. The credential is checked before the body is read.
func (s *Server) hostHeartbeat(w http.ResponseWriter, r *http.Request) {
	tok, ok := auth.BearerToken(r.Header)
	if !ok {
		s.writeError(w, r, errNoHostToken)
		return
	}
	if _, _, err := s.cfg.Hosts.AuthenticateHost(tok); err != nil {
		s.writeError(w, r, err)
		return
	}
	var hb hostapi.Heartbeat
	if err := decode(r, w, &hb); err != nil {
		s.writeError(w, r, err)
		return
	}
	resp, err := s.cfg.Hosts.Heartbeat(r.Context(), tok, hb)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, resp)
}
