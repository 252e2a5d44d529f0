package service

import (
	"slices"
	"testing"

	"github.com/capsulehq/capsule/internal/store"
)

// TestStateTransitions: the transitions table allows exactly the state
// changes the service makes (create, pause, resume, the reaper, destroy,
// reconciliation) and refuses the others.
func TestStateTransitions(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from, to State
		ok       bool
	}{
		{"create succeeds", StateStarting, StateRunning, true},
		{"create fails", StateStarting, StateError, true},
		{"pause begins", StateRunning, StatePausing, true},
		{"pause ends", StatePausing, StatePaused, true},
		{"pause reverted", StatePausing, StateRunning, true},
		{"pause finds the machine dead", StatePausing, StateError, true},
		{"resume begins", StatePaused, StateResuming, true},
		{"cold boot begins", StateError, StateResuming, true},
		{"resume ends", StateResuming, StateRunning, true},
		{"resume reverted", StateResuming, StatePaused, true},
		{"resume finds the machine dead", StateResuming, StateError, true},
		{"destroy a running one", StateRunning, StateStopped, true},
		{"destroy a paused one", StatePaused, StateStopped, true},
		{"destroy one in error", StateError, StateStopped, true},
		{"destroy a missing one", StateMissing, StateStopped, true},
		{"reconcile: host lost it", StateRunning, StateMissing, true},
		{"reconcile: host has it again", StateMissing, StateRunning, true},
		{"reconcile: interrupted pause done", StateRunning, StatePaused, true},
		{"reconcile: interrupted resume done", StatePaused, StateRunning, true},
		{"reconcile: machine died", StateMissing, StateError, true},

		{"stopped is final: running", StateStopped, StateRunning, false},
		{"stopped is final: resuming", StateStopped, StateResuming, false},
		{"stopped is final: error", StateStopped, StateError, false},
		{"no pause of a starting one", StateStarting, StatePausing, false},
		{"no resume of a running one", StateRunning, StateResuming, false},
		{"no pause of a paused one", StatePaused, StatePausing, false},
		{"no resume of a resuming one", StateResuming, StateResuming, false},
		{"no back to starting", StateRunning, StateStarting, false},
		{"no pause straight out of error", StateError, StatePausing, false},
		{"reconcile leaves error as it is", StateError, StateMissing, false},
		{"a create is never missing", StateStarting, StateMissing, false},
		{"no unknown state", StateRunning, State("deleted"), false},
		{"no change to the same state", StateRunning, StateRunning, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := CanTransition(tc.from, tc.to); got != tc.ok {
				t.Fatalf("CanTransition(%s, %s) = %v, want %v", tc.from, tc.to, got, tc.ok)
			}
			if err := checkTransition(tc.from, tc.to); (err == nil) != tc.ok {
				t.Fatalf("checkTransition(%s, %s) = %v", tc.from, tc.to, err)
			}
		})
	}
	t.Run("every state is in the table", func(t *testing.T) {
		var names []string
		for _, st := range States() {
			if !st.Valid() {
				t.Errorf("%s has no row in transitions", st)
			}
			names = append(names, string(st))
		}
		if len(transitions) != len(States()) {
			t.Errorf("transitions has %d rows, want %d", len(transitions), len(States()))
		}
		if !slices.Equal(names, store.SandboxStates) {
			t.Errorf("States() = %v, store.SandboxStates = %v", names, store.SandboxStates)
		}
		for from, tos := range transitions {
			for _, to := range tos {
				if !to.Valid() || to == from {
					t.Errorf("transitions[%s] holds %q", from, to)
				}
			}
		}
	})
}
