package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Where sandboxes go and which agent serves each.
//
// Every sandbox record names its host (sandboxes.host_id); every call about
// a sandbox goes to that host's agent (agentFor). A host is reached through
// the agent pool by its wire ID ("host-…"), which the pool resolves through
// the hosts table (Hosts.Resolve: https to the declared address, mutual TLS)
// — or, for a static host, by the name its endpoint was registered under
// (agentclient.Pool.Set: an agent with a bearer token that did not
// register, such as the test fixtures' and `capsule agent` without
// --control-plane). A static host is a platform host like any other in the
// database; having no heartbeat of its own, the control plane probes it
// (GetHostInfo) and records the answer as its heartbeat (probeStatic).
//
// A new sandbox's host is the scheduler's choice (package scheduler) over
// the candidates of one query, re-checked under the chosen host's row lock
// in the transaction that inserts the record (place).

// staticProbeEvery bounds how often a create probes the static hosts.
const staticProbeEvery = 5 * time.Second

// unlimited stands for a resource an agent does not limit (a zero
// capacity), so that the scheduler never refuses a host for it.
const unlimited = int64(1) << 40

// errHostGone is the answer for a sandbox whose host was deleted.
var errHostGone = errorf(ErrUnavailable, "the sandbox's host was deleted")

// hostKey is the pool's name of host id: its static name, else its wire ID.
func (s *Sandboxes) hostKey(id pgtype.UUID) string {
	s.staticMu.Lock()
	name, ok := s.static[id]
	s.staticMu.Unlock()
	if ok {
		return name
	}
	return hostWireID(id)
}

// agentFor returns the client of host id's agent.
func (s *Sandboxes) agentFor(ctx context.Context, id pgtype.UUID) (*agentclient.Client, error) {
	if !id.Valid {
		return nil, errHostGone
	}
	c, err := s.agents.Get(ctx, s.hostKey(id))
	if err != nil {
		return nil, &Error{Kind: ErrUnavailable, Msg: "the sandbox host is unreachable", Err: err}
	}
	return c, nil
}

// registerStatic records the pool's static agents as platform hosts (one
// row each, by name) and probes them once.
func (s *Sandboxes) registerStatic(ctx context.Context) error {
	for _, name := range s.agents.Static() {
		h, err := s.st.Queries().RegisterHost(ctx, db.RegisterHostParams{
			TeamID: store.PlatformTeamID, Name: name, Labels: json.RawMessage(`{}`),
			TotalVCPUs: int32(unlimited >> 20), TotalMemoryMB: unlimited, TotalDiskMB: unlimited,
		})
		if err != nil {
			return fmt.Errorf("service: register host %s: %w", name, err)
		}
		s.staticMu.Lock()
		s.static[h.ID] = name
		s.staticMu.Unlock()
	}
	s.probeStatic(ctx, true)
	return nil
}

// StaticHosts returns the IDs of the static hosts.
func (s *Sandboxes) StaticHosts() []pgtype.UUID {
	s.staticMu.Lock()
	defer s.staticMu.Unlock()
	ids := make([]pgtype.UUID, 0, len(s.static))
	for id := range s.static {
		ids = append(ids, id)
	}
	return ids
}

// probeStatic asks each static agent for its resources and records the
// answer as the host's heartbeat (unless a probe is younger than
// staticProbeEvery and force is false). An agent that does not answer is
// not recorded: its heartbeat ages, and the monitor marks it unreachable.
func (s *Sandboxes) probeStatic(ctx context.Context, force bool) {
	s.staticMu.Lock()
	if !force && time.Since(s.probedAt) < staticProbeEvery {
		s.staticMu.Unlock()
		return
	}
	s.probedAt = time.Now()
	hosts := make(map[pgtype.UUID]string, len(s.static))
	for id, name := range s.static {
		hosts[id] = name
	}
	s.staticMu.Unlock()
	for id, name := range hosts {
		c, err := s.agents.Get(ctx, name)
		if err != nil {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		info, err := c.GetHostInfo(pctx, connect.NewRequest(&pb.GetHostInfoRequest{}))
		cancel()
		if err != nil {
			s.log.DebugContext(ctx, "static host probe failed", "host", name, "err", err)
			continue
		}
		m := info.Msg
		orUnlimited := func(v uint64) int64 {
			if v == 0 {
				return unlimited
			}
			return int64(v)
		}
		// The agent's vCPU capacity, when it has one, is the count of
		// vCPUs it declares (max_vcpus: the scheduler places exactly
		// that). total_vcpus holds CPUs, which the agent does not report
		// here: the capacity divided back by the overcommit (rounded up)
		// stands in for them, for display.
		maxVCPUs := int32(m.GetCapacity().GetVcpus())
		vcpus := int32(math.Ceil(float64(maxVCPUs) / s.sched.Config().CPUOvercommit))
		if vcpus == 0 {
			vcpus = int32(unlimited >> 20)
		}
		// The probe is the static host's heartbeat.
		if _, err := s.st.Queries().RecordHostHeartbeat(ctx, db.RecordHostHeartbeatParams{ID: id, Version: m.GetAgentVersion(),
			TotalVCPUs: vcpus, MaxVCPUs: maxVCPUs, TotalMemoryMB: orUnlimited(m.GetCapacity().GetMemoryMb()), TotalDiskMB: orUnlimited(m.GetCapacity().GetDiskMb()),
			UsedVCPUs: int32(m.GetUsed().GetVcpus()), UsedMemoryMB: int64(m.GetUsed().GetMemoryMb()), UsedDiskMB: int64(m.GetUsed().GetDiskMb()),
			RunningSandboxes: int32(m.GetRunningSandboxes()), PausedSandboxes: int32(m.GetPausedSandboxes()),
			SandboxCount: int32(m.GetRunningSandboxes() + m.GetPausedSandboxes())}); err != nil && !errors.Is(err, store.ErrNotFound) {
			s.log.WarnContext(ctx, "record a static host's probe", "host", name, "err", err)
		}
	}
}

// Decide is one scheduling decision: the candidates of req's host team in
// one query (ListSchedulingCandidates), those keep rejects dropped (nil:
// none), then the scheduler's choice.
func Decide(ctx context.Context, q db.Querier, s *scheduler.Scheduler, req scheduler.Request, now time.Time,
	keep func(db.ListSchedulingCandidatesRow) bool) (scheduler.Choice, []scheduler.Host, error) {
	team := scheduler.HostTeam(req)
	p := db.ListSchedulingCandidatesParams{TeamID: pgtype.UUID{Bytes: team, Valid: true}}
	if req.HasTemplate {
		p.TemplateID = pgtype.UUID{Bytes: req.Template, Valid: true}
	}
	rows, err := q.ListSchedulingCandidates(ctx, p)
	if err != nil {
		return scheduler.Choice{}, nil, fmt.Errorf("scheduling candidates: %w", err)
	}
	if keep != nil {
		kept := rows[:0]
		for _, r := range rows {
			if keep(r) {
				kept = append(kept, r)
			}
		}
		rows = kept
	}
	hosts := scheduler.Candidates(rows, req)
	c, err := s.Choose(hosts, req, now)
	return c, hosts, err
}

// noHost is the service's answer when the scheduler finds no host: 503,
// with the scheduler's reason.
func noHost(err error) error {
	var nh *scheduler.NoHostError
	if errors.As(err, &nh) {
		return &Error{Kind: ErrUnavailable, Msg: fmt.Sprintf("%s (%s)", nh.Msg, nh.Reason), Err: err}
	}
	return err
}

// placement is where a create goes: the scheduler's request and the
// candidates it chose among.
type placement struct {
	req   scheduler.Request
	hosts []scheduler.Host
	now   time.Time
}

// schedule chooses the host of a new sandbox of team (isBYOC: on its own
// hosts) with the machine shape and template of req. A snapshot template
// (or a team's image template, which a build flattened on one host) lives
// on the hosts that hold its files (its own host; host_templates): the
// scheduler prefers those (affinity), and a create on another host copies
// the files there first (ensureTemplate, replicate.go).
func (s *Sandboxes) schedule(ctx context.Context, team db.Team, req CreateSandbox, tpl resolvedTemplate) (*placement, scheduler.Choice, error) {
	s.probeStatic(ctx, false)
	sr := scheduler.Request{Team: team.ID.Bytes, BYOC: team.IsBYOC,
		Resources: scheduler.Resources{VCPUs: int64(req.VCPUs), MemoryMB: int64(req.MemoryMB)}}
	if t := tpl.row; t != nil {
		sr.Template, sr.HasTemplate = t.ID.Bytes, true
	}
	// Heartbeats are stamped with the database's now(), not the service's
	// clock (which tests move): their freshness is judged in real time.
	now := time.Now()
	choice, hosts, err := Decide(ctx, s.st.Queries(), s.sched, sr, now, nil)
	if err != nil {
		return nil, scheduler.Choice{}, noHost(err)
	}
	return &placement{req: sr, hosts: hosts, now: now}, choice, nil
}

// lock re-checks choice under its host's row lock in the create's
// transaction q; when the host no longer admits the sandbox (two creates
// chose it for its last room, it went unreachable) it chooses again
// without it. It returns the host the sandbox goes to.
func (s *Sandboxes) lock(ctx context.Context, q *db.Queries, pl *placement, choice scheduler.Choice) (pgtype.UUID, error) {
	for range len(pl.hosts) + 1 {
		id := pgtype.UUID{Bytes: choice.Host.ID, Valid: true}
		row, err := q.LockHostForPlacement(ctx, id)
		if err == nil {
			h := scheduler.Locked(row)
			if s.sched.Admissible(&h, pl.req, time.Now()) {
				return id, nil
			}
		} else if !errors.Is(err, store.ErrNotFound) {
			return pgtype.UUID{}, fmt.Errorf("lock host: %w", err)
		}
		// Drop it and choose again among the others.
		rest := pl.hosts[:0:0]
		for _, h := range pl.hosts {
			if h.ID != choice.Host.ID {
				rest = append(rest, h)
			}
		}
		pl.hosts = rest
		if choice, err = s.sched.Choose(pl.hosts, pl.req, pl.now); err != nil {
			return pgtype.UUID{}, noHost(err)
		}
	}
	return pgtype.UUID{}, errorf(ErrUnavailable, "no host can take the sandbox")
}

// noteTemplate records that host holds template (it made a snapshot there,
// or a sandbox started from it there): the scheduler's affinity.
func (s *Sandboxes) noteTemplate(ctx context.Context, host, template pgtype.UUID, size int64) {
	if !host.Valid || !template.Valid {
		return
	}
	if err := s.st.Queries().UpsertHostTemplate(ctx, db.UpsertHostTemplateParams{HostID: host, TemplateID: template, SizeBytes: max(size, 0)}); err != nil &&
		!errors.Is(err, store.ErrNotFound) {
		s.log.WarnContext(ctx, "record the host's template", "host", hostWireID(host), "template", TemplateID(template), "err", err)
	}
}
