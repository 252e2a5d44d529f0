package api

import (
	"net/http"
	"time"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Team invitations: owners and admins invite an e-mail address into a
// team; the invitee redeems the token at sign-up (POST /v1/auth/signup
// with "invitation"), which the "invite" sign-up policy requires.

type invitationJSON struct {
	ID         string     `json:"id"`
	TeamID     string     `json:"team_id"`
	Email      string     `json:"email"`
	Role       string     `json:"role"`
	Status     string     `json:"status"`
	CreatedBy  string     `json:"created_by,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	RedeemedAt *time.Time `json:"redeemed_at"`
	// Token is the one-time token: only in the answer that created it.
	Token string `json:"token,omitempty"`
}

// Invitation states on the wire.
const (
	invitationPending  = "pending"
	invitationRedeemed = "redeemed"
	invitationExpired  = "expired"
)

func invitationOf(inv service.Invitation, now time.Time) invitationJSON {
	out := invitationJSON{ID: wireid.Format(wireid.Invitation, inv.ID), TeamID: wireid.Format(wireid.Team, inv.TeamID),
		Email: inv.Email, Role: inv.Role, Status: invitationPending, CreatedBy: wireid.Format(wireid.User, inv.CreatedBy),
		CreatedAt: inv.CreatedAt, ExpiresAt: inv.ExpiresAt}
	switch {
	case inv.RedeemedAt.Valid:
		t := inv.RedeemedAt.Time
		out.RedeemedAt, out.Status = &t, invitationRedeemed
	case !now.Before(inv.ExpiresAt):
		out.Status = invitationExpired
	}
	return out
}

type createInvitationJSON struct {
	Email string `json:"email"`
	Role  string `json:"role,omitempty"`
	// ExpiresInHours is the lifetime (default 168, at most 720).
	ExpiresInHours int `json:"expires_in_hours,omitempty"`
}

func (s *Server) createInvitation(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	var req createInvitationJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	if req.Role == "" {
		req.Role = service.RoleMember
	}
	if req.ExpiresInHours < 0 || req.ExpiresInHours > int(service.MaxInvitationTTL/time.Hour) {
		s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "expires_in_hours: 1 to 720"})
		return
	}
	inv, err := s.teams.CreateInvitation(r.Context(), p, id, req.Email, req.Role, time.Duration(req.ExpiresInHours)*time.Hour)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := invitationOf(inv.Invitation, s.teams.Now())
	out.Token = inv.Token
	writeJSON(w, http.StatusCreated, out)
}

func (s *Server) listInvitations(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	invs, err := s.teams.Invitations(r.Context(), p, id)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	now := s.teams.Now()
	out := make([]invitationJSON, len(invs))
	for i, inv := range invs {
		out[i] = invitationOf(inv, now)
	}
	writeJSON(w, http.StatusOK, map[string]any{"invitations": out})
}

func (s *Server) revokeInvitation(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, err := typedPathID[wireid.KindTeam](r, "id", "team")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	inv, err := typedPathID[wireid.KindInvitation](r, "invitation_id", "invitation")
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.teams.RevokeInvitation(r.Context(), p, id, inv); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
