package builds

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/riverqueue/river"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// sweepArgs is the sweeper's periodic job.
type sweepArgs struct{}

func (sweepArgs) Kind() string { return "build_sweep" }

func (sweepArgs) InsertOpts() river.InsertOpts {
	return river.InsertOpts{MaxAttempts: 1, UniqueOpts: river.UniqueOpts{ByPeriod: time.Second}}
}

type sweepWorker struct {
	river.WorkerDefaults[sweepArgs]
	s *Service
}

func (w *sweepWorker) Work(ctx context.Context, _ *river.Job[sweepArgs]) error {
	_, err := w.s.Sweep(ctx)
	return err
}

// Sweep hands back the builds nothing runs any more: running builds whose
// heartbeat is older than StaleAfter (their worker or its control plane
// died) and pending or running builds whose job River dropped. Each is
// requeued with a new job while it has attempts left, else failed; the
// sandbox of the dead attempt is destroyed. It returns how many builds it
// handled. River's leader runs it every SweepInterval.
func (s *Service) Sweep(ctx context.Context) (int, error) {
	var swept []db.Build
	before := s.now().Add(-s.cfg.StaleAfter)
	err := s.inTx(ctx, func(tx pgx.Tx, q *db.Queries) error {
		stale, err := q.StaleBuilds(ctx, pgtype.Timestamptz{Time: before, Valid: true})
		if err != nil {
			return fmt.Errorf("builds: sweep: %w", err)
		}
		orphans, err := orphanedBuilds(ctx, tx, before)
		if err != nil {
			return err
		}
		seen := map[[16]byte]bool{}
		for _, b := range append(stale, orphans...) {
			if seen[b.ID.Bytes] {
				continue
			}
			seen[b.ID.Bytes] = true
			why := "its worker stopped"
			if b.Status == StatusPending {
				why = "its job was lost"
			}
			p := db.SweepBuildParams{ID: b.ID, Status: StatusFailed,
				Error: fmt.Sprintf("build failed after %d attempts: %s", b.Attempts, why)}
			if b.Status == StatusPending || b.Attempts < b.MaxAttempts {
				job, err := s.enqueue(ctx, tx, b.ID, 0)
				if err != nil {
					return err
				}
				p.Status, p.JobID, p.Error = StatusPending, pgtype.Int8{Int64: job, Valid: true}, ""
			}
			row, err := q.SweepBuild(ctx, p)
			if err != nil {
				return fmt.Errorf("builds: sweep %s: %w", ID(b.ID), err)
			}
			// The dead attempt's sandbox (the row has forgotten it).
			row.SandboxID = b.SandboxID
			swept = append(swept, row)
			s.log.WarnContext(ctx, "build swept", "build", ID(b.ID), "why", why, "status", row.Status, "attempts", b.Attempts)
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	for _, b := range swept {
		s.destroySandboxes(bg, b)
		if b.Status == StatusFailed {
			s.auditBuild(bg, b, StatusFailed, b.Error)
		}
	}
	return len(swept), nil
}

// orphanedBuilds are the pending or running builds (older than before)
// whose job is gone or ended, locked. River's table is not in sqlc's
// schema (River migrates it), hence the hand-written query.
func orphanedBuilds(ctx context.Context, tx pgx.Tx, before time.Time) ([]db.Build, error) {
	rows, err := tx.Query(ctx, `
		SELECT b.* FROM builds b
		WHERE b.status IN ('pending', 'running') AND b.created_at < $1
		  AND (b.status = 'pending' OR b.heartbeat_at IS NULL OR b.heartbeat_at >= $1)
		  AND NOT EXISTS (SELECT 1 FROM river_job j WHERE j.id = b.job_id
		                  AND j.state IN ('available', 'scheduled', 'retryable', 'running', 'pending'))
		FOR UPDATE OF b SKIP LOCKED`, before)
	if err != nil {
		return nil, fmt.Errorf("builds: orphaned builds: %w", err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowToStructByPos[db.Build])
	if err != nil {
		return nil, fmt.Errorf("builds: orphaned builds: %w", err)
	}
	return out, nil
}

// destroySandboxes destroys a build's sandboxes that still live: the one
// recorded and any carrying its ID in their metadata (made just before a
// crash, before it could be recorded).
func (s *Service) destroySandboxes(ctx context.Context, b db.Build) {
	ids := map[[16]byte]pgtype.UUID{}
	if b.SandboxID.Valid {
		ids[b.SandboxID.Bytes] = b.SandboxID
	}
	rows, err := s.st.Pool().Query(ctx, `SELECT id FROM sandboxes
		WHERE team_id = $1 AND metadata->>'`+MetadataKey+`' = $2 AND state NOT IN ('stopped', 'error')`, b.TeamID, ID(b.ID))
	if err == nil {
		found, cerr := pgx.CollectRows(rows, pgx.RowTo[pgtype.UUID])
		if cerr == nil {
			for _, id := range found {
				ids[id.Bytes] = id
			}
		}
	}
	p := service.Principal{TeamID: idOf[wireid.KindTeam](b.TeamID), UserID: idOf[wireid.KindUser](b.CreatedBy), ActorName: "build " + ID(b.ID)}
	for _, id := range ids {
		if err := s.guest.destroy(ctx, p, id); err != nil && !errors.Is(err, service.ErrNotFound) {
			s.log.ErrorContext(ctx, "destroy a swept build's sandbox", "build", ID(b.ID), "sandbox", service.ID(id), "err", err)
		}
	}
}
