package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
	"unicode"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Teams: teams and their members, managed by users (sessions, not API
// keys). The caller's role is read from the database in the transaction
// of each change; changes that touch the owner invariant (a live team
// always has an owner) run under the team's row lock (LockTeam), so that
// concurrent demotions, removals and departures are serialized and see
// each other's effect.
//
// Visibility: a team the caller is not a member of (or a deleted one) is
// ErrNotFound; a member lacking the role for a change is ErrForbidden.
type Teams struct {
	st        *store.Store
	sandboxes *Sandboxes
	audit     *Audit
	log       *slog.Logger
	now       func() time.Time
}

// TeamsConfig configures NewTeams.
type TeamsConfig struct {
	Store *store.Store
	// Sandboxes destroys a deleted team's sandboxes.
	Sandboxes *Sandboxes
	// Audit records team and member events (a new one over Store when
	// nil).
	Audit *Audit
	// Now is the clock of invitation expiry; time.Now when nil.
	Now func() time.Time
	Log *slog.Logger
}

// NewTeams returns the teams service.
func NewTeams(cfg TeamsConfig) (*Teams, error) {
	if cfg.Store == nil || cfg.Sandboxes == nil {
		return nil, errors.New("service: teams need a store and the sandbox service")
	}
	log, audit := logAndAudit(cfg.Store, cfg.Log, cfg.Audit)
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	return &Teams{st: cfg.Store, sandboxes: cfg.Sandboxes, audit: audit, now: now, log: log.With("component", "teams")}, nil
}

// Team is a team as the service shows it.
type Team struct {
	ID        TeamID
	Name      string
	Slug      string
	IsBYOC    bool
	CreatedAt time.Time
	UpdatedAt time.Time
}

func teamView(t db.Team) Team {
	return Team{ID: teamIDOf(t.ID), Name: t.Name, Slug: t.Slug, IsBYOC: t.IsBYOC, CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt}
}

// TeamRole is a team and the caller's role in it.
type TeamRole struct {
	Team Team
	Role string
	// JoinedAt is when the caller became a member.
	JoinedAt time.Time
}

// Member is a member of a team.
type Member struct {
	UserID UserID
	Email  string
	Name   string
	Role   string
	// JoinedAt is when the user became a member.
	JoinedAt time.Time
}

// TeamDeletion reports a team deletion: the team is deleted (its API
// keys stop working at once); Destroyed of its sandboxes were destroyed,
// NotDestroyed could not be (the host was unreachable; they are logged).
type TeamDeletion struct {
	Destroyed    int
	NotDestroyed int
}

var roleRank = map[string]int{RoleMember: 1, RoleAdmin: 2, RoleOwner: 3}

// adminRole reports whether role administers a team (admin or owner).
func adminRole(role string) bool { return roleRank[role] >= roleRank[RoleAdmin] }

func validateRole(role string) error {
	if roleRank[role] == 0 {
		return errorf(ErrInvalid, "role: one of owner, admin, member")
	}
	return nil
}

// validateTeamName trims name and checks it: 1 to 128 characters, no
// control characters.
func validateTeamName(name string) (string, error) {
	name = strings.TrimSpace(name)
	if name == "" || len(name) > 128 {
		return "", errorf(ErrInvalid, "name: 1 to 128 characters")
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return "", errorf(ErrInvalid, "name: no control characters")
	}
	return name, nil
}

// requireUser refuses principals that are not a user's session: teams
// are a user's business, an API key belongs to one team.
func requireUser(p Principal) error {
	if p.UserID.IsZero() || !p.APIKeyID.IsZero() {
		return errorf(ErrForbidden, "this needs a user session (Authorization: Bearer <session token>), not an API key")
	}
	return nil
}

func teamID(id pgtype.UUID) string { return wireid.Format(wireid.Team, id) }
func userID(id pgtype.UUID) string { return wireid.Format(wireid.User, id) }

var errTeamNotFound = errorf(ErrNotFound, "team not found")

// membership returns p's role in the live team id; ErrNotFound when p is
// not a member or the team is deleted.
func membership(ctx context.Context, q *db.Queries, p Principal, id pgtype.UUID) (db.Membership, error) {
	m, err := q.GetMembership(ctx, db.GetMembershipParams{UserID: pgUUID(p.UserID), TeamID: id})
	if errors.Is(err, store.ErrNotFound) {
		return db.Membership{}, errTeamNotFound
	}
	if err != nil {
		return db.Membership{}, fmt.Errorf("membership: %w", err)
	}
	return m, nil
}

// lock locks the team's row (ErrNotFound when deleted) and reads p's role
// in it under the lock (ErrNotFound when not a member). Run in a
// transaction.
func lock(ctx context.Context, q *db.Queries, p Principal, id pgtype.UUID) (db.Team, db.Membership, error) {
	t, err := q.LockTeam(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return db.Team{}, db.Membership{}, errTeamNotFound
	}
	if err != nil {
		return db.Team{}, db.Membership{}, fmt.Errorf("lock team: %w", err)
	}
	m, err := membership(ctx, q, p, id)
	if err != nil {
		return db.Team{}, db.Membership{}, err
	}
	return t, m, nil
}

// lockAdmin locks the team as lock does and requires p to administer it
// (admin or owner): otherwise ErrForbidden, "<doing> needs the admin or
// owner role".
func lockAdmin(ctx context.Context, q *db.Queries, p Principal, id pgtype.UUID, doing string) (db.Team, db.Membership, error) {
	t, m, err := lock(ctx, q, p, id)
	if err != nil {
		return db.Team{}, db.Membership{}, err
	}
	if !adminRole(m.Role) {
		return db.Team{}, db.Membership{}, errorf(ErrForbidden, "%s needs the admin or owner role", doing)
	}
	return t, m, nil
}

// Create creates a team with p as its owner. The slug is generated by the
// database and never changes.
func (t *Teams) Create(ctx context.Context, p Principal, name string) (TeamRole, error) {
	if err := requireUser(p); err != nil {
		return TeamRole{}, err
	}
	name, err := validateTeamName(name)
	if err != nil {
		return TeamRole{}, err
	}
	var out TeamRole
	// A random slug may collide (48 bits): retry a few times.
	for attempt := 0; ; attempt++ {
		err = t.st.Tx(ctx, func(q *db.Queries) error {
			team, err := q.CreateTeam(ctx, db.CreateTeamParams{Name: name})
			if err != nil {
				return fmt.Errorf("create team: %w", err)
			}
			m, err := q.AddTeamMember(ctx, db.AddTeamMemberParams{UserID: pgUUID(p.UserID), TeamID: team.ID, Role: RoleOwner})
			if err != nil {
				return fmt.Errorf("add owner: %w", err)
			}
			out = TeamRole{Team: teamView(team), Role: RoleOwner, JoinedAt: m.CreatedAt}
			return t.audit.Record(ctx, q, teamIDOf(team.ID), p.Actor(), AuditEvent{ResourceType: "team", ResourceID: teamID(team.ID),
				Action: "team.create", Metadata: map[string]any{"name": name, "slug": team.Slug}})
		})
		if err == nil || !errors.Is(err, store.ErrConflict) || store.ConstraintName(err) != "teams_slug_key" || attempt == 2 {
			break
		}
	}
	if err != nil {
		return TeamRole{}, err
	}
	t.log.InfoContext(ctx, "team created", "team", out.Team.ID.String(), "user", p.UserID.String())
	return out, nil
}

// List lists p's live teams with p's role in each, oldest membership
// first.
func (t *Teams) List(ctx context.Context, p Principal) ([]TeamRole, error) {
	if err := requireUser(p); err != nil {
		return nil, err
	}
	rows, err := t.st.Queries().ListTeamsForUser(ctx, pgUUID(p.UserID))
	if err != nil {
		return nil, fmt.Errorf("list teams: %w", err)
	}
	out := make([]TeamRole, len(rows))
	for i, r := range rows {
		out[i] = TeamRole{Team: teamView(r.Team), Role: r.Role, JoinedAt: r.JoinedAt}
	}
	return out, nil
}

// Get returns a team p is a member of.
func (t *Teams) Get(ctx context.Context, p Principal, id TeamID) (TeamRole, error) {
	if err := requireUser(p); err != nil {
		return TeamRole{}, err
	}
	q := t.st.Queries()
	m, err := membership(ctx, q, p, pgUUID(id))
	if err != nil {
		return TeamRole{}, err
	}
	team, err := q.GetTeam(ctx, pgUUID(id))
	if err != nil {
		return TeamRole{}, notFound(err, "team")
	}
	return TeamRole{Team: teamView(team), Role: m.Role, JoinedAt: m.CreatedAt}, nil
}

// Rename renames a team (admins and owners). The slug does not change.
func (t *Teams) Rename(ctx context.Context, p Principal, id TeamID, name string) (TeamRole, error) {
	if err := requireUser(p); err != nil {
		return TeamRole{}, err
	}
	name, err := validateTeamName(name)
	if err != nil {
		return TeamRole{}, err
	}
	var out TeamRole
	err = t.st.Tx(ctx, func(q *db.Queries) error {
		team, m, err := lockAdmin(ctx, q, p, pgUUID(id), "renaming a team")
		if err != nil {
			return err
		}
		renamed, err := q.RenameTeam(ctx, db.RenameTeamParams{Name: name, ID: pgUUID(id)})
		if err != nil {
			return notFound(err, "team")
		}
		out = TeamRole{Team: teamView(renamed), Role: m.Role, JoinedAt: m.CreatedAt}
		if renamed.Name == team.Name {
			return nil
		}
		return t.audit.Record(ctx, q, id, p.Actor(), AuditEvent{ResourceType: "team", ResourceID: id.String(),
			Action: "team.rename", Metadata: map[string]any{"old_name": team.Name, "name": name}})
	})
	if err != nil {
		return TeamRole{}, err
	}
	return out, nil
}

// Delete soft-deletes a team (owners only; the platform team cannot be
// deleted): its API keys stop working and its members' logins fall back
// to another team at once; then every sandbox of the team that is not
// stopped is destroyed. The team stays deleted when some sandbox cannot
// be destroyed (TeamDeletion.NotDestroyed counts them).
func (t *Teams) Delete(ctx context.Context, p Principal, id TeamID) (TeamDeletion, error) {
	if err := requireUser(p); err != nil {
		return TeamDeletion{}, err
	}
	return t.deleteTeam(ctx, p, pgUUID(id), func(q *db.Queries) (db.Team, error) {
		team, m, err := lock(ctx, q, p, pgUUID(id))
		if err != nil {
			return db.Team{}, err
		}
		if m.Role != RoleOwner {
			return db.Team{}, errorf(ErrForbidden, "deleting a team needs the owner role")
		}
		return team, nil
	}, nil)
}

// deleteTeam deletes team id as p once authorize allows it: authorize runs
// first in the transaction, locks the live team's row (LockTeam) and
// checks p's right to delete it. The audit event team.delete carries
// meta besides the team's name and slug. Then the team's sandboxes are
// destroyed as p (see Delete); Admin.DeleteTeam takes this path too.
func (t *Teams) deleteTeam(ctx context.Context, p Principal, id pgtype.UUID, authorize func(q *db.Queries) (db.Team, error), meta map[string]any) (TeamDeletion, error) {
	err := t.st.Tx(ctx, func(q *db.Queries) error {
		team, err := authorize(q)
		if err != nil {
			return err
		}
		if id == store.PlatformTeamID {
			return errorf(ErrForbidden, "the platform team cannot be deleted")
		}
		if _, err := q.SoftDeleteTeam(ctx, id); err != nil {
			return notFound(err, "team")
		}
		md := map[string]any{"name": team.Name, "slug": team.Slug}
		for k, v := range meta {
			md[k] = v
		}
		return t.audit.Record(ctx, q, teamIDOf(id), p.Actor(), AuditEvent{ResourceType: "team", ResourceID: teamID(id),
			Action: "team.delete", Scope: ScopeAdmin, Metadata: md})
	})
	if err != nil {
		return TeamDeletion{}, err
	}
	t.log.InfoContext(ctx, "team deleted", "team", teamID(id), "user", p.UserID.String())
	// The team is deleted: no sandbox can be created in it any more
	// (Create locks the live team), so this sweep sees every one.
	tp := Principal{UserID: p.UserID, TeamID: teamIDOf(id), Role: RoleOwner, ActorName: p.ActorName}
	n, failed, derr := t.sandboxes.DestroyTeamSandboxes(context.WithoutCancel(ctx), tp)
	if derr != nil {
		t.log.ErrorContext(ctx, "destroy the deleted team's sandboxes", "team", teamID(id), "err", derr)
	}
	out := TeamDeletion{Destroyed: n, NotDestroyed: failed}
	return out, nil
}

// Members lists a team's members (any member may).
func (t *Teams) Members(ctx context.Context, p Principal, id TeamID) ([]Member, error) {
	if err := requireUser(p); err != nil {
		return nil, err
	}
	q := t.st.Queries()
	if _, err := membership(ctx, q, p, pgUUID(id)); err != nil {
		return nil, err
	}
	rows, err := q.ListTeamMembers(ctx, pgUUID(id))
	if err != nil {
		return nil, fmt.Errorf("list members: %w", err)
	}
	ms := make([]Member, len(rows))
	for i, r := range rows {
		ms[i] = Member{UserID: userIDOf(r.UserID), Email: r.Email, Name: r.Name, Role: r.Role, JoinedAt: r.JoinedAt}
	}
	return ms, nil
}

// AddMember adds the user registered with email to a team, with role:
// admins and owners may add members and admins, only owners may add
// owners. An unknown address is ErrNotFound; a member already,
// ErrConflict.
func (t *Teams) AddMember(ctx context.Context, p Principal, id TeamID, email, role string) (Member, error) {
	if err := requireUser(p); err != nil {
		return Member{}, err
	}
	if err := validateRole(role); err != nil {
		return Member{}, err
	}
	email = strings.TrimSpace(email)
	if email == "" || len(email) > 320 {
		return Member{}, errorf(ErrInvalid, "email: required")
	}
	var out Member
	err := t.st.Tx(ctx, func(q *db.Queries) error {
		_, m, err := lockAdmin(ctx, q, p, pgUUID(id), "adding members")
		if err != nil {
			return err
		}
		if role == RoleOwner && m.Role != RoleOwner {
			return errorf(ErrForbidden, "only owners can add owners")
		}
		u, err := q.GetUserByEmail(ctx, email)
		if errors.Is(err, store.ErrNotFound) {
			return errorf(ErrNotFound, "no user is registered with this e-mail address")
		}
		if err != nil {
			return fmt.Errorf("find user: %w", err)
		}
		nm, err := q.AddTeamMember(ctx, db.AddTeamMemberParams{UserID: u.ID, TeamID: pgUUID(id), Role: role})
		if errors.Is(err, store.ErrConflict) {
			return &Error{Kind: ErrConflict, Msg: "this user is a member of the team already", Err: err}
		}
		if err != nil {
			return fmt.Errorf("add member: %w", err)
		}
		out = Member{UserID: userIDOf(u.ID), Email: u.Email, Name: u.Name, Role: role, JoinedAt: nm.CreatedAt}
		return t.audit.Record(ctx, q, id, p.Actor(), AuditEvent{ResourceType: "member", ResourceID: userID(u.ID),
			Action: "member.add", Metadata: map[string]any{"email": u.Email, "role": role}})
	})
	if err != nil {
		return Member{}, err
	}
	return out, nil
}

// target reads a member's row under the team lock.
func target(ctx context.Context, q *db.Queries, team, user pgtype.UUID) (db.Membership, db.User, error) {
	tm, err := q.GetMembership(ctx, db.GetMembershipParams{UserID: user, TeamID: team})
	if err != nil {
		return db.Membership{}, db.User{}, notFound(err, "member")
	}
	u, err := q.GetUser(ctx, user)
	if err != nil {
		return db.Membership{}, db.User{}, notFound(err, "member")
	}
	return tm, u, nil
}

// lastOwner reports whether the team has one owner or none (under the
// team lock).
func lastOwner(ctx context.Context, q *db.Queries, team pgtype.UUID) (bool, error) {
	n, err := q.CountTeamOwners(ctx, team)
	if err != nil {
		return false, fmt.Errorf("count owners: %w", err)
	}
	return n <= 1, nil
}

// SetMemberRole changes a member's role. Admins manage members and
// admins; granting or taking away the owner role takes an owner; the last
// owner cannot be demoted (ErrConflict).
func (t *Teams) SetMemberRole(ctx context.Context, p Principal, id TeamID, user UserID, role string) (Member, error) {
	if err := requireUser(p); err != nil {
		return Member{}, err
	}
	if err := validateRole(role); err != nil {
		return Member{}, err
	}
	var out Member
	err := t.st.Tx(ctx, func(q *db.Queries) error {
		_, m, err := lockAdmin(ctx, q, p, pgUUID(id), "changing roles")
		if err != nil {
			return err
		}
		tm, u, err := target(ctx, q, pgUUID(id), pgUUID(user))
		if err != nil {
			return err
		}
		if (tm.Role == RoleOwner || role == RoleOwner) && m.Role != RoleOwner {
			return errorf(ErrForbidden, "only owners can grant or take away the owner role")
		}
		out = Member{UserID: userIDOf(u.ID), Email: u.Email, Name: u.Name, Role: tm.Role, JoinedAt: tm.CreatedAt}
		if tm.Role == role {
			return nil
		}
		if tm.Role == RoleOwner {
			if last, err := lastOwner(ctx, q, pgUUID(id)); err != nil {
				return err
			} else if last {
				return errorf(ErrConflict, "the last owner of a team cannot be demoted: make another member owner first")
			}
		}
		if _, err := q.UpdateTeamMemberRole(ctx, db.UpdateTeamMemberRoleParams{Role: role, UserID: pgUUID(user), TeamID: pgUUID(id)}); err != nil {
			return notFound(err, "member")
		}
		out.Role = role
		return t.audit.Record(ctx, q, id, p.Actor(), AuditEvent{ResourceType: "member", ResourceID: user.String(),
			Action: "member.role_change", Metadata: map[string]any{"email": u.Email, "old_role": tm.Role, "role": role}})
	})
	if err != nil {
		return Member{}, err
	}
	return out, nil
}

// RemoveMember removes a member from a team: admins remove members, owners
// anyone; the last owner cannot be removed (ErrConflict). The API keys the
// member created in the team are revoked with it.
func (t *Teams) RemoveMember(ctx context.Context, p Principal, id TeamID, user UserID) error {
	if err := requireUser(p); err != nil {
		return err
	}
	return t.st.Tx(ctx, func(q *db.Queries) error {
		_, m, err := lockAdmin(ctx, q, p, pgUUID(id), "removing members")
		if err != nil {
			return err
		}
		tm, u, err := target(ctx, q, pgUUID(id), pgUUID(user))
		if err != nil {
			return err
		}
		if tm.Role != RoleMember && m.Role != RoleOwner {
			return errorf(ErrForbidden, "only owners can remove admins and owners")
		}
		if tm.Role == RoleOwner {
			if last, err := lastOwner(ctx, q, pgUUID(id)); err != nil {
				return err
			} else if last {
				return errorf(ErrConflict, "the last owner of a team cannot be removed")
			}
		}
		if n, err := q.RemoveTeamMember(ctx, db.RemoveTeamMemberParams{UserID: pgUUID(user), TeamID: pgUUID(id)}); err != nil {
			return fmt.Errorf("remove member: %w", err)
		} else if n == 0 {
			return errorf(ErrNotFound, "member not found")
		}
		if err := t.audit.Record(ctx, q, id, p.Actor(), AuditEvent{ResourceType: "member", ResourceID: user.String(),
			Action: "member.remove", Metadata: map[string]any{"email": u.Email, "role": tm.Role}}); err != nil {
			return err
		}
		return revokeCreatorKeys(ctx, q, t.audit, pgUUID(id), pgUUID(user), p.Actor(), "member.remove")
	})
}

// Leave takes p out of a team; the last owner cannot leave (ErrConflict).
// The API keys p created in the team are revoked with it.
func (t *Teams) Leave(ctx context.Context, p Principal, id TeamID) error {
	if err := requireUser(p); err != nil {
		return err
	}
	return t.st.Tx(ctx, func(q *db.Queries) error {
		_, m, err := lock(ctx, q, p, pgUUID(id))
		if err != nil {
			return err
		}
		if m.Role == RoleOwner {
			if last, err := lastOwner(ctx, q, pgUUID(id)); err != nil {
				return err
			} else if last {
				return errorf(ErrConflict, "you are the last owner of this team: make another member owner first, or delete the team")
			}
		}
		if _, err := q.RemoveTeamMember(ctx, db.RemoveTeamMemberParams{UserID: pgUUID(p.UserID), TeamID: pgUUID(id)}); err != nil {
			return fmt.Errorf("leave: %w", err)
		}
		if err := t.audit.Record(ctx, q, id, p.Actor(), AuditEvent{ResourceType: "member", ResourceID: p.UserID.String(),
			Action: "member.leave", Metadata: map[string]any{"role": m.Role}}); err != nil {
			return err
		}
		return revokeCreatorKeys(ctx, q, t.audit, pgUUID(id), pgUUID(p.UserID), p.Actor(), "member.leave")
	})
}
