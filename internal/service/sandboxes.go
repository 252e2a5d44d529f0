package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"golang.org/x/sync/singleflight"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/egress"
	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// LocalHost is the name of the single node's host: the static agent of
// the test fixtures, and capsule serve's embedded agent, which registers
// as a regular host of that name.
const LocalHost = "local"

// Sandbox defaults when a request leaves them zero.
const (
	DefaultTemplate = "base"
	DefaultVCPUs    = 1
	DefaultMemoryMB = 512
	// BaseTemplateUser is the default user of processes in the base
	// template (as in E2B).
	BaseTemplateUser = "user"
	maxPageSize      = 200
	defaultPageSize  = 50
)

// activeStates hold resources on the host and count against quotas.
var activeStates = []string{store.SandboxStarting, store.SandboxRunning, store.SandboxPausing, store.SandboxResuming}

// SandboxesConfig configures NewSandboxes.
type SandboxesConfig struct {
	Store *store.Store
	// Agents reaches the host agents: registered hosts by wire ID (the
	// pool's Resolver), static ones by the name Set registered them under
	// (each becomes a platform host of that name).
	Agents *agentclient.Pool
	// Scheduler tunes the choice of hosts (the CPU overcommit ratio, the
	// template affinity weight; zero: the defaults).
	Scheduler scheduler.Config
	// EmbeddedHosts name the hosts whose agent runs in this process (capsule
	// serve's): PauseAll pauses their running sandboxes, as it does the
	// static hosts'.
	EmbeddedHosts []string
	// BuiltinTemplates, when set, are the host's built-in template names
	// known in advance (tests whose agent is unreachable); otherwise the
	// service learns them from the agent (GetHostInfo) when it first
	// needs them.
	BuiltinTemplates []string
	// Now is the clock of activity (the once-a-second throttle of
	// touch); time.Now when nil.
	Now func() time.Time
	// Secret is the server secret the envd access tokens derive from.
	Secret []byte
	// Quotas are the platform defaults (DefaultQuotas when zero).
	Quotas Quotas
	// Audit records lifecycle events (a new one over Store when nil).
	Audit *Audit
	Log   *slog.Logger
}

// Sandboxes: the sandbox lifecycle.
type Sandboxes struct {
	st     *store.Store
	agents *agentclient.Pool
	sched  *scheduler.Scheduler
	secret []byte
	// embedded are EmbeddedHosts.
	embedded []string
	// static maps the static hosts' IDs to their names in the pool;
	// probedAt is when probeStatic last asked them.
	staticMu sync.Mutex
	static   map[pgtype.UUID]string
	probedAt time.Time
	// envCipher seals the env vars stored with a sandbox.
	envCipher *auth.FieldCipher
	quotas    Quotas
	audit     *Audit
	log       *slog.Logger

	// now is the clock (SandboxesConfig.Now).
	now func() time.Time
	// touched is when touch last wrote a sandbox's activity.
	touchMu sync.Mutex
	touched map[pgtype.UUID]time.Time
	// deadlines wakes this replica's reaper when a deadline changes.
	deadlines deadlineBell
	// resumes makes concurrent auto-resumes of one sandbox one.
	resumes singleflight.Group
	// replications makes concurrent copies of one template to one host
	// one (replicate.go).
	replications singleflight.Group
	// builtin holds the host's built-in template names once learnt
	// (builtinTemplates).
	builtinMu sync.Mutex
	builtin   []string
	// terms are the kept terminals (terminals.go).
	termMu sync.Mutex
	terms  map[terminalKey]*terminal
}

// envVarsPurpose names the key that seals sandboxes.env_vars.
const envVarsPurpose = "sandbox-env-vars"

// NewSandboxes registers the pool's static hosts (rows of the platform
// team in hosts, probed for their resources) and returns the sandbox
// service.
func NewSandboxes(ctx context.Context, cfg SandboxesConfig) (*Sandboxes, error) {
	if cfg.Store == nil || cfg.Agents == nil {
		return nil, errors.New("service: sandboxes need a store and an agent pool")
	}
	if err := auth.ValidateSecret(cfg.Secret); err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	envCipher, err := auth.NewFieldCipher(envVarsPurpose, cfg.Secret)
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	s := &Sandboxes{st: cfg.Store, agents: cfg.Agents, sched: scheduler.New(cfg.Scheduler), secret: cfg.Secret, envCipher: envCipher,
		quotas: cfg.Quotas, log: cfg.Log, touched: map[pgtype.UUID]time.Time{},
		builtin: slices.Clone(cfg.BuiltinTemplates), now: cfg.Now, embedded: slices.Clone(cfg.EmbeddedHosts),
		static: map[pgtype.UUID]string{}}
	if s.now == nil {
		s.now = time.Now
	}
	if s.quotas == (Quotas{}) {
		s.quotas = DefaultQuotas
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("component", "sandboxes")
	if s.audit = cfg.Audit; s.audit == nil {
		s.audit = NewAudit(cfg.Store, cfg.Log)
	}
	if err := s.registerStatic(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// The service's IDs (see wireid): what its API speaks instead of the
// store's UUIDs. (Hosts and templates: wireid.HostID and wireid.TemplateID,
// since HostID and TemplateID name their formatting functions here.)
type (
	SandboxID    = wireid.SandboxID
	TeamID       = wireid.TeamID
	UserID       = wireid.UserID
	APIKeyID     = wireid.APIKeyID
	InvitationID = wireid.InvitationID
)

// Sandbox is a sandbox's record and, while it runs, where its envd is.
// sandboxOf builds it from the store's row; the sealed env vars stay
// inside the service.
type Sandbox struct {
	ID       SandboxID
	TeamID   TeamID
	HostID   wireid.HostID
	Template string
	State    State
	// StateReason says why the sandbox entered its state (empty when
	// nothing needs saying).
	StateReason string
	VCPUs       int32
	MemoryMB    int32
	DiskMB      int32
	TimeoutSec  int32
	AutoPause   bool
	// AutoPauseMemory: the timeout's pause keeps the memory (false: a
	// filesystem-only pause).
	AutoPauseMemory     bool
	AutoResume          bool
	AllowInternetAccess bool
	AllowPublicTraffic  bool
	// Metadata is the caller's metadata (empty, never nil).
	Metadata map[string]string
	// Network are its egress rules (network.go).
	Network egress.Rules
	// CreatedBy is the user who created it (absent for an API key
	// without a creator).
	CreatedBy UserID
	// The times; zero when absent.
	CreatedAt, UpdatedAt, StartedAt, EndAt, LastActiveAt, PausedAt, StoppedAt time.Time
	// EnvdAccessToken is what envd requires of every request.
	EnvdAccessToken string
	// EnvdURL is the record's envd_url (empty unless running).
	EnvdURL string
	// HostAddr comes from the agent's answer to the call that made the
	// sandbox running (empty otherwise).
	HostAddr string
	// AgentTime is how long the request's host agent call took (set by
	// Create): the rest of the request's time is the control plane's own.
	AgentTime time.Duration
	// Phases are the steps of the request that returned this (set by
	// Create; timing.go) for its Server-Timing.
	Phases []Phase
	// TrafficToken opens the sandbox's ports other than envd's (empty when
	// they are public).
	TrafficToken string
}

// sandboxOf is the record part of a Sandbox, from the store's row.
func sandboxOf(row db.Sandbox) Sandbox {
	md := map[string]string{}
	if err := json.Unmarshal(row.Metadata, &md); err != nil || md == nil {
		md = map[string]string{}
	}
	return Sandbox{
		ID: sandboxIDOf(row.ID), TeamID: teamIDOf(row.TeamID), HostID: hostIDOf(row.HostID),
		Template: row.Template, State: State(row.State), StateReason: row.StateReason,
		VCPUs: row.VCPUs, MemoryMB: row.MemoryMB, DiskMB: row.DiskMB, TimeoutSec: row.TimeoutSec,
		AutoPause: row.AutoPause, AutoPauseMemory: row.AutoPauseMemory, AutoResume: row.AutoResume,
		AllowInternetAccess: row.AllowInternetAccess, AllowPublicTraffic: row.AllowPublicTraffic,
		Metadata: md, Network: NetworkOf(row), CreatedBy: userIDOf(row.CreatedBy),
		CreatedAt: row.CreatedAt, UpdatedAt: row.UpdatedAt, StartedAt: timeOf(row.StartedAt), EndAt: timeOf(row.EndAt),
		LastActiveAt: timeOf(row.LastActiveAt), PausedAt: timeOf(row.PausedAt), StoppedAt: timeOf(row.StoppedAt),
	}
}

// timeOf is t's time, zero when NULL.
func timeOf(t pgtype.Timestamptz) time.Time {
	if !t.Valid {
		return time.Time{}
	}
	return t.Time
}

// Conversions between the service's IDs and the store's UUIDs: the only
// place they meet.
func pgUUID[K wireid.Kind](id wireid.ID[K]) pgtype.UUID {
	b, ok := id.UUID()
	return pgtype.UUID{Bytes: b, Valid: ok}
}

func sandboxIDOf(u pgtype.UUID) SandboxID {
	return wireid.FromUUID[wireid.KindSandbox](u.Bytes, u.Valid)
}
func teamIDOf(u pgtype.UUID) TeamID        { return wireid.FromUUID[wireid.KindTeam](u.Bytes, u.Valid) }
func userIDOf(u pgtype.UUID) UserID        { return wireid.FromUUID[wireid.KindUser](u.Bytes, u.Valid) }
func hostIDOf(u pgtype.UUID) wireid.HostID { return wireid.FromUUID[wireid.KindHost](u.Bytes, u.Valid) }
func apiKeyIDOf(u pgtype.UUID) APIKeyID    { return wireid.FromUUID[wireid.KindAPIKey](u.Bytes, u.Valid) }

// ID returns the wire (and agent) ID of a sandbox.
func ID(id pgtype.UUID) string { return wireid.Format(wireid.Sandbox, id) }

// Scheduler is the scheduler the service places sandboxes with.
func (s *Sandboxes) Scheduler() *scheduler.Scheduler { return s.sched }

func (s *Sandboxes) view(row db.Sandbox, a *pb.Sandbox) Sandbox {
	v := sandboxOf(row)
	v.EnvdAccessToken = auth.EnvdAccessToken(s.secret, ID(row.ID))
	if !row.AllowPublicTraffic {
		// The secret was validated at start: this cannot fail.
		v.TrafficToken, _ = auth.TrafficAccessToken(s.secret, ID(row.ID))
	}
	if row.State == store.SandboxRunning {
		v.EnvdURL = row.EnvdURL
		if a != nil {
			v.HostAddr = a.GetHostAddr()
		}
	}
	return v
}

func orEmpty(m map[string]string) map[string]string {
	if m == nil {
		return map[string]string{}
	}
	return m
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
