package service

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

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
		if row, err = s.setState(ctx, q, id, State(from), StateRunning, ""); err != nil {
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
