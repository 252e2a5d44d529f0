package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// The TTL of a sandbox is the control plane's: the record's end_at is the
// last activity plus timeout_sec (NULL: no timeout, or not running).
// Entering running (create, resume) starts it, activity (Ping, touch)
// pushes it, SetTimeout replaces it, and the Reaper pauses running
// sandboxes past it. The agent is given no timeout.

// touchEvery is how often touch writes a sandbox's activity at most.
const touchEvery = time.Second

// Ping marks a running sandbox of p's team active (its TTL starts again)
// on the agent and in the record; ErrConflict unless it is running.
func (s *Sandboxes) Ping(ctx context.Context, p Principal, id SandboxID) (Sandbox, error) {
	row, err := s.get(ctx, p, id)
	if err != nil {
		return Sandbox{}, err
	}
	if row.State != store.SandboxRunning {
		return Sandbox{}, errorf(ErrConflict, "the sandbox is %s, not running", row.State)
	}
	c, err := s.agentFor(ctx, row.HostID)
	if err != nil {
		return Sandbox{}, err
	}
	if _, err := c.PingSandbox(ctx, connect.NewRequest(&pb.PingSandboxRequest{SandboxId: id.String()})); err != nil {
		return Sandbox{}, agentError(err, "ping")
	}
	row, err = s.st.Queries().TouchSandbox(ctx, db.TouchSandboxParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID)})
	if errors.Is(err, store.ErrNotFound) {
		// It left running (paused, destroyed) since the check.
		return Sandbox{}, errorf(ErrConflict, "the sandbox is no longer running")
	}
	if err != nil {
		return Sandbox{}, fmt.Errorf("ping: %w", err)
	}
	s.noteTouched(pgUUID(id), s.now())
	return s.view(row, nil), nil
}

// SetTimeout gives a sandbox of p's team a new timeout (0: never), counted
// from now when it runs (from when it next runs otherwise). Refused for a
// stopped sandbox.
func (s *Sandboxes) SetTimeout(ctx context.Context, p Principal, id SandboxID, timeoutSec int32) (Sandbox, error) {
	if timeoutSec < 0 || timeoutSec > maxTimeoutSec {
		return Sandbox{}, errorf(ErrInvalid, "timeout_sec: 0 to %d", maxTimeoutSec)
	}
	var row db.Sandbox
	err := s.st.Tx(ctx, func(q *db.Queries) error {
		var err error
		row, err = q.SetSandboxTimeout(ctx, db.SetSandboxTimeoutParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID), TimeoutSec: timeoutSec})
		if errors.Is(err, store.ErrNotFound) {
			cur, gerr := q.GetSandbox(ctx, db.GetSandboxParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID)})
			if gerr != nil {
				return notFound(gerr, "sandbox")
			}
			return errorf(ErrConflict, "the sandbox is %s", cur.State)
		}
		if err != nil {
			return fmt.Errorf("set timeout: %w", err)
		}
		return s.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id.String(),
			Action: "sandbox.set_timeout", Metadata: map[string]any{"timeout_sec": timeoutSec}})
	})
	if err != nil {
		return Sandbox{}, err
	}
	// This replica's reaper re-reads its next deadline at once (the
	// database's notification tells every replica's, a moment later).
	s.deadlines.ring()
	return s.view(row, nil), nil
}

// touch records activity of a running sandbox (exec, file operations): its
// TTL starts again. Callers have checked the team. It writes at most once
// a second per sandbox (one UPDATE); a sandbox that is not running is left
// as it is.
func (s *Sandboxes) touch(ctx context.Context, id pgtype.UUID) error {
	now := s.now()
	s.touchMu.Lock()
	last, ok := s.touched[id]
	s.touchMu.Unlock()
	if ok && now.Sub(last) < touchEvery {
		return nil
	}
	if _, err := s.st.Queries().TouchSandboxByID(ctx, id); err != nil {
		return fmt.Errorf("touch %s: %w", ID(id), err)
	}
	s.noteTouched(id, now)
	return nil
}

// noteTouched remembers when a sandbox's activity was written, forgetting
// entries too old to matter once the map grows.
func (s *Sandboxes) noteTouched(id pgtype.UUID, at time.Time) {
	s.touchMu.Lock()
	defer s.touchMu.Unlock()
	if len(s.touched) >= 4096 {
		for k, t := range s.touched {
			if at.Sub(t) >= touchEvery {
				delete(s.touched, k)
			}
		}
	}
	s.touched[id] = at
}

// ReaperConfig configures NewReaper.
type ReaperConfig struct {
	// Now is the reaper's clock (time.Now when nil): a sandbox is expired
	// when its end_at is before Now().
	Now func() time.Time
	// TimerAt makes the timers Run sleeps on, firing when Now reaches at
	// (a time.Timer when nil): the deadlines are on Now's clock, so a test
	// that drives Now drives these too.
	TimerAt func(at time.Time) Timer
	// MaxWait is the longest Run sleeps without reading the next deadline
	// again while it receives the database's deadline notifications (30 s
	// when zero); Poll is that interval while it does not (1 s when
	// zero). See deadlines.go.
	MaxWait, Poll time.Duration
	// Retry is the wait before a pass tries again the expired sandboxes
	// that the last one left running (their host could not be asked; 5 s
	// when zero).
	Retry time.Duration
	// Batch is the most sandboxes one pass handles (100 when zero).
	Batch int32
	// PauseRetries is how many refused auto-pauses in a row leave a
	// sandbox in error (3 when zero); PauseBackoff is the wait before the
	// first retry, doubled after each further failure (30 s when zero).
	PauseRetries int32
	PauseBackoff time.Duration
}

// Reaper pauses running sandboxes past their TTL (end_at), as the system,
// at their deadlines (Run, deadlines.go).
// Several replicas may run one each: a sandbox is claimed with a guarded
// transition (running and still expired → pausing), so each is paused once
// and one that is being paused, or was active since, is skipped.
type Reaper struct {
	s   *Sandboxes
	cfg ReaperConfig
	log *slog.Logger
}

// NewReaper returns the TTL reaper of s's sandboxes.
func NewReaper(s *Sandboxes, cfg ReaperConfig) *Reaper {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.TimerAt == nil {
		cfg.TimerAt = realTimerAt(cfg.Now)
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = 30 * time.Second
	}
	if cfg.Poll <= 0 {
		cfg.Poll = time.Second
	}
	if cfg.Retry <= 0 {
		cfg.Retry = 5 * time.Second
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 100
	}
	if cfg.PauseRetries <= 0 {
		cfg.PauseRetries = 3
	}
	if cfg.PauseBackoff <= 0 {
		cfg.PauseBackoff = 30 * time.Second
	}
	return &Reaper{s: s, cfg: cfg, log: s.log.With("component", "reaper")}
}

// ReapResult counts what a pass did.
type ReapResult struct {
	// Paused sandboxes; Destroyed ones the host had lost (or, created to
	// be killed at their timeout, were destroyed); Retried ones the host
	// refused to pause, tried again after a back-off; Failed ones were
	// refused PauseRetries times in a row and left in error, their disk
	// kept; Skipped ones were claimed elsewhere, active again, or could
	// not be reached (tried again next pass).
	Paused, Destroyed, Retried, Failed, Skipped int
}

// Pass handles the sandboxes expired at the reaper's Now, oldest deadline
// first: each is paused through the persisted running → pausing → paused
// transition and audited as sandbox.auto_pause by the system. A failed
// pause never destroys a sandbox (a pause that fails leaves the machine
// running, and a full disk must not cost a team its work): one the agent
// refuses (a full data disk, a failing save) goes back to running with
// its deadline moved PauseBackoff·2^(failures-1) later, and after
// PauseRetries refusals in a row is left in state error with the reason,
// its disk and files kept on the host for the team to destroy. One the
// agent cannot be asked about goes back to running, its deadline
// unchanged; one the agent no longer has is recorded stopped. The stored
// quotas do not stop an auto-pause (pausing keeps the team's data; the
// alternatives are running on or losing it): a pause over them happens
// and its audit event says so (over_quota).
func (r *Reaper) Pass(ctx context.Context) (ReapResult, error) {
	var res ReapResult
	now := r.cfg.Now()
	rows, err := r.s.st.Queries().ListExpiredSandboxes(ctx, db.ListExpiredSandboxesParams{Now: now, MaxResults: r.cfg.Batch})
	if err != nil {
		return res, fmt.Errorf("reaper: expired sandboxes: %w", err)
	}
	for _, row := range rows {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		switch r.reap(ctx, row, now) {
		case reapPaused:
			res.Paused++
		case reapDestroyed:
			res.Destroyed++
		case reapRetried:
			res.Retried++
		case reapFailed:
			res.Failed++
		default:
			res.Skipped++
		}
	}
	return res, nil
}

type reapOutcome int

const (
	reapSkipped reapOutcome = iota
	reapPaused
	reapDestroyed
	reapRetried
	reapFailed
)

func (r *Reaper) reap(ctx context.Context, row db.Sandbox, now time.Time) reapOutcome {
	s, id := r.s, ID(row.ID)
	log := r.log.With("sandbox", id, "team", wireid.Format(wireid.Team, row.TeamID))
	claimed, err := s.st.Queries().ClaimExpiredSandbox(ctx, db.ClaimExpiredSandboxParams{ID: row.ID, Now: now, Reason: "timeout"})
	if errors.Is(err, store.ErrNotFound) {
		return reapSkipped // active again, or claimed by another replica
	}
	if err != nil {
		log.ErrorContext(ctx, "claim an expired sandbox", "err", err)
		return reapSkipped
	}
	meta := map[string]any{"timeout_sec": claimed.TimeoutSec}
	if claimed.EndAt.Valid {
		meta["end_at"] = claimed.EndAt.Time.UTC().Format(time.RFC3339)
	}
	ev := AuditEvent{ResourceType: "sandbox", ResourceID: id, Action: "sandbox.auto_pause", Metadata: meta}
	// The bookkeeping after the agent call must happen even if ctx ends.
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()

	c, err := s.agentFor(ctx, claimed.HostID)
	if !claimed.AutoPause {
		return r.destroyExpired(ctx, bg, log, c, err, claimed, meta)
	}
	if qerr := s.checkStoredQuotas(ctx, s.st.Queries(), row.TeamID, true, int64(claimed.MemoryMB)); errors.Is(qerr, ErrQuota) {
		meta["over_quota"] = PublicText(qerr)
	}
	if err == nil {
		var pr *connect.Response[pb.PauseSandboxResponse]
		// autoPauseMemory: false (E2B) keeps the disk only.
		meta["memory"] = claimed.AutoPauseMemory
		if pr, err = c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: id, FilesystemOnly: !claimed.AutoPauseMemory})); err == nil {
			s.storeMetrics(bg, row.ID, pr.Msg.GetMetrics(), "")
		}
	}
	if err == nil {
		if _, err := s.setState(bg, nil, row.ID, StatePausing, StatePaused, "timeout"); err != nil {
			log.ErrorContext(bg, "persist the auto-pause", "err", err)
		}
		log.InfoContext(ctx, "sandbox paused at its timeout")
		s.audit.RecordAfter(bg, teamIDOf(row.TeamID), SystemActor, ev)
		return reapPaused
	}

	perr := agentError(err, "auto-pause")
	ev.Status, meta["error"] = AuditError, PublicText(perr)
	if c != nil && errors.Is(perr, ErrConflict) {
		if died, reason := s.keptWithoutMachine(bg, c, row.ID); died {
			// Its machine died: error, disk kept (resuming boots it cold).
			if _, terr := s.setState(bg, nil, row.ID, StatePausing, StateError, truncate("on the host: "+reason, 1024)); terr != nil {
				log.ErrorContext(bg, "persist a sandbox whose machine died", "err", terr)
			}
			log.WarnContext(ctx, "sandbox machine died; record set to error, disk kept", "reason", reason)
			s.audit.RecordAfter(bg, teamIDOf(row.TeamID), SystemActor, ev)
			return reapSkipped
		}
	}
	if c == nil || errors.Is(perr, ErrUnavailable) || errors.Is(perr, ErrConflict) || ctx.Err() != nil {
		// Not refused, or not in the state we thought: try again later.
		if _, rerr := s.st.Queries().RevertSandboxPausing(bg, db.RevertSandboxPausingParams{ID: row.ID,
			Reason: truncate("auto-pause failed: "+err.Error(), 1024)}); rerr != nil {
			log.ErrorContext(bg, "persist the failed auto-pause", "err", rerr)
		}
		log.WarnContext(ctx, "auto-pause failed; will retry", "err", err)
		s.audit.RecordAfter(bg, teamIDOf(row.TeamID), SystemActor, ev)
		return reapSkipped
	}
	if errors.Is(err, agentclient.ErrNotFound) {
		// The host no longer has it: there is nothing left to keep.
		log.WarnContext(ctx, "auto-pause: the host no longer has the sandbox")
		if _, err := s.st.Queries().MarkSandboxStopped(bg, db.MarkSandboxStoppedParams{ID: row.ID,
			Reason: "destroyed: the host no longer has this sandbox"}); err != nil {
			log.ErrorContext(bg, "persist the lost sandbox", "err", err)
		}
		meta["destroyed"] = true
		s.audit.RecordAfter(bg, teamIDOf(row.TeamID), SystemActor, ev)
		return reapDestroyed
	}
	// Refused: never destroyed. Retried after a back-off, then kept in
	// error.
	failures := claimed.PauseFailures + 1
	meta["failures"] = failures
	if failures >= r.cfg.PauseRetries {
		reason := fmt.Sprintf("auto-pause failed %d times (%s); the sandbox and its disk are kept: destroy it, or free space and contact the operator",
			failures, PublicText(perr))
		if _, ferr := s.st.Queries().FailSandboxPausing(bg, db.FailSandboxPausingParams{ID: row.ID, Reason: truncate(reason, 1024)}); ferr != nil {
			log.ErrorContext(bg, "persist the failed auto-pause", "err", ferr)
		}
		log.ErrorContext(ctx, "auto-pause failed for the last time; the sandbox is left in error, its disk kept", "failures", failures, "err", err)
		meta["kept"] = true
		s.audit.RecordAfter(bg, teamIDOf(row.TeamID), SystemActor, ev)
		return reapFailed
	}
	retryAt := now.Add(r.cfg.PauseBackoff << (failures - 1))
	if _, rerr := s.st.Queries().RetrySandboxPausing(bg, db.RetrySandboxPausingParams{ID: row.ID, RetryAt: retryAt,
		Reason: truncate(fmt.Sprintf("auto-pause failed (%d of %d): %s", failures, r.cfg.PauseRetries, PublicText(perr)), 1024)}); rerr != nil {
		log.ErrorContext(bg, "persist the failed auto-pause", "err", rerr)
	}
	log.WarnContext(ctx, "auto-pause failed; will retry", "failures", failures, "retry_at", retryAt, "err", err)
	meta["retry_at"] = retryAt.UTC().Format(time.RFC3339)
	s.audit.RecordAfter(bg, teamIDOf(row.TeamID), SystemActor, ev)
	return reapRetried
}

// destroyExpired ends a sandbox created to be killed at its timeout
// (E2B's default): destroyed on the agent, stopped, audited as
// sandbox.auto_destroy by the system. One the agent cannot be asked about
// goes back to running for the next pass.
func (r *Reaper) destroyExpired(ctx, bg context.Context, log *slog.Logger, c *agentclient.Client, cerr error, row db.Sandbox, meta map[string]any) reapOutcome {
	s, id := r.s, ID(row.ID)
	ev := AuditEvent{ResourceType: "sandbox", ResourceID: id, Action: "sandbox.auto_destroy", Metadata: meta}
	err := cerr
	if err == nil {
		err = r.destroyClaimed(ctx, bg, log, c, row, "timeout", "destroy at the timeout failed: ")
	} else if _, rerr := s.st.Queries().RevertSandboxPausing(bg, db.RevertSandboxPausingParams{ID: row.ID,
		Reason: truncate("destroy at the timeout failed: "+err.Error(), 1024)}); rerr != nil {
		log.ErrorContext(bg, "persist the failed destroy", "err", rerr)
	}
	if err != nil {
		log.WarnContext(ctx, "destroy at the timeout failed; will retry", "err", err)
		ev.Status, meta["error"] = AuditError, PublicText(agentError(err, "destroy"))
		s.audit.RecordAfter(bg, teamIDOf(row.TeamID), SystemActor, ev)
		return reapSkipped
	}
	log.InfoContext(ctx, "sandbox destroyed at its timeout")
	s.audit.RecordAfter(bg, teamIDOf(row.TeamID), SystemActor, ev)
	return reapDestroyed
}

// destroyClaimed destroys a claimed (pausing) sandbox on the agent (one it
// no longer has counts as destroyed) with ctx, then records it, with bg:
// stopped with stopReason, or, when the agent fails, back to running with
// failPrefix and the error as its reason, for the next pass to retry.
func (r *Reaper) destroyClaimed(ctx, bg context.Context, log *slog.Logger, c *agentclient.Client, row db.Sandbox, stopReason, failPrefix string) error {
	q := r.s.st.Queries()
	dr, err := c.DestroySandbox(ctx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: ID(row.ID)}))
	if err == nil {
		r.s.storeMetrics(bg, row.ID, []*pb.MetricSeries{dr.Msg.GetMetrics()}, MetricTier24h)
		r.s.storeConsole(bg, row.ID, dr.Msg.GetConsole())
	}
	if err != nil && !errors.Is(err, agentclient.ErrNotFound) {
		if _, rerr := q.RevertSandboxPausing(bg, db.RevertSandboxPausingParams{ID: row.ID,
			Reason: truncate(failPrefix+err.Error(), 1024)}); rerr != nil {
			log.ErrorContext(bg, "persist the failed destroy", "err", rerr)
		}
		return err
	}
	if _, err := q.MarkSandboxStopped(bg, db.MarkSandboxStoppedParams{ID: row.ID, Reason: truncate(stopReason, 1024)}); err != nil {
		log.ErrorContext(bg, "persist the destroy", "err", err)
	}
	return nil
}
