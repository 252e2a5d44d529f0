package builds

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/recipe"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Builds in two calls, as E2B's SDK makes them (internal/e2bapi): Prepare
// announces a build (status waiting, no recipe, no job) and Trigger gives
// it its recipe and queues it. A COPY step of such a build may take its
// files from an archive of its own (CopyArchives), as each of E2B's COPY
// steps uploads its own.

// StatusWaiting is a prepared build not yet triggered.
const StatusWaiting = "waiting"

// metaCopyArchives is the builds.metadata key of the per-step archives.
const metaCopyArchives = "copy_archives"

// Prepare records a waiting build of req.Template (its shape and
// metadata; no recipe yet).
func (s *Service) Prepare(ctx context.Context, p service.Principal, req Submit) (Build, error) {
	if err := s.check(ctx, p, req.Platform); err != nil {
		return Build{}, err
	}
	p = owner(p, req.Platform)
	if err := ValidateTemplateName(req.Template); err != nil {
		return Build{}, err
	}
	vcpus, mem, err := shape(req)
	if err != nil {
		return Build{}, err
	}
	meta, err := json.Marshal(orEmpty(req.Metadata))
	if err != nil {
		return Build{}, fmt.Errorf("builds: metadata: %w", err)
	}
	var b db.Build
	err = s.inTx(ctx, func(_ pgx.Tx, q *db.Queries) error {
		var err error
		b, err = q.InsertBuild(ctx, db.InsertBuildParams{ID: store.NewUUID(), TeamID: pg(p.TeamID), TemplateName: req.Template,
			Kind: store.TemplateImage, VCPUs: vcpus, MemoryMB: mem, MaxAttempts: int32(s.cfg.MaxAttempts), Metadata: meta,
			CreatedBy: pg(p.UserID)})
		if err != nil {
			return fmt.Errorf("builds: insert: %w", err)
		}
		_, err = q.SweepBuild(ctx, db.SweepBuildParams{ID: b.ID, Status: StatusWaiting})
		b.Status = StatusWaiting
		return err
	})
	if err != nil {
		return Build{}, err
	}
	return Build{Build: b}, nil
}

// Trigger gives a waiting build of p's team its recipe (Errors: ErrInvalid,
// nothing queued) and queues it. copyArchives are the archives of COPY
// steps (by step number, 1-based) that have their own; metadata replaces
// the build's.
func (s *Service) Trigger(ctx context.Context, p service.Principal, id pgtype.UUID, text string, copyArchives map[int]pgtype.UUID, metadata map[string]any) (Build, error) {
	if err := s.check(ctx, p, false); err != nil {
		return Build{}, err
	}
	r, err := recipe.Parse(text)
	if err != nil {
		return Build{}, &service.Error{Kind: service.ErrInvalid, Msg: "recipe: " + err.Error(), Err: err}
	}
	if metadata == nil {
		metadata = map[string]any{}
	}
	arcs := map[string]string{}
	for n, a := range copyArchives {
		if n < 1 || n > len(r.Steps) || r.Steps[n-1].Kind != recipe.Copy {
			return Build{}, fmt.Errorf("builds: archive for step %d, which is no COPY", n)
		}
		arcs[strconv.Itoa(n)] = uuidString(a)
	}
	metadata[metaCopyArchives] = arcs
	meta, err := json.Marshal(metadata)
	if err != nil {
		return Build{}, fmt.Errorf("builds: metadata: %w", err)
	}
	kind := store.TemplateImage
	if r.Healthcheck != nil {
		kind = store.TemplateSnapshot
	}
	var out db.Build
	err = s.inTx(ctx, func(tx pgx.Tx, q *db.Queries) error {
		b, err := q.TriggerBuild(ctx, db.TriggerBuildParams{ID: id, TeamID: pg(p.TeamID), Recipe: text, Kind: kind,
			TotalSteps: int32(len(r.Steps)), Metadata: meta})
		if errors.Is(err, store.ErrNotFound) {
			return &service.Error{Kind: service.ErrNotFound, Msg: "build not found, or not waiting"}
		}
		if err != nil {
			return fmt.Errorf("builds: trigger: %w", err)
		}
		for i, st := range r.Steps {
			if err := q.InsertBuildStep(ctx, db.InsertBuildStepParams{BuildID: b.ID, Step: int32(i + 1), Line: int32(st.Line),
				Kind: string(st.Kind), Text: truncate(st.Text, 4096)}); err != nil {
				return fmt.Errorf("builds: insert step: %w", err)
			}
		}
		job, err := s.enqueue(ctx, tx, b.ID, 0)
		if err != nil {
			return err
		}
		b.JobID = pgtype.Int8{Int64: job, Valid: true}
		if err := q.SetBuildJob(ctx, db.SetBuildJobParams{ID: b.ID, JobID: b.JobID}); err != nil {
			return fmt.Errorf("builds: set job: %w", err)
		}
		out = b
		return nil
	})
	if err != nil {
		return Build{}, err
	}
	s.log.InfoContext(ctx, "build queued", "build", ID(out.ID), "template", out.TemplateName)
	return Build{Build: out}, nil
}

// FailWaiting ends a waiting build of p's team as failed at step (0: its
// base) without running it.
func (s *Service) FailWaiting(ctx context.Context, p service.Principal, id pgtype.UUID, step int, msg string) (Build, error) {
	b, err := s.st.Queries().FailWaitingBuild(ctx, db.FailWaitingBuildParams{ID: id, TeamID: pg(p.TeamID), Error: msg,
		FailedStep: pgtype.Int4{Int32: int32(step), Valid: true}})
	if errors.Is(err, store.ErrNotFound) {
		return Build{}, &service.Error{Kind: service.ErrNotFound, Msg: "build not found, or not waiting"}
	}
	if err != nil {
		return Build{}, fmt.Errorf("builds: fail: %w", err)
	}
	s.auditBuild(ctx, b, StatusFailed, msg)
	return Build{Build: b}, nil
}

// MetaTags is the builds.metadata key of the tags a build's template
// version gets (E2B's "name:tag" and tags; none: "default").
const MetaTags = "tags"

// Tags are the tags a build's version gets (nil: "default").
func Tags(b db.Build) []string {
	var m struct {
		Tags []string `json:"tags"`
	}
	if json.Unmarshal(b.Metadata, &m) != nil {
		return nil
	}
	return m.Tags
}

// copyArchive is the archive of COPY step n of a build, if it has its own.
func copyArchive(b db.Build, n int) (pgtype.UUID, bool) {
	var m map[string]json.RawMessage
	if json.Unmarshal(b.Metadata, &m) != nil {
		return pgtype.UUID{}, false
	}
	var arcs map[string]string
	if json.Unmarshal(m[metaCopyArchives], &arcs) != nil {
		return pgtype.UUID{}, false
	}
	s, ok := arcs[strconv.Itoa(n)]
	if !ok {
		return pgtype.UUID{}, false
	}
	var id pgtype.UUID
	if id.Scan(s) != nil {
		return pgtype.UUID{}, false
	}
	return id, true
}

func uuidString(u pgtype.UUID) string {
	v, _ := u.Value()
	s, _ := v.(string)
	return s
}

// shape checks a build's shape and fills in the defaults.
func shape(req Submit) (int32, int32, error) {
	vcpus, mem := req.VCPUs, req.MemoryMB
	if vcpus == 0 {
		vcpus = DefaultVCPUs
	}
	if mem == 0 {
		mem = DefaultMemoryMB
	}
	if vcpus < 1 || vcpus > 64 || mem < 128 || mem > 256<<10 {
		return 0, 0, &service.Error{Kind: service.ErrInvalid, Msg: "vcpus: 1 to 64; memory_mb: 128 to 262144"}
	}
	return vcpus, mem, nil
}
