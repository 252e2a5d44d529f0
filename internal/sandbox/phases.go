package sandbox

import "time"

// Phase is one step of a create and how long it took. A create's phases,
// in order: "prepare" (template, admission, the sandbox directory, the
// disk overlay, the first record), "slot" (a network slot with its rules
// and TAP), "restore" or "boot" (the VMM until the guest runs), "envd"
// (until envd answers /health), "init" (envd's /init) and "commit" (the
// running record written durably). Info.Phases carries them to the agent,
// which returns them to the control plane (Server-Timing).
type Phase struct {
	Name string
	Took time.Duration
}

// phaseClock records phases as a sequence of marks; a nil clock records
// nothing (resumes and cold boots of stopped sandboxes).
type phaseClock struct {
	last   time.Time
	phases []Phase
}

func newPhaseClock() *phaseClock { return &phaseClock{last: time.Now()} }

// mark ends the phase name at now.
func (c *phaseClock) mark(name string) {
	if c == nil {
		return
	}
	now := time.Now()
	c.phases = append(c.phases, Phase{Name: name, Took: now.Sub(c.last)})
	c.last = now
}
