// Package phase times the steps of an operation as a sequence of marks: a
// create on the host (package sandbox) and through the control plane
// (package service), reported in Server-Timing. It imports nothing of
// Capsule's, so host and control-plane code share it.
package phase

import "time"

// Phase is one step of an operation and how long it took.
type Phase struct {
	Name string
	Took time.Duration
}

// Clock records phases as marks: each phase ends where the next begins.
// A nil Clock records nothing.
type Clock struct {
	last   time.Time
	phases []Phase
}

// Start starts a clock now.
func Start() *Clock { return &Clock{last: time.Now()} }

// Mark ends the phase name now and returns its duration.
func (c *Clock) Mark(name string) time.Duration {
	if c == nil {
		return 0
	}
	now := time.Now()
	d := now.Sub(c.last)
	c.phases = append(c.phases, Phase{Name: name, Took: d})
	c.last = now
	return d
}

// Add records a phase timed elsewhere (another process' step), without
// moving the clock.
func (c *Clock) Add(p Phase) {
	if c != nil {
		c.phases = append(c.phases, p)
	}
}

// Phases are the phases recorded so far, in order.
func (c *Clock) Phases() []Phase {
	if c == nil {
		return nil
	}
	return c.phases
}
