package service

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"unicode"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/auth/oauth"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
	"github.com/jackc/pgx/v5/pgtype"
)

// AuthenticateUser verifies a session token for the routes that act for
// the user rather than in a team (the user's profile, teams, team
// switching): the user must exist and not be disabled; the token's team is kept (with the
// role from the database) only while the user is still a member of it,
// else the principal has no team. Unlike AuthenticateJWT it does not
// refuse a session whose team was left or deleted, so that its user can
// switch to another team.
func (a *Accounts) AuthenticateUser(ctx context.Context, token string) (Principal, error) {
	claims, err := a.verifySession(ctx, token)
	if err != nil {
		return Principal{}, err
	}
	uid, err := wireid.Parse(wireid.User, claims.UserID)
	if err != nil {
		return Principal{}, errorf(ErrUnauthorized, "invalid session token")
	}
	q := a.st.Queries()
	u, err := q.GetUser(ctx, uid)
	if errors.Is(err, store.ErrNotFound) {
		return Principal{}, errorf(ErrUnauthorized, "the session's user no longer exists")
	}
	if err != nil {
		return Principal{}, fmt.Errorf("authenticate session: %w", err)
	}
	if err := checkEnabled(u); err != nil {
		return Principal{}, err
	}
	p := Principal{UserID: userIDOf(uid), ActorName: u.Email}
	if tid, err := wireid.Parse(wireid.Team, claims.TeamID); err == nil {
		m, err := q.GetMembership(ctx, db.GetMembershipParams{UserID: uid, TeamID: tid})
		switch {
		case err == nil:
			p.TeamID, p.Role = teamIDOf(tid), m.Role
		case !errors.Is(err, store.ErrNotFound):
			return Principal{}, fmt.Errorf("authenticate session: %w", err)
		}
	}
	return p, nil
}

// issueSession issues a session token for u in team (with role), or with
// no team when team is invalid; a disabled user gets none (ErrForbidden).
func (a *Accounts) issueSession(u db.User, team db.Team, role string) (Session, error) {
	if err := checkEnabled(u); err != nil {
		return Session{}, err
	}
	su := auth.SessionUser{UserID: userID(u.ID), Name: u.Name, Email: u.Email, IsAdmin: u.IsAdmin}
	acc := Account{User: u}
	if team.ID.Valid {
		su.TeamID, su.Role = teamID(team.ID), role
		acc.Team, acc.Role = teamView(team), role
	}
	token, claims, err := a.sessions.Issue(su)
	if err != nil {
		return Session{}, fmt.Errorf("issue session token: %w", err)
	}
	return Session{Token: token, ExpiresAt: claims.ExpiresAt, Account: acc}, nil
}

// sessionForUser issues a session token for u in its default team (see
// GetDefaultTeamForUser), or with no team when u has none.
func (a *Accounts) sessionForUser(ctx context.Context, u db.User) (Session, error) {
	row, err := a.st.Queries().GetDefaultTeamForUser(ctx, u.ID)
	if errors.Is(err, store.ErrNotFound) {
		return a.issueSession(u, db.Team{}, "")
	}
	if err != nil {
		return Session{}, fmt.Errorf("default team: %w", err)
	}
	return a.issueSession(u, row.Team, row.Role)
}

// SwitchTeam issues a new session token of p's user for team (a team p is
// a member of: else ErrNotFound) and makes it the user's default team.
func (a *Accounts) SwitchTeam(ctx context.Context, p Principal, team TeamID) (Session, error) {
	if err := requireUser(p); err != nil {
		return Session{}, err
	}
	var (
		u db.User
		t db.Team
		m db.Membership
	)
	err := a.st.Tx(ctx, func(q *db.Queries) error {
		var err error
		if m, err = membership(ctx, q, p, pgUUID(team)); err != nil {
			return err
		}
		if t, err = q.GetTeam(ctx, pgUUID(team)); err != nil {
			return notFound(err, "team")
		}
		if err := q.SetUserDefaultTeam(ctx, db.SetUserDefaultTeamParams{TeamID: pgUUID(team), ID: pgUUID(p.UserID)}); err != nil {
			return fmt.Errorf("default team: %w", err)
		}
		if u, err = q.GetUser(ctx, pgUUID(p.UserID)); err != nil {
			return notFound(err, "user")
		}
		return nil
	})
	if err != nil {
		return Session{}, err
	}
	return a.issueSession(u, t, m.Role)
}

// Me is a user with its teams.
type Me struct {
	User  db.User
	Teams []TeamRole
	// Identities are the user's linked OAuth identities (by provider).
	Identities []db.OAuthProvider
}

// Me returns p's user and its live teams (with p's role in each).
func (a *Accounts) Me(ctx context.Context, p Principal) (Me, error) {
	if err := requireUser(p); err != nil {
		return Me{}, err
	}
	q := a.st.Queries()
	u, err := q.GetUser(ctx, pgUUID(p.UserID))
	if err != nil {
		return Me{}, notFound(err, "user")
	}
	rows, err := q.ListTeamsForUser(ctx, pgUUID(p.UserID))
	if err != nil {
		return Me{}, fmt.Errorf("list teams: %w", err)
	}
	out := Me{User: u, Teams: make([]TeamRole, len(rows))}
	for i, r := range rows {
		out.Teams[i] = TeamRole{Team: teamView(r.Team), Role: r.Role, JoinedAt: r.JoinedAt}
	}
	if out.Identities, err = q.ListOAuthProvidersForUser(ctx, u.ID); err != nil {
		return Me{}, fmt.Errorf("list identities: %w", err)
	}
	return out, nil
}

// UnlinkOAuth removes p's identity at provider. Not linked is ErrNotFound;
// a user without a password is ErrConflict (the identity is its only way
// in: unlinking would lock it out; it sets a password first). The removal
// is audited (action "user.oauth_unlink", admin scope) in the session's
// team when it has one, in the same transaction; the user row is locked
// so that a concurrent password change or link is ordered with it.
func (a *Accounts) UnlinkOAuth(ctx context.Context, p Principal, provider string) error {
	if err := requireUser(p); err != nil {
		return err
	}
	if !oauth.ValidProviderName(provider) {
		return errorf(ErrNotFound, "no such provider")
	}
	err := a.st.Tx(ctx, func(q *db.Queries) error {
		u, err := q.LockUser(ctx, pgUUID(p.UserID))
		if err != nil {
			return notFound(err, "user")
		}
		ids, err := q.ListOAuthProvidersForUser(ctx, u.ID)
		if err != nil {
			return fmt.Errorf("list identities: %w", err)
		}
		var ident *db.OAuthProvider
		for i := range ids {
			if ids[i].Provider == provider {
				ident = &ids[i]
			}
		}
		if ident == nil {
			return errorf(ErrNotFound, "no %s account is linked to yours", provider)
		}
		if !u.PasswordHash.Valid {
			return errorf(ErrConflict, "your account has no password: %s is your only way to sign in; set a password first, then unlink it", provider)
		}
		if _, err := q.DeleteOAuthProvider(ctx, db.DeleteOAuthProviderParams{UserID: u.ID, Provider: provider}); err != nil {
			return fmt.Errorf("unlink: %w", err)
		}
		if p.TeamID.IsZero() {
			return nil
		}
		return a.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "user", ResourceID: userID(u.ID),
			Action: "user.oauth_unlink", Scope: ScopeAdmin, Metadata: map[string]any{"provider": provider, "email": ident.Email}})
	})
	if err != nil {
		return err
	}
	a.log.InfoContext(ctx, "oauth identity unlinked", "provider", provider, "user", p.UserID.String())
	return nil
}

// SetName sets p's display name: trimmed, at most 128 bytes, no control
// characters; empty clears it.
func (a *Accounts) SetName(ctx context.Context, p Principal, name string) (db.User, error) {
	if err := requireUser(p); err != nil {
		return db.User{}, err
	}
	name = strings.TrimSpace(name)
	if len(name) > 128 {
		return db.User{}, errorf(ErrInvalid, "name: at most 128 characters")
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return db.User{}, errorf(ErrInvalid, "name: no control characters")
	}
	u, err := a.st.Queries().UpdateUserName(ctx, db.UpdateUserNameParams{Name: name, ID: pgUUID(p.UserID)})
	if err != nil {
		return db.User{}, notFound(err, "user")
	}
	return u, nil
}

// ChangePassword sets the session's user's password. The current one must
// match when the user has one (an account made by OAuth has none and may set
// its first); a wrong one is ErrForbidden (not ErrUnauthorized: the session
// is fine) and changes nothing. The new one must pass the password policy.
// Sessions already issued stay valid until they expire or are signed out.
func (a *Accounts) ChangePassword(ctx context.Context, p Principal, current, next string) error {
	if err := requireUser(p); err != nil {
		return err
	}
	if err := auth.CheckPasswordPolicy(next); err != nil {
		return errorf(ErrInvalid, "new password: %v", err)
	}
	u, err := a.st.Queries().GetUser(ctx, pgUUID(p.UserID))
	if err != nil {
		return notFound(err, "user")
	}
	if u.PasswordHash.Valid {
		ok, _, err := a.hasher.Verify(ctx, current, u.PasswordHash.String)
		if err != nil {
			return fmt.Errorf("change password: verify: %w", err)
		}
		if !ok {
			return errorf(ErrForbidden, "the current password is wrong")
		}
	}
	h, err := a.hasher.Hash(ctx, next)
	if err != nil {
		return fmt.Errorf("change password: %w", err)
	}
	if err := a.st.Queries().SetUserPassword(ctx, db.SetUserPasswordParams{PasswordHash: pgtype.Text{String: h, Valid: true}, ID: u.ID}); err != nil {
		return fmt.Errorf("change password: %w", err)
	}
	a.log.InfoContext(ctx, "password changed", "user", userID(u.ID))
	return nil
}

// User search limits.
const (
	MinUserSearchPrefix = 3
	MaxUserSearchResult = 10
)

// UserHit is a user search result: no more than the add-member box shows.
type UserHit = db.SearchUsersByEmailPrefixRow

// SearchUsers finds up to MaxUserSearchResult users whose e-mail address
// starts with prefix (case-insensitively; LIKE metacharacters match
// literally), for the add-member box. The prefix needs at least
// MinUserSearchPrefix characters. The caller must be an admin or owner of
// its session's team (the role from the database): only they can add
// members. This is no barrier against enumeration (anyone can create a
// team and own it); the minimum prefix length, the result cap and the
// narrow result (ID, e-mail, name) are.
func (a *Accounts) SearchUsers(ctx context.Context, p Principal, prefix string) ([]UserHit, error) {
	if err := requireUser(p); err != nil {
		return nil, err
	}
	if p.TeamID.IsZero() || !p.IsTeamAdmin() {
		return nil, errorf(ErrForbidden, "searching users needs the admin or owner role in the session's team")
	}
	prefix = strings.TrimSpace(prefix)
	if len([]rune(prefix)) < MinUserSearchPrefix || len(prefix) > 320 {
		return nil, errorf(ErrInvalid, "email_prefix: %d to 320 characters", MinUserSearchPrefix)
	}
	hits, err := a.st.Queries().SearchUsersByEmailPrefix(ctx, db.SearchUsersByEmailPrefixParams{Prefix: prefix, MaxResults: MaxUserSearchResult})
	if err != nil {
		return nil, fmt.Errorf("search users: %w", err)
	}
	return hits, nil
}
