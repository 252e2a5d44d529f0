package builds

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// MaxLogPage is the most log lines one Logs call returns.
const MaxLogPage = 1000

// Get returns a build of p's team (platform: of the platform team, for a
// platform admin); another team's is ErrNotFound.
func (s *Service) Get(ctx context.Context, p service.Principal, id pgtype.UUID, platform bool) (Build, error) {
	p = owner(p, platform)
	b, err := s.st.Queries().GetTeamBuild(ctx, db.GetTeamBuildParams{ID: id, TeamID: pg(p.TeamID)})
	if errors.Is(err, store.ErrNotFound) {
		return Build{}, &service.Error{Kind: service.ErrNotFound, Msg: "build not found"}
	}
	if err != nil {
		return Build{}, fmt.Errorf("builds: get: %w", err)
	}
	steps, err := s.st.Queries().ListBuildSteps(ctx, b.ID)
	if err != nil {
		return Build{}, fmt.Errorf("builds: steps: %w", err)
	}
	return Build{Build: b, Steps: steps}, nil
}

// List returns p's team's builds, newest first, of one template ("": all),
// limit at most (1..100), before a cursor (the last build of the previous
// page; zero: from the newest).
func (s *Service) List(ctx context.Context, p service.Principal, template string, platform bool, limit int, before *db.Build) ([]db.Build, error) {
	p = owner(p, platform)
	if limit <= 0 || limit > 100 {
		limit = 100
	}
	params := db.ListTeamBuildsParams{TeamID: pg(p.TeamID), TemplateName: template, MaxRows: int32(limit)}
	if before != nil {
		params.BeforeCreated = pgtype.Timestamptz{Time: before.CreatedAt, Valid: true}
		params.BeforeID = before.ID
	}
	rows, err := s.st.Queries().ListTeamBuilds(ctx, params)
	if err != nil {
		return nil, fmt.Errorf("builds: list: %w", err)
	}
	return rows, nil
}

// Cancel cancels a build of p's team: a pending one at once, a running
// one within seconds (its worker sees the request with its heartbeat). A
// build that ended is ErrConflict.
func (s *Service) Cancel(ctx context.Context, p service.Principal, id pgtype.UUID, platform bool) (Build, error) {
	if err := s.check(ctx, p, platform); err != nil {
		return Build{}, err
	}
	b, err := s.Get(ctx, p, id, platform)
	if err != nil {
		return Build{}, err
	}
	q := s.st.Queries()
	row, err := q.CancelPendingBuild(ctx, b.ID)
	if errors.Is(err, store.ErrNotFound) {
		row, err = q.RequestBuildCancel(ctx, b.ID)
	}
	if errors.Is(err, store.ErrNotFound) {
		return Build{}, &service.Error{Kind: service.ErrConflict, Msg: fmt.Sprintf("the build is %s", b.Status)}
	}
	if err != nil {
		return Build{}, fmt.Errorf("builds: cancel: %w", err)
	}
	if row.Status == StatusCancelled {
		s.auditBuild(ctx, row, StatusCancelled, "")
	}
	b.Build = row
	return b, nil
}

// LogLine is one line of a build's log.
type LogLine struct {
	// Offset is its position (1, 2, …): read on after it with offset = Offset.
	Offset int64
	Step   int32
	Stream string // stdout, stderr or system
	Line   string
	Time   time.Time
}

// Logs returns the lines of a build's log after offset (at most limit,
// 1..MaxLogPage), and the build (for its status).
func (s *Service) Logs(ctx context.Context, p service.Principal, id pgtype.UUID, platform bool, offset int64, limit int) ([]LogLine, Build, error) {
	b, err := s.Get(ctx, p, id, platform)
	if err != nil {
		return nil, Build{}, err
	}
	if offset < 0 {
		offset = 0
	}
	if limit <= 0 || limit > MaxLogPage {
		limit = MaxLogPage
	}
	rows, err := s.st.Queries().ReadBuildLogs(ctx, db.ReadBuildLogsParams{BuildID: b.ID, AfterSeq: offset, MaxRows: int32(limit)})
	if err != nil {
		return nil, Build{}, fmt.Errorf("builds: logs: %w", err)
	}
	out := make([]LogLine, len(rows))
	for i, r := range rows {
		out[i] = LogLine{Offset: r.Seq, Step: r.Step, Stream: r.Stream, Line: r.Line, Time: r.CreatedAt}
	}
	return out, b, nil
}

// Finished tells whether a status is final.
func Finished(status string) bool {
	return status == StatusSuccess || status == StatusFailed || status == StatusCancelled
}

// Depth is the queue's depth: builds pending and running (all replicas).
func (s *Service) Depth(ctx context.Context) (pending, running int64, err error) {
	r, err := s.st.Queries().CountActiveBuilds(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("builds: depth: %w", err)
	}
	return r.Pending, r.Running, nil
}

// CheckTemplateUnused refuses (ErrConflict) the deletion of p's team's
// template name while a live sandbox was created from it or a build of it
// is pending or running.
func (s *Service) CheckTemplateUnused(ctx context.Context, p service.Principal, name string) error {
	q := s.st.Queries()
	n, err := q.CountSandboxesOfTemplate(ctx, db.CountSandboxesOfTemplateParams{Template: name, TeamID: pg(p.TeamID)})
	if err != nil {
		return fmt.Errorf("builds: template use: %w", err)
	}
	if n > 0 {
		return &service.Error{Kind: service.ErrConflict, Msg: fmt.Sprintf("template %q is in use by %d sandboxes", name, n)}
	}
	active, err := q.TemplateBuildsActive(ctx, db.TemplateBuildsActiveParams{TeamID: pg(p.TeamID), TemplateName: name})
	if err != nil {
		return fmt.Errorf("builds: template use: %w", err)
	}
	if active {
		return &service.Error{Kind: service.ErrConflict, Msg: fmt.Sprintf("template %q has a build under way", name)}
	}
	return nil
}
