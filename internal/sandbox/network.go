package sandbox

import (
	"context"
	"fmt"
	"slices"

	"github.com/capsulehq/capsule/internal/egress"
)

// rules are the sandbox's egress rules: Network, or what Egress says for
// records without rules.
func (r *record) rules() egress.Rules {
	if r.Network != nil {
		return *cloneRules(r.Network)
	}
	if r.Egress {
		return egress.Open()
	}
	return egress.Closed()
}

func cloneRules(r *egress.Rules) *egress.Rules {
	if r == nil {
		return nil
	}
	c := *r
	c.AllowOut, c.DenyOut = slices.Clone(r.AllowOut), slices.Clone(r.DenyOut)
	return &c
}

// checkRules reports rules that do not parse as ErrInvalid.
func checkRules(r *egress.Rules) error {
	if r == nil {
		return nil
	}
	if _, err := egress.Parse(*r); err != nil {
		return fmt.Errorf("%w: network rules: %v", ErrInvalid, err)
	}
	return nil
}

// SetNetwork replaces a sandbox's egress rules. They are part of its
// state (state.json): a running sandbox's network slot applies them at
// once, open connections included (netslot.Slot.SetRules); a paused or
// stopped one gets them when it runs again, and an agent that restarts
// re-applies them to the slot it adopts. Rules that do not parse are
// ErrInvalid and change nothing.
func (m *Manager) SetNetwork(ctx context.Context, id string, r egress.Rules) error {
	if err := checkRules(&r); err != nil {
		return err
	}
	b, err := m.lock(id)
	if err != nil {
		return err
	}
	defer b.op.Unlock()
	b.mu.Lock()
	if b.rec.rules().Equal(r) {
		b.mu.Unlock()
		return nil // (a resume sends the record's rules every time)
	}
	prev, prevEgress := b.rec.Network, b.rec.Egress
	b.rec.Network, b.rec.Egress = cloneRules(&r), r.AllowInternet
	rec := *b.rec
	slot := b.slot
	running := b.rec.State == StateRunning && slot != nil
	b.mu.Unlock()
	undo := func() {
		b.mu.Lock()
		b.rec.Network, b.rec.Egress = prev, prevEgress
		b.mu.Unlock()
	}
	// Durable first: a crash after this applies the new rules at
	// recovery; a failure below restores the old ones.
	if err := m.writeRecord(m.sandboxDir(id), &rec); err != nil {
		undo()
		return err
	}
	if running {
		if err := slot.SetRules(ctx, r); err != nil {
			undo()
			b.mu.Lock()
			old := *b.rec
			b.mu.Unlock()
			if werr := m.writeRecord(m.sandboxDir(id), &old); werr != nil {
				m.log.ErrorContext(ctx, "restore the sandbox's network rules on disk", "sandbox", id, "err", werr)
			}
			return fmt.Errorf("set network rules of %s: %w", id, err)
		}
	}
	m.log.InfoContext(ctx, "sandbox network rules set", "sandbox", id, "allow_internet", r.AllowInternet,
		"allow_out", len(r.AllowOut), "deny_out", len(r.DenyOut), "applied", running)
	return nil
}
