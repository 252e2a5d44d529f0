package api

import (
	"net/http"
	"time"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/wireid"
)

// The platform admin's routes (/v1/admin/…). They take a user's session
// (an API key is refused with 403, like on the team routes) of an active
// platform admin: users.is_admin set and the account not disabled, read
// from the database on every call (service.Admin), never from the token.
// Anyone else who is authenticated gets 403, not 404: the routes and
// what they do are public (this document), so hiding them would hide
// nothing. The refusal comes before anything else is read or checked.

// registerAdmin registers the /v1/admin routes.
func (s *Server) registerAdmin() {
	s.handle("GET /v1/admin/teams", s.adminAuthed(s.adminListTeams))
	s.handle("PUT /v1/admin/teams/{id}/byoc", s.adminAuthed(s.adminSetTeamBYOC))
	s.handle("DELETE /v1/admin/teams/{id}", s.adminAuthed(s.adminDeleteTeam))
	s.handle("GET /v1/admin/users", s.adminAuthed(s.adminListUsers))
	s.handle("PUT /v1/admin/users/{id}/disabled", s.adminAuthed(s.adminSetUserDisabled))
	s.handle("GET /v1/admin/hosts", s.adminAuthed(s.adminListHosts))
	s.handle("GET /v1/admin/audit-logs", s.adminAuthed(s.adminListAuditLogs))
	s.handle("GET /v1/admin/sandboxes", s.adminAuthed(s.adminListSandboxes))
}

// adminAuthed authenticates a user's session (userAuthed) and checks, in
// the database, that its user is an active platform admin before calling
// h (the service checks again in the transaction of each change).
func (s *Server) adminAuthed(h handler) http.HandlerFunc {
	return s.userAuthed(func(w http.ResponseWriter, r *http.Request, p service.Principal) {
		if err := s.admin.Authorize(r.Context(), p); err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r, p)
	})
}

// page parses ?cursor= and ?limit=.
func page(r *http.Request) (service.Page, error) {
	q := r.URL.Query()
	limit, err := pageLimit(q)
	if err != nil {
		return service.Page{}, err
	}
	return service.Page{Cursor: q.Get("cursor"), Limit: limit}, nil
}

type adminTeamJSON struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	Slug         string    `json:"slug"`
	IsBYOC       bool      `json:"is_byoc"`
	MemberCount  int64     `json:"member_count"`
	SandboxCount int64     `json:"sandbox_count"`
	CreatedAt    time.Time `json:"created_at"`
}

// adminListTeams: every live team with its member and sandbox (not
// stopped) counts; ?limit=, ?cursor=.
func (s *Server) adminListTeams(w http.ResponseWriter, r *http.Request, p service.Principal) {
	pg, err := page(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	items, next, err := s.admin.Teams(r.Context(), p, pg)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]adminTeamJSON, len(items))
	for i, t := range items {
		out[i] = adminTeamJSON{ID: wireid.Format(wireid.Team, t.ID), Name: t.Name, Slug: t.Slug, IsBYOC: t.IsBYOC,
			MemberCount: t.MemberCount, SandboxCount: t.SandboxCount, CreatedAt: t.CreatedAt}
	}
	writeJSON(w, http.StatusOK, map[string]any{"teams": out, "next_cursor": next})
}

// teamBYOCJSON answers a BYOC change.
type teamBYOCJSON struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	IsBYOC bool   `json:"is_byoc"`
}

type enabledJSON struct {
	// Enabled is required.
	Enabled *bool `json:"enabled"`
}

// adminSetTeamBYOC: {"enabled": bool}; answers the team.
func (s *Server) adminSetTeamBYOC(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req enabledJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Enabled == nil {
		s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "enabled: required"})
		return
	}
	t, err := s.admin.SetTeamBYOC(r.Context(), p, id, *req.Enabled)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, teamBYOCJSON{ID: t.ID.String(), Name: t.Name, IsBYOC: t.IsBYOC})
}

// adminDeleteTeam deletes a team as its owner would (DELETE /v1/teams/{id}
// and its answer).
func (s *Server) adminDeleteTeam(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.admin.DeleteTeam(r.Context(), p, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, teamDeletedJSON(id, res))
}

type adminUserJSON struct {
	ID         string     `json:"id"`
	Email      string     `json:"email"`
	Name       string     `json:"name"`
	IsAdmin    bool       `json:"is_admin"`
	Disabled   bool       `json:"disabled"`
	DisabledAt *time.Time `json:"disabled_at,omitempty"`
	TeamCount  int64      `json:"team_count"`
	CreatedAt  time.Time  `json:"created_at"`
}

// adminListUsers: ?email_prefix= (any when absent), ?limit=, ?cursor=.
func (s *Server) adminListUsers(w http.ResponseWriter, r *http.Request, p service.Principal) {
	pg, err := page(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	items, next, err := s.admin.Users(r.Context(), p, r.URL.Query().Get("email_prefix"), pg)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]adminUserJSON, len(items))
	for i, u := range items {
		out[i] = adminUserJSON{ID: wireid.Format(wireid.User, u.ID), Email: u.Email, Name: u.Name, IsAdmin: u.IsAdmin,
			Disabled: u.DisabledAt.Valid, DisabledAt: tsPtr(u.DisabledAt.Valid, u.DisabledAt.Time), TeamCount: u.TeamCount,
			CreatedAt: u.CreatedAt}
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": out, "next_cursor": next})
}

// userStateJSON answers a change of a user's disabled state.
type userStateJSON struct {
	ID         string     `json:"id"`
	Email      string     `json:"email"`
	IsAdmin    bool       `json:"is_admin"`
	Disabled   bool       `json:"disabled"`
	DisabledAt *time.Time `json:"disabled_at,omitempty"`
}

type disabledJSON struct {
	// Disabled is required.
	Disabled *bool `json:"disabled"`
}

// adminSetUserDisabled: {"disabled": bool}; answers the user.
func (s *Server) adminSetUserDisabled(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindUser](r, "id", "user")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req disabledJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Disabled == nil {
		s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "disabled: required"})
		return
	}
	u, err := s.admin.SetUserDisabled(r.Context(), p, id, *req.Disabled)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, userStateJSON{ID: wireid.Format(wireid.User, u.ID), Email: u.Email,
		IsAdmin: u.IsAdmin, Disabled: u.DisabledAt.Valid, DisabledAt: tsPtr(u.DisabledAt.Valid, u.DisabledAt.Time)})
}

type adminHostJSON struct {
	ID              string     `json:"id"`
	Name            string     `json:"name"`
	TeamID          string     `json:"team_id"`
	TeamName        string     `json:"team_name"`
	BYOC            bool       `json:"byoc"`
	Address         string     `json:"address"`
	Status          string     `json:"status"`
	Version         string     `json:"version"`
	Arch            string     `json:"arch"`
	TotalVCPUs      int32      `json:"total_vcpus"`
	TotalMemoryMB   int64      `json:"total_memory_mb"`
	TotalDiskMB     int64      `json:"total_disk_mb"`
	SandboxCount    int64      `json:"sandbox_count"`
	LastHeartbeatAt *time.Time `json:"last_heartbeat_at,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
}

// adminListHosts: every host with its team's name; ?limit=, ?cursor=.
func (s *Server) adminListHosts(w http.ResponseWriter, r *http.Request, p service.Principal) {
	pg, err := page(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	items, next, err := s.admin.Hosts(r.Context(), p, pg)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]adminHostJSON, len(items))
	for i, h := range items {
		out[i] = adminHostJSON{ID: wireid.Format(wireid.Host, h.ID), Name: h.Name, TeamID: wireid.Format(wireid.Team, h.TeamID),
			TeamName: h.TeamName, BYOC: h.TeamID != store.PlatformTeamID, Address: h.Address, Status: h.Status, Version: h.Version,
			Arch: h.Arch, TotalVCPUs: h.TotalVCPUs, TotalMemoryMB: h.TotalMemoryMB, TotalDiskMB: h.TotalDiskMB,
			SandboxCount: h.SandboxCount, LastHeartbeatAt: tsPtr(h.LastHeartbeatAt.Valid, h.LastHeartbeatAt.Time),
			CreatedAt: h.CreatedAt}
	}
	writeJSON(w, http.StatusOK, map[string]any{"hosts": out, "next_cursor": next})
}

type adminAuditLogJSON struct {
	auditLogJSON
	TeamID string `json:"team_id"`
}

// adminListAuditLogs: the platform-wide audit log with /v1/audit-logs'
// filters and paging, and ?team_id= to keep one team's events.
func (s *Server) adminListAuditLogs(w http.ResponseWriter, r *http.Request, p service.Principal) {
	q := r.URL.Query()
	limit, err := pageLimit(q)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var team service.TeamID
	if v := q.Get("team_id"); v != "" {
		if team, err = wireid.ParseTeamID(v); err != nil {
			s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "team_id: not a team ID"})
			return
		}
	}
	items, next, err := s.admin.AuditLogs(r.Context(), p, team, service.AuditFilter{
		ResourceTypes: MultiValue(q, "resource_type"), Actions: MultiValue(q, "action"), Cursor: q.Get("cursor"), Limit: limit,
	})
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]adminAuditLogJSON, len(items))
	for i, it := range items {
		out[i] = adminAuditLogJSON{auditLogJSON: auditLogOf(it), TeamID: wireid.Format(wireid.Team, it.TeamID)}
	}
	writeJSON(w, http.StatusOK, map[string]any{"audit_logs": out, "next_cursor": next})
}

// adminListSandboxes: the platform team's sandboxes, with /v1/sandboxes'
// filters and paging.
func (s *Server) adminListSandboxes(w http.ResponseWriter, r *http.Request, p service.Principal) {
	f, err := sandboxFilter(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	items, next, err := s.admin.Sandboxes(r.Context(), p, f)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeSandboxList(w, items, next)
}
