package service

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// ReconcileReport says what Reconcile changed.
type ReconcileReport struct {
	// Changed counts records moved to the agent's state (or to missing or
	// error when the agent does not have the sandbox).
	Changed int
	// Orphans counts sandboxes the agent ran that no live record owns
	// (destroyed).
	Orphans int
	// OrphanTemplates counts snapshot templates the agent kept that no
	// record owns (deleted).
	OrphanTemplates int
	// Moves counts interrupted moves of paused sandboxes finished or
	// rolled back (RecoverMoves).
	Moves int
	// Unsettled counts records left as they were because the agent's
	// sandbox was between two states (a pause under way): a returning host
	// stays unreachable until a later pass sees them settled.
	Unsettled int
}

// Reconcile brings the records of every reporting host's sandboxes (online
// or draining hosts; ReconcileHost each) in line with what its agent runs.
// A host whose agent cannot be reached is skipped (logged; the monitor
// marks it unreachable once its heartbeat is stale); the first other
// error is returned after every host was tried.
func (s *Sandboxes) Reconcile(ctx context.Context) (ReconcileReport, error) {
	var rep ReconcileReport
	// Moves a dead control plane left half done come first (move.go).
	moved, err := s.RecoverMoves(ctx)
	rep.Moves = moved
	if err != nil {
		s.log.WarnContext(ctx, "reconcile: moves left unsettled (a later pass retries)", "err", err)
	}
	hosts, err := s.st.Queries().ListHostsToReconcile(ctx)
	if err != nil {
		return rep, fmt.Errorf("reconcile: list hosts: %w", err)
	}
	var first error
	for _, h := range hosts {
		r, err := s.ReconcileHost(ctx, h.ID, false)
		rep.Changed += r.Changed
		rep.Orphans += r.Orphans
		rep.OrphanTemplates += r.OrphanTemplates
		rep.Unsettled += r.Unsettled
		if errors.Is(err, ErrUnavailable) || errors.Is(err, agentclient.ErrUnavailable) {
			s.log.WarnContext(ctx, "reconcile: the host's agent is unreachable", "host", s.hostKey(h.ID), "err", err)
			continue
		}
		if err != nil && first == nil {
			first = err
		}
	}
	return rep, first
}

// ReconcileHost brings the records of host's sandboxes in line with what
// its agent runs, after a crash or a restart of either, or when the host
// comes back after it was unreachable: every state is persisted before
// and after each agent call, so a record can be left starting, pausing or
// resuming, or running while the agent paused or lost the sandbox, or
// missing while its host was away. Records follow the agent (running or
// paused; error, with the agent's reason, for a sandbox whose machine
// died and whose disk the agent keeps — resuming it boots it cold);
// records of sandboxes the agent does not have become missing (error for
// a create that never finished) — or stopped when returning, the pass
// of a host that was unreachable, for which a sandbox the agent no longer
// has is gone; sandboxes of the agent without a live record are
// destroyed. Each change is audited as done by the system. Snapshot
// templates of the agent that no template record owns (a snapshot whose
// record was never written: the control plane died after the agent saved
// it) are deleted.
//
// Run it when nothing else acts on the host's sandboxes (at the start of a
// leader's term, before a returning host takes sandboxes again): it
// cannot tell a create in flight from one that was interrupted.
func (s *Sandboxes) ReconcileHost(ctx context.Context, host pgtype.UUID, returning bool) (ReconcileReport, error) {
	var rep ReconcileReport
	c, err := s.agentFor(ctx, host)
	if err != nil {
		return rep, err
	}
	resp, err := c.ListSandboxes(ctx, connect.NewRequest(&pb.ListSandboxesRequest{}))
	if err != nil {
		return rep, fmt.Errorf("reconcile: list the agent's sandboxes: %w", err)
	}
	onAgent := map[string]*pb.Sandbox{}
	for _, a := range resp.Msg.GetSandboxes() {
		onAgent[a.GetId()] = a
	}
	// Sandboxes being moved from or to this host are the move's
	// (RecoverMoves settles the moves that were interrupted).
	moving, err := s.st.Queries().ListSandboxMovesOfHost(ctx, host)
	if err != nil {
		return rep, fmt.Errorf("reconcile: list the moves: %w", err)
	}
	inMove := map[string]bool{}
	for _, m := range moving {
		inMove[ID(m)] = true
		delete(onAgent, ID(m))
	}
	rows, err := s.st.Queries().ListSandboxesByHost(ctx, db.ListSandboxesByHostParams{HostID: host, States: []string{
		store.SandboxStarting, store.SandboxRunning, store.SandboxPausing, store.SandboxPaused,
		store.SandboxResuming, store.SandboxMissing, store.SandboxError,
	}})
	if err != nil {
		return rep, fmt.Errorf("reconcile: list the host's sandboxes: %w", err)
	}
	for _, row := range rows {
		id := ID(row.ID)
		if inMove[id] {
			continue
		}
		a, ok := onAgent[id]
		delete(onAgent, id)
		var to, reason string
		switch {
		case row.State == store.SandboxError && ok && keptOnAgent(a):
			continue // its disk is kept: the user resumes (cold boot) or destroys it
		case row.State == store.SandboxError:
			// A failed create the agent still holds goes; a sandbox that
			// ran (an auto-pause that kept failing) is kept with its disk.
			if ok && !row.StartedAt.Valid {
				s.destroyOnAgent(ctx, c, id, "left by a failed create")
			}
			continue
		case !ok && row.State == store.SandboxStarting:
			to, reason = store.SandboxError, "the create was interrupted"
		case !ok && returning:
			to, reason = store.SandboxStopped, "the host no longer has this sandbox"
		case !ok:
			to, reason = store.SandboxMissing, "the host no longer has this sandbox"
		case a.GetState() == pb.SandboxState_SANDBOX_STATE_RUNNING:
			to = store.SandboxRunning
		case a.GetState() == pb.SandboxState_SANDBOX_STATE_PAUSED:
			to = store.SandboxPaused
		case keptOnAgent(a):
			// Its machine died (memory lost) or the agent cannot use it:
			// the disk is kept; resuming boots it cold from that disk.
			to, reason = store.SandboxError, "on the host: "+a.GetStateReason()
		default:
			rep.Unsettled++
			continue // transitional on the agent: a later pass sees it settled
		}
		if row.State == to {
			if to == store.SandboxRunning && a.GetEnvdUrl() != "" && row.EnvdURL != a.GetEnvdUrl() {
				if _, err := s.st.Queries().SetSandboxEnvdURL(ctx, db.SetSandboxEnvdURLParams{ID: row.ID, EnvdURL: a.GetEnvdUrl()}); err != nil && !errors.Is(err, store.ErrNotFound) {
					return rep, fmt.Errorf("reconcile %s: %w", id, err)
				}
			}
			continue
		}
		var err error
		switch to {
		case store.SandboxRunning:
			// Where its envd is, as a create or resume that finished
			// would have recorded.
			_, err = s.persistRunning(ctx, row.ID, row.State, a, nil)
		case store.SandboxStopped:
			_, err = s.st.Queries().MarkSandboxStopped(ctx, db.MarkSandboxStoppedParams{ID: row.ID, Reason: reason})
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
		default:
			_, err = s.setState(ctx, nil, row.ID, State(row.State), State(to), reason)
		}
		if err != nil {
			var se *store.StateError
			if errors.As(err, &se) {
				continue // changed meanwhile
			}
			return rep, fmt.Errorf("reconcile %s: %w", id, err)
		}
		rep.Changed++
		s.log.InfoContext(ctx, "sandbox reconciled", "sandbox", id, "from", row.State, "to", to, "reason", reason)
		status := AuditInfo
		if to == store.SandboxMissing || to == store.SandboxError {
			status = AuditWarning
		}
		s.audit.RecordAfter(ctx, teamIDOf(row.TeamID), SystemActor, AuditEvent{ResourceType: "sandbox", ResourceID: id,
			Action: "sandbox.reconcile", Status: status, Metadata: map[string]any{"from": row.State, "to": to, "reason": reason}})
	}
	for id := range onAgent {
		rep.Orphans++
		s.destroyOnAgent(ctx, c, id, "no live record")
	}
	n, err := s.reconcileTemplates(ctx, c, host, inMove)
	rep.OrphanTemplates = n
	return rep, err
}

// reconcileTemplates deletes the agent's snapshot templates (named by a
// template ID) that no template record of the host owns and returns how
// many.
func (s *Sandboxes) reconcileTemplates(ctx context.Context, c *agentclient.Client, host pgtype.UUID, inMove map[string]bool) (int, error) {
	resp, err := c.ListTemplates(ctx, connect.NewRequest(&pb.ListTemplatesRequest{}))
	if err != nil {
		return 0, fmt.Errorf("reconcile: list the agent's templates: %w", err)
	}
	rows, err := s.st.Queries().ListTemplatesByHost(ctx, host)
	if err != nil {
		return 0, fmt.Errorf("reconcile: list the host's templates: %w", err)
	}
	held, err := s.st.Queries().ListHostTemplatesLRU(ctx, host)
	if err != nil {
		return 0, fmt.Errorf("reconcile: list the host's template copies: %w", err)
	}
	owned := map[string]bool{}
	for _, row := range rows {
		owned[TemplateID(row.ID)] = true
	}
	for _, ht := range held {
		owned[TemplateID(ht.TemplateID)] = true
	}
	onAgent := map[string]bool{}
	for _, t := range resp.Msg.GetTemplates() {
		onAgent[t.GetName()] = true
	}
	// What the host holds, for the scheduler's affinity: its snapshots
	// that are on the agent, and no copy the agent lost.
	for _, row := range rows {
		if onAgent[TemplateID(row.ID)] {
			s.noteTemplate(ctx, host, row.ID, row.SizeBytes)
		}
	}
	for _, ht := range held {
		if !onAgent[TemplateID(ht.TemplateID)] {
			if _, err := s.st.Queries().DeleteHostTemplate(ctx, db.DeleteHostTemplateParams{HostID: host, TemplateID: ht.TemplateID}); err != nil {
				return 0, fmt.Errorf("reconcile: forget a template the host lost: %w", err)
			}
		}
	}
	n := 0
	for _, t := range resp.Msg.GetTemplates() {
		name := t.GetName()
		if sb, ok := strings.CutPrefix(name, "mv"); ok && moveTemplateName(sandboxUUID(sb)) == name && !inMove[sb] {
			// A move's template that outlived its move (its clean-up
			// failed): nothing needs it.
			n++
			s.log.WarnContext(ctx, "a finished move's template deleted", "sandbox", sb)
			s.deleteAgentTemplate(ctx, c, name)
			continue
		}
		if _, err := wireid.Parse(wireid.Template, name); err != nil || owned[name] {
			continue // a built-in or hidden template of the agent's, or a snapshot's
		}
		n++
		s.log.WarnContext(ctx, "orphan snapshot template deleted", "snapshot", name)
		s.deleteAgentTemplate(ctx, c, name)
	}
	return n, nil
}

// sandboxUUID parses a sandbox's wire ID (invalid when it is not one).
func sandboxUUID(s string) pgtype.UUID {
	id, err := wireid.Parse(wireid.Sandbox, s)
	if err != nil {
		return pgtype.UUID{}
	}
	return id
}

// keptOnAgent: the agent keeps the sandbox's disk but runs no machine
// for it (stopped: its machine died; error: unusable state).
func keptOnAgent(a *pb.Sandbox) bool {
	return a.GetState() == pb.SandboxState_SANDBOX_STATE_STOPPED || a.GetState() == pb.SandboxState_SANDBOX_STATE_ERROR
}

func (s *Sandboxes) destroyOnAgent(ctx context.Context, c *agentclient.Client, id, why string) {
	_, err := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id}))
	if err != nil && !errors.Is(err, agentclient.ErrNotFound) {
		s.log.ErrorContext(ctx, "destroy an orphan sandbox", "sandbox", id, "why", why, "err", err)
		return
	}
	s.log.WarnContext(ctx, "orphan sandbox destroyed", "sandbox", id, "why", why)
}
