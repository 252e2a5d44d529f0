package service

import (
	"context"
	"errors"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/store"
)

// TestAgentCallsOutliveTheClient: a client that goes away while its
// create is on the agent does not cut it off (the sandbox ends running,
// on the agent and in the record), and an agent call whose outcome is
// unknown is settled by asking the agent rather than by rolling back.
func TestAgentCallsOutliveTheClient(t *testing.T) {
	e, c := newEnvHost(t, hosttest.ServicePool)
	_, p := e.signup(t, "outlive@example.com")
	bg := context.Background()

	var created Sandbox
	t.Run("create survives a departing client", func(t *testing.T) {
		ctx, cancel := context.WithCancel(bg)
		// The client leaves as soon as the agent has started the create.
		go func() {
			defer cancel()
			deadline := time.Now().Add(2 * time.Minute)
			for time.Now().Before(deadline) {
				resp, err := c.ListSandboxes(bg, connect.NewRequest(&pb.ListSandboxesRequest{}))
				if err == nil && len(resp.Msg.GetSandboxes()) > 0 {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
		var err error
		created, err = e.sbx.Create(ctx, p, CreateSandbox{Template: "minimal", MemoryMB: 256})
		if err != nil {
			t.Fatalf("create with a departed client: %v", err)
		}
		if ctx.Err() == nil {
			t.Fatal("the client did not leave during the create (the test proves nothing)")
		}
		got, err := e.sbx.Get(bg, p, created.ID)
		if err != nil || got.State != store.SandboxRunning {
			t.Fatalf("record: %q %v, want running", got.State, err)
		}
	})
	t.Cleanup(func() { _ = e.sbx.Destroy(bg, p, created.ID) })

	t.Run("a machine that died is found by the next pause", func(t *testing.T) {
		sb, err := e.sbx.Create(bg, p, CreateSandbox{Template: "minimal", MemoryMB: 256})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = e.sbx.Destroy(bg, p, sb.ID) }()
		killVMM(t, sb.ID.String())
		waitAgentState(t, c, sb.ID.String(), pb.SandboxState_SANDBOX_STATE_STOPPED)
		var se *Error
		if _, err := e.sbx.Pause(bg, p, sb.ID); !errors.As(err, &se) || se.Kind != ErrConflict {
			t.Fatalf("pause of a sandbox whose machine died: %v, want a conflict", err)
		}
		got, err := e.sbx.Get(bg, p, sb.ID)
		if err != nil || got.State != store.SandboxError || got.StateReason == "" {
			t.Fatalf("record: %q %q %v, want error with a reason", got.State, got.StateReason, err)
		}
		if got, err := e.sbx.Resume(bg, p, sb.ID); err != nil || got.State != store.SandboxRunning {
			t.Fatalf("resume (cold boot): %q %v", got.State, err)
		}
	})
	t.Run("ambiguous outcome asks the agent", func(t *testing.T) {
		for _, tc := range []struct {
			name    string
			callErr error
			want    string
			ok      bool
		}{
			{"timeout, sandbox reached the state", context.DeadlineExceeded, store.SandboxRunning, true},
			{"connection lost, sandbox reached the state", connect.NewError(connect.CodeUnavailable, errors.New("eof")), store.SandboxRunning, true},
			{"timeout, sandbox in another state", context.DeadlineExceeded, store.SandboxPaused, false},
			{"clear failure is not second-guessed", connect.NewError(connect.CodeFailedPrecondition, errors.New("no")), store.SandboxRunning, false},
		} {
			t.Run(tc.name, func(t *testing.T) {
				a, err := e.sbx.askAgent(bg, c, pgUUID(created.ID), tc.callErr, tc.want)
				if tc.ok && (err != nil || a.GetState() != pb.SandboxState_SANDBOX_STATE_RUNNING) {
					t.Fatalf("askAgent: %v %v, want the running sandbox", a, err)
				}
				if !tc.ok && !errors.Is(err, tc.callErr) {
					t.Fatalf("askAgent: %v %v, want the call's error", a, err)
				}
			})
		}
	})
}
