package service

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// State is a sandbox's state (sandboxes.state; the migration's CHECK
// lists the same values).
type State string

// The sandbox states.
const (
	StateStarting State = store.SandboxStarting
	StateRunning  State = store.SandboxRunning
	StatePausing  State = store.SandboxPausing
	StatePaused   State = store.SandboxPaused
	StateResuming State = store.SandboxResuming
	// StateStopped is final: the sandbox was destroyed.
	StateStopped State = store.SandboxStopped
	// StateMissing: its host stopped reporting it; reversible.
	StateMissing State = store.SandboxMissing
	// StateError: a create failed, or the host kept the sandbox's disk
	// without a machine; resuming boots it cold, destroying stops it.
	StateError State = store.SandboxError
)

// transitions is every state change the service makes, in one place:
// from a state (the key) to the states it may enter. The store's
// conditional UPDATEs (TransitionSandbox, ClaimExpiredSandbox,
// RevertSandboxPausing, RetrySandboxPausing, FailSandboxPausing,
// MarkSandboxStopped) apply them; setState and checkTransition check
// them. Where they come from:
//   - create: starting → running, or error (the agent failed);
//   - pause (the API's and the reaper's): running → pausing → paused; a
//     pause that did not happen goes back to running, one whose machine
//     died (or the reaper's that kept failing) to error;
//   - resume: paused or error (disk kept) → resuming → running; a resume
//     that did not happen goes back to where it came from, one whose
//     machine died to error;
//   - destroy: every state but stopped → stopped (final);
//   - reconciliation at start-up: a state other than stopped and error →
//     what the host reports (running, paused), error (an interrupted
//     create, a machine that died) or missing (the host no longer has a
//     sandbox that ran); it leaves a sandbox in error as it is.
var transitions = map[State][]State{
	StateStarting: {StateRunning, StatePaused, StateError, StateStopped},
	StateRunning:  {StatePausing, StatePaused, StateError, StateMissing, StateStopped},
	StatePausing:  {StatePaused, StateRunning, StateError, StateMissing, StateStopped},
	StatePaused:   {StateResuming, StateRunning, StateError, StateMissing, StateStopped},
	StateResuming: {StateRunning, StatePaused, StateError, StateMissing, StateStopped},
	StateError:    {StateResuming, StateStopped},
	StateMissing:  {StateRunning, StatePaused, StateError, StateStopped},
	StateStopped:  {},
}

// States lists every sandbox state.
func States() []State {
	return []State{StateStarting, StateRunning, StatePausing, StatePaused, StateResuming, StateStopped, StateMissing, StateError}
}

// Valid reports whether st is a sandbox state.
func (st State) Valid() bool { _, ok := transitions[st]; return ok }

// CanTransition reports whether a sandbox may go from state from to
// state to (transitions).
func CanTransition(from, to State) bool { return slices.Contains(transitions[from], to) }

// checkTransition is CanTransition as an (internal) error: a state change
// that is not in the table is a bug of the service, never made.
func checkTransition(from, to State) error {
	if !CanTransition(from, to) {
		return fmt.Errorf("service: sandbox state change %s → %s is not allowed", from, to)
	}
	return nil
}

// setState moves sandbox id from state from to state to through
// store.TransitionSandbox (q may be nil: the pool) after checking the
// change against the transitions table.
func (s *Sandboxes) setState(ctx context.Context, q *db.Queries, id pgtype.UUID, from, to State, reason string) (db.Sandbox, error) {
	if err := checkTransition(from, to); err != nil {
		return db.Sandbox{}, err
	}
	return s.st.TransitionSandbox(ctx, q, id, []string{string(from)}, string(to), reason)
}
