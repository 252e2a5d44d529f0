package store

import "github.com/jackc/pgx/v5/pgtype"

// PlatformTeamID (all zeros) owns shared resources: public templates and the
// platform's hosts. Its row exists from the first migration on and cannot be
// deleted.
var PlatformTeamID = pgtype.UUID{Valid: true}

// Sandbox states (sandboxes.state).
const (
	SandboxStarting = "starting"
	SandboxRunning  = "running"
	SandboxPausing  = "pausing"
	SandboxPaused   = "paused"
	SandboxResuming = "resuming"
	SandboxStopped  = "stopped"
	// SandboxMissing: its host stopped reporting it; reversible, unlike stopped.
	SandboxMissing = "missing"
	SandboxError   = "error"
)

// SandboxStates lists every sandbox state.
var SandboxStates = []string{SandboxStarting, SandboxRunning, SandboxPausing, SandboxPaused,
	SandboxResuming, SandboxStopped, SandboxMissing, SandboxError}

// Team roles (users_teams.role).
const (
	RoleOwner  = "owner"
	RoleAdmin  = "admin"
	RoleMember = "member"
)

// Template kinds (templates.kind, template_builds.kind).
const (
	TemplateImage    = "image"
	TemplateSnapshot = "snapshot"
)

// Host statuses (hosts.status).
const (
	HostPending     = "pending"
	HostOnline      = "online"
	HostUnreachable = "unreachable"
	HostDraining    = "draining"
	HostOffline     = "offline"
)

// Audit log values (audit_logs).
const (
	ActorUser   = "user"
	ActorAPIKey = "api_key"
	ActorSystem = "system"
	ActorHost   = "host"

	ScopeTeam  = "team"
	ScopeAdmin = "admin"

	StatusSuccess = "success"
	StatusInfo    = "info"
	StatusWarning = "warning"
	StatusError   = "error"

	// MaxAuditPage is the most rows ListAuditLogs returns at once.
	MaxAuditPage = 200
)
