package capsule

import (
	"context"
	"iter"
	"net/http"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// APIKey is a team API key. Key is set only in the answer that creates it:
// the platform keeps only a hash.
type APIKey struct {
	ID         string    `json:"id"`
	Name       string    `json:"name"`
	Prefix     string    `json:"prefix"`
	Key        string    `json:"key,omitempty"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
}

func keyFrom(w wire.ApiKey) APIKey {
	return APIKey{ID: w.Id, Name: w.Name, Prefix: w.Prefix, Key: deref(w.Key), CreatedAt: w.CreatedAt, LastUsedAt: deref(w.LastUsedAt)}
}

// KeyService manages the team's API keys (Client.Keys).
type KeyService struct{ c *Client }

// Create makes a key called name; the answer is the only time its Key is
// readable.
func (s *KeyService) Create(ctx context.Context, name string) (APIKey, error) {
	var out wire.ApiKey
	resp, err := s.c.wire.CreateApiKey(ctx, wire.CreateApiKeyRequest{Name: name})
	if err := decode(resp, err, http.StatusCreated, &out); err != nil {
		return APIKey{}, err
	}
	return keyFrom(out), nil
}

// List returns the team's live keys (without their secret).
func (s *KeyService) List(ctx context.Context) ([]APIKey, error) {
	var out wire.ApiKeyList
	resp, err := s.c.wire.ListApiKeys(ctx)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	keys := make([]APIKey, len(out.ApiKeys))
	for i, w := range out.ApiKeys {
		keys[i] = keyFrom(w)
	}
	return keys, nil
}

// Revoke makes the key id stop working at once.
func (s *KeyService) Revoke(ctx context.Context, id string) error {
	resp, err := s.c.wire.RevokeApiKey(ctx, id)
	return decode(resp, err, http.StatusNoContent, nil)
}

// Team is a team of the user.
type Team struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Slug is generated at creation and never changes.
	Slug string `json:"slug"`
	// Role is the user's: owner, admin or member.
	Role string `json:"role"`
	// BYOC: the team brings its own sandbox hosts.
	BYOC      bool      `json:"is_byoc"`
	CreatedAt time.Time `json:"created_at"`
	JoinedAt  time.Time `json:"joined_at"`
}

func teamFrom(w wire.TeamDetail) Team {
	return Team{ID: w.Id, Name: w.Name, Slug: w.Slug, Role: string(w.Role), BYOC: w.IsByoc, CreatedAt: w.CreatedAt, JoinedAt: w.JoinedAt}
}

// Roles of a team's members.
const (
	RoleOwner  = "owner"
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// TeamService manages the user's teams, their members and invitations
// (Client.Teams). Every call needs a user's session token (from a login
// or Switch), not a team API key: a key is refused with ErrForbidden.
// A team the user is not a member of is ErrNotFound, as one that never
// existed.
type TeamService struct{ c *Client }

// List returns the user's teams, oldest membership first.
func (s *TeamService) List(ctx context.Context) ([]Team, error) {
	var out wire.TeamList
	resp, err := s.c.wire.ListTeams(ctx)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	teams := make([]Team, len(out.Teams))
	for i, w := range out.Teams {
		teams[i] = teamFrom(w)
	}
	return teams, nil
}

// User is a platform user as the session sees itself.
type User struct {
	ID    string `json:"id"`
	Email string `json:"email"`
	Name  string `json:"name"`
	// Admin: a platform admin (Client.Admin's calls are allowed).
	Admin bool `json:"is_admin"`
}

// Me is the session's user, its teams and the team the session acts in.
type Me struct {
	User User `json:"user"`
	// Teams are the user's, oldest membership first.
	Teams []Team `json:"teams"`
	// TeamID is the session's team; "" when it was left or deleted
	// (Switch to another).
	TeamID string `json:"team_id"`
}

// Team returns the session's team among Teams.
func (m Me) Team() (Team, bool) {
	for _, t := range m.Teams {
		if t.ID == m.TeamID {
			return t, true
		}
	}
	return Team{}, false
}

// Me returns the session's user, its teams and the session's team.
func (s *TeamService) Me(ctx context.Context) (Me, error) {
	var out wire.Me
	resp, err := s.c.wire.GetMe(ctx)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Me{}, err
	}
	m := Me{User: userFrom(out.User), Teams: make([]Team, len(out.Teams)), TeamID: out.TeamId}
	for i, w := range out.Teams {
		m.Teams[i] = teamFrom(w)
	}
	return m, nil
}

func userFrom(w wire.User) User {
	return User{ID: w.Id, Email: string(w.Email), Name: w.Name, Admin: w.IsAdmin}
}

// Create makes a team called name with the user as its owner. The
// session keeps acting in its team: Switch to act in the new one.
func (s *TeamService) Create(ctx context.Context, name string) (Team, error) {
	var out wire.TeamDetail
	resp, err := s.c.wire.CreateTeam(ctx, wire.TeamNameRequest{Name: name})
	if err := decode(resp, err, http.StatusCreated, &out); err != nil {
		return Team{}, err
	}
	return teamFrom(out), nil
}

// Get returns the user's team id.
func (s *TeamService) Get(ctx context.Context, id string) (Team, error) {
	var out wire.TeamDetail
	resp, err := s.c.wire.GetTeam(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Team{}, err
	}
	return teamFrom(out), nil
}

// Rename gives team id a new name (admins and owners; the slug stays).
func (s *TeamService) Rename(ctx context.Context, id, name string) (Team, error) {
	var out wire.TeamDetail
	resp, err := s.c.wire.RenameTeam(ctx, id, wire.TeamNameRequest{Name: name})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Team{}, err
	}
	return teamFrom(out), nil
}

// TeamDeletion is what deleting a team did: the team is deleted either
// way; its sandboxes on an unreachable host could not be destroyed.
type TeamDeletion struct {
	ID                    string `json:"id"`
	SandboxesDestroyed    int    `json:"sandboxes_destroyed"`
	SandboxesNotDestroyed int    `json:"sandboxes_not_destroyed"`
}

func deletionFrom(w wire.TeamDeletion) TeamDeletion {
	return TeamDeletion{ID: w.Id, SandboxesDestroyed: w.SandboxesDestroyed, SandboxesNotDestroyed: w.SandboxesNotDestroyed}
}

// Delete deletes team id (owners; ErrForbidden for the platform team) and
// destroys its sandboxes. Its API keys and the sessions in it stop
// working at once.
func (s *TeamService) Delete(ctx context.Context, id string) (TeamDeletion, error) {
	var out wire.TeamDeletion
	resp, err := s.c.wire.DeleteTeam(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return TeamDeletion{}, err
	}
	return deletionFrom(out), nil
}

// Session is a user's session in a team.
type Session struct {
	// Token is the session token (for WithAPIKey).
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	User      User      `json:"user"`
	// Team is the team the token acts in.
	Team Team `json:"team"`
}

// Switch returns a new session token of the user acting in team id (one
// of the user's teams) and makes it the team later logins land in. The
// client keeps its own token: make a client with the new one to act in
// the team. It needs a session token (a team API key belongs to its team
// for good: ErrForbidden).
func (s *TeamService) Switch(ctx context.Context, id string) (Session, error) {
	var out wire.Session
	resp, err := s.c.wire.SwitchTeam(ctx, wire.SwitchTeamRequest{TeamId: id})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Session{}, err
	}
	sess := Session{Token: deref(out.Token), ExpiresAt: out.ExpiresAt, User: userFrom(out.User)}
	if out.Team != nil {
		sess.Team = Team{ID: out.Team.Id, Name: out.Team.Name, Slug: out.Team.Slug, Role: string(deref(out.Team.Role))}
	}
	return sess, nil
}

// Member is a member of a team.
type Member struct {
	UserID   string    `json:"user_id"`
	Email    string    `json:"email"`
	Name     string    `json:"name"`
	Role     string    `json:"role"`
	JoinedAt time.Time `json:"joined_at"`
}

func memberFrom(w wire.Member) Member {
	return Member{UserID: w.UserId, Email: string(w.Email), Name: w.Name, Role: string(w.Role), JoinedAt: w.JoinedAt}
}

// Members returns team id's members, oldest first (any member may ask).
func (s *TeamService) Members(ctx context.Context, id string) ([]Member, error) {
	var out wire.MemberList
	resp, err := s.c.wire.ListMembers(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	list := make([]Member, len(out.Members))
	for i, w := range out.Members {
		list[i] = memberFrom(w)
	}
	return list, nil
}

// AddMember adds the registered user with this e-mail address to team id
// with role ("": member). Admins and owners add members and admins; only
// owners add owners. An address nobody registered is ErrNotFound (invite
// it instead); a member already is ErrConflict.
func (s *TeamService) AddMember(ctx context.Context, id, email, role string) (Member, error) {
	addr, err := emailOf(email)
	if err != nil {
		return Member{}, err
	}
	body := wire.AddMemberRequest{Email: addr}
	if role != "" {
		r := wire.AddMemberRequestRole(role)
		body.Role = &r
	}
	var out wire.Member
	resp, err := s.c.wire.AddMember(ctx, id, body)
	if err := decode(resp, err, http.StatusCreated, &out); err != nil {
		return Member{}, err
	}
	return memberFrom(out), nil
}

// SetRole changes the role of member userID of team id (granting or
// taking away owner takes an owner; the last owner is ErrConflict).
func (s *TeamService) SetRole(ctx context.Context, id, userID, role string) (Member, error) {
	var out wire.Member
	resp, err := s.c.wire.SetMemberRole(ctx, id, userID, wire.SetMemberRoleRequest{Role: wire.SetMemberRoleRequestRole(role)})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Member{}, err
	}
	return memberFrom(out), nil
}

// RemoveMember removes member userID from team id (the last owner is
// ErrConflict).
func (s *TeamService) RemoveMember(ctx context.Context, id, userID string) error {
	resp, err := s.c.wire.RemoveMember(ctx, id, userID)
	return decode(resp, err, http.StatusNoContent, nil)
}

// Leave takes the user out of team id (the last owner is ErrConflict). A
// session token of that team is then refused by the team routes: Switch
// to another team.
func (s *TeamService) Leave(ctx context.Context, id string) error {
	resp, err := s.c.wire.LeaveTeam(ctx, id)
	return decode(resp, err, http.StatusNoContent, nil)
}

// Invitation is an invitation to sign up into a team.
type Invitation struct {
	ID     string `json:"id"`
	TeamID string `json:"team_id"`
	Email  string `json:"email"`
	Role   string `json:"role"`
	// Status is "pending", "redeemed" or "expired".
	Status    string `json:"status"`
	CreatedBy string `json:"created_by,omitempty"`
	// Token signs the invitee up (POST /v1/auth/signup with
	// `invitation`); set only in the answer that creates it.
	Token      string     `json:"token,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  time.Time  `json:"expires_at"`
	RedeemedAt *time.Time `json:"redeemed_at,omitempty"`
}

func invitationFrom(w wire.Invitation) Invitation {
	return Invitation{ID: w.Id, TeamID: w.TeamId, Email: string(w.Email), Role: string(w.Role), Status: string(w.Status),
		CreatedBy: deref(w.CreatedBy), Token: deref(w.Token), CreatedAt: w.CreatedAt, ExpiresAt: w.ExpiresAt, RedeemedAt: w.RedeemedAt}
}

// InviteOptions is an invitation to make.
type InviteOptions struct {
	// Email is the invitee's address (not registered yet: a registered
	// one is ErrConflict, add that user with AddMember).
	Email string
	// Role is the invitee's role ("": member).
	Role string
	// Expires is the invitation's lifetime in whole hours (0: a week).
	Expires time.Duration
}

// Invite makes a one-time invitation into team id; its Token is readable
// only in this answer.
func (s *TeamService) Invite(ctx context.Context, id string, opts InviteOptions) (Invitation, error) {
	addr, err := emailOf(opts.Email)
	if err != nil {
		return Invitation{}, err
	}
	body := wire.CreateInvitationRequest{Email: addr}
	if opts.Role != "" {
		r := wire.CreateInvitationRequestRole(opts.Role)
		body.Role = &r
	}
	if opts.Expires > 0 {
		body.ExpiresInHours = ptrOrNil(int((opts.Expires + time.Hour - 1) / time.Hour))
	}
	var out wire.Invitation
	resp, err := s.c.wire.CreateInvitation(ctx, id, body)
	if err := decode(resp, err, http.StatusCreated, &out); err != nil {
		return Invitation{}, err
	}
	return invitationFrom(out), nil
}

// Invitations returns team id's invitations, newest first, without their
// tokens (admins and owners).
func (s *TeamService) Invitations(ctx context.Context, id string) ([]Invitation, error) {
	var out wire.InvitationList
	resp, err := s.c.wire.ListInvitations(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	list := make([]Invitation, len(out.Invitations))
	for i, w := range out.Invitations {
		list[i] = invitationFrom(w)
	}
	return list, nil
}

// RevokeInvitation revokes pending invitation invID of team id (a
// redeemed one is ErrNotFound).
func (s *TeamService) RevokeInvitation(ctx context.Context, id, invID string) error {
	resp, err := s.c.wire.RevokeInvitation(ctx, id, invID)
	return decode(resp, err, http.StatusNoContent, nil)
}

// SearchUsers returns up to 10 users whose e-mail address starts with
// prefix (at least 3 characters), to add as members. Only the admins and
// owners of the session's team may search; it is rate limited per user.
func (s *TeamService) SearchUsers(ctx context.Context, prefix string) ([]User, error) {
	var out wire.UserSearchResult
	resp, err := s.c.wire.SearchUsers(ctx, &wire.SearchUsersParams{EmailPrefix: prefix})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	list := make([]User, len(out.Users))
	for i, w := range out.Users {
		list[i] = User{ID: w.Id, Email: string(w.Email), Name: w.Name}
	}
	return list, nil
}

// AuditLog returns the session's team's audit log, newest first, page by
// page as the loop goes. Members see the team-scoped events; admins and
// owners every event. An error ends the iteration (yielded once).
func (s *TeamService) AuditLog(ctx context.Context, opts AuditLogOptions) iter.Seq2[AuditEvent, error] {
	params := wire.ListAuditLogsParams{Limit: ptrOrNil(opts.PageSize), ResourceType: words(opts.ResourceTypes), Action: words(opts.Actions)}
	return paginate(func(cursor string) ([]AuditEvent, string, error) {
		params.Cursor = ptrOrNil(cursor)
		var out wire.AuditLogPage
		resp, err := s.c.wire.ListAuditLogs(ctx, &params)
		if err := decode(resp, err, http.StatusOK, &out); err != nil {
			return nil, "", err
		}
		list := make([]AuditEvent, len(out.AuditLogs))
		for i, w := range out.AuditLogs {
			list[i] = AuditEvent{ID: w.Id, ActorType: string(w.ActorType), ActorID: w.ActorId, ActorName: w.ActorName,
				ResourceType: w.ResourceType, ResourceID: w.ResourceId, Action: w.Action, Scope: string(w.Scope),
				Status: string(w.Status), Metadata: w.Metadata, CreatedAt: w.CreatedAt}
		}
		return list, out.NextCursor, nil
	})
}
