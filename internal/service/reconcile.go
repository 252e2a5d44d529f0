package service

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// ReconcileReport says what Reconcile changed.
type ReconcileReport struct {
	// Changed counts records moved to the agent's state (or to missing or
	// error when the agent does not have the sandbox).
	Changed int
	// Orphans counts sandboxes the agent ran that no live record owns
	// (destroyed).
	Orphans int
}

// Reconcile brings the records of the host's sandboxes in line with what
// its agent runs, after a crash or a restart of either: every state is
// persisted before and after each agent call, so a record can be left
// starting, pausing or resuming, or running while the agent paused or
// lost the sandbox. Records follow the agent (running or paused); records
// of sandboxes the agent does not have become missing (error for a
// create that never finished); sandboxes of the agent without a live
// record are destroyed. Each change is audited as done by the system.
//
// Run it when nothing else acts on the host's sandboxes (at start-up,
// before serving): it cannot tell a create in flight from one that was
// interrupted.
func (s *Sandboxes) Reconcile(ctx context.Context) (ReconcileReport, error) {
	var rep ReconcileReport
	c, err := s.client(ctx)
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
	rows, err := s.st.Queries().ListSandboxesByHost(ctx, db.ListSandboxesByHostParams{HostID: s.hostID, States: []string{
		store.SandboxStarting, store.SandboxRunning, store.SandboxPausing, store.SandboxPaused,
		store.SandboxResuming, store.SandboxMissing, store.SandboxError,
	}})
	if err != nil {
		return rep, fmt.Errorf("reconcile: list the host's sandboxes: %w", err)
	}
	for _, row := range rows {
		id := ID(row.ID)
		a, ok := onAgent[id]
		delete(onAgent, id)
		var to, reason string
		switch {
		case row.State == store.SandboxError:
			// A failed create the agent still holds goes; a sandbox that
			// ran (an auto-pause that kept failing) is kept with its disk.
			if ok && !row.StartedAt.Valid {
				s.destroyOnAgent(ctx, c, id, "left by a failed create")
			}
			continue
		case !ok && row.State == store.SandboxStarting:
			to, reason = store.SandboxError, "the create was interrupted"
		case !ok:
			to, reason = store.SandboxMissing, "the host no longer has this sandbox"
		case a.GetState() == pb.SandboxState_SANDBOX_STATE_RUNNING:
			to = store.SandboxRunning
		case a.GetState() == pb.SandboxState_SANDBOX_STATE_PAUSED:
			to = store.SandboxPaused
		default:
			continue // transitional on the agent: the next start-up sees it settled
		}
		if row.State == to {
			continue
		}
		if _, err := s.st.TransitionSandbox(ctx, nil, row.ID, []string{row.State}, to, reason); err != nil {
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
		s.audit.RecordAfter(ctx, row.TeamID, SystemActor, AuditEvent{ResourceType: "sandbox", ResourceID: id,
			Action: "sandbox.reconcile", Status: status, Metadata: map[string]any{"from": row.State, "to": to, "reason": reason}})
	}
	for id := range onAgent {
		rep.Orphans++
		s.destroyOnAgent(ctx, c, id, "no live record")
	}
	return rep, nil
}

func (s *Sandboxes) destroyOnAgent(ctx context.Context, c *agentclient.Client, id, why string) {
	_, err := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id}))
	if err != nil && !errors.Is(err, agentclient.ErrNotFound) {
		s.log.ErrorContext(ctx, "destroy an orphan sandbox", "sandbox", id, "why", why, "err", err)
		return
	}
	s.log.WarnContext(ctx, "orphan sandbox destroyed", "sandbox", id, "why", why)
}
