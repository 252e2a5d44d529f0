package api

import (
	"net/http"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Teams, members and the user's own account. These routes act for a user,
// so they take a session token (Authorization: Bearer …) only: an API key
// belongs to one team and is refused with 403. The team in the path, not
// the session's team, is the one acted on; the caller's role in it comes
// from the database.

var errNeedsSession = &service.Error{Kind: service.ErrForbidden, Msg: "this route needs a user session (Authorization: Bearer <session token>), not an API key"}

// userAuthed authenticates a user's session (service.Accounts.AuthenticateUser)
// before calling h.
func (s *Server) userAuthed(h handler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		// An API key is refused here, but only once it is known to be one:
		// a wrong credential is 401 on every route.
		p, err := s.authenticateWith(r, s.cfg.Accounts.AuthenticateUser)
		if err == nil && !p.APIKeyID.IsZero() {
			err = errNeedsSession
		}
		if err != nil {
			s.writeError(w, r, err)
			return
		}
		h(w, r, p)
	}
}

type teamDetailJSON struct {
	ID        string    `json:"id"`
	Name      string    `json:"name"`
	Slug      string    `json:"slug"`
	Role      string    `json:"role"`
	IsBYOC    bool      `json:"is_byoc"`
	CreatedAt time.Time `json:"created_at"`
	JoinedAt  time.Time `json:"joined_at"`
}

func teamOf(t service.TeamRole) teamDetailJSON {
	return teamDetailJSON{ID: t.Team.ID.String(), Name: t.Team.Name, Slug: t.Team.Slug, Role: t.Role,
		IsBYOC: t.Team.IsBYOC, CreatedAt: t.Team.CreatedAt, JoinedAt: t.JoinedAt}
}

func teamsOf(ts []service.TeamRole) []teamDetailJSON {
	out := make([]teamDetailJSON, len(ts))
	for i, t := range ts {
		out[i] = teamOf(t)
	}
	return out
}

type memberJSON struct {
	UserID   string    `json:"user_id"`
	Email    string    `json:"email"`
	Name     string    `json:"name"`
	Role     string    `json:"role"`
	JoinedAt time.Time `json:"joined_at"`
}

func memberOf(m service.Member) memberJSON {
	return memberJSON{UserID: m.UserID.String(), Email: m.Email, Name: m.Name, Role: m.Role, JoinedAt: m.JoinedAt}
}

// typedPathID parses the wire ID of kind K in path segment name; a
// malformed one is ErrNotFound (what).
func typedPathID[K wireid.Kind](r *http.Request, name, what string) (wireid.ID[K], error) {
	id, err := wireid.ParseID[K](r.PathValue(name))
	if err != nil {
		return id, &service.Error{Kind: service.ErrNotFound, Msg: what + " not found"}
	}
	return id, nil
}

type nameBody struct {
	Name string `json:"name"`
}

func (s *Server) createTeam(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req nameBody
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	t, err := s.teams.Create(r.Context(), p, req.Name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, teamOf(t))
}

func (s *Server) listTeams(w http.ResponseWriter, r *http.Request, p service.Principal) {
	ts, err := s.teams.List(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"teams": teamsOf(ts)})
}

func (s *Server) getTeam(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err == nil {
		var t service.TeamRole
		if t, err = s.teams.Get(r.Context(), p, id); err == nil {
			writeJSON(w, http.StatusOK, teamOf(t))
			return
		}
	}
	s.writeError(w, r, err)
}

func (s *Server) renameTeam(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req nameBody
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	t, err := s.teams.Rename(r.Context(), p, id, req.Name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, teamOf(t))
}

// deleteTeam answers 200 with how many of the team's sandboxes were
// destroyed and how many could not be (the team is deleted either way).
func (s *Server) deleteTeam(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	res, err := s.teams.Delete(r.Context(), p, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, teamDeletedJSON(id, res))
}

// teamDeletedJSON answers a team's deletion: how many of its sandboxes
// were destroyed and how many could not be (the team is deleted either
// way).
func teamDeletedJSON(id service.TeamID, res service.TeamDeletion) map[string]any {
	return map[string]any{
		"id": id.String(), "deleted": true,
		"sandboxes_destroyed": res.Destroyed, "sandboxes_not_destroyed": res.NotDestroyed,
	}
}

func (s *Server) listMembers(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	ms, err := s.teams.Members(r.Context(), p, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]memberJSON, len(ms))
	for i, m := range ms {
		out[i] = memberOf(m)
	}
	writeJSON(w, http.StatusOK, map[string]any{"members": out})
}

// addMemberJSON is addMember's body.
type addMemberJSON struct {
	Email string `json:"email"`
	Role  string `json:"role"`
}

// addMember: {"email": …, "role": "member"|"admin"|"owner"} (role
// defaults to member).
func (s *Server) addMember(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req addMemberJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Role == "" {
		req.Role = service.RoleMember
	}
	m, err := s.teams.AddMember(r.Context(), p, id, req.Email, req.Role)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, memberOf(m))
}

// memberIDs parses the team and member IDs of the path.
func memberIDs(r *http.Request) (team service.TeamID, user service.UserID, err error) {
	if team, err = typedPathID[wireid.KindTeam](r, "id", "team"); err != nil {
		return
	}
	user, err = typedPathID[wireid.KindUser](r, "user_id", "member")
	return
}

// memberRoleJSON is setMemberRole's body.
type memberRoleJSON struct {
	Role string `json:"role"`
}

func (s *Server) setMemberRole(w http.ResponseWriter, r *http.Request, p service.Principal) {
	team, user, err := memberIDs(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req memberRoleJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	m, err := s.teams.SetMemberRole(r.Context(), p, team, user, req.Role)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, memberOf(m))
}

func (s *Server) removeMember(w http.ResponseWriter, r *http.Request, p service.Principal) {
	team, user, err := memberIDs(r)
	if err == nil {
		err = s.teams.RemoveMember(r.Context(), p, team, user)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) leaveTeam(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err == nil {
		err = s.teams.Leave(r.Context(), p, id)
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// switchTeamJSON is switchTeam's body.
type switchTeamJSON struct {
	TeamID string `json:"team_id"`
}

// switchTeam: {"team_id": …} → a session for that team, shaped as login's
// answer.
func (s *Server) switchTeam(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req switchTeamJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	id, err := wireid.ParseTeamID(req.TeamID)
	if err != nil {
		s.writeError(w, r, &service.Error{Kind: service.ErrNotFound, Msg: "team not found"})
		return
	}
	sess, err := s.cfg.Accounts.SwitchTeam(r.Context(), p, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if viaCookie(r) {
		// The dashboard: the new token replaces the cookie, the old one is
		// revoked, and neither reaches the page's script.
		old, _ := r.Cookie(sessionCookie)
		if err := s.cfg.Accounts.RevokeSession(r.Context(), old.Value); err != nil {
			s.writeError(w, r, err)
			return
		}
		s.setSessionCookies(w, r, sess.Token, sess.ExpiresAt)
		sess.Token = ""
	}
	writeJSON(w, http.StatusOK, sessionJSON{accountJSON: accountOf(sess.Account), Token: sess.Token, ExpiresAt: sess.ExpiresAt})
}

type meJSON struct {
	User  userJSON         `json:"user"`
	Teams []teamDetailJSON `json:"teams"`
	// TeamID is the session's team ("" when it has none, e.g. after the
	// team was deleted: switch to another).
	TeamID string `json:"team_id"`
	// HasPassword: the user can sign in with a password (an account made
	// by OAuth sign-in has none until it sets one).
	HasPassword bool `json:"has_password"`
	// OAuth lists the user's linked OAuth identities.
	OAuth []oauthIdentityJSON `json:"oauth"`
}

// oauthIdentityJSON is one linked OAuth identity.
type oauthIdentityJSON struct {
	Provider string    `json:"provider"`
	Email    string    `json:"email"`
	LinkedAt time.Time `json:"linked_at"`
}

func userOf(u db.User) userJSON {
	return userJSON{ID: wireid.Format(wireid.User, u.ID), Email: u.Email, Name: u.Name, IsAdmin: u.IsAdmin}
}

func (s *Server) getMe(w http.ResponseWriter, r *http.Request, p service.Principal) {
	me, err := s.cfg.Accounts.Me(r.Context(), p)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := meJSON{User: userOf(me.User), Teams: teamsOf(me.Teams), HasPassword: me.User.PasswordHash.Valid,
		OAuth: make([]oauthIdentityJSON, len(me.Identities))}
	for i, id := range me.Identities {
		out.OAuth[i] = oauthIdentityJSON{Provider: id.Provider, Email: id.Email, LinkedAt: id.CreatedAt}
	}
	if !p.TeamID.IsZero() {
		out.TeamID = p.TeamID.String()
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) updateMe(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req nameBody
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	u, err := s.cfg.Accounts.SetName(r.Context(), p, req.Name)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, userOf(u))
}

// unlinkOAuth removes the user's identity at the path's provider → 204;
// 404 when none is linked, 409 when the user has no password (the
// identity is its only way in). The provider need not be configured any
// more: an identity of a provider since switched off can still go.
func (s *Server) unlinkOAuth(w http.ResponseWriter, r *http.Request, p service.Principal) {
	if err := s.cfg.Accounts.UnlinkOAuth(r.Context(), p, r.PathValue("provider")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type changePasswordJSON struct {
	CurrentPassword string `json:"current_password"`
	NewPassword     string `json:"new_password"`
}

// changePassword: {"current_password","new_password"} → 204. A wrong
// current password is 403 (the session is fine); the route is limited per
// client address as logins are (guessing the current password through a
// stolen session is no cheaper than guessing it at the login).
func (s *Server) changePassword(w http.ResponseWriter, r *http.Request, p service.Principal) {
	var req changePasswordJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.cfg.Accounts.ChangePassword(r.Context(), p, req.CurrentPassword, req.NewPassword); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

type userHitJSON struct {
	ID    string `json:"id"`
	Email string `json:"email"`
	Name  string `json:"name"`
}

// searchUsers: ?email_prefix= (at least 3 characters; at most 10 results).
// Only the admins and owners of the session's team may search (403 for a
// member): they are who can add members.
//
// Rate limited per user (auth.UserSearchLimitPerUser): 429 with
// Retry-After.
func (s *Server) searchUsers(w http.ResponseWriter, r *http.Request, p service.Principal) {
	if ok, wait := s.searchUser.Allow("user:" + p.UserID.String()); !ok {
		auth.WriteTooManyRequests(w, wait)
		return
	}
	hits, err := s.cfg.Accounts.SearchUsers(r.Context(), p, r.URL.Query().Get("email_prefix"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]userHitJSON, len(hits))
	for i, h := range hits {
		out[i] = userHitJSON{ID: wireid.Format(wireid.User, h.ID), Email: h.Email, Name: h.Name}
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": out})
}
