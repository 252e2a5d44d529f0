package service

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Actor types of audit events.
const (
	ActorUser   = "user"
	ActorAPIKey = "api_key"
	ActorSystem = "system"
	ActorHost   = "host"
)

// Audit scopes: every member of the team sees ScopeTeam events; only its
// admins and owners see ScopeAdmin ones.
const (
	ScopeTeam  = "team"
	ScopeAdmin = "admin"
)

// Audit statuses.
const (
	AuditSuccess = "success"
	AuditInfo    = "info"
	AuditWarning = "warning"
	AuditError   = "error"
)

// Actor is who did something: a user, an API key, or the system (the TTL
// reaper, a host agent).
type Actor struct {
	Type string
	// ID is a wire ID (usr-…, key-…) or "system".
	ID   string
	Name string
}

// SystemActor acts for the platform itself (automatic pauses, cleanup).
var SystemActor = Actor{Type: ActorSystem, ID: "system", Name: "system"}

// Actor returns who p is for the audit log: the API key when one was used,
// else the user.
func (p Principal) Actor() Actor {
	if !p.APIKeyID.IsZero() {
		return Actor{Type: ActorAPIKey, ID: p.APIKeyID.String(), Name: p.ActorName}
	}
	if !p.UserID.IsZero() {
		return Actor{Type: ActorUser, ID: p.UserID.String(), Name: p.ActorName}
	}
	return SystemActor
}

// IsTeamAdmin reports whether p administers its team (owner or admin; the
// role comes from the database, never from a token).
func (p Principal) IsTeamAdmin() bool { return adminRole(p.Role) }

// Team roles.
const (
	RoleOwner  = "owner"
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// AuditEvent is one entry of a team's audit log.
type AuditEvent struct {
	// ResourceType is what was acted on: "sandbox", "snapshot", "team",
	// "member", "api_key", …
	ResourceType string
	// ResourceID is its wire ID or name.
	ResourceID string
	// Action is "<resource>.<verb>", e.g. "sandbox.create".
	Action string
	// Scope is ScopeTeam (default) or ScopeAdmin.
	Scope string
	// Status is AuditSuccess (default), AuditInfo, AuditWarning or
	// AuditError.
	Status string
	// Metadata is free-form detail (JSON object; no secrets).
	Metadata map[string]any
}

// Audit appends to and reads the audit log.
type Audit struct {
	st  *store.Store
	log *slog.Logger
}

// NewAudit returns the audit log service.
func NewAudit(st *store.Store, log *slog.Logger) *Audit {
	if log == nil {
		log = slog.Default()
	}
	return &Audit{st: st, log: log.With("component", "audit")}
}

// Record appends ev to team's log as actor did it. q, when not nil, is the
// transaction of the change itself, so that the change and its record
// commit together.
func (a *Audit) Record(ctx context.Context, q *db.Queries, team TeamID, actor Actor, ev AuditEvent) error {
	if q == nil {
		q = a.st.Queries()
	}
	if ev.Scope == "" {
		ev.Scope = ScopeTeam
	}
	if ev.Status == "" {
		ev.Status = AuditSuccess
	}
	meta := []byte("{}")
	if len(ev.Metadata) > 0 {
		var err error
		if meta, err = json.Marshal(ev.Metadata); err != nil {
			return fmt.Errorf("audit %s: metadata: %w", ev.Action, err)
		}
	}
	_, err := q.InsertAuditLog(ctx, db.InsertAuditLogParams{
		TeamID: pgUUID(team), ActorType: actor.Type, ActorID: actor.ID, ActorName: truncate(actor.Name, 320),
		ResourceType: ev.ResourceType, ResourceID: ev.ResourceID, Action: ev.Action,
		Scope: ev.Scope, Status: ev.Status, Metadata: meta,
	})
	if err != nil {
		return fmt.Errorf("audit %s: %w", ev.Action, err)
	}
	return nil
}

// RecordAfter records an event of a change that has already happened
// (after an agent call): a failure to record cannot undo it, so it is
// logged at error level instead of returned.
func (a *Audit) RecordAfter(ctx context.Context, team TeamID, actor Actor, ev AuditEvent) {
	bg := context.WithoutCancel(ctx)
	if err := a.Record(bg, nil, team, actor, ev); err != nil {
		a.log.ErrorContext(bg, "audit record lost", "action", ev.Action, "resource", ev.ResourceID,
			"team", team.String(), "err", err)
	}
}

// AuditFilter filters List; each list empty means no filter on it.
type AuditFilter struct {
	ResourceTypes []string
	Actions       []string
	// Cursor continues a previous listing ("" from the start).
	Cursor string
	// Limit is the page size (0: 50; at most 200).
	Limit int
}

var auditWordRe = regexp.MustCompile(`^[a-z][a-z0-9_.]{0,63}$`)

// normalize checks f's filters and page size, and sets the default page
// size when it is 0.
func (f *AuditFilter) normalize() error {
	for _, l := range [][]string{f.ResourceTypes, f.Actions} {
		if len(l) > 32 {
			return errorf(ErrInvalid, "filters: at most 32 values each")
		}
		for _, v := range l {
			if !auditWordRe.MatchString(v) {
				return errorf(ErrInvalid, "filters: invalid value %q", v)
			}
		}
	}
	if f.Limit < 0 || f.Limit > maxPageSize {
		return errorf(ErrInvalid, "limit: 1 to %d", maxPageSize)
	}
	if f.Limit == 0 {
		f.Limit = defaultPageSize
	}
	return nil
}

// auditPage cuts rows (fetched with one row more than limit) to a page and
// returns the cursor of the next one ("" after the last).
func auditPage(rows []db.AuditLog, limit int) ([]db.AuditLog, string) {
	if len(rows) <= limit {
		return rows, ""
	}
	rows = rows[:limit]
	last := rows[len(rows)-1]
	return rows, encodeCursor(last.CreatedAt, last.ID)
}

// List lists p's team's events newest first, a page at a time; next is the
// cursor of the next page ("" after the last). Members (and API keys) see
// ScopeTeam events; owners and admins see every event.
func (a *Audit) List(ctx context.Context, p Principal, f AuditFilter) (items []db.AuditLog, next string, err error) {
	if err := f.normalize(); err != nil {
		return nil, "", err
	}
	params := db.ListAuditLogsParams{
		TeamID: pgUUID(p.TeamID), Scopes: []string{ScopeTeam}, ResourceTypes: orEmptySlice(f.ResourceTypes),
		Actions: orEmptySlice(f.Actions), PageSize: int32(f.Limit) + 1,
	}
	if p.IsTeamAdmin() && p.APIKeyID.IsZero() {
		params.Scopes = []string{}
	}
	if f.Cursor != "" {
		if params.AfterCreatedAt, params.AfterID, err = decodeCursor(f.Cursor); err != nil {
			return nil, "", err
		}
	}
	rows, err := a.st.Queries().ListAuditLogs(ctx, params)
	if err != nil {
		return nil, "", fmt.Errorf("list audit logs: %w", err)
	}
	items, next = auditPage(rows, f.Limit)
	return items, next, nil
}

func orEmptySlice(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// logAndAudit are a service's logger and audit recorder: those given, or
// slog's default and a recorder over st.
func logAndAudit(st *store.Store, log *slog.Logger, audit *Audit) (*slog.Logger, *Audit) {
	if log == nil {
		log = slog.Default()
	}
	if audit == nil {
		audit = NewAudit(st, log)
	}
	return log, audit
}
