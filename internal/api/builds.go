package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/builds"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Template builds (package builds): a team's owners and admins build the
// team's templates under /v1/templates/{name}/builds; platform admins build
// public templates under /v1/admin/builds. Any member reads a team's
// builds and logs.

// registerBuilds registers the template and build routes.
func (s *Server) registerBuilds() {
	s.handle("GET /v1/templates", s.authed(s.listSnapshots))
	s.handle("GET /v1/templates/{name}", s.authed(s.getSnapshot))
	s.handle("DELETE /v1/templates/{name}", s.authed(s.deleteTemplate))
	s.handle("POST /v1/templates/{name}/builds", s.authed(s.teamBuild(s.createBuild)))
	s.handle("GET /v1/templates/{name}/builds", s.authed(s.teamBuild(s.listBuilds)))
	s.handle("GET /v1/templates/{name}/builds/{id}", s.authed(s.teamBuild(s.getBuild)))
	s.handle("POST /v1/templates/{name}/builds/{id}/cancel", s.authed(s.teamBuild(s.cancelBuild)))
	s.handle("GET /v1/templates/{name}/builds/{id}/logs", s.authed(s.teamBuild(s.buildLogs)))
	s.handle("GET /v1/templates/{name}/builds/{id}/logs/stream", s.authed(s.teamBuild(s.streamBuildLogs)))
	s.handle("POST /v1/admin/builds", s.adminAuthed(s.adminBuild(s.createBuild)))
	s.handle("GET /v1/admin/builds", s.adminAuthed(s.adminBuild(s.listBuilds)))
	s.handle("GET /v1/admin/builds/{id}", s.adminAuthed(s.adminBuild(s.getBuild)))
	s.handle("POST /v1/admin/builds/{id}/cancel", s.adminAuthed(s.adminBuild(s.cancelBuild)))
	s.handle("GET /v1/admin/builds/{id}/logs", s.adminAuthed(s.adminBuild(s.buildLogs)))
}

// buildScope is where a build route acts: a team's template, or the
// platform's templates.
type buildScope struct {
	platform bool
	template string // the path's template name ("" under /v1/admin)
}

type buildHandler func(w http.ResponseWriter, r *http.Request, p service.Principal, sc buildScope)

func (s *Server) teamBuild(h buildHandler) handler {
	return func(w http.ResponseWriter, r *http.Request, p service.Principal) {
		h(w, r, p, buildScope{template: r.PathValue("name")})
	}
}

func (s *Server) adminBuild(h buildHandler) handler {
	return func(w http.ResponseWriter, r *http.Request, p service.Principal) {
		h(w, r, p, buildScope{platform: true})
	}
}

type buildStepJSON struct {
	Step     int32  `json:"step"`
	Line     int32  `json:"line"`
	Kind     string `json:"kind"`
	Text     string `json:"text"`
	Status   string `json:"status"`
	ExitCode *int32 `json:"exit_code,omitempty"`
}

type buildJSON struct {
	// ID is "bld-" and 32 hex digits.
	ID       string `json:"id"`
	Template string `json:"template"`
	Public   bool   `json:"public"`
	Status   string `json:"status"`
	Kind     string `json:"kind"`
	Recipe   string `json:"recipe"`
	VCPUs    int32  `json:"vcpus"`
	MemoryMB int32  `json:"memory_mb"`
	// CurrentStep of TotalSteps (0: none started).
	CurrentStep int32 `json:"current_step"`
	TotalSteps  int32 `json:"total_steps"`
	// FailedStep: 0 FROM, 1..total_steps a step, total_steps+1 the
	// finalization; FailedLine its recipe line.
	FailedStep *int32          `json:"failed_step,omitempty"`
	FailedLine *int32          `json:"failed_line,omitempty"`
	Error      string          `json:"error,omitempty"`
	Attempts   int32           `json:"attempts"`
	TemplateID string          `json:"template_id,omitempty"`
	LogCount   int64           `json:"log_count"`
	Steps      []buildStepJSON `json:"steps,omitempty"`
	CreatedAt  time.Time       `json:"created_at"`
	StartedAt  *time.Time      `json:"started_at,omitempty"`
	FinishedAt *time.Time      `json:"finished_at,omitempty"`
}

func int4(v pgtype.Int4) *int32 {
	if !v.Valid {
		return nil
	}
	return &v.Int32
}

func tstz(v pgtype.Timestamptz) *time.Time {
	if !v.Valid {
		return nil
	}
	return &v.Time
}

func buildOf(b db.Build, steps []db.BuildStep) buildJSON {
	out := buildJSON{ID: builds.ID(b.ID), Template: b.TemplateName, Public: b.TeamID == store.PlatformTeamID, Status: b.Status, Kind: b.Kind,
		Recipe: b.Recipe, VCPUs: b.VCPUs, MemoryMB: b.MemoryMB, CurrentStep: b.CurrentStep, TotalSteps: b.TotalSteps,
		FailedStep: int4(b.FailedStep), FailedLine: int4(b.FailedLine), Error: b.Error, Attempts: b.Attempts,
		TemplateID: wireid.Format(wireid.Template, b.TemplateID), LogCount: b.LogCount, CreatedAt: b.CreatedAt,
		StartedAt: tstz(b.StartedAt), FinishedAt: tstz(b.FinishedAt)}
	for _, st := range steps {
		out.Steps = append(out.Steps, buildStepJSON{Step: st.Step, Line: st.Line, Kind: st.Kind, Text: st.Text, Status: st.Status, ExitCode: int4(st.ExitCode)})
	}
	return out
}

type createBuildJSON struct {
	// Template names the template (under /v1/admin/builds only).
	Template string `json:"template,omitempty"`
	Recipe   string `json:"recipe"`
	VCPUs    int32  `json:"vcpus,omitempty"`
	MemoryMB int32  `json:"memory_mb,omitempty"`
}

// createBuild: JSON {"recipe", "vcpus"?, "memory_mb"?}, or multipart/form-data
// with those fields and the archive as the part "archive" → 202 with the
// queued build. An archive over the limit is 413.
func (s *Server) createBuild(w http.ResponseWriter, r *http.Request, p service.Principal, sc buildScope) {
	req, arc, err := s.readBuildRequest(w, r)
	if arc != nil {
		defer arc.close()
	}
	if err != nil {
		s.writeBuildError(w, r, err)
		return
	}
	name := sc.template
	if sc.platform {
		name = req.Template
	} else if req.Template != "" && req.Template != name {
		s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "template: the path names the template"})
		return
	}
	sub := builds.Submit{Template: name, Recipe: req.Recipe, VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, Platform: sc.platform}
	if arc != nil {
		sub.Archive, sub.ArchiveSize = arc.f, arc.size
	}
	b, err := s.builds.Submit(r.Context(), p, sub)
	if err != nil {
		s.writeBuildError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, buildOf(b.Build, b.Steps))
}

// writeBuildError is writeError with an archive's size refusal as 413.
func (s *Server) writeBuildError(w http.ResponseWriter, r *http.Request, err error) {
	if builds.IsTooLarge(err) {
		writeProblem(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("archive: over the limit of %d bytes", s.builds.MaxArchiveBytes()))
		return
	}
	s.writeError(w, r, err)
}

// spooled is an uploaded archive in a temporary file.
type spooled struct {
	f    *os.File
	size int64
}

func (a *spooled) close() {
	name := a.f.Name()
	a.f.Close()
	os.Remove(name)
}

var errArchiveTooLarge = fmt.Errorf("%w", builds.ErrArchiveTooLarge)

// readBuildRequest reads a build request: JSON, or multipart with the
// archive spooled to a temporary file (at most the limit: beyond it, 413).
func (s *Server) readBuildRequest(w http.ResponseWriter, r *http.Request) (createBuildJSON, *spooled, error) {
	var req createBuildJSON
	mt, params, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "multipart/form-data" {
		err := decode(r, w, &req)
		return req, nil, err
	}
	mr := multipart.NewReader(r.Body, params["boundary"])
	var arc *spooled
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return req, arc, &service.Error{Kind: service.ErrInvalid, Msg: "invalid multipart body"}
		}
		switch part.FormName() {
		case "archive":
			if arc != nil {
				return req, arc, &service.Error{Kind: service.ErrInvalid, Msg: "one archive per build"}
			}
			f, err := os.CreateTemp("", "capsule-build-archive-*")
			if err != nil {
				return req, nil, fmt.Errorf("api: spool archive: %w", err)
			}
			arc = &spooled{f: f}
			limit := s.builds.MaxArchiveBytes()
			n, err := io.Copy(f, io.LimitReader(part, limit+1))
			if err != nil {
				return req, arc, &service.Error{Kind: service.ErrInvalid, Msg: "archive: the upload broke off"}
			}
			if n > limit {
				return req, arc, errArchiveTooLarge
			}
			arc.size = n
		case "recipe", "template", "vcpus", "memory_mb":
			b, err := io.ReadAll(io.LimitReader(part, maxBody+1))
			if err != nil || len(b) > maxBody {
				return req, arc, &service.Error{Kind: service.ErrInvalid, Msg: part.FormName() + ": too large"}
			}
			v := string(b)
			switch part.FormName() {
			case "recipe":
				req.Recipe = v
			case "template":
				req.Template = v
			default:
				n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 32)
				if err != nil {
					return req, arc, &service.Error{Kind: service.ErrInvalid, Msg: part.FormName() + ": not a number"}
				}
				if part.FormName() == "vcpus" {
					req.VCPUs = int32(n)
				} else {
					req.MemoryMB = int32(n)
				}
			}
		default:
			return req, arc, &service.Error{Kind: service.ErrInvalid, Msg: fmt.Sprintf("unknown form field %q", part.FormName())}
		}
	}
	return req, arc, nil
}

// build reads the path's build, which must be of the path's template.
func (s *Server) build(ctx context.Context, p service.Principal, sc buildScope, wire string) (builds.Build, error) {
	id, err := wireid.Parse(wireid.Build, wire)
	if err != nil {
		return builds.Build{}, &service.Error{Kind: service.ErrNotFound, Msg: "build not found"}
	}
	b, err := s.builds.Get(ctx, p, id, sc.platform)
	if err != nil {
		return builds.Build{}, err
	}
	if !sc.platform && b.TemplateName != sc.template {
		return builds.Build{}, &service.Error{Kind: service.ErrNotFound, Msg: "build not found"}
	}
	return b, nil
}

// listBuilds: newest first, 100 at most; ?before=<build ID> pages.
func (s *Server) listBuilds(w http.ResponseWriter, r *http.Request, p service.Principal, sc buildScope) {
	var before *db.Build
	if c := r.URL.Query().Get("before"); c != "" {
		b, err := s.build(r.Context(), p, sc, c)
		if err != nil {
			s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "before: no such build"})
			return
		}
		before = &b.Build
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "limit: 1 to 100"})
			return
		}
		limit = n
	}
	items, err := s.builds.List(r.Context(), p, sc.template, sc.platform, limit, before)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]buildJSON, len(items))
	for i, b := range items {
		out[i] = buildOf(b, nil)
	}
	writeJSON(w, http.StatusOK, map[string]any{"builds": out})
}

func (s *Server) getBuild(w http.ResponseWriter, r *http.Request, p service.Principal, sc buildScope) {
	b, err := s.build(r.Context(), p, sc, r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, buildOf(b.Build, b.Steps))
}

// cancelBuild: a pending build ends cancelled at once, a running one within
// seconds (202 either way, with the build as it is); an ended one is 409.
func (s *Server) cancelBuild(w http.ResponseWriter, r *http.Request, p service.Principal, sc buildScope) {
	b, err := s.build(r.Context(), p, sc, r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	b, err = s.builds.Cancel(r.Context(), p, b.ID, sc.platform)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusAccepted, buildOf(b.Build, b.Steps))
}

type buildLogJSON struct {
	// Offset is the line's position (1, 2, …): ?offset=<the last one read>
	// reads on after it.
	Offset int64     `json:"offset"`
	Step   int32     `json:"step"`
	Stream string    `json:"stream"`
	Line   string    `json:"line"`
	Time   time.Time `json:"time"`
}

type buildLogsJSON struct {
	Lines []buildLogJSON `json:"lines"`
	// Status is the build's, so a poller knows when to stop.
	Status string `json:"status"`
	// Next is the offset to read on from.
	Next int64 `json:"next"`
}

func logLines(lines []builds.LogLine) []buildLogJSON {
	out := make([]buildLogJSON, len(lines))
	for i, l := range lines {
		out[i] = buildLogJSON{Offset: l.Offset, Step: l.Step, Stream: l.Stream, Line: l.Line, Time: l.Time}
	}
	return out
}

func logQuery(r *http.Request) (offset int64, limit int, err error) {
	q := r.URL.Query()
	if v := q.Get("offset"); v != "" {
		if offset, err = strconv.ParseInt(v, 10, 64); err != nil || offset < 0 {
			return 0, 0, &service.Error{Kind: service.ErrInvalid, Msg: "offset: a whole number ≥ 0"}
		}
	}
	limit = builds.MaxLogPage
	if v := q.Get("limit"); v != "" {
		if limit, err = strconv.Atoi(v); err != nil || limit < 1 || limit > builds.MaxLogPage {
			return 0, 0, &service.Error{Kind: service.ErrInvalid, Msg: fmt.Sprintf("limit: 1 to %d", builds.MaxLogPage)}
		}
	}
	return offset, limit, nil
}

// buildLogs: the log lines after ?offset (default 0), ?limit at most.
func (s *Server) buildLogs(w http.ResponseWriter, r *http.Request, p service.Principal, sc buildScope) {
	offset, limit, err := logQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	b, err := s.build(r.Context(), p, sc, r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	lines, b, err := s.builds.Logs(r.Context(), p, b.ID, sc.platform, offset, limit)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	next := offset
	if len(lines) > 0 {
		next = lines[len(lines)-1].Offset
	}
	writeJSON(w, http.StatusOK, buildLogsJSON{Lines: logLines(lines), Status: b.Status, Next: next})
}

// streamBuildLogs: the log as it is written, one JSON line (a log line)
// per line of the answer (application/x-ndjson), from ?offset on, until
// the build has ended and its log is drained.
func (s *Server) streamBuildLogs(w http.ResponseWriter, r *http.Request, p service.Principal, sc buildScope) {
	offset, _, err := logQuery(r)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	b, err := s.build(r.Context(), p, sc, r.PathValue("id"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	enc := json.NewEncoder(w)
	tick := time.NewTicker(300 * time.Millisecond)
	defer tick.Stop()
	for {
		lines, cur, err := s.builds.Logs(r.Context(), p, b.ID, sc.platform, offset, builds.MaxLogPage)
		if err != nil {
			return // the answer has started: the client sees it end
		}
		for _, l := range logLines(lines) {
			if enc.Encode(l) != nil {
				return
			}
			offset = l.Offset
		}
		if flusher != nil {
			flusher.Flush()
		}
		if len(lines) == 0 && builds.Finished(cur.Status) {
			return
		}
		if len(lines) == builds.MaxLogPage {
			continue
		}
		select {
		case <-r.Context().Done():
			return
		case <-tick.C:
		}
	}
}

// deleteTemplate deletes the team's template, refused (409) while a
// sandbox runs from it or a build of it is under way.
func (s *Server) deleteTemplate(w http.ResponseWriter, r *http.Request, p service.Principal) {
	name := r.PathValue("name")
	if err := s.builds.CheckTemplateUnused(r.Context(), p, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	if err := s.cfg.Sandboxes.DeleteSnapshot(r.Context(), p, name); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}
