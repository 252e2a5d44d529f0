package capsule

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"strconv"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// TemplateService manages the team's templates and builds them from
// recipes (Client.Templates). A template is a Snapshot: a built template
// with a START command is a memory snapshot (its processes run in every
// sandbox created from it), one without is an image that boots.
type TemplateService struct{ c *Client }

// List returns the templates the team can use: its own and the public
// ones.
func (s *TemplateService) List(ctx context.Context) ([]Snapshot, error) {
	var out struct {
		Snapshots []wire.Snapshot `json:"snapshots"`
	}
	resp, err := s.c.wire.ListTemplates(ctx)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	list := make([]Snapshot, len(out.Snapshots))
	for i, w := range out.Snapshots {
		list[i] = snapshotFrom(w)
	}
	return list, nil
}

// Get returns the template name.
func (s *TemplateService) Get(ctx context.Context, name string) (Snapshot, error) {
	var out wire.Snapshot
	resp, err := s.c.wire.GetTemplate(ctx, name)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Snapshot{}, err
	}
	return snapshotFrom(out), nil
}

// Delete removes the team's template name (ErrConflict while sandboxes
// created from it run or a build of it is under way).
func (s *TemplateService) Delete(ctx context.Context, name string) error {
	resp, err := s.c.wire.DeleteTemplate(ctx, name)
	return decode(resp, err, http.StatusNoContent, nil)
}

// BuildOptions is a template build.
type BuildOptions struct {
	// Recipe is the recipe's text (FROM, RUN, COPY, ENV, WORKDIR, USER,
	// START, HEALTHCHECK: see the README).
	Recipe string
	// Context, when not nil, is the build context COPY reads from: a tar,
	// tar.gz or zip archive (ArchiveDir makes one of a directory). It is
	// read once: a build with a context is not retried by the client.
	Context io.Reader
	// VCPUs and MemoryMB size the build's sandbox (zero: the defaults).
	VCPUs, MemoryMB int
}

// Build is a template build.
type Build struct {
	ID       string `json:"id"`
	Template string `json:"template"`
	// Status is "pending", "running", "success", "failed" or
	// "cancelled".
	Status string `json:"status"`
	// Kind is the template it makes: "snapshot" or "image".
	Kind        string `json:"kind"`
	Recipe      string `json:"recipe"`
	CurrentStep int    `json:"current_step"`
	TotalSteps  int    `json:"total_steps"`
	Attempts    int    `json:"attempts"`
	// Error, FailedStep and FailedLine say why a failed build failed.
	Error      string     `json:"error,omitempty"`
	FailedStep int        `json:"failed_step,omitempty"`
	FailedLine int        `json:"failed_line,omitempty"`
	TemplateID string     `json:"template_id,omitempty"`
	LogCount   int        `json:"log_count"`
	CreatedAt  time.Time  `json:"created_at"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
}

// Done reports whether the build has ended.
func (b Build) Done() bool {
	return b.Status == "success" || b.Status == "failed" || b.Status == "cancelled"
}

func buildFrom(w wire.Build) Build {
	return Build{ID: w.Id, Template: w.Template, Status: string(w.Status), Kind: string(w.Kind), Recipe: w.Recipe,
		CurrentStep: w.CurrentStep, TotalSteps: w.TotalSteps, Attempts: w.Attempts, Error: deref(w.Error),
		FailedStep: deref(w.FailedStep), FailedLine: deref(w.FailedLine), TemplateID: deref(w.TemplateId),
		LogCount: w.LogCount, CreatedAt: w.CreatedAt, StartedAt: w.StartedAt, FinishedAt: w.FinishedAt}
}

// BuildLogLine is a line of a build's log.
type BuildLogLine struct {
	// Offset numbers the build's lines from 1, without gaps.
	Offset int       `json:"offset"`
	Step   int       `json:"step"`
	Stream string    `json:"stream"`
	Line   string    `json:"line"`
	Time   time.Time `json:"time"`
}

// Build queues a build of the team's template name (it replaces the
// template when it succeeds).
func (s *TemplateService) Build(ctx context.Context, name string, opts BuildOptions) (Build, error) {
	return submitBuild(opts, "",
		func(body wire.CreateBuildRequest) (*http.Response, error) {
			return s.c.wire.CreateBuild(ctx, name, body)
		},
		func(contentType string, body io.Reader) (*http.Response, error) {
			return s.c.wire.CreateBuildWithBody(ctx, name, contentType, body)
		})
}

// submitBuild sends a build request: as JSON without a build context, as
// a multipart form streaming the archive with one. template, when not "",
// names the template in the body (the admin route has no name in its
// path).
func submitBuild(opts BuildOptions, template string, viaJSON func(wire.CreateBuildRequest) (*http.Response, error),
	viaForm func(contentType string, body io.Reader) (*http.Response, error)) (Build, error) {
	var out wire.Build
	if opts.Context == nil {
		resp, err := viaJSON(wire.CreateBuildRequest{Recipe: opts.Recipe, Template: ptrOrNil(template),
			Vcpus: ptrOrNil(opts.VCPUs), MemoryMb: ptrOrNil(opts.MemoryMB)})
		if err := decode(resp, err, http.StatusAccepted, &out); err != nil {
			return Build{}, err
		}
		return buildFrom(out), nil
	}
	// The archive streams through a pipe: nothing holds it in memory.
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		pw.CloseWithError(writeBuildForm(mw, template, opts))
	}()
	defer pr.Close()
	resp, err := viaForm(mw.FormDataContentType(), pr)
	if err := decode(resp, err, http.StatusAccepted, &out); err != nil {
		return Build{}, err
	}
	return buildFrom(out), nil
}

func writeBuildForm(mw *multipart.Writer, template string, opts BuildOptions) error {
	fields := [][2]string{{"recipe", opts.Recipe}}
	if template != "" {
		fields = append(fields, [2]string{"template", template})
	}
	if opts.VCPUs > 0 {
		fields = append(fields, [2]string{"vcpus", strconv.Itoa(opts.VCPUs)})
	}
	if opts.MemoryMB > 0 {
		fields = append(fields, [2]string{"memory_mb", strconv.Itoa(opts.MemoryMB)})
	}
	for _, f := range fields {
		if err := mw.WriteField(f[0], f[1]); err != nil {
			return err
		}
	}
	part, err := mw.CreateFormFile("archive", "context")
	if err != nil {
		return err
	}
	if _, err := io.Copy(part, opts.Context); err != nil {
		return err
	}
	return mw.Close()
}

// GetBuild returns build id of template name.
func (s *TemplateService) GetBuild(ctx context.Context, name, id string) (Build, error) {
	var out wire.Build
	resp, err := s.c.wire.GetBuild(ctx, name, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Build{}, err
	}
	return buildFrom(out), nil
}

// ListBuilds returns the builds of template name, newest first.
func (s *TemplateService) ListBuilds(ctx context.Context, name string) ([]Build, error) {
	var out wire.BuildList
	resp, err := s.c.wire.ListBuilds(ctx, name, nil)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	list := make([]Build, len(out.Builds))
	for i, w := range out.Builds {
		list[i] = buildFrom(w)
	}
	return list, nil
}

// CancelBuild cancels build id of template name (a build that has ended
// stays as it is).
func (s *TemplateService) CancelBuild(ctx context.Context, name, id string) (Build, error) {
	var out wire.Build
	resp, err := s.c.wire.CancelBuild(ctx, name, id)
	if err := decode(resp, err, http.StatusAccepted, &out); err != nil {
		return Build{}, err
	}
	return buildFrom(out), nil
}

// FollowBuildLog calls fn with each line of build id's log after offset
// (0: from the start), as the build writes them, until the build has
// ended and its log is drained; then it returns the build. A broken
// stream is resumed from the last line seen.
func (s *TemplateService) FollowBuildLog(ctx context.Context, name, id string, offset int, fn func(BuildLogLine)) (Build, error) {
	for {
		last, err := s.followOnce(ctx, name, id, offset, fn)
		if ctx.Err() != nil {
			return Build{}, ctx.Err()
		}
		b, gerr := s.GetBuild(ctx, name, id)
		if gerr != nil {
			return Build{}, gerr
		}
		// The stream ends cleanly once the build has ended and its log
		// is drained.
		if err == nil && b.Done() {
			return b, nil
		}
		if err != nil && last == offset {
			// No progress over a broken stream: back off before retrying.
			if serr := sleepCtx(ctx, time.Second); serr != nil {
				return Build{}, serr
			}
		}
		offset = last
	}
}

// followOnce reads the log stream once; it returns the last offset seen.
func (s *TemplateService) followOnce(ctx context.Context, name, id string, offset int, fn func(BuildLogLine)) (int, error) {
	o := offset
	resp, err := s.c.wire.StreamBuildLogs(ctx, name, id, &wire.StreamBuildLogsParams{Offset: &o})
	if err != nil {
		return offset, fmt.Errorf("capsule: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return offset, errorFrom(resp)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		var l BuildLogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return offset, fmt.Errorf("capsule: build log: %w", err)
		}
		if l.Offset <= offset {
			continue
		}
		offset = l.Offset
		fn(l)
	}
	return offset, sc.Err()
}
