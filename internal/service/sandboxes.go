package service

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"
	"golang.org/x/sync/singleflight"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// LocalHost is the name of the single node's host agent.
const LocalHost = "local"

// Quotas are a team's limits; a team's NULL column takes the value of
// Config.DefaultQuotas.
type Quotas struct {
	MaxRunningSandboxes   int32
	MaxVCPUsPerSandbox    int32
	MaxMemoryMBPerSandbox int32
	MaxTotalVCPUs         int32
	MaxTotalMemoryMB      int64
	// MaxPausedSandboxes and MaxStoredMB bound what a team keeps on
	// disk: paused sandboxes, and the MiB of their memory plus its
	// snapshot templates (checkStoredQuotas).
	MaxPausedSandboxes int32
	MaxStoredMB        int64
}

// DefaultQuotas are the platform defaults.
var DefaultQuotas = Quotas{
	MaxRunningSandboxes:   20,
	MaxVCPUsPerSandbox:    8,
	MaxMemoryMBPerSandbox: 8192,
	MaxTotalVCPUs:         32,
	MaxTotalMemoryMB:      32768,
	MaxPausedSandboxes:    20,
	MaxStoredMB:           51200,
}

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
	// Agents reaches the host agents; Host names the one to use.
	Agents *agentclient.Pool
	// Host is the agent's name in Agents and in the hosts table
	// (LocalHost when empty).
	Host string
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
	host   string
	hostID pgtype.UUID
	secret []byte
	// envCipher seals the env vars stored with a sandbox.
	envCipher *auth.FieldCipher
	quotas    Quotas
	audit     *Audit
	log       *slog.Logger

	// touched is when touch last wrote a sandbox's activity.
	touchMu sync.Mutex
	touched map[pgtype.UUID]time.Time
	// resumes makes concurrent auto-resumes of one sandbox one.
	resumes singleflight.Group
}

// envVarsPurpose names the key that seals sandboxes.env_vars.
const envVarsPurpose = "sandbox-env-vars"

// NewSandboxes registers the host (a row of the platform team in hosts,
// status online) and returns the sandbox service.
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
	s := &Sandboxes{st: cfg.Store, agents: cfg.Agents, host: cfg.Host, secret: cfg.Secret, envCipher: envCipher,
		quotas: cfg.Quotas, log: cfg.Log, touched: map[pgtype.UUID]time.Time{}}
	if s.host == "" {
		s.host = LocalHost
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
	h, err := cfg.Store.Queries().RegisterHost(ctx, db.RegisterHostParams{
		TeamID: store.PlatformTeamID, Name: s.host, Labels: json.RawMessage(`{}`),
	})
	if err != nil {
		return nil, fmt.Errorf("service: register host %s: %w", s.host, err)
	}
	s.hostID = h.ID
	return s, nil
}

// Sandbox is a sandbox's record and, while it runs, where its envd is.
type Sandbox struct {
	db.Sandbox
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
	// TrafficToken opens the sandbox's ports other than envd's (empty when
	// they are public).
	TrafficToken string
}

// CreateSandbox is a create request; zero values take the defaults.
type CreateSandbox struct {
	Template   string
	VCPUs      int32
	MemoryMB   int32
	TimeoutSec int32
	EnvVars    map[string]string
	Metadata   map[string]string
	// Internet allows egress (nil: true).
	Internet *bool
	// AutoPause: at its timeout the sandbox is paused (nil: true), else
	// destroyed (E2B's default).
	AutoPause *bool
	// AutoResume: traffic through the proxy resumes the sandbox when it is
	// paused.
	AutoResume bool
	// PublicTraffic opens its ports other than envd's to anyone (else they
	// need the traffic token or a team API key).
	PublicTraffic bool
}

var (
	templateRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	envNameRe  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,255}$`)
)

const (
	maxMetadataEntries = 64
	maxMetadataLen     = 512
	maxEnvVars         = 256
	maxTimeoutSec      = 30 * 24 * 3600
)

func validateMetadata(m map[string]string) error {
	if len(m) > maxMetadataEntries {
		return errorf(ErrInvalid, "metadata: at most %d entries", maxMetadataEntries)
	}
	for k, v := range m {
		if k == "" || len(k) > maxMetadataLen || len(v) > maxMetadataLen {
			return errorf(ErrInvalid, "metadata: keys of 1 to %d bytes, values of at most %d", maxMetadataLen, maxMetadataLen)
		}
	}
	return nil
}

// normalize validates r and fills in the template's name; the machine
// shape's defaults depend on the template (withShape).
func (r *CreateSandbox) normalize() error {
	if r.Template == "" {
		r.Template = DefaultTemplate
	}
	if !templateRe.MatchString(r.Template) {
		return errorf(ErrInvalid, "template: invalid name")
	}
	if r.VCPUs < 0 || r.MemoryMB < 0 {
		return errorf(ErrInvalid, "vcpus and memory_mb must be positive")
	}
	if r.TimeoutSec < 0 || r.TimeoutSec > maxTimeoutSec {
		return errorf(ErrInvalid, "timeout_sec: 0 to %d", maxTimeoutSec)
	}
	if len(r.EnvVars) > maxEnvVars {
		return errorf(ErrInvalid, "env_vars: at most %d", maxEnvVars)
	}
	for k := range r.EnvVars {
		if !envNameRe.MatchString(k) {
			return errorf(ErrInvalid, "env_vars: invalid name %q", k)
		}
	}
	return validateMetadata(r.Metadata)
}

// withShape fills in the machine shape: a snapshot template's is fixed
// (zero means the template's; other values are refused), an image's
// defaults to DefaultVCPUs and DefaultMemoryMB.
func (r *CreateSandbox) withShape(tpl resolvedTemplate) error {
	if t := tpl.row; t != nil && t.Kind == store.TemplateSnapshot {
		if (r.VCPUs != 0 && r.VCPUs != t.VCPUs) || (r.MemoryMB != 0 && r.MemoryMB != t.MemoryMB) {
			return errorf(ErrInvalid, "template %q is a snapshot of a machine with %d vCPUs and %d MiB: leave vcpus and memory_mb out or give those values",
				r.Template, t.VCPUs, t.MemoryMB)
		}
		r.VCPUs, r.MemoryMB = t.VCPUs, t.MemoryMB
		return nil
	}
	if r.VCPUs == 0 {
		r.VCPUs = DefaultVCPUs
	}
	if r.MemoryMB == 0 {
		r.MemoryMB = DefaultMemoryMB
	}
	return nil
}

// newUUID returns a random (version 4) UUID.
func newUUID() pgtype.UUID {
	u := pgtype.UUID{Valid: true}
	_, _ = rand.Read(u.Bytes[:])
	u.Bytes[6] = u.Bytes[6]&0x0f | 0x40
	u.Bytes[8] = u.Bytes[8]&0x3f | 0x80
	return u
}

// envVarsAD binds a sealed env_vars value to its sandbox: a value copied
// to another row does not open.
func envVarsAD(id pgtype.UUID) []byte { return []byte("sandboxes.env_vars:" + ID(id)) }

// sealEnvVars encrypts a create request's env vars for sandbox id (nil
// when there are none).
func (s *Sandboxes) sealEnvVars(id pgtype.UUID, env map[string]string) ([]byte, error) {
	if len(env) == 0 {
		return nil, nil
	}
	plain, err := json.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("env vars: %w", err)
	}
	return s.envCipher.Encrypt(plain, envVarsAD(id)), nil
}

// openEnvVars decrypts the env vars stored with a sandbox (nil when none).
func (s *Sandboxes) openEnvVars(row db.Sandbox) (map[string]string, error) {
	if len(row.EnvVars) == 0 {
		return nil, nil
	}
	plain, err := s.envCipher.Decrypt(row.EnvVars, envVarsAD(row.ID))
	if err != nil {
		return nil, fmt.Errorf("env vars of %s: %w", ID(row.ID), err)
	}
	var env map[string]string
	if err := json.Unmarshal(plain, &env); err != nil {
		return nil, fmt.Errorf("env vars of %s: %w", ID(row.ID), err)
	}
	return env, nil
}

func (s *Sandboxes) teamQuotas(t db.Team) Quotas {
	q := s.quotas
	if t.MaxRunningSandboxes.Valid {
		q.MaxRunningSandboxes = t.MaxRunningSandboxes.Int32
	}
	if t.MaxVCPUsPerSandbox.Valid {
		q.MaxVCPUsPerSandbox = t.MaxVCPUsPerSandbox.Int32
	}
	if t.MaxMemoryMBPerSandbox.Valid {
		q.MaxMemoryMBPerSandbox = t.MaxMemoryMBPerSandbox.Int32
	}
	if t.MaxTotalVCPUs.Valid {
		q.MaxTotalVCPUs = t.MaxTotalVCPUs.Int32
	}
	if t.MaxTotalMemoryMB.Valid {
		q.MaxTotalMemoryMB = t.MaxTotalMemoryMB.Int64
	}
	if t.MaxPausedSandboxes.Valid {
		q.MaxPausedSandboxes = t.MaxPausedSandboxes.Int32
	}
	if t.MaxStoredMB.Valid {
		q.MaxStoredMB = t.MaxStoredMB.Int64
	}
	return q
}

// checkQuotas refuses a sandbox of vcpus and memoryMB that would exceed
// the team's quotas, given what its active sandboxes hold. Run it after
// LockTeam in the transaction that inserts or resumes the sandbox.
func (s *Sandboxes) checkQuotas(ctx context.Context, q *db.Queries, t db.Team, vcpus, memoryMB int32) error {
	lim := s.teamQuotas(t)
	if vcpus > lim.MaxVCPUsPerSandbox {
		return errorf(ErrQuota, "vcpus: %d requested, at most %d per sandbox", vcpus, lim.MaxVCPUsPerSandbox)
	}
	if memoryMB > lim.MaxMemoryMBPerSandbox {
		return errorf(ErrQuota, "memory_mb: %d requested, at most %d per sandbox", memoryMB, lim.MaxMemoryMBPerSandbox)
	}
	use, err := q.CountTeamSandboxUsage(ctx, db.CountTeamSandboxUsageParams{TeamID: t.ID, States: activeStates})
	if err != nil {
		return fmt.Errorf("quota usage: %w", err)
	}
	if use.Sandboxes+1 > lim.MaxRunningSandboxes {
		return errorf(ErrQuota, "the team runs %d sandboxes, its quota is %d", use.Sandboxes, lim.MaxRunningSandboxes)
	}
	if use.VCPUs+vcpus > lim.MaxTotalVCPUs {
		return errorf(ErrQuota, "the team's sandboxes use %d vCPUs, %d more would exceed its quota of %d", use.VCPUs, vcpus, lim.MaxTotalVCPUs)
	}
	if use.MemoryMB+int64(memoryMB) > lim.MaxTotalMemoryMB {
		return errorf(ErrQuota, "the team's sandboxes use %d MiB, %d more would exceed its quota of %d MiB", use.MemoryMB, memoryMB, lim.MaxTotalMemoryMB)
	}
	return nil
}

// checkStoredQuotas refuses, with ErrQuota, a pause (pausedMB: the
// sandbox's memory, which the pause writes out; paused: one more paused
// sandbox) or a snapshot (pausedMB 0, paused false, snapshotMB its
// expected size) that would take the team past its paused-sandboxes or
// stored-MiB quota. Stored is what the team keeps on disk: the memory of
// its paused sandboxes plus the bytes of its snapshot templates. Run it
// after LockTeam, in the transaction of the transition it guards.
func (s *Sandboxes) checkStoredQuotas(ctx context.Context, q *db.Queries, teamID pgtype.UUID, paused bool, addMB int64) error {
	t, err := q.GetTeam(ctx, teamID)
	if err != nil {
		return notFound(err, "team")
	}
	lim := s.teamQuotas(t)
	use, err := q.CountTeamStoredUsage(ctx, teamID)
	if err != nil {
		return fmt.Errorf("quota usage: %w", err)
	}
	// The sandbox being paused is in pausing already: it counts once.
	if paused && use.Paused > lim.MaxPausedSandboxes {
		return errorf(ErrQuota, "the team keeps %d paused sandboxes, its quota is %d: resume or destroy one first", use.Paused-1, lim.MaxPausedSandboxes)
	}
	stored := use.PausedMemoryMB + (use.TemplateBytes+(1<<20-1))>>20
	if paused {
		stored -= addMB // counted in pausing already
	}
	if stored+addMB > lim.MaxStoredMB {
		return errorf(ErrQuota, "the team stores %d MiB (paused sandboxes and snapshots), %d more would exceed its quota of %d MiB", stored, addMB, lim.MaxStoredMB)
	}
	return nil
}

// ID returns the wire (and agent) ID of a sandbox.
func ID(id pgtype.UUID) string { return wireid.Format(wireid.Sandbox, id) }

func (s *Sandboxes) client(ctx context.Context) (*agentclient.Client, error) {
	c, err := s.agents.Get(ctx, s.host)
	if err != nil {
		return nil, &Error{Kind: ErrUnavailable, Msg: "the sandbox host is unreachable", Err: err}
	}
	return c, nil
}

// Create checks the team's quotas, persists the sandbox as starting, asks
// the agent to create it, and persists it as running. When the agent
// fails, the sandbox is persisted as error (with the reason; it no longer
// counts against quotas) and destroyed on the agent in case it got that
// far.
func (s *Sandboxes) Create(ctx context.Context, p Principal, req CreateSandbox) (Sandbox, error) {
	if err := req.normalize(); err != nil {
		return Sandbox{}, err
	}
	tpl, err := s.resolveTemplate(ctx, p.TeamID, req.Template)
	if err != nil {
		return Sandbox{}, err
	}
	if err := req.withShape(tpl); err != nil {
		return Sandbox{}, err
	}
	meta, err := json.Marshal(orEmpty(req.Metadata))
	if err != nil {
		return Sandbox{}, fmt.Errorf("metadata: %w", err)
	}
	internet := req.Internet == nil || *req.Internet
	newID := newUUID()
	sealedEnv, err := s.sealEnvVars(newID, req.EnvVars)
	if err != nil {
		return Sandbox{}, err
	}
	var row db.Sandbox
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		t, err := q.LockTeam(ctx, p.TeamID)
		if err != nil {
			return notFound(err, "team")
		}
		if err := s.checkQuotas(ctx, q, t, req.VCPUs, req.MemoryMB); err != nil {
			return err
		}
		row, err = q.InsertSandbox(ctx, db.InsertSandboxParams{
			ID: newID, TeamID: p.TeamID, HostID: s.hostID, Template: req.Template, State: store.SandboxStarting,
			VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, TimeoutSec: req.TimeoutSec,
			AllowInternetAccess: internet, Metadata: meta, EnvVars: sealedEnv, CreatedBy: p.UserID,
			AutoPause: req.AutoPause == nil || *req.AutoPause, AutoResume: req.AutoResume, AllowPublicTraffic: req.PublicTraffic,
		})
		if err != nil {
			return fmt.Errorf("insert sandbox: %w", err)
		}
		return nil
	})
	if err != nil {
		return Sandbox{}, err
	}
	id := ID(row.ID)
	log := s.log.With("sandbox", id, "team", wireid.Format(wireid.Team, p.TeamID))
	fail := func(cause error) (Sandbox, error) {
		// The request may be gone; the bookkeeping must still happen.
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, err := s.st.TransitionSandbox(bg, nil, row.ID, []string{store.SandboxStarting}, store.SandboxError, truncate(cause.Error(), 1024)); err != nil {
			log.ErrorContext(bg, "persist the failed create", "err", err)
		}
		if c, err := s.client(bg); err == nil {
			if _, err := c.DestroySandbox(bg, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id})); err != nil && !errors.Is(err, agentclient.ErrNotFound) {
				log.ErrorContext(bg, "roll back the failed create on the agent", "err", err)
			}
		}
		log.WarnContext(ctx, "sandbox create failed", "err", cause)
		s.audit.RecordAfter(bg, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id, Action: "sandbox.create",
			Status: AuditError, Metadata: map[string]any{"template": req.Template, "error": PublicText(cause)}})
		return Sandbox{}, cause
	}
	c, err := s.client(ctx)
	if err != nil {
		return fail(err)
	}
	// No timeout for the agent: the control plane's reaper owns the TTL
	// (the record's end_at), so the agent never pauses behind its back.
	areq := &pb.CreateSandboxRequest{
		SandboxId: id, Template: tpl.agentName, Vcpus: uint32(req.VCPUs), MemoryMb: uint32(req.MemoryMB),
		EnvVars: req.EnvVars, AccessToken: auth.EnvdAccessToken(s.secret, id), DefaultUser: tpl.defaultUser,
		Egress: internet, Metadata: req.Metadata,
	}
	// The create and its bookkeeping outlive a client that leaves: a
	// machine is never left half made because a request was cancelled.
	actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), agentCallTimeout)
	defer acancel()
	ctx = actx
	agentStart := time.Now()
	var created *pb.Sandbox
	resp, err := c.CreateSandbox(ctx, connect.NewRequest(areq))
	if err == nil {
		created = resp.Msg.GetSandbox()
	} else {
		created, err = s.askAgent(ctx, c, row.ID, err, store.SandboxRunning)
	}
	agentTime := time.Since(agentStart)
	if err != nil {
		return fail(agentError(err, "create"))
	}
	// The running state and the audit record commit together (one commit
	// less on the request's path).
	row, err = s.persistRunning(ctx, row.ID, store.SandboxStarting, created, func(q *db.Queries) error {
		return s.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id, Action: "sandbox.create",
			Metadata: map[string]any{"template": req.Template, "vcpus": req.VCPUs, "memory_mb": req.MemoryMB}})
	})
	if err != nil {
		return fail(fmt.Errorf("persist running: %w", err))
	}
	log.InfoContext(ctx, "sandbox created", "template", req.Template, "vcpus", req.VCPUs, "memory_mb", req.MemoryMB)
	v := s.view(row, created)
	v.AgentTime = agentTime
	return v, nil
}

// agentCallTimeout bounds a lifecycle call to the agent (a cold boot
// under TCG with a slow start, a pause of a large memory).
const agentCallTimeout = 10 * time.Minute

// askAgent settles an agent call whose outcome is unknown (the agent
// timed out, was unreachable, or the connection broke): instead of rolling
// the record back it asks the agent for the sandbox, and when the sandbox
// reached want ("running" or "paused") the call is taken as done. Any
// other answer, or a call that failed clearly, returns callErr.
func (s *Sandboxes) askAgent(ctx context.Context, c *agentclient.Client, id pgtype.UUID, callErr error, want string) (*pb.Sandbox, error) {
	if !ambiguous(callErr) {
		return nil, callErr
	}
	var wantState pb.SandboxState
	switch want {
	case store.SandboxRunning:
		wantState = pb.SandboxState_SANDBOX_STATE_RUNNING
	case store.SandboxPaused:
		wantState = pb.SandboxState_SANDBOX_STATE_PAUSED
	default:
		return nil, callErr
	}
	for attempt := 0; attempt < 3; attempt++ {
		resp, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: ID(id)}))
		if err == nil {
			if a := resp.Msg.GetSandbox(); a.GetState() == wantState {
				s.log.WarnContext(ctx, "agent call failed ambiguously but the sandbox reached its state", "sandbox", ID(id), "state", want, "err", callErr)
				return a, nil
			}
			return nil, callErr
		}
		if !ambiguous(err) {
			return nil, callErr
		}
		select {
		case <-ctx.Done():
			return nil, callErr
		case <-time.After(time.Second << attempt):
		}
	}
	return nil, callErr
}

// keptWithoutMachine asks the agent whether sandbox id is stopped or in
// error there (its machine died; its disk is kept), and why.
func (s *Sandboxes) keptWithoutMachine(ctx context.Context, c *agentclient.Client, id pgtype.UUID) (bool, string) {
	resp, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: ID(id)}))
	if err != nil || !keptOnAgent(resp.Msg.GetSandbox()) {
		return false, ""
	}
	return true, resp.Msg.GetSandbox().GetStateReason()
}

// ambiguous reports whether an agent call's error leaves its outcome
// unknown (the agent may have done it).
func ambiguous(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, agentclient.ErrUnavailable) {
		return true
	}
	switch connect.CodeOf(err) {
	case connect.CodeDeadlineExceeded, connect.CodeUnavailable, connect.CodeCanceled, connect.CodeAborted:
		return true
	}
	return false
}

// persistRunning moves sandbox id from state from to running and records
// where its envd is (a's address), and then runs also (when not nil), in
// one transaction.
func (s *Sandboxes) persistRunning(ctx context.Context, id pgtype.UUID, from string, a *pb.Sandbox, also func(q *db.Queries) error) (db.Sandbox, error) {
	var row db.Sandbox
	err := s.st.Tx(ctx, func(q *db.Queries) error {
		var err error
		if row, err = s.st.TransitionSandbox(ctx, q, id, []string{from}, store.SandboxRunning, ""); err != nil {
			return err
		}
		if url := a.GetEnvdUrl(); url != "" {
			if row, err = q.SetSandboxEnvdURL(ctx, db.SetSandboxEnvdURLParams{ID: id, EnvdURL: url}); err != nil {
				return err
			}
		}
		if also != nil {
			return also(q)
		}
		return nil
	})
	return row, err
}

func (s *Sandboxes) view(row db.Sandbox, a *pb.Sandbox) Sandbox {
	v := Sandbox{Sandbox: row, EnvdAccessToken: auth.EnvdAccessToken(s.secret, ID(row.ID))}
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

func (s *Sandboxes) get(ctx context.Context, p Principal, id pgtype.UUID) (db.Sandbox, error) {
	row, err := s.st.Queries().GetSandbox(ctx, db.GetSandboxParams{ID: id, TeamID: p.TeamID})
	if err != nil {
		return db.Sandbox{}, notFound(err, "sandbox")
	}
	return row, nil
}

// Get returns a sandbox of p's team, a running one with its envd address
// (from the record: no agent round trip).
func (s *Sandboxes) Get(ctx context.Context, p Principal, id pgtype.UUID) (Sandbox, error) {
	row, err := s.get(ctx, p, id)
	if err != nil {
		return Sandbox{}, err
	}
	return s.view(row, nil), nil
}

// ListFilter filters List.
type ListFilter struct {
	// States: any of them (empty: any state).
	States []string
	// Metadata: the sandbox's metadata contains all of these.
	Metadata map[string]string
	// Cursor continues a previous listing ("" from the start).
	Cursor string
	// Limit is the page size (0: 50; at most 200).
	Limit int
}

var validStates = map[string]bool{
	store.SandboxStarting: true, store.SandboxRunning: true, store.SandboxPausing: true, store.SandboxPaused: true,
	store.SandboxResuming: true, store.SandboxStopped: true, store.SandboxMissing: true, store.SandboxError: true,
}

// List lists p's team's sandboxes newest first, a page at a time; next is
// the cursor of the next page ("" after the last).
func (s *Sandboxes) List(ctx context.Context, p Principal, f ListFilter) (items []Sandbox, next string, err error) {
	for _, st := range f.States {
		if !validStates[st] {
			return nil, "", errorf(ErrInvalid, "state: unknown state %q", st)
		}
	}
	if err := validateMetadata(f.Metadata); err != nil {
		return nil, "", err
	}
	if f.Limit < 0 || f.Limit > maxPageSize {
		return nil, "", errorf(ErrInvalid, "limit: 1 to %d", maxPageSize)
	}
	if f.Limit == 0 {
		f.Limit = defaultPageSize
	}
	params := db.ListSandboxesParams{TeamID: p.TeamID, States: f.States, PageSize: int32(f.Limit) + 1}
	if params.States == nil {
		params.States = []string{}
	}
	if len(f.Metadata) > 0 {
		if params.Metadata, err = json.Marshal(f.Metadata); err != nil {
			return nil, "", fmt.Errorf("metadata: %w", err)
		}
	}
	if f.Cursor != "" {
		if params.AfterCreatedAt, params.AfterID, err = decodeCursor(f.Cursor); err != nil {
			return nil, "", err
		}
	}
	rows, err := s.st.Queries().ListSandboxes(ctx, params)
	if err != nil {
		return nil, "", fmt.Errorf("list sandboxes: %w", err)
	}
	if len(rows) > f.Limit {
		rows = rows[:f.Limit]
		last := rows[len(rows)-1]
		next = encodeCursor(last.CreatedAt, last.ID)
	}
	items = make([]Sandbox, len(rows))
	for i, r := range rows {
		items[i] = s.view(r, nil)
	}
	return items, next, nil
}

func encodeCursor(t time.Time, id pgtype.UUID) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(t.UnixMicro(), 10) + "." + ID(id)))
}

func decodeCursor(c string) (pgtype.Timestamptz, pgtype.UUID, error) {
	bad := errorf(ErrInvalid, "cursor: malformed")
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	ts, idStr, ok := strings.Cut(string(b), ".")
	if !ok {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	us, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	id, err := wireid.Parse(wireid.Sandbox, idStr)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	return pgtype.Timestamptz{Time: time.UnixMicro(us), Valid: true}, id, nil
}

// Destroy destroys a sandbox of p's team: idempotent (a stopped sandbox
// is destroyed already; a sandbox the agent does not know is gone).
func (s *Sandboxes) Destroy(ctx context.Context, p Principal, id pgtype.UUID) error {
	row, err := s.get(ctx, p, id)
	if err != nil {
		return err
	}
	if row.State == store.SandboxStopped {
		return nil
	}
	// A destroy the client walks away from still completes.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), agentCallTimeout)
	defer cancel()
	c, err := s.client(ctx)
	if err != nil {
		return err
	}
	dr, err := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: ID(id)}))
	if err != nil && !errors.Is(err, agentclient.ErrNotFound) {
		return agentError(err, "destroy")
	}
	if dr != nil {
		s.storeMetrics(ctx, id, []*pb.MetricSeries{dr.Msg.GetMetrics()}, MetricTier24h)
	}
	if _, err := s.st.Queries().MarkSandboxStopped(ctx, db.MarkSandboxStoppedParams{ID: id, Reason: "destroyed"}); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("persist stopped: %w", err)
	}
	s.log.InfoContext(ctx, "sandbox destroyed", "sandbox", ID(id), "team", wireid.Format(wireid.Team, p.TeamID))
	s.audit.RecordAfter(ctx, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: ID(id), Action: "sandbox.destroy"})
	return nil
}

// transition moves a sandbox of p's team through from → mid (persisted),
// the agent call, then mid → to; when the agent fails it goes back to
// from[0].
// check, when not nil, runs in the transaction of the first transition,
// after it (quota checks: it runs under the team's row lock).
func (s *Sandboxes) transition(ctx context.Context, p Principal, id pgtype.UUID, from, mid, to string,
	check func(q *db.Queries, row db.Sandbox) error,
	call func(ctx context.Context, c *agentclient.Client, row db.Sandbox) (*pb.Sandbox, error), op string) (Sandbox, error) {
	if _, err := s.get(ctx, p, id); err != nil {
		return Sandbox{}, err
	}
	c, err := s.client(ctx)
	if err != nil {
		return Sandbox{}, err
	}
	var row db.Sandbox
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		if check != nil {
			if _, err := q.LockTeam(ctx, p.TeamID); err != nil {
				return notFound(err, "team")
			}
		}
		var err error
		if row, err = s.st.TransitionSandbox(ctx, q, id, []string{from}, mid, ""); err != nil {
			var se *store.StateError
			if errors.As(err, &se) {
				return &Error{Kind: ErrConflict, Msg: fmt.Sprintf("the sandbox is %s, not %s", se.State, from), Err: err}
			}
			return notFound(err, "sandbox")
		}
		if check != nil {
			return check(q, row)
		}
		return nil
	})
	if err != nil {
		return Sandbox{}, err
	}
	// The agent call and the bookkeeping after it outlive a client that
	// leaves: a pause or resume is not cut off half way.
	actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), agentCallTimeout)
	defer acancel()
	ctx = actx
	a, err := call(actx, c, row)
	if err != nil {
		a, err = s.askAgent(actx, c, id, err, to)
	}
	if err != nil && errors.Is(err, agentclient.ErrConflict) {
		if died, reason := s.keptWithoutMachine(actx, c, id); died {
			// The machine died behind the record's back: the record says so
			// now (error, disk kept on the host; resuming boots it cold).
			if _, terr := s.st.TransitionSandbox(actx, nil, id, []string{mid}, store.SandboxError, truncate("on the host: "+reason, 1024)); terr != nil {
				s.log.ErrorContext(actx, "persist a sandbox whose machine died", "sandbox", ID(id), "err", terr)
			}
			s.log.WarnContext(actx, "sandbox machine died; record set to error, disk kept", "sandbox", ID(id), "reason", reason)
			return Sandbox{}, &Error{Kind: ErrConflict, Msg: "the sandbox's machine stopped unexpectedly; its disk is kept: resume boots it cold from its disk", Err: err}
		}
	}
	if err != nil {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, terr := s.st.TransitionSandbox(bg, nil, id, []string{mid}, from, truncate(op+" failed: "+err.Error(), 1024)); terr != nil {
			s.log.ErrorContext(bg, "persist the failed "+op, "sandbox", ID(id), "err", terr)
		}
		err = agentError(err, op)
		s.audit.RecordAfter(bg, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: ID(id), Action: "sandbox." + op,
			Status: AuditError, Metadata: map[string]any{"error": PublicText(err)}})
		return Sandbox{}, err
	}
	if to == store.SandboxRunning {
		row, err = s.persistRunning(ctx, id, mid, a, nil)
	} else {
		row, err = s.st.TransitionSandbox(ctx, nil, id, []string{mid}, to, "")
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("persist %s: %w", to, err)
	}
	s.log.InfoContext(ctx, "sandbox "+to, "sandbox", ID(id), "team", wireid.Format(wireid.Team, p.TeamID))
	s.audit.RecordAfter(ctx, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: ID(id), Action: "sandbox." + op})
	return s.view(row, a), nil
}

// Pause pauses a running sandbox of p's team, within its paused and
// stored quotas (ErrQuota; the sandbox runs on).
func (s *Sandboxes) Pause(ctx context.Context, p Principal, id pgtype.UUID) (Sandbox, error) {
	return s.transition(ctx, p, id, store.SandboxRunning, store.SandboxPausing, store.SandboxPaused,
		func(q *db.Queries, row db.Sandbox) error {
			return s.checkStoredQuotas(ctx, q, p.TeamID, true, int64(row.MemoryMB))
		},
		func(ctx context.Context, c *agentclient.Client, _ db.Sandbox) (*pb.Sandbox, error) {
			r, err := c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: ID(id)}))
			if err != nil {
				return nil, err
			}
			s.storeMetrics(ctx, id, r.Msg.GetMetrics(), "")
			return r.Msg.GetSandbox(), nil
		}, "pause")
}

// Resume resumes a paused sandbox of p's team, within its quotas (checked
// under the team's row lock, in the transaction that marks it resuming).
//
// A sandbox in error whose host kept its disk (its machine died: see
// Reconcile) is resumed the same way: the host boots it cold from its
// disk (its files are there, its memory is not).
func (s *Sandboxes) Resume(ctx context.Context, p Principal, id pgtype.UUID) (Sandbox, error) {
	from := store.SandboxPaused
	if row, err := s.get(ctx, p, id); err == nil && row.State == store.SandboxError {
		from = store.SandboxError
	}
	return s.transition(ctx, p, id, from, store.SandboxResuming, store.SandboxRunning,
		func(q *db.Queries, _ db.Sandbox) error {
			t, err := q.GetTeam(ctx, p.TeamID)
			if err != nil {
				return notFound(err, "team")
			}
			return s.checkResumeQuotas(ctx, q, t)
		},
		func(ctx context.Context, c *agentclient.Client, _ db.Sandbox) (*pb.Sandbox, error) {
			// The TTL is the control plane's (entering running restarts it
			// in the record).
			r, err := c.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: ID(id)}))
			if err != nil {
				return nil, err
			}
			return r.Msg.GetSandbox(), nil
		}, "resume")
}

// checkResumeQuotas checks the team's totals once the resuming sandbox
// counts (resuming is an active state).
func (s *Sandboxes) checkResumeQuotas(ctx context.Context, q *db.Queries, t db.Team) error {
	lim := s.teamQuotas(t)
	use, err := q.CountTeamSandboxUsage(ctx, db.CountTeamSandboxUsageParams{TeamID: t.ID, States: activeStates})
	if err != nil {
		return fmt.Errorf("quota usage: %w", err)
	}
	switch {
	case use.Sandboxes > lim.MaxRunningSandboxes:
		return errorf(ErrQuota, "the team runs %d sandboxes, its quota is %d", use.Sandboxes-1, lim.MaxRunningSandboxes)
	case use.VCPUs > lim.MaxTotalVCPUs:
		return errorf(ErrQuota, "resuming would bring the team's sandboxes to %d vCPUs, over its quota of %d", use.VCPUs, lim.MaxTotalVCPUs)
	case use.MemoryMB > lim.MaxTotalMemoryMB:
		return errorf(ErrQuota, "resuming would bring the team's sandboxes to %d MiB, over its quota of %d MiB", use.MemoryMB, lim.MaxTotalMemoryMB)
	}
	return nil
}

// PauseAll pauses every running sandbox of the host (graceful shutdown),
// through the same path as Pause. It returns the first error.
func (s *Sandboxes) PauseAll(ctx context.Context) error {
	rows, err := s.st.Queries().ListSandboxesByHost(ctx, db.ListSandboxesByHostParams{HostID: s.hostID, States: []string{store.SandboxRunning}})
	if err != nil {
		return fmt.Errorf("pause all: %w", err)
	}
	var first error
	for _, r := range rows {
		if _, err := s.Pause(ctx, Principal{TeamID: r.TeamID}, r.ID); err != nil {
			s.log.ErrorContext(ctx, "pause at shutdown", "sandbox", ID(r.ID), "err", err)
			if first == nil {
				first = err
			}
		}
	}
	return first
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
