package builds

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/riverqueue/river"

	"github.com/capsulehq/capsule/internal/errdefs"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// buildArgs is the job of a build.
type buildArgs struct {
	BuildID string `json:"build_id"`
}

func (buildArgs) Kind() string { return "build" }

type buildWorker struct {
	river.WorkerDefaults[buildArgs]
	s *Service
}

// stepError is a build that fails because of its recipe: not retried.
type stepError struct {
	step, line int
	msg        string
}

func (e *stepError) Error() string {
	if e.line > 0 {
		return fmt.Sprintf("line %d: %s", e.line, e.msg)
	}
	return e.msg
}

// errCancelled: the build was cancelled.
var errCancelled = errors.New("cancelled")

// Work runs one attempt of a build: claim it for this job, run it, and
// record how it ended.
func (w *buildWorker) Work(ctx context.Context, job *river.Job[buildArgs]) error {
	s := w.s
	id, err := wireid.Parse(wireid.Build, job.Args.BuildID)
	if err != nil {
		return river.JobCancel(fmt.Errorf("builds: job %d: bad build ID %q", job.ID, job.Args.BuildID))
	}
	jobID := pgtype.Int8{Int64: job.ID, Valid: true}
	b, err := s.st.Queries().ClaimBuild(ctx, db.ClaimBuildParams{ID: id, JobID: jobID})
	if errors.Is(err, store.ErrNotFound) {
		// Cancelled, or handed to another job: nothing to do.
		return nil
	}
	if err != nil {
		// The sweeper requeues the build when River drops the job.
		return fmt.Errorf("builds: claim %s: %w", ID(id), err)
	}
	log := s.log.With("build", ID(id), "team", wireid.Format(wireid.Team, b.TeamID))
	log.InfoContext(ctx, "build started", "attempt", b.Attempts)
	a := &attempt{s: s, b: b, job: job.ID, logs: newBuildLog(s, id, job.ID)}
	res := a.run(ctx)
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	return s.settle(bg, a, res)
}

// result is how an attempt ended.
type result struct {
	err      error // nil: success
	template pgtype.UUID
	step     int // the step reached
}

// settle records the end of an attempt: success, failure, cancel, or a
// retry with a new job.
func (s *Service) settle(ctx context.Context, a *attempt, res result) error {
	b := a.b
	jobID := pgtype.Int8{Int64: a.job, Valid: true}
	log := s.log.With("build", ID(b.ID))
	var se *stepError
	finish := func(status, msg string, failedStep, failedLine pgtype.Int4) error {
		if msg != "" {
			a.logs.system(int(failedStep.Int32), "%s", msg)
		}
		a.logs.system(0, "build %s", status)
		if err := a.logs.flush(ctx); err != nil && !errors.Is(err, errLost) {
			log.WarnContext(ctx, "build log", "err", err)
		}
		row, err := s.st.Queries().FinishBuild(ctx, db.FinishBuildParams{ID: b.ID, JobID: jobID, Status: status, Error: msg,
			FailedStep: failedStep, FailedLine: failedLine, TemplateID: res.template, CurrentStep: int32(res.step)})
		if errors.Is(err, store.ErrNotFound) {
			log.WarnContext(ctx, "build taken from its worker before it ended", "status", status)
			return nil
		}
		if err != nil {
			return fmt.Errorf("builds: finish %s: %w", ID(b.ID), err)
		}
		s.auditBuild(ctx, row, status, msg)
		log.InfoContext(ctx, "build ended", "status", status, "reason", msg)
		return nil
	}
	switch {
	case res.err == nil:
		return finish(StatusSuccess, "", pgtype.Int4{}, pgtype.Int4{})
	case errors.Is(res.err, errLost):
		log.WarnContext(ctx, "build taken from its worker (presumed dead) while it ran")
		return nil
	case errors.Is(res.err, errCancelled):
		return finish(StatusCancelled, "cancelled", pgtype.Int4{}, pgtype.Int4{})
	case errors.As(res.err, &se):
		return finish(StatusFailed, se.Error(), pgtype.Int4{Int32: int32(se.step), Valid: true}, pgtype.Int4{Int32: int32(se.line), Valid: se.line > 0})
	}
	// The infrastructure failed: another attempt, or the end.
	public := service.PublicText(res.err)
	log.WarnContext(ctx, "build attempt failed", "attempt", b.Attempts, "err", res.err)
	if b.Attempts >= b.MaxAttempts {
		return finish(StatusFailed, fmt.Sprintf("build failed after %d attempts: %s", b.Attempts, public),
			pgtype.Int4{Int32: int32(res.step), Valid: true}, pgtype.Int4{})
	}
	a.logs.system(res.step, "attempt %d failed: %s; retrying", b.Attempts, public)
	if err := a.logs.flush(ctx); err != nil && !errors.Is(err, errLost) {
		log.WarnContext(ctx, "build log", "err", err)
	}
	err := s.inTx(ctx, func(tx pgx.Tx, q *db.Queries) error {
		newJob, err := s.enqueue(ctx, tx, b.ID, s.cfg.RetryDelay)
		if err != nil {
			return err
		}
		if _, err := q.RequeueBuild(ctx, db.RequeueBuildParams{ID: b.ID, JobID: jobID, NewJobID: pgtype.Int8{Int64: newJob, Valid: true}}); err != nil {
			if errors.Is(err, pgx.ErrNoRows) {
				return errLost
			}
			return fmt.Errorf("builds: requeue: %w", err)
		}
		return nil
	})
	if errors.Is(err, errLost) {
		return nil
	}
	return err
}

// auditBuild records a build's end: the audit log, and Config.OnEnd.
func (s *Service) auditBuild(ctx context.Context, b db.Build, status, msg string) {
	if s.cfg.OnEnd != nil {
		start, end := b.CreatedAt, s.now()
		if b.StartedAt.Valid {
			start = b.StartedAt.Time
		}
		if b.FinishedAt.Valid {
			end = b.FinishedAt.Time
		}
		s.cfg.OnEnd(status, max(end.Sub(start), 0))
	}
	if s.audit == nil {
		return
	}
	ev := service.AuditEvent{ResourceType: "build", ResourceID: ID(b.ID), Action: "build." + status,
		Metadata: map[string]any{"template": b.TemplateName}}
	switch status {
	case StatusFailed:
		ev.Status, ev.Metadata["error"] = service.AuditError, msg
	case StatusCancelled:
		ev.Status = service.AuditWarning
	}
	if b.TeamID == store.PlatformTeamID {
		ev.Scope = service.ScopeAdmin
	}
	s.audit.RecordAfter(ctx, idOf[wireid.KindTeam](b.TeamID), service.SystemActor, ev)
}

// classify turns an error of the sandbox service met at a step into a
// build failure (the recipe's fault: not retried) or leaves it as an
// infrastructure error (retried).
func classify(err error, step, line int) error {
	if err == nil {
		return nil
	}
	if errdefs.IsInvalid(err) || errdefs.IsQuota(err) || errdefs.IsForbidden(err) || errdefs.IsInsufficientStorage(err) {
		return &stepError{step: step, line: line, msg: service.PublicText(err)}
	}
	return err
}
