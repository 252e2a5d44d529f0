package service

import (
	"context"
	"errors"
	"fmt"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Destroy destroys a sandbox of p's team: idempotent (a stopped sandbox
// is destroyed already; a sandbox the agent does not know is gone).
func (s *Sandboxes) Destroy(ctx context.Context, p Principal, id SandboxID) error {
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
	// A record without a host never reached one (its create failed before
	// placement) or its host was deleted, with its machines: nothing runs
	// anywhere to destroy.
	if row.HostID.Valid {
		c, err := s.agentFor(ctx, row.HostID)
		if err != nil {
			return err
		}
		dr, err := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id.String()}))
		if err != nil && !errors.Is(err, agentclient.ErrNotFound) {
			return agentError(err, "destroy")
		}
		if dr != nil {
			s.storeMetrics(ctx, pgUUID(id), []*pb.MetricSeries{dr.Msg.GetMetrics()}, MetricTier24h)
			s.storeConsole(ctx, pgUUID(id), dr.Msg.GetConsole())
		}
	}
	if _, err := s.st.Queries().MarkSandboxStopped(ctx, db.MarkSandboxStoppedParams{ID: pgUUID(id), Reason: "destroyed"}); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("persist stopped: %w", err)
	}
	s.log.InfoContext(ctx, "sandbox destroyed", "sandbox", id.String(), "team", p.TeamID.String())
	s.audit.RecordAfter(ctx, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id.String(), Action: "sandbox.destroy"})
	return nil
}

// transition moves a sandbox of p's team through from → mid (persisted),
// the agent call, then mid → to; when the agent fails it goes back to
// from[0].
// check, when not nil, runs in the transaction of the first transition,
// after it (quota checks: it runs under the team's row lock).
func (s *Sandboxes) transition(ctx context.Context, p Principal, id SandboxID, from, mid, to string,
	check func(q *db.Queries, row db.Sandbox) error,
	call func(ctx context.Context, c *agentclient.Client, row db.Sandbox) (*pb.Sandbox, error), op string) (Sandbox, error) {
	cur, err := s.get(ctx, p, id)
	if err != nil {
		return Sandbox{}, err
	}
	var row db.Sandbox
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		if check != nil {
			if _, err := q.LockTeam(ctx, pgUUID(p.TeamID)); err != nil {
				return notFound(err, "team")
			}
		}
		var err error
		if row, err = s.setState(ctx, q, pgUUID(id), State(from), State(mid), ""); err != nil {
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
	// The agent of the sandbox's host (the quota checks come first).
	c, err := s.agentFor(actx, cur.HostID)
	var a *pb.Sandbox
	if err == nil {
		if a, err = call(actx, c, row); err != nil {
			a, err = s.askAgent(actx, c, pgUUID(id), err, to)
		}
	}
	if err != nil && c != nil && errors.Is(err, agentclient.ErrConflict) {
		if died, reason := s.keptWithoutMachine(actx, c, pgUUID(id)); died {
			// The machine died behind the record's back: the record says so
			// now (error, disk kept on the host; resuming boots it cold).
			if _, terr := s.setState(actx, nil, pgUUID(id), State(mid), StateError, truncate("on the host: "+reason, 1024)); terr != nil {
				s.log.ErrorContext(actx, "persist a sandbox whose machine died", "sandbox", id.String(), "err", terr)
			}
			s.log.WarnContext(actx, "sandbox machine died; record set to error, disk kept", "sandbox", id.String(), "reason", reason)
			return Sandbox{}, &Error{Kind: ErrConflict, Msg: "the sandbox's machine stopped unexpectedly; its disk is kept: resume boots it cold from its disk", Err: err}
		}
	}
	if err != nil {
		bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if _, terr := s.setState(bg, nil, pgUUID(id), State(mid), State(from), truncate(op+" failed: "+err.Error(), 1024)); terr != nil {
			s.log.ErrorContext(bg, "persist the failed "+op, "sandbox", id.String(), "err", terr)
		}
		err = agentError(err, op)
		s.audit.RecordAfter(bg, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id.String(), Action: "sandbox." + op,
			Status: AuditError, Metadata: map[string]any{"error": PublicText(err)}})
		return Sandbox{}, err
	}
	if to == store.SandboxRunning {
		row, err = s.persistRunning(ctx, pgUUID(id), mid, a, nil)
	} else {
		row, err = s.setState(ctx, nil, pgUUID(id), State(mid), State(to), "")
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("persist %s: %w", to, err)
	}
	s.log.InfoContext(ctx, "sandbox "+to, "sandbox", id.String(), "team", p.TeamID.String())
	s.audit.RecordAfter(ctx, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id.String(), Action: "sandbox." + op})
	return s.view(row, a), nil
}

// Pause pauses a running sandbox of p's team, its memory kept, within its
// paused and stored quotas (ErrQuota; the sandbox runs on).
func (s *Sandboxes) Pause(ctx context.Context, p Principal, id SandboxID) (Sandbox, error) {
	return s.PauseWith(ctx, p, id, PauseOptions{})
}

// PauseWith is Pause as o says (pausemodes.go).
func (s *Sandboxes) PauseWith(ctx context.Context, p Principal, id SandboxID, o PauseOptions) (Sandbox, error) {
	return s.transition(ctx, p, id, store.SandboxRunning, store.SandboxPausing, store.SandboxPaused,
		func(q *db.Queries, row db.Sandbox) error {
			return s.checkStoredQuotas(ctx, q, pgUUID(p.TeamID), true, int64(row.MemoryMB))
		},
		func(ctx context.Context, c *agentclient.Client, _ db.Sandbox) (*pb.Sandbox, error) {
			r, err := c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: id.String(), FilesystemOnly: o.FilesystemOnly}))
			if err != nil {
				return nil, err
			}
			s.storeMetrics(ctx, pgUUID(id), r.Msg.GetMetrics(), "")
			return r.Msg.GetSandbox(), nil
		}, "pause")
}

// Resume resumes a paused sandbox of p's team, within its quotas (checked
// under the team's row lock, in the transaction that marks it resuming).
//
// A paused sandbox whose host is draining is moved with its files to
// another host and resumed there (move.go).
//
// A sandbox in error whose host kept its disk (its machine died: see
// Reconcile) is resumed the same way: the host boots it cold from its
// disk (its files are there, its memory is not).
func (s *Sandboxes) Resume(ctx context.Context, p Principal, id SandboxID) (Sandbox, error) {
	return s.ResumeWith(ctx, p, id, ResumeOptions{})
}

// ResumeWith is Resume as o says (pausemodes.go).
func (s *Sandboxes) ResumeWith(ctx context.Context, p Principal, id SandboxID, o ResumeOptions) (Sandbox, error) {
	from := store.SandboxPaused
	if row, err := s.get(ctx, p, id); err == nil && row.State == store.SandboxError {
		from = store.SandboxError
	} else if err == nil && s.movable(ctx, row, o) {
		// Its host is draining: the sandbox moves, with its files, to a
		// host the scheduler chooses and resumes there (move.go).
		return s.moveAndResume(ctx, p, id)
	}
	return s.transition(ctx, p, id, from, store.SandboxResuming, store.SandboxRunning,
		func(q *db.Queries, _ db.Sandbox) error {
			t, err := q.GetTeam(ctx, pgUUID(p.TeamID))
			if err != nil {
				return notFound(err, "team")
			}
			return s.checkResumeQuotas(ctx, q, t)
		},
		func(ctx context.Context, c *agentclient.Client, row db.Sandbox) (*pb.Sandbox, error) {
			// The TTL is the control plane's (entering running restarts it
			// in the record), and so are the egress rules.
			r, err := c.ResumeSandbox(ctx, connect.NewRequest(&pb.ResumeSandboxRequest{SandboxId: id.String(), Network: rulesToProto(NetworkOf(row)), Cold: o.Cold}))
			if err != nil {
				return nil, err
			}
			return r.Msg.GetSandbox(), nil
		}, "resume")
}

// PauseAll pauses every running sandbox of the hosts whose agents stop
// with this process (graceful shutdown): the static hosts and
// EmbeddedHosts, through the same path as Pause. It returns the first
// error.
func (s *Sandboxes) PauseAll(ctx context.Context) error {
	hosts := s.StaticHosts()
	for _, name := range s.embedded {
		h, err := s.st.Queries().GetHostByName(ctx, name)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("pause all: %w", err)
		}
		hosts = append(hosts, h.ID)
	}
	var rows []db.Sandbox
	for _, h := range hosts {
		r, err := s.st.Queries().ListSandboxesByHost(ctx, db.ListSandboxesByHostParams{HostID: h, States: []string{store.SandboxRunning}})
		if err != nil {
			return fmt.Errorf("pause all: %w", err)
		}
		rows = append(rows, r...)
	}
	var first error
	for _, r := range rows {
		if _, err := s.Pause(ctx, Principal{TeamID: teamIDOf(r.TeamID)}, sandboxIDOf(r.ID)); err != nil {
			s.log.ErrorContext(ctx, "pause at shutdown", "sandbox", ID(r.ID), "err", err)
			if first == nil {
				first = err
			}
		}
	}
	return first
}
