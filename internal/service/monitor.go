package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// MonitorConfig configures the host monitor.
type MonitorConfig struct {
	// UnreachableAfter is how long without a heartbeat makes a host
	// unreachable (hostapi.UnreachableAfter when zero).
	UnreachableAfter time.Duration
	// Interval is how often a pass runs (when zero: a sixth of
	// UnreachableAfter, from 0.5 to 5 s).
	Interval time.Duration
	Log      *slog.Logger
}

// Monitor is the host monitor: it marks hosts that stopped beating
// unreachable and their sandboxes missing, and brings back hosts that beat
// again once their records follow their agent. Run it on one control
// plane at a time (the background loops' leader): a pass of two replicas
// at once would still not double-act (every change is a conditional
// UPDATE that one of them wins), but would reconcile a host twice.
type Monitor struct {
	s   *Sandboxes
	cfg MonitorConfig
	log *slog.Logger
}

// NewMonitor returns the host monitor of s's hosts.
func NewMonitor(s *Sandboxes, cfg MonitorConfig) *Monitor {
	if cfg.UnreachableAfter <= 0 {
		cfg.UnreachableAfter = hostapi.UnreachableAfter
	}
	if cfg.Interval <= 0 {
		// A host is seen unreachable within a sixth of the window after
		// it became so (5 s at most).
		cfg.Interval = min(5*time.Second, max(cfg.UnreachableAfter/6, 500*time.Millisecond))
	}
	log := cfg.Log
	if log == nil {
		log = s.log
	}
	return &Monitor{s: s, cfg: cfg, log: log.With("component", "monitor")}
}

// MonitorReport says what a pass changed.
type MonitorReport struct {
	// Down are the hosts marked unreachable, Missing their sandboxes
	// marked missing.
	Down, Missing int
	// Up are the hosts that came back (reconciled and online again).
	Up int
	// Reconciled sums the reconciliation of the returning hosts.
	Reconciled ReconcileReport
}

// Run runs a pass every Interval until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	t := time.NewTicker(m.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := m.Pass(ctx); err != nil && ctx.Err() == nil {
			m.log.ErrorContext(ctx, "host monitor pass", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Pass probes the static hosts, marks the hosts whose last heartbeat is
// older than UnreachableAfter unreachable and their running, pausing,
// paused and resuming sandboxes missing (one transaction; audited as
// host.marked_down by the system), and reconciles every unreachable host
// that beat again (ReconcileHost, returning): records follow the agent
// (alive → running, paused there → paused, gone → stopped, orphans on the
// host destroyed); then the host is online again (host.marked_up). A
// returning host whose agent cannot be reconciled stays unreachable until
// a later pass succeeds.
func (m *Monitor) Pass(ctx context.Context) (MonitorReport, error) {
	var rep MonitorReport
	s := m.s
	s.probeStatic(ctx, true)
	type down struct {
		host     db.Host
		missing  int
		lastBeat time.Time
	}
	var downs []down
	err := s.st.Tx(ctx, func(q *db.Queries) error {
		downs = downs[:0]
		hosts, err := q.MarkHostsDown(ctx, m.cfg.UnreachableAfter.Seconds())
		if err != nil {
			return fmt.Errorf("mark hosts down: %w", err)
		}
		for _, h := range hosts {
			sbs, err := q.MarkHostSandboxesDown(ctx, db.MarkHostSandboxesDownParams{HostID: h.ID, Reason: "the host is unreachable"})
			if err != nil {
				return fmt.Errorf("mark the sandboxes of %s missing: %w", hostWireID(h.ID), err)
			}
			d := down{host: h, missing: len(sbs)}
			meta := map[string]any{"name": h.Name, "sandboxes_missing": len(sbs), "unreachable_after_s": m.cfg.UnreachableAfter.Seconds()}
			if h.LastHeartbeatAt.Valid {
				d.lastBeat = h.LastHeartbeatAt.Time
				meta["last_heartbeat_at"] = h.LastHeartbeatAt.Time.UTC().Format(time.RFC3339)
			}
			if err := s.audit.Record(ctx, q, teamIDOf(h.TeamID), SystemActor, AuditEvent{ResourceType: "host", ResourceID: hostWireID(h.ID),
				Action: "host.marked_down", Scope: ScopeAdmin, Status: AuditWarning, Metadata: meta}); err != nil {
				return err
			}
			downs = append(downs, d)
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	for _, d := range downs {
		rep.Down++
		rep.Missing += d.missing
		m.log.WarnContext(ctx, "host unreachable: no heartbeat", "host", s.hostKey(d.host.ID), "name", d.host.Name,
			"last_heartbeat_at", d.lastBeat, "sandboxes_missing", d.missing)
		// Its connections are likely dead: the next call dials anew.
		s.agents.Evict(hostWireID(d.host.ID))
	}

	back, err := s.st.Queries().ListReturningHosts(ctx, m.cfg.UnreachableAfter.Seconds())
	if err != nil {
		return rep, fmt.Errorf("list returning hosts: %w", err)
	}
	var first error
	for _, h := range back {
		r, err := s.ReconcileHost(ctx, h.ID, true)
		rep.Reconciled.Changed += r.Changed
		rep.Reconciled.Orphans += r.Orphans
		rep.Reconciled.OrphanTemplates += r.OrphanTemplates
		if err == nil && r.Unsettled > 0 {
			m.log.InfoContext(ctx, "a returning host has sandboxes between two states: it stays unreachable until they settle",
				"host", s.hostKey(h.ID), "unsettled", r.Unsettled)
			continue
		}
		if err != nil {
			m.log.WarnContext(ctx, "a returning host could not be reconciled: it stays unreachable", "host", s.hostKey(h.ID), "err", err)
			if first == nil && !errors.Is(err, ErrUnavailable) && !errors.Is(err, agentclient.ErrUnavailable) {
				first = err
			}
			continue
		}
		err = s.st.Tx(ctx, func(q *db.Queries) error {
			up, err := q.MarkHostUp(ctx, h.ID)
			if err != nil {
				return err
			}
			return s.audit.Record(ctx, q, teamIDOf(up.TeamID), SystemActor, AuditEvent{ResourceType: "host", ResourceID: hostWireID(h.ID),
				Action: "host.marked_up", Scope: ScopeAdmin, Status: AuditInfo,
				Metadata: map[string]any{"name": h.Name, "changed": r.Changed, "orphans": r.Orphans}})
		})
		if errors.Is(err, store.ErrNotFound) {
			continue // deleted, or brought back by another pass
		}
		if err != nil {
			if first == nil {
				first = fmt.Errorf("mark %s up: %w", hostWireID(h.ID), err)
			}
			continue
		}
		rep.Up++
		m.log.InfoContext(ctx, "host back online: its records follow its agent", "host", s.hostKey(h.ID), "name", h.Name,
			"changed", r.Changed, "orphans", r.Orphans)
	}
	return rep, first
}

// anyAgent returns the client of a reporting host's agent (a static one
// first): what every host has alike (the built-in images) is asked there.
func (s *Sandboxes) anyAgent(ctx context.Context) (*agentclient.Client, error) {
	for _, id := range s.StaticHosts() {
		if c, err := s.agentFor(ctx, id); err == nil {
			return c, nil
		}
	}
	hosts, err := s.st.Queries().ListHostsToReconcile(ctx)
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	for _, h := range hosts {
		if c, err := s.agentFor(ctx, h.ID); err == nil {
			return c, nil
		}
	}
	return nil, errorf(ErrUnavailable, "no host is online")
}
