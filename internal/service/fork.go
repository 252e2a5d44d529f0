package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Forks. A fork is a new sandbox that starts as a running copy of another
// (its source): the same memory, processes and files at the moment of the
// fork, then its own life. The source's host makes the forks (agent
// ForkSandbox: the source is held while its memory is saved and goes on;
// each fork maps that memory copy-on-write and chains its disk onto a
// copy of the source's), so forks live on the source's host, whatever
// the scheduler would choose. Each fork is a sandbox of the source's team
// like any other: it counts against the quotas, has its own envd access
// token (derived from its own ID), hostname, entropy and network slot,
// and inherits the source's template, shape, metadata, environment and
// network settings; its timeout is the request's.

// MaxForks bounds ForkRequest.Count.
const MaxForks = 16

// ForkRequest asks for forks of a running sandbox.
type ForkRequest struct {
	// Count is the number of forks (1 to MaxForks).
	Count int
	// TimeoutSec is each fork's time to live (0: none).
	TimeoutSec int32
}

// ForkOutcome is one fork: its sandbox, or why it failed (it then left
// nothing behind but a record in error).
type ForkOutcome struct {
	Sandbox Sandbox
	Err     error
}

// ForkResult is what Fork made, one outcome per requested fork, in order.
type ForkResult struct {
	Forks []ForkOutcome
	// SourceHold is how long the source's guest was stopped.
	SourceHold time.Duration
}

// Fork makes req.Count forks of sandbox id of p's team. The request fails
// as a whole (nothing is made or changed) when it is invalid, the sandbox
// is not p's team's or was destroyed (ErrNotFound), is not running
// (ErrConflict), the forks would exceed the team's quotas (ErrQuota) or
// do not fit on the source's host (ErrUnavailable), or the host cannot
// fork at all; otherwise each fork succeeds or fails on its own.
func (s *Sandboxes) Fork(ctx context.Context, p Principal, id SandboxID, req ForkRequest) (ForkResult, error) {
	if req.Count < 1 || req.Count > MaxForks {
		return ForkResult{}, errorf(ErrInvalid, "count: 1 to %d forks", MaxForks)
	}
	if req.TimeoutSec < 0 || req.TimeoutSec > maxTimeoutSec {
		return ForkResult{}, errorf(ErrInvalid, "timeout: 0 to %d seconds", maxTimeoutSec)
	}
	src, err := s.get(ctx, p, id)
	if err != nil {
		return ForkResult{}, err
	}
	switch State(src.State) {
	case StateRunning:
	case StateStopped, StateError, StateMissing:
		return ForkResult{}, errorf(ErrNotFound, "sandbox not found: it was %s", src.State)
	default:
		return ForkResult{}, errorf(ErrConflict, "the sandbox is %s: only a running sandbox can be forked", src.State)
	}
	env, err := s.openEnvVars(src)
	if err != nil {
		return ForkResult{}, err
	}
	c, err := s.agentFor(ctx, src.HostID)
	if err != nil {
		return ForkResult{}, err
	}
	network := NetworkOf(src)

	// The records, all in one transaction: the team's quotas count each
	// fork (starting is an active state), and the source's host must
	// have room for them all.
	rows := make([]db.Sandbox, req.Count)
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		t, err := q.LockTeam(ctx, pgUUID(p.TeamID))
		if err != nil {
			return notFound(err, "team")
		}
		h, err := q.LockHostForPlacement(ctx, src.HostID)
		if err != nil {
			return notFound(err, "host")
		}
		host := scheduler.Locked(h)
		sr := scheduler.Request{Team: t.ID.Bytes, BYOC: t.IsBYOC, Resources: scheduler.Resources{
			VCPUs: int64(src.VCPUs) * int64(req.Count), MemoryMB: int64(src.MemoryMB) * int64(req.Count)}}
		if !s.sched.Admissible(&host, sr, time.Now()) {
			return errorf(ErrUnavailable, "the sandbox's host has no room for %d more sandboxes of %d vCPUs and %d MiB", req.Count, src.VCPUs, src.MemoryMB)
		}
		for i := range rows {
			if err := s.checkQuotas(ctx, q, t, src.VCPUs, src.MemoryMB); err != nil {
				return err
			}
			newID := store.NewUUID()
			sealed, err := s.sealEnvVars(newID, env)
			if err != nil {
				return err
			}
			row, err := q.InsertSandbox(ctx, db.InsertSandboxParams{
				ID: newID, TeamID: src.TeamID, HostID: src.HostID, Template: src.Template, State: store.SandboxStarting,
				VCPUs: src.VCPUs, MemoryMB: src.MemoryMB, TimeoutSec: req.TimeoutSec,
				AllowInternetAccess: src.AllowInternetAccess, Metadata: src.Metadata, EnvVars: sealed, CreatedBy: pgUUID(p.UserID),
				AutoPause: src.AutoPause, AutoPauseMemory: src.AutoPauseMemory, AutoResume: src.AutoResume, AllowPublicTraffic: src.AllowPublicTraffic,
			})
			if err != nil {
				return fmt.Errorf("insert sandbox: %w", err)
			}
			if len(src.Network) > 0 {
				if row, err = q.SetSandboxNetwork(ctx, db.SetSandboxNetworkParams{ID: row.ID, TeamID: src.TeamID,
					Network: src.Network, AllowInternetAccess: src.AllowInternetAccess}); err != nil {
					return fmt.Errorf("sandbox network: %w", err)
				}
			}
			rows[i] = row
		}
		return nil
	})
	if err != nil {
		return ForkResult{}, err
	}
	log := s.log.With("sandbox", ID(src.ID), "team", p.TeamID.String(), "host", s.hostKey(src.HostID))
	// The forks and their bookkeeping outlive a client that leaves.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), agentCallTimeout)
	defer cancel()
	areq := &pb.ForkSandboxRequest{SandboxId: ID(src.ID), Forks: make([]*pb.CreateSandboxRequest, len(rows))}
	for i, row := range rows {
		fid := ID(row.ID)
		areq.Forks[i] = &pb.CreateSandboxRequest{SandboxId: fid, EnvVars: env, AccessToken: auth.EnvdAccessToken(s.secret, fid),
			Egress: src.AllowInternetAccess, Metadata: sandboxOf(row).Metadata, Network: rulesToProto(network)}
	}
	resp, err := c.ForkSandbox(ctx, connect.NewRequest(areq))
	if err != nil {
		err = agentError(err, "fork")
		for _, row := range rows {
			s.failFork(ctx, log, c, row, err)
		}
		s.audit.RecordAfter(ctx, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: ID(src.ID), Action: "sandbox.fork",
			Status: AuditError, Metadata: map[string]any{"count": req.Count, "error": PublicText(err)}})
		log.WarnContext(ctx, "sandbox fork failed", "err", err)
		if errors.Is(err, ErrConflict) {
			return ForkResult{}, errorf(ErrConflict, "the sandbox is not running on its host")
		}
		return ForkResult{}, err
	}
	if terr := s.touch(ctx, src.ID); terr != nil {
		log.WarnContext(ctx, "sandbox activity", "err", terr)
	}
	out := ForkResult{Forks: make([]ForkOutcome, len(rows)), SourceHold: resp.Msg.GetSourceHold().AsDuration()}
	results := resp.Msg.GetResults()
	made := []string{}
	for i, row := range rows {
		var r *pb.ForkResult
		if i < len(results) {
			r = results[i]
		}
		if r.GetSandbox() == nil {
			cause := forkError(r)
			s.failFork(ctx, log, c, row, cause)
			out.Forks[i].Err = cause
			continue
		}
		fid := ID(row.ID)
		saved, err := s.persistRunning(ctx, row.ID, store.SandboxStarting, r.GetSandbox(), func(q *db.Queries) error {
			return s.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: fid, Action: "sandbox.create",
				Metadata: map[string]any{"template": src.Template, "forked_from": ID(src.ID), "vcpus": src.VCPUs, "memory_mb": src.MemoryMB}})
		})
		if err != nil {
			err = fmt.Errorf("persist running: %w", err)
			s.failFork(ctx, log, c, row, err)
			out.Forks[i].Err = err
			continue
		}
		out.Forks[i].Sandbox = s.view(saved, r.GetSandbox())
		made = append(made, fid)
	}
	s.audit.RecordAfter(ctx, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: ID(src.ID), Action: "sandbox.fork",
		Metadata: map[string]any{"count": req.Count, "forks": made, "source_hold_ms": out.SourceHold.Milliseconds()}})
	log.InfoContext(ctx, "sandbox forked", "forks", len(made), "failed", len(rows)-len(made), "source_hold", out.SourceHold.Round(time.Millisecond))
	return out, nil
}

// forkError is the service error of a fork the agent could not make.
func forkError(r *pb.ForkResult) error {
	if r == nil {
		return errorf(ErrUnavailable, "the sandbox host did not report this fork")
	}
	var code connect.Code
	if err := code.UnmarshalText([]byte(r.GetErrorCode())); err != nil {
		code = connect.CodeInternal
	}
	return agentError(agentclient.Classify(connect.NewError(code, errors.New(r.GetErrorMessage()))), "fork")
}

// failFork records a fork that was not made as error (it then no longer
// counts against quotas) and destroys it on the host in case it got that
// far there.
func (s *Sandboxes) failFork(ctx context.Context, log *slog.Logger, c *agentclient.Client, row db.Sandbox, cause error) {
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if _, err := s.setState(bg, nil, row.ID, StateStarting, StateError, truncate(cause.Error(), 1024)); err != nil {
		log.ErrorContext(bg, "persist the failed fork", "fork", ID(row.ID), "err", err)
	}
	if _, err := c.DestroySandbox(bg, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: ID(row.ID)})); err != nil && !errors.Is(err, agentclient.ErrNotFound) {
		log.ErrorContext(bg, "roll back the failed fork on the agent", "fork", ID(row.ID), "err", err)
	}
}
