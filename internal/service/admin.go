package service

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Admin: the platform admin's operations over every team, user and host.
//
// A platform admin is a user with users.is_admin set and users.disabled_at
// unset (the first one is created at install by `capsule serve`). Every
// operation reads that from the database (GetActiveAdmin), never from a
// session token's claims: a user demoted or disabled mid-session loses
// access on the next call. The changes take the admin's row FOR SHARE in
// their own transaction, so a concurrent demotion either waits for them or
// is seen by them. Only a user's session acts as an admin; an API key
// belongs to a team and is refused (ErrForbidden), as is every user who
// is not an active admin.
//
// Every change is recorded in the audit log (scope admin, the admin as the
// actor): a team's changes in that team's log, a user's in the platform
// team's. Reads are not recorded.
type Admin struct {
	st        *store.Store
	teams     *Teams
	sandboxes *Sandboxes
	audit     *Audit
	log       *slog.Logger
}

// AdminConfig configures NewAdmin.
type AdminConfig struct {
	Store *store.Store
	// Teams deletes teams (its deletion path), Sandboxes lists the
	// platform team's sandboxes.
	Teams     *Teams
	Sandboxes *Sandboxes
	// Audit records admin events (a new one over Store when nil).
	Audit *Audit
	Log   *slog.Logger
}

// NewAdmin returns the platform admin's service.
func NewAdmin(cfg AdminConfig) (*Admin, error) {
	if cfg.Store == nil || cfg.Teams == nil || cfg.Sandboxes == nil {
		return nil, errors.New("service: admin needs a store, the teams and the sandbox service")
	}
	log, audit := logAndAudit(cfg.Store, cfg.Log, cfg.Audit)
	return &Admin{st: cfg.Store, teams: cfg.Teams, sandboxes: cfg.Sandboxes, audit: audit, log: log.With("component", "admin")}, nil
}

var errNotPlatformAdmin = errorf(ErrForbidden, "this needs a platform admin's session")

// errDisabled refuses a disabled user's login, session or API key.
var errDisabled = errorf(ErrForbidden, "this account is disabled: ask a platform admin")

// checkEnabled refuses a disabled user (ErrForbidden).
func checkEnabled(u db.User) error {
	if u.DisabledAt.Valid {
		return errDisabled
	}
	return nil
}

// authorize returns p's user when it is an active platform admin, read
// with q (in a transaction: FOR SHARE until it ends); else ErrForbidden.
func (a *Admin) authorize(ctx context.Context, q *db.Queries, p Principal) (db.User, error) {
	if p.UserID.IsZero() || !p.APIKeyID.IsZero() {
		return db.User{}, errNotPlatformAdmin
	}
	u, err := q.GetActiveAdmin(ctx, pgUUID(p.UserID))
	if errors.Is(err, store.ErrNotFound) {
		return db.User{}, errNotPlatformAdmin
	}
	if err != nil {
		return db.User{}, fmt.Errorf("check platform admin: %w", err)
	}
	return u, nil
}

// Authorize reports whether p is an active platform admin now (nil), else
// ErrForbidden.
func (a *Admin) Authorize(ctx context.Context, p Principal) error {
	_, err := a.authorize(ctx, a.st.Queries(), p)
	return err
}

// Page is a page request: Cursor continues a previous listing ("" from
// the start), Limit is the page size (0: 50; at most 200).
type Page struct {
	Cursor string
	Limit  int
}

func (pg *Page) normalize() error {
	if pg.Limit < 0 || pg.Limit > maxPageSize {
		return errorf(ErrInvalid, "limit: 1 to %d", maxPageSize)
	}
	if pg.Limit == 0 {
		pg.Limit = defaultPageSize
	}
	return nil
}

// AdminTeam is a live team with its member and (not stopped) sandbox
// counts.
type AdminTeam = db.AdminListTeamsRow

// Teams lists every live team newest first, a page at a time; next is the
// cursor of the next page ("" after the last).
func (a *Admin) Teams(ctx context.Context, p Principal, pg Page) (items []AdminTeam, next string, err error) {
	if err := a.Authorize(ctx, p); err != nil {
		return nil, "", err
	}
	if err := pg.normalize(); err != nil {
		return nil, "", err
	}
	params := db.AdminListTeamsParams{PageSize: int32(pg.Limit) + 1}
	if pg.Cursor != "" {
		if params.AfterCreatedAt, params.AfterID, err = decodeCursor(pg.Cursor); err != nil {
			return nil, "", err
		}
	}
	rows, err := a.st.Queries().AdminListTeams(ctx, params)
	if err != nil {
		return nil, "", fmt.Errorf("list teams: %w", err)
	}
	if len(rows) > pg.Limit {
		rows = rows[:pg.Limit]
		last := rows[len(rows)-1]
		next = encodeCursor(last.CreatedAt, last.ID)
	}
	return rows, next, nil
}

// SetTeamBYOC enables or disables bring-your-own-compute for a live team
// (ErrNotFound when there is none; the platform team owns the platform's
// hosts and is never a BYOC team: ErrInvalid). Idempotent; every call is
// audited (team.byoc_enable or team.byoc_disable, with the previous value).
func (a *Admin) SetTeamBYOC(ctx context.Context, p Principal, typed TeamID, enabled bool) (Team, error) {
	id := pgUUID(typed)
	var out db.Team
	err := a.st.Tx(ctx, func(q *db.Queries) error {
		if _, err := a.authorize(ctx, q, p); err != nil {
			return err
		}
		t, err := q.LockTeam(ctx, id)
		if err != nil {
			return notFound(err, "team")
		}
		if id == store.PlatformTeamID {
			return errorf(ErrInvalid, "the platform team owns the platform's hosts: it cannot be a BYOC team")
		}
		if out, err = q.SetTeamBYOC(ctx, db.SetTeamBYOCParams{IsBYOC: enabled, ID: id}); err != nil {
			return notFound(err, "team")
		}
		action := "team.byoc_disable"
		if enabled {
			action = "team.byoc_enable"
		}
		return a.audit.Record(ctx, q, typed, p.Actor(), AuditEvent{ResourceType: "team", ResourceID: teamID(id),
			Action: action, Scope: ScopeAdmin, Metadata: map[string]any{"name": t.Name, "was_byoc": t.IsBYOC, "platform_admin": true}})
	})
	if err != nil {
		return Team{}, err
	}
	a.log.InfoContext(ctx, "team BYOC set", "team", teamID(id), "byoc", enabled, "user", p.UserID.String())
	return teamView(out), nil
}

// DeleteTeam deletes a live team as its owner would (Teams.Delete's path:
// its API keys and sessions stop working, its sandboxes are destroyed, as
// the admin; team.delete is audited in the team's log). The platform team
// cannot be deleted (ErrForbidden); a missing or deleted team is
// ErrNotFound.
func (a *Admin) DeleteTeam(ctx context.Context, p Principal, typed TeamID) (TeamDeletion, error) {
	id := pgUUID(typed)
	return a.teams.deleteTeam(ctx, p, id, func(q *db.Queries) (db.Team, error) {
		if _, err := a.authorize(ctx, q, p); err != nil {
			return db.Team{}, err
		}
		t, err := q.LockTeam(ctx, id)
		if err != nil {
			return db.Team{}, notFound(err, "team")
		}
		return t, nil
	}, map[string]any{"platform_admin": true})
}

// AdminUser is a user as the admin's listing shows it (no password hash).
type AdminUser = db.AdminListUsersRow

// Users lists users whose e-mail address starts with prefix (any when
// empty; case-insensitively, LIKE metacharacters literally), ordered by
// address, a page at a time.
func (a *Admin) Users(ctx context.Context, p Principal, prefix string, pg Page) (items []AdminUser, next string, err error) {
	if err := a.Authorize(ctx, p); err != nil {
		return nil, "", err
	}
	if err := pg.normalize(); err != nil {
		return nil, "", err
	}
	prefix = strings.TrimSpace(prefix)
	if len(prefix) > 320 {
		return nil, "", errorf(ErrInvalid, "email_prefix: at most 320 characters")
	}
	params := db.AdminListUsersParams{Prefix: prefix, PageSize: int32(pg.Limit) + 1}
	if pg.Cursor != "" {
		b, err := base64.RawURLEncoding.DecodeString(pg.Cursor)
		if err != nil || len(b) == 0 || len(b) > 320 {
			return nil, "", errorf(ErrInvalid, "cursor: malformed")
		}
		params.AfterEmail = pgtype.Text{String: string(b), Valid: true}
	}
	rows, err := a.st.Queries().AdminListUsers(ctx, params)
	if err != nil {
		return nil, "", fmt.Errorf("list users: %w", err)
	}
	if len(rows) > pg.Limit {
		rows = rows[:pg.Limit]
		next = base64.RawURLEncoding.EncodeToString([]byte(strings.ToLower(rows[len(rows)-1].Email)))
	}
	return rows, next, nil
}

// SetUserDisabled disables or re-enables a user. A disabled user cannot
// log in, and their sessions and the API keys they created are refused
// from the next call on (the authentication reads users.disabled_at);
// re-enabling restores them, keys included. An admin cannot disable
// themselves, and the last active admin is never disabled (ErrConflict):
// the active admins' rows are locked together, so two admins disabling
// each other at once cannot both succeed. Idempotent; every call is
// audited (user.disable or user.enable, in the platform team's log).
func (a *Admin) SetUserDisabled(ctx context.Context, p Principal, typed UserID, disabled bool) (db.User, error) {
	id := pgUUID(typed)
	var out db.User
	err := a.st.Tx(ctx, func(q *db.Queries) error {
		admins, err := q.LockActiveAdmins(ctx)
		if err != nil {
			return fmt.Errorf("lock admins: %w", err)
		}
		if _, err := a.authorize(ctx, q, p); err != nil {
			return err
		}
		u, err := q.LockUser(ctx, id)
		if err != nil {
			return notFound(err, "user")
		}
		if disabled {
			if typed == p.UserID {
				return errorf(ErrConflict, "you cannot disable your own account")
			}
			if u.IsAdmin && !u.DisabledAt.Valid && len(admins) <= 1 {
				return errorf(ErrConflict, "the last active platform admin cannot be disabled")
			}
		}
		if out, err = q.SetUserDisabled(ctx, db.SetUserDisabledParams{Disabled: disabled, ID: id}); err != nil {
			return notFound(err, "user")
		}
		action := "user.enable"
		if disabled {
			action = "user.disable"
		}
		return a.audit.Record(ctx, q, teamIDOf(store.PlatformTeamID), p.Actor(), AuditEvent{ResourceType: "user", ResourceID: userID(id),
			Action: action, Scope: ScopeAdmin, Metadata: map[string]any{"email": u.Email, "was_disabled": u.DisabledAt.Valid}})
	})
	if err != nil {
		return db.User{}, err
	}
	a.log.InfoContext(ctx, "user disabled set", "target", userID(id), "disabled", disabled, "user", p.UserID.String())
	return out, nil
}

// AdminHost is a host with its team's name and its (not stopped)
// sandbox count.
type AdminHost = db.AdminListHostsRow

// Hosts lists every host (the platform's and every team's BYOC hosts)
// newest first, a page at a time.
func (a *Admin) Hosts(ctx context.Context, p Principal, pg Page) (items []AdminHost, next string, err error) {
	if err := a.Authorize(ctx, p); err != nil {
		return nil, "", err
	}
	if err := pg.normalize(); err != nil {
		return nil, "", err
	}
	params := db.AdminListHostsParams{PageSize: int32(pg.Limit) + 1}
	if pg.Cursor != "" {
		if params.AfterCreatedAt, params.AfterID, err = decodeCursor(pg.Cursor); err != nil {
			return nil, "", err
		}
	}
	rows, err := a.st.Queries().AdminListHosts(ctx, params)
	if err != nil {
		return nil, "", fmt.Errorf("list hosts: %w", err)
	}
	if len(rows) > pg.Limit {
		rows = rows[:pg.Limit]
		last := rows[len(rows)-1]
		next = encodeCursor(last.CreatedAt, last.ID)
	}
	return rows, next, nil
}

// AuditLogs lists the platform-wide audit log (every team's events of
// every scope, deleted teams' included) newest first, with the filters
// and paging of Audit.List; team, unless zero, keeps one team's events.
func (a *Admin) AuditLogs(ctx context.Context, p Principal, team TeamID, f AuditFilter) (items []db.AuditLog, next string, err error) {
	if err := a.Authorize(ctx, p); err != nil {
		return nil, "", err
	}
	if err := f.normalize(); err != nil {
		return nil, "", err
	}
	params := db.AdminListAuditLogsParams{TeamID: pgUUID(team), ResourceTypes: orEmptySlice(f.ResourceTypes),
		Actions: orEmptySlice(f.Actions), PageSize: int32(f.Limit) + 1}
	if f.Cursor != "" {
		if params.AfterCreatedAt, params.AfterID, err = decodeCursor(f.Cursor); err != nil {
			return nil, "", err
		}
	}
	rows, err := a.st.Queries().AdminListAuditLogs(ctx, params)
	if err != nil {
		return nil, "", fmt.Errorf("list audit logs: %w", err)
	}
	items, next = auditPage(rows, f.Limit)
	return items, next, nil
}

// Sandboxes lists the platform team's sandboxes (Sandboxes.List's
// filters and paging).
func (a *Admin) Sandboxes(ctx context.Context, p Principal, f ListFilter) (items []Sandbox, next string, err error) {
	if err := a.Authorize(ctx, p); err != nil {
		return nil, "", err
	}
	return a.sandboxes.List(ctx, Principal{UserID: p.UserID, TeamID: teamIDOf(store.PlatformTeamID), ActorName: p.ActorName}, f)
}
