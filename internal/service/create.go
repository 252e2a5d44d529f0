package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/egress"
	"github.com/capsulehq/capsule/internal/phase"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

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
	// Network, when set, are the sandbox's egress rules (Internet is then
	// ignored; see network.go).
	Network *egress.Rules
	// AutoPause: at its timeout the sandbox is paused (nil: true), else
	// destroyed (E2B's default).
	AutoPause *bool
	// PauseWithoutMemory: the timeout's pause keeps the disk only (a
	// filesystem-only pause; the resume boots cold). Needs AutoPause.
	PauseWithoutMemory bool
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
	if r.PauseWithoutMemory && r.AutoPause != nil && !*r.AutoPause {
		return errorf(ErrInvalid, "a pause without memory at the timeout needs auto_pause")
	}
	if r.PauseWithoutMemory && r.AutoResume {
		// Traffic would resume it by a cold boot, losing its processes
		// under the caller's feet (E2B refuses the combination too).
		return errorf(ErrInvalid, "a pause without memory at the timeout cannot be combined with auto_resume")
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

// Create checks the team's quotas, chooses the sandbox's host (the
// scheduler; ErrUnavailable with its reason when no host can take it),
// persists the sandbox as starting on that host, asks the host's agent to
// create it, and persists it as running. When the agent
// fails, the sandbox is persisted as error (with the reason; it no longer
// counts against quotas) and destroyed on the agent in case it got that
// far.
func (s *Sandboxes) Create(ctx context.Context, p Principal, req CreateSandbox) (Sandbox, error) {
	clock := phase.Start()
	if err := req.normalize(); err != nil {
		return Sandbox{}, err
	}
	tpl, err := s.resolveTemplate(ctx, pgUUID(p.TeamID), req.Template)
	if err != nil {
		return Sandbox{}, err
	}
	if err := req.withShape(tpl); err != nil {
		return Sandbox{}, err
	}
	req.EnvVars = withTemplateEnv(tpl.env, req.EnvVars)
	meta, err := json.Marshal(orEmpty(req.Metadata))
	if err != nil {
		return Sandbox{}, fmt.Errorf("metadata: %w", err)
	}
	internet := req.Internet == nil || *req.Internet
	autoPause := req.AutoPause == nil || *req.AutoPause
	netJSON, err := req.network()
	if err != nil {
		return Sandbox{}, err
	}
	if req.Network != nil {
		internet = req.Network.AllowInternet
	}
	newID := store.NewUUID()
	sealedEnv, err := s.sealEnvVars(newID, req.EnvVars)
	if err != nil {
		return Sandbox{}, err
	}
	clock.Mark("template")
	team, err := s.st.Queries().GetTeam(ctx, pgUUID(p.TeamID))
	if err != nil {
		return Sandbox{}, notFound(err, "team")
	}
	// The host: the scheduler's choice over a snapshot of the hosts,
	// re-checked under the host's row lock below.
	pl, choice, err := s.schedule(ctx, team, req, tpl)
	if err != nil {
		return Sandbox{}, err
	}
	clock.Mark("schedule")
	var row db.Sandbox
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		t, err := q.LockTeam(ctx, pgUUID(p.TeamID))
		if err != nil {
			return notFound(err, "team")
		}
		if err := s.checkQuotas(ctx, q, t, req.VCPUs, req.MemoryMB); err != nil {
			return err
		}
		hostID, err := s.lock(ctx, q, pl, choice)
		if err != nil {
			return err
		}
		row, err = q.InsertSandbox(ctx, db.InsertSandboxParams{
			ID: newID, TeamID: pgUUID(p.TeamID), HostID: hostID, Template: req.Template, State: store.SandboxStarting,
			VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, TimeoutSec: req.TimeoutSec,
			AllowInternetAccess: internet, Metadata: meta, EnvVars: sealedEnv, CreatedBy: pgUUID(p.UserID),
			AutoPause: autoPause, AutoPauseMemory: !req.PauseWithoutMemory, AutoResume: req.AutoResume, AllowPublicTraffic: req.PublicTraffic,
		})
		if err != nil {
			return fmt.Errorf("insert sandbox: %w", err)
		}
		if netJSON != nil {
			if row, err = q.SetSandboxNetwork(ctx, db.SetSandboxNetworkParams{ID: row.ID, TeamID: pgUUID(p.TeamID), Network: netJSON, AllowInternetAccess: internet}); err != nil {
				return fmt.Errorf("sandbox network: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return Sandbox{}, err
	}
	clock.Mark("db")
	id := ID(row.ID)
	log := s.log.With("sandbox", id, "team", p.TeamID.String(), "host", s.hostKey(row.HostID))
	fail := func(cause error) (Sandbox, error) {
		// The request may be gone; the bookkeeping must still happen.
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, err := s.setState(bg, nil, row.ID, StateStarting, StateError, truncate(cause.Error(), 1024)); err != nil {
			log.ErrorContext(bg, "persist the failed create", "err", err)
		}
		if c, err := s.agentFor(bg, row.HostID); err == nil {
			if _, err := c.DestroySandbox(bg, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id})); err != nil && !errors.Is(err, agentclient.ErrNotFound) {
				log.ErrorContext(bg, "roll back the failed create on the agent", "err", err)
			}
		}
		log.WarnContext(ctx, "sandbox create failed", "err", cause)
		s.audit.RecordAfter(bg, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id, Action: "sandbox.create",
			Status: AuditError, Metadata: map[string]any{"template": req.Template, "error": PublicText(cause)}})
		return Sandbox{}, cause
	}
	c, err := s.agentFor(ctx, row.HostID)
	if err != nil {
		return fail(err)
	}
	// A template that lives on other hosts is copied here first (the
	// copy outlives a client that leaves, like the create).
	if err := s.ensureTemplate(context.WithoutCancel(ctx), row.HostID, tpl); err != nil {
		return fail(err)
	}
	// No timeout for the agent: the control plane's reaper owns the TTL
	// (the record's end_at), so the agent never pauses behind its back.
	areq := &pb.CreateSandboxRequest{
		SandboxId: id, Template: tpl.agentName, Vcpus: uint32(req.VCPUs), MemoryMb: uint32(req.MemoryMB),
		EnvVars: req.EnvVars, AccessToken: auth.EnvdAccessToken(s.secret, id), DefaultUser: tpl.defaultUser, DefaultWorkdir: tpl.workdir,
		Egress: internet, Metadata: req.Metadata, Network: req.networkProto(),
	}
	// The create and its bookkeeping outlive a client that leaves: a
	// machine is never left half made because a request was cancelled.
	actx, acancel := context.WithTimeout(context.WithoutCancel(ctx), agentCallTimeout)
	defer acancel()
	ctx = actx
	clock.Mark("agent-client")
	var (
		created    *pb.Sandbox
		hostPhases []*pb.CreatePhase
	)
	resp, err := c.CreateSandbox(ctx, connect.NewRequest(areq))
	if errors.Is(err, agentclient.ErrNotFound) && tpl.needsFiles() {
		// The host lost its copy (evicted, deleted by hand): forget it,
		// copy it again, and try once more.
		s.forgetTemplate(ctx, row.HostID, tpl)
		if rerr := s.ensureTemplate(ctx, row.HostID, tpl); rerr == nil {
			resp, err = c.CreateSandbox(ctx, connect.NewRequest(areq))
		}
	}
	if err == nil {
		created, hostPhases = resp.Msg.GetSandbox(), resp.Msg.GetPhases()
	} else {
		created, err = s.askAgent(ctx, c, row.ID, err, store.SandboxRunning)
	}
	agentTime := clock.Mark("agent")
	addHostPhases(clock, hostPhases)
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
	if tpl.row != nil {
		s.noteTemplate(ctx, row.HostID, tpl.row.ID, tpl.row.SizeBytes)
	}
	clock.Mark("commit")
	log.InfoContext(ctx, "sandbox created", "template", req.Template, "vcpus", req.VCPUs, "memory_mb", req.MemoryMB)
	v := s.view(row, created)
	v.AgentTime, v.Phases = agentTime, clock.Phases()
	return v, nil
}
