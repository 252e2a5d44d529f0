package builds

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"

	"github.com/capsulehq/capsule/internal/archive"
	"github.com/capsulehq/capsule/internal/errdefs"
	"github.com/capsulehq/capsule/internal/logctx"
	"github.com/capsulehq/capsule/internal/recipe"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Statuses of a build.
const (
	StatusPending   = "pending"
	StatusRunning   = "running"
	StatusSuccess   = "success"
	StatusFailed    = "failed"
	StatusCancelled = "cancelled"
)

// Defaults of Config.
const (
	DefaultWorkers           = 2
	DefaultMaxAttempts       = 2
	DefaultHeartbeatInterval = 2 * time.Second
	DefaultStaleAfter        = 30 * time.Second
	DefaultSweepInterval     = 10 * time.Second
	DefaultVCPUs             = 2
	DefaultMemoryMB          = 1024
	queueName                = "builds"
	chunkSize                = 1 << 20
	maxLogLine               = 16 << 10
)

// Config configures the build service.
type Config struct {
	Store *store.Store
	// Sandboxes is the sandbox service the builds run on.
	Sandboxes *service.Sandboxes
	// Workers is how many builds this replica runs at once (0: 2).
	Workers int
	// MaxArchiveBytes bounds an archive, uploaded and uncompressed (0: 1 GiB).
	MaxArchiveBytes int64
	// MaxAttempts is how many times a build is tried when its
	// infrastructure fails (0: 2).
	MaxAttempts int
	// HeartbeatInterval, StaleAfter, SweepInterval: see the package doc
	// (0: the defaults).
	HeartbeatInterval time.Duration
	StaleAfter        time.Duration
	SweepInterval     time.Duration
	// RetryDelay is how long a requeued build waits (0: 5 s).
	RetryDelay time.Duration
	// Audit records builds (nil: none).
	Audit *service.Audit
	// OnEnd, when set, is told of every build that ends (success, failed,
	// cancelled), on any path, with how long it took: from its start (its
	// submission when it never started) to its end. The control plane's
	// Prometheus histogram (telemetry.ControlPlane.ObserveBuild).
	OnEnd func(status string, took time.Duration)
	Log   *slog.Logger

	// guest replaces Sandboxes (tests that inject faults).
	guest guest
}

// Service submits, runs and reports template builds. Start it to work
// builds on this replica; an unstarted Service still accepts builds.
type Service struct {
	cfg     Config
	st      *store.Store
	river   *river.Client[pgx.Tx]
	guest   guest
	sbx     *service.Sandboxes
	log     *slog.Logger
	audit   *service.Audit
	sleep   func(context.Context, time.Duration) error
	started atomic.Bool
	now     func() time.Time
	maxArc  int64
}

// New makes the service and its River client (not started).
func New(cfg Config) (*Service, error) {
	if cfg.Store == nil {
		return nil, errors.New("builds: no store")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.MaxArchiveBytes <= 0 {
		cfg.MaxArchiveBytes = archive.DefaultMaxBytes
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = DefaultMaxAttempts
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if cfg.StaleAfter <= 0 {
		cfg.StaleAfter = DefaultStaleAfter
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = DefaultSweepInterval
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	s := &Service{cfg: cfg, st: cfg.Store, sbx: cfg.Sandboxes, log: cfg.Log.With("component", "builds"), audit: cfg.Audit,
		sleep: sleepCtx, now: time.Now, maxArc: cfg.MaxArchiveBytes}
	s.guest = cfg.guest
	if s.guest == nil {
		if cfg.Sandboxes == nil {
			return nil, errors.New("builds: no sandbox service")
		}
		s.guest = serviceGuest{cfg.Sandboxes}
	}
	workers := river.NewWorkers()
	river.AddWorker(workers, &buildWorker{s: s})
	river.AddWorker(workers, &sweepWorker{s: s})
	rc, err := river.NewClient(riverpgxv5.New(cfg.Store.Pool()), &river.Config{
		Queues:  map[string]river.QueueConfig{queueName: {MaxWorkers: cfg.Workers}, river.QueueDefault: {MaxWorkers: 1}},
		Workers: workers,
		PeriodicJobs: []*river.PeriodicJob{river.NewPeriodicJob(river.PeriodicInterval(cfg.SweepInterval),
			func() (river.JobArgs, *river.InsertOpts) { return sweepArgs{}, nil }, &river.PeriodicJobOpts{RunOnStart: true, ID: "build_sweep"})},
		// A build's job is never retried by River (a retry is a new job:
		// see the package doc), and a running one is never "rescued" while
		// it may still run: the sweeper handles dead workers.
		MaxAttempts:          1,
		JobTimeout:           -1,
		RescueStuckJobsAfter: 24 * time.Hour,
		// River logs routine Info records (its producers' job counts)
		// every few seconds: only its warnings and errors are kept.
		Logger: logctx.AtLeast(cfg.Log, slog.LevelWarn).With("component", "river"),
	})
	if err != nil {
		return nil, fmt.Errorf("builds: river: %w", err)
	}
	s.river = rc
	return s, nil
}

// Start starts this replica's workers; they run until Stop or until ctx
// ends.
func (s *Service) Start(ctx context.Context) error {
	if err := s.river.Start(ctx); err != nil {
		return fmt.Errorf("builds: start: %w", err)
	}
	s.started.Store(true)
	return nil
}

// Stop stops the workers: running builds are interrupted (and requeued for
// another replica or the next start) when ctx ends first.
func (s *Service) Stop(ctx context.Context) error {
	if !s.started.Swap(false) {
		return nil
	}
	err := s.river.Stop(ctx)
	if err != nil {
		// Interrupt what still runs, and wait for it to hand its builds back.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if cerr := s.river.StopAndCancel(cctx); cerr != nil {
			return fmt.Errorf("builds: stop: %w", cerr)
		}
	}
	return nil
}

// Build is a build as its team sees it.
type Build struct {
	db.Build
	Steps []db.BuildStep
}

// ID is the wire ID of a build.
func ID(id pgtype.UUID) string { return wireid.Format(wireid.Build, id) }

// Submit is a request for a build.
type Submit struct {
	// Template is the name of the template the build makes (or replaces).
	Template string
	// Recipe is the recipe's text.
	Recipe string
	// Archive is the archive's content (nil: none); ArchiveSize its size.
	Archive     io.ReaderAt
	ArchiveSize int64
	// FilesHash is E2B's hash of the archive ("" none).
	FilesHash string
	// ArchiveID reuses an archive stored before (E2B's uploads).
	ArchiveID pgtype.UUID
	VCPUs     int32
	MemoryMB  int32
	// Platform: a platform admin's build of a public template (the
	// caller checked the admin).
	Platform bool
	// Metadata is kept with the build (E2B: its template ID).
	Metadata map[string]any
}

func (s *Service) check(ctx context.Context, p service.Principal, platform bool) error {
	if platform {
		return nil
	}
	if p.UserID.IsZero() {
		return &service.Error{Kind: service.ErrForbidden, Msg: "template builds take an owner's or admin's session or API key"}
	}
	m, err := s.st.Queries().GetMembership(ctx, db.GetMembershipParams{UserID: pg(p.UserID), TeamID: pg(p.TeamID)})
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return &service.Error{Kind: service.ErrForbidden, Msg: "not a member of the team"}
		}
		return fmt.Errorf("builds: membership: %w", err)
	}
	if m.Role != service.RoleOwner && m.Role != service.RoleAdmin {
		return &service.Error{Kind: service.ErrForbidden, Msg: "template builds are for the team's owners and admins"}
	}
	return nil
}

// owner is the team a build acts for.
func owner(p service.Principal, platform bool) service.Principal {
	if platform {
		p.TeamID = idOf[wireid.KindTeam](store.PlatformTeamID)
	}
	return p
}

// ValidateTemplateName is the name check of a build's template.
func ValidateTemplateName(name string) error {
	return service.ValidateSnapshotName(name, nil)
}

// Submit validates a build (the recipe, the archive, the FROM template)
// and queues it. Bad input is ErrInvalid (archive.ErrTooLarge for an
// archive over the limit: the API's 413) and queues nothing.
func (s *Service) Submit(ctx context.Context, p service.Principal, req Submit) (Build, error) {
	if err := s.check(ctx, p, req.Platform); err != nil {
		return Build{}, err
	}
	p = owner(p, req.Platform)
	if err := ValidateTemplateName(req.Template); err != nil {
		return Build{}, err
	}
	if s.sbx != nil {
		if builtin, err := s.sbx.BuiltinTemplates(ctx); err == nil {
			if err := service.ValidateSnapshotName(req.Template, builtin); err != nil {
				return Build{}, err
			}
		}
	}
	r, err := recipe.Parse(req.Recipe)
	if err != nil {
		return Build{}, &service.Error{Kind: service.ErrInvalid, Msg: "recipe: " + err.Error(), Err: err}
	}
	if s.sbx != nil {
		if _, err := s.sbx.LookupTemplate(ctx, p, r.From); err != nil {
			if errdefs.IsNotFound(err) {
				return Build{}, &service.Error{Kind: service.ErrInvalid, Msg: fmt.Sprintf("recipe: line %d: FROM: template %q not found", r.FromLine, r.From)}
			}
			return Build{}, err
		}
	}
	hasArchive := req.Archive != nil || req.ArchiveID.Valid
	if r.NeedsArchive() && !hasArchive {
		return Build{}, &service.Error{Kind: service.ErrInvalid, Msg: "recipe: COPY needs an uploaded archive (tar, tar.gz or zip)"}
	}
	vcpus, mem, err := shape(req)
	if err != nil {
		return Build{}, err
	}
	meta, err := json.Marshal(orEmpty(req.Metadata))
	if err != nil {
		return Build{}, fmt.Errorf("builds: metadata: %w", err)
	}
	var out Build
	err = s.inTx(ctx, func(tx pgx.Tx, q *db.Queries) error {
		archiveID := req.ArchiveID
		if req.Archive != nil {
			a, err := s.storeArchive(ctx, q, pg(p.TeamID), req.Archive, req.ArchiveSize, req.FilesHash)
			if err != nil {
				return err
			}
			archiveID = a.ID
		}
		kind := store.TemplateImage
		if r.Healthcheck != nil {
			kind = store.TemplateSnapshot
		}
		b, err := q.InsertBuild(ctx, db.InsertBuildParams{
			ID: store.NewUUID(), TeamID: pg(p.TeamID), TemplateName: req.Template, Recipe: req.Recipe, Kind: kind,
			VCPUs: vcpus, MemoryMB: mem, TotalSteps: int32(len(r.Steps)), ArchiveID: archiveID,
			MaxAttempts: int32(s.cfg.MaxAttempts), Metadata: meta, CreatedBy: pg(p.UserID),
		})
		if err != nil {
			return fmt.Errorf("builds: insert: %w", err)
		}
		for i, st := range r.Steps {
			if err := q.InsertBuildStep(ctx, db.InsertBuildStepParams{BuildID: b.ID, Step: int32(i + 1), Line: int32(st.Line),
				Kind: string(st.Kind), Text: truncate(st.Text, 4096)}); err != nil {
				return fmt.Errorf("builds: insert step: %w", err)
			}
		}
		jobID, err := s.enqueue(ctx, tx, b.ID, 0)
		if err != nil {
			return err
		}
		b.JobID = pgtype.Int8{Int64: jobID, Valid: true}
		if err := q.SetBuildJob(ctx, db.SetBuildJobParams{ID: b.ID, JobID: b.JobID}); err != nil {
			return fmt.Errorf("builds: set job: %w", err)
		}
		if s.audit != nil {
			ev := service.AuditEvent{ResourceType: "build", ResourceID: ID(b.ID), Action: "build.create",
				Metadata: map[string]any{"template": req.Template, "kind": kind}}
			if req.Platform {
				ev.Scope = service.ScopeAdmin
			}
			if err := s.audit.Record(ctx, q, p.TeamID, p.Actor(), ev); err != nil {
				return err
			}
		}
		out.Build = b
		return nil
	})
	if err != nil {
		return Build{}, err
	}
	out.Steps, err = s.st.Queries().ListBuildSteps(ctx, out.ID)
	if err != nil {
		return Build{}, fmt.Errorf("builds: steps: %w", err)
	}
	s.log.InfoContext(ctx, "build queued", "build", ID(out.ID), "team", p.TeamID.String(), "template", req.Template)
	return out, nil
}

// enqueue inserts the build job of a build in tx, available after delay.
func (s *Service) enqueue(ctx context.Context, tx pgx.Tx, id pgtype.UUID, delay time.Duration) (int64, error) {
	opts := &river.InsertOpts{Queue: queueName, MaxAttempts: 1}
	if delay > 0 {
		opts.ScheduledAt = time.Now().Add(delay)
	}
	res, err := s.river.InsertTx(ctx, tx, buildArgs{BuildID: ID(id)}, opts)
	if err != nil {
		return 0, fmt.Errorf("builds: enqueue: %w", err)
	}
	return res.Job.ID, nil
}

// inTx runs fn in a transaction, with the sqlc queries and the pgx
// transaction (for River's inserts).
func (s *Service) inTx(ctx context.Context, fn func(tx pgx.Tx, q *db.Queries) error) error {
	tx, err := s.st.Pool().Begin(ctx)
	if err != nil {
		return fmt.Errorf("builds: begin: %w", store.Classify(err))
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // after Commit: ErrTxClosed
	if err := fn(tx, db.New(tx)); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("builds: commit: %w", store.Classify(err))
	}
	return nil
}

// StoreArchive checks an archive and stores it for later builds of p's
// team (E2B's uploads), returning its ID.
func (s *Service) StoreArchive(ctx context.Context, p service.Principal, r io.ReaderAt, size int64, filesHash string) (pgtype.UUID, error) {
	var id pgtype.UUID
	err := s.inTx(ctx, func(_ pgx.Tx, q *db.Queries) error {
		a, err := s.storeArchive(ctx, q, pg(p.TeamID), r, size, filesHash)
		id = a.ID
		return err
	})
	return id, err
}

// FindArchive is the team's newest archive uploaded for an E2B files hash.
func (s *Service) FindArchive(ctx context.Context, p service.Principal, filesHash string) (pgtype.UUID, bool, error) {
	a, err := s.st.Queries().FindBuildArchiveByFilesHash(ctx, db.FindBuildArchiveByFilesHashParams{TeamID: pg(p.TeamID),
		FilesHash: pgtype.Text{String: filesHash, Valid: true}})
	if errors.Is(err, store.ErrNotFound) {
		return pgtype.UUID{}, false, nil
	}
	if err != nil {
		return pgtype.UUID{}, false, fmt.Errorf("builds: archive: %w", err)
	}
	return a.ID, true, nil
}

// MaxArchiveBytes is the archive size limit.
func (s *Service) MaxArchiveBytes() int64 { return s.maxArc }

// storeArchive normalizes an archive (internal/archive) and stores it,
// gzip-compressed, in chunks written as they fill (an archive is never
// held whole in memory).
func (s *Service) storeArchive(ctx context.Context, q *db.Queries, team pgtype.UUID, r io.ReaderAt, size int64, filesHash string) (db.BuildArchive, error) {
	if size > s.maxArc {
		return db.BuildArchive{}, &service.Error{Kind: service.ErrInvalid, Msg: fmt.Sprintf("archive: over the limit of %d bytes", s.maxArc), Err: archive.ErrTooLarge}
	}
	fh := pgtype.Text{String: filesHash, Valid: filesHash != ""}
	a, err := q.InsertBuildArchive(ctx, db.InsertBuildArchiveParams{TeamID: team, Sha256: make([]byte, 32), FilesHash: fh})
	if err != nil {
		return db.BuildArchive{}, fmt.Errorf("builds: insert archive: %w", err)
	}
	cw := newChunkWriter(ctx, q, a.ID)
	zw := gzip.NewWriter(cw)
	st, err := archive.Normalize(r, size, zw, archive.Limits{MaxBytes: s.maxArc})
	if err == nil {
		err = zw.Close()
	}
	if err == nil {
		err = cw.flush()
	}
	if err != nil {
		var ae *archive.Error
		switch {
		case errors.Is(err, archive.ErrTooLarge):
			return db.BuildArchive{}, &service.Error{Kind: service.ErrInvalid, Msg: fmt.Sprintf("archive: its content is over the limit of %d bytes", s.maxArc), Err: err}
		case errors.Is(err, archive.ErrUnknownFormat), errors.As(err, &ae):
			return db.BuildArchive{}, &service.Error{Kind: service.ErrInvalid, Msg: err.Error(), Err: err}
		}
		return db.BuildArchive{}, fmt.Errorf("builds: store archive: %w", err)
	}
	a, err = q.FinishBuildArchive(ctx, db.FinishBuildArchiveParams{ID: a.ID, Sha256: cw.h.Sum(nil), SizeBytes: cw.total, ContentBytes: st.Bytes})
	if err != nil {
		return db.BuildArchive{}, fmt.Errorf("builds: finish archive: %w", err)
	}
	return a, nil
}

// ErrArchiveTooLarge is an archive over the size limit.
var ErrArchiveTooLarge = archive.ErrTooLarge

// IsTooLarge tells an archive refused for its size (the API's 413).
func IsTooLarge(err error) bool { return errors.Is(err, archive.ErrTooLarge) }

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

func orEmpty(m map[string]any) map[string]any {
	if m == nil {
		return map[string]any{}
	}
	return m
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
