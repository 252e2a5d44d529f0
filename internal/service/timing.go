package service

import (
	"strconv"
	"strings"
	"time"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/phase"
)

// Phase is one step of a request and how long it took.
type Phase = phase.Phase

// Create's phases, in order: "template" (the template resolved, the
// request checked, env vars sealed), "schedule" (the team read and the
// scheduler's choice), "db" (the transaction that checks quotas, locks the
// host and inserts the record), "agent" (the host agent's CreateSandbox),
// then the agent's own steps as "host-<name>" (package sandbox, Phase:
// prepare, slot, restore or boot, envd, init, commit), and "commit" (the
// record marked running with its audit entry).

// addHostPhases adds an agent's create phases to c, named "host-<name>".
func addHostPhases(c *phase.Clock, ps []*pb.CreatePhase) {
	for _, p := range ps {
		if name := p.GetName(); name != "" && serverTimingToken(name) {
			c.Add(Phase{Name: "host-" + name, Took: p.GetTook().AsDuration()})
		}
	}
}

// serverTimingToken tells whether s is a safe Server-Timing metric name
// (an HTTP token of letters, digits, '-' and '_').
func serverTimingToken(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// ServerTiming is the Server-Timing header value of a request's phases
// (RFC: "name;dur=milliseconds", comma separated), with total, when
// positive, as "api": the time of the request outside the phases (the
// HTTP layer, authentication, parsing, the answer's encoding).
func ServerTiming(phases []Phase, total time.Duration) string {
	var b strings.Builder
	var inPhases time.Duration
	for _, p := range phases {
		if !strings.HasPrefix(p.Name, "host-") {
			inPhases += p.Took
		}
	}
	write := func(name string, d time.Duration) {
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(name)
		b.WriteString(";dur=")
		b.WriteString(strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64))
	}
	if total > 0 {
		write("api", max(0, total-inPhases))
	}
	for _, p := range phases {
		write(p.Name, p.Took)
	}
	if total > 0 {
		write("total", total)
	}
	return b.String()
}
