package builds

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/errdefs"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/service/servicetest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// fakeGuest stands for the sandbox service in the queue's tests: it
// injects what the real one cannot produce on demand (a host that fails
// mid-build, a worker that dies). The real one runs in builds_vm_test.go.
type fakeGuest struct {
	st *store.Store
	mu sync.Mutex
	// createErrs are returned by the next creates, in order.
	createErrs []error
	// onExec decides a command's end (nil: exit 0); it may block on ctx.
	onExec    func(ctx context.Context, cmd service.ExecCommand, out func(string, []byte)) (service.ExecExit, error)
	created   []pgtype.UUID
	destroyed []pgtype.UUID
	cmds      []service.ExecCommand
	files     map[string][]byte
	running   int
	maxRun    int
}

func randomID() pgtype.UUID {
	u := pgtype.UUID{Valid: true}
	_, _ = rand.Read(u.Bytes[:])
	return u
}

func (g *fakeGuest) create(ctx context.Context, p service.Principal, req service.CreateSandbox) (pgtype.UUID, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.createErrs) > 0 {
		err := g.createErrs[0]
		g.createErrs = g.createErrs[1:]
		if err != nil {
			return pgtype.UUID{}, err
		}
	}
	id := randomID()
	g.created = append(g.created, id)
	g.running++
	g.maxRun = max(g.maxRun, g.running)
	return id, nil
}

func (g *fakeGuest) exec(ctx context.Context, p service.Principal, id pgtype.UUID, cmd service.ExecCommand, out func(string, []byte)) (service.ExecExit, error) {
	g.mu.Lock()
	g.cmds = append(g.cmds, cmd)
	f := g.onExec
	g.mu.Unlock()
	if f == nil {
		return service.ExecExit{}, nil
	}
	return f(ctx, cmd, out)
}

func (g *fakeGuest) writeFile(ctx context.Context, p service.Principal, id pgtype.UUID, path string, r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.files == nil {
		g.files = map[string][]byte{}
	}
	g.files[path] = b
	return nil
}

func (g *fakeGuest) destroy(ctx context.Context, p service.Principal, id pgtype.UUID) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.destroyed = append(g.destroyed, id)
	g.running--
	return nil
}

func (g *fakeGuest) publish(ctx context.Context, p service.Principal, req service.PublishTemplate) (pgtype.UUID, error) {
	t, err := g.st.Queries().UpsertTemplate(ctx, db.UpsertTemplateParams{TeamID: pg(p.TeamID), Name: req.Name, Kind: req.Kind,
		VCPUs: 1, MemoryMB: 128, Metadata: []byte(`{}`)})
	return t.Template.ID, err
}

// templateVersion: the fake has no template versions (no layer cache;
// TestLayerCacheInVMs tests it in real VMs).
func (g *fakeGuest) templateVersion(context.Context, service.Principal, string) (string, error) {
	return "", nil
}

func (g *fakeGuest) deleteTemplate(context.Context, service.Principal, string) error { return nil }

func (g *fakeGuest) snapshot() (created, destroyed int, cmds []service.ExecCommand) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.created), len(g.destroyed), append([]service.ExecCommand(nil), g.cmds...)
}

type env struct {
	svc *Service
	g   *fakeGuest
	p   service.Principal
	se  *servicetest.Env
}

func newEnv(t *testing.T, edit func(*Config)) *env {
	t.Helper()
	se := servicetest.New(t, "", "")
	p, _ := se.Account(t, "owner@example.com")
	g := &fakeGuest{st: se.Store}
	cfg := Config{Store: se.Store, Sandboxes: se.Sandboxes, guest: g, HeartbeatInterval: 100 * time.Millisecond,
		RetryDelay: time.Millisecond, SweepInterval: time.Hour, Audit: se.Audit}
	if edit != nil {
		edit(&cfg)
	}
	svc, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &env{svc: svc, g: g, p: p, se: se}
}

func (e *env) start(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	if err := e.svc.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer scancel()
		_ = e.svc.Stop(sctx)
		cancel()
	})
}

// wait polls a build until it ends (a real thing to wait for: the worker).
func (e *env) wait(t *testing.T, id pgtype.UUID) Build {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		b, err := e.svc.Get(context.Background(), e.p, id, false)
		if err != nil {
			t.Fatal(err)
		}
		if Finished(b.Status) {
			return b
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("build %s did not end", ID(id))
	return Build{}
}

// waitFor polls until cond holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (e *env) logs(t *testing.T, id pgtype.UUID) []LogLine {
	t.Helper()
	lines, _, err := e.svc.Logs(context.Background(), e.p, id, false, 0, MaxLogPage)
	if err != nil {
		t.Fatal(err)
	}
	return lines
}

func tarOf(t *testing.T, files map[string]string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(body))
	}
	tw.Close()
	return b.Bytes()
}

func TestSubmitRefuses(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxArchiveBytes = 4096 })
	ctx := context.Background()
	member, _ := e.se.Account(t, "member@example.com")
	// Make member a member (not admin) of the owner's team.
	if _, err := e.se.Store.Queries().AddTeamMember(ctx, db.AddTeamMemberParams{UserID: pg(member.UserID), TeamID: pg(e.p.TeamID), Role: service.RoleMember}); err != nil {
		t.Fatal(err)
	}
	asMember := member
	asMember.TeamID, asMember.Role = e.p.TeamID, service.RoleMember
	big := tarOf(t, map[string]string{"big": strings.Repeat("x", 8000)})
	hostile := tarOf(t, map[string]string{"../../etc/passwd": "x"})
	for _, tc := range []struct {
		name string
		p    service.Principal
		req  Submit
		kind error
		want string
	}{
		{"bad recipe names its line", e.p, Submit{Template: "app", Recipe: "FROM base\nRUN\n"}, errdefs.ErrInvalid, "line 2: RUN needs a command"},
		{"unknown FROM", e.p, Submit{Template: "app", Recipe: "FROM nosuch"}, errdefs.ErrInvalid, `line 1: FROM: template "nosuch" not found`},
		{"COPY without archive", e.p, Submit{Template: "app", Recipe: "FROM base\nCOPY a /a"}, errdefs.ErrInvalid, "COPY needs an uploaded archive"},
		{"bad template name", e.p, Submit{Template: "../x", Recipe: "FROM base"}, errdefs.ErrInvalid, "name"},
		{"built-in template name", e.p, Submit{Template: "base", Recipe: "FROM base"}, errdefs.ErrInvalid, "built-in"},
		{"archive over the limit", e.p, Submit{Template: "app", Recipe: "FROM base\nCOPY big /big", Archive: bytes.NewReader(big), ArchiveSize: int64(len(big))}, errdefs.ErrInvalid, "over the limit"},
		{"hostile archive", e.p, Submit{Template: "app", Recipe: "FROM base\nCOPY . /", Archive: bytes.NewReader(hostile), ArchiveSize: int64(len(hostile))}, errdefs.ErrInvalid, `name contains ".."`},
		{"not an archive", e.p, Submit{Template: "app", Recipe: "FROM base\nCOPY . /", Archive: strings.NewReader("plain text"), ArchiveSize: 10}, errdefs.ErrInvalid, "not a tar, tar.gz or zip"},
		{"a member may not build", asMember, Submit{Template: "app", Recipe: "FROM base"}, errdefs.ErrForbidden, "owners and admins"},
		{"shape out of range", e.p, Submit{Template: "app", Recipe: "FROM base", VCPUs: 1000}, errdefs.ErrInvalid, "vcpus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.svc.Submit(ctx, tc.p, tc.req)
			if !errors.Is(err, tc.kind) || !strings.Contains(service.PublicText(err), tc.want) {
				t.Fatalf("Submit: %v (public %q), want %v with %q", err, service.PublicText(err), tc.kind, tc.want)
			}
			if tc.name == "archive over the limit" && !IsTooLarge(err) {
				t.Errorf("IsTooLarge(%v) = false", err)
			}
		})
	}
	t.Run("nothing was queued", func(t *testing.T) {
		bs, err := e.svc.List(ctx, e.p, "", false, 100, nil)
		if err != nil || len(bs) != 0 {
			t.Fatalf("List = %v, %v; want none", bs, err)
		}
		var jobs, archives int
		e.se.Store.Pool().QueryRow(ctx, "SELECT count(*) FROM river_job WHERE kind = 'build'").Scan(&jobs)
		e.se.Store.Pool().QueryRow(ctx, "SELECT count(*) FROM build_archives").Scan(&archives)
		if jobs != 0 || archives != 0 {
			t.Errorf("%d jobs and %d archives left by refused builds", jobs, archives)
		}
	})
}

const fullRecipe = `FROM base
ENV A=1
USER app
WORKDIR /srv
COPY app.py app.py
RUN echo building; echo warn >&2
HEALTHCHECK --interval=1s true
`

func TestBuildRuns(t *testing.T) {
	e := newEnv(t, nil)
	e.g.onExec = func(ctx context.Context, cmd service.ExecCommand, out func(string, []byte)) (service.ExecExit, error) {
		if strings.HasPrefix(cmd.Cmd, "echo building") {
			out("stdout", []byte("building\npart"))
			out("stdout", []byte("ial\n"))
			out("stderr", []byte("warn\n"))
		}
		return service.ExecExit{}, nil
	}
	e.start(t)
	ctx := context.Background()
	arc := tarOf(t, map[string]string{"app.py": "print(1)\n"})
	b, err := e.svc.Submit(ctx, e.p, Submit{Template: "app", Recipe: fullRecipe, Archive: bytes.NewReader(arc), ArchiveSize: int64(len(arc))})
	if err != nil {
		t.Fatal(err)
	}
	if b.Status != StatusPending || b.TotalSteps != 5 || b.Kind != store.TemplateSnapshot || len(b.Steps) != 5 {
		t.Fatalf("submitted %+v", b)
	}
	got := e.wait(t, b.ID)
	t.Run("succeeded", func(t *testing.T) {
		if got.Status != StatusSuccess || !got.TemplateID.Valid || got.CurrentStep != 5 || got.Attempts != 1 {
			t.Fatalf("build = %+v", got.Build)
		}
		for _, s := range got.Steps {
			if s.Status != StatusSuccess {
				t.Errorf("step %d is %s", s.Step, s.Status)
			}
		}
	})
	t.Run("steps ran as their users with their env and workdir", func(t *testing.T) {
		_, _, cmds := e.g.snapshot()
		var run *service.ExecCommand
		for i := range cmds {
			if strings.HasPrefix(cmds[i].Cmd, "echo building") {
				run = &cmds[i]
			}
		}
		if run == nil || run.User != "app" || run.Cwd != "/srv" || run.Env["A"] != "1" {
			t.Fatalf("RUN exec = %+v", run)
		}
	})
	t.Run("archive reached the sandbox", func(t *testing.T) {
		if len(e.g.files[contextFile]) == 0 {
			t.Fatal("no archive written into the sandbox")
		}
	})
	t.Run("sandbox destroyed", func(t *testing.T) {
		c, d, _ := e.g.snapshot()
		if c != 1 || d != 1 {
			t.Fatalf("created %d, destroyed %d", c, d)
		}
	})
	t.Run("logs numbered, with step and stream", func(t *testing.T) {
		lines := e.logs(t, b.ID)
		var out []string
		for i, l := range lines {
			if l.Offset != int64(i+1) {
				t.Fatalf("line %d has offset %d", i, l.Offset)
			}
			if l.Stream != "system" {
				out = append(out, fmt.Sprintf("%d/%s/%s", l.Step, l.Stream, l.Line))
			}
		}
		want := "5/stdout/building 5/stdout/partial 5/stderr/warn"
		if strings.Join(out, " ") != want {
			t.Errorf("output lines = %q, want %q", strings.Join(out, " "), want)
		}
		page, _, _ := e.svc.Logs(ctx, e.p, b.ID, false, 2, 3)
		if len(page) != 3 || page[0].Offset != 3 {
			t.Errorf("Logs(offset 2, limit 3) = %+v", page)
		}
		rest, _, _ := e.svc.Logs(ctx, e.p, b.ID, false, int64(len(lines)), 10)
		if len(rest) != 0 {
			t.Errorf("Logs past the end = %+v", rest)
		}
	})
	t.Run("another team sees nothing", func(t *testing.T) {
		other, _ := e.se.Account(t, "other@example.com")
		if _, err := e.svc.Get(ctx, other, b.ID, false); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Get by another team: %v", err)
		}
		if _, err := e.svc.Cancel(ctx, other, b.ID, false); !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("Cancel by another team: %v", err)
		}
	})
}

func TestBuildFailsAtItsLine(t *testing.T) {
	e := newEnv(t, nil)
	e.g.onExec = func(ctx context.Context, cmd service.ExecCommand, out func(string, []byte)) (service.ExecExit, error) {
		if cmd.Cmd == "false" {
			out("stderr", []byte("it broke\n"))
			return service.ExecExit{ExitCode: 3}, nil
		}
		return service.ExecExit{}, nil
	}
	e.start(t)
	b, err := e.svc.Submit(context.Background(), e.p, Submit{Template: "app", Recipe: "FROM base\nRUN true\n\nRUN false\nRUN never"})
	if err != nil {
		t.Fatal(err)
	}
	got := e.wait(t, b.ID)
	if got.Status != StatusFailed || got.FailedStep.Int32 != 2 || got.FailedLine.Int32 != 4 || got.Error != "line 4: RUN exited with status 3" {
		t.Fatalf("build = %+v", got.Build)
	}
	if got.Attempts != 1 {
		t.Errorf("a recipe failure was retried: %d attempts", got.Attempts)
	}
	if got.Steps[1].Status != StatusFailed || got.Steps[1].ExitCode.Int32 != 3 || got.Steps[2].Status != "pending" {
		t.Errorf("steps = %+v", got.Steps)
	}
	var kept bool
	for _, l := range e.logs(t, b.ID) {
		kept = kept || (l.Step == 2 && l.Line == "it broke")
	}
	if !kept {
		t.Error("the failing step's output is not in the log")
	}
	if c, d, _ := e.g.snapshot(); c != 1 || d != 1 {
		t.Errorf("created %d, destroyed %d", c, d)
	}
}

func TestBuildCancel(t *testing.T) {
	e := newEnv(t, nil)
	started := make(chan struct{}, 1)
	e.g.onExec = func(ctx context.Context, cmd service.ExecCommand, out func(string, []byte)) (service.ExecExit, error) {
		if cmd.Cmd == "sleep 1000" {
			started <- struct{}{}
			<-ctx.Done()
			return service.ExecExit{}, ctx.Err()
		}
		return service.ExecExit{}, nil
	}
	ctx := context.Background()
	t.Run("pending", func(t *testing.T) {
		b, err := e.svc.Submit(ctx, e.p, Submit{Template: "p", Recipe: "FROM base\nRUN true"})
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.svc.Cancel(ctx, e.p, b.ID, false)
		if err != nil || got.Status != StatusCancelled {
			t.Fatalf("Cancel = %+v, %v", got.Build, err)
		}
		if _, err := e.svc.Cancel(ctx, e.p, b.ID, false); !errors.Is(err, errdefs.ErrConflict) {
			t.Errorf("second Cancel: %v, want a conflict", err)
		}
	})
	e.start(t)
	t.Run("running", func(t *testing.T) {
		b, err := e.svc.Submit(ctx, e.p, Submit{Template: "r", Recipe: "FROM base\nRUN sleep 1000"})
		if err != nil {
			t.Fatal(err)
		}
		<-started
		asked := time.Now()
		if _, err := e.svc.Cancel(ctx, e.p, b.ID, false); err != nil {
			t.Fatal(err)
		}
		got := e.wait(t, b.ID)
		if got.Status != StatusCancelled || got.Steps[0].Status != StatusCancelled {
			t.Fatalf("build = %+v steps %+v", got.Build, got.Steps)
		}
		t.Logf("cancelled %s after the request", time.Since(asked))
		waitFor(t, "the sandbox destroyed", func() bool { c, d, _ := e.g.snapshot(); return c == 1 && d == 1 })
	})
	t.Run("the pending build never ran", func(t *testing.T) {
		if c, _, _ := e.g.snapshot(); c != 1 {
			t.Errorf("%d sandboxes created, want only the running build's", c)
		}
	})
}

func TestBuildRetriesInfrastructure(t *testing.T) {
	unavailable := &service.Error{Kind: service.ErrUnavailable, Msg: "the sandbox host is unreachable"}
	t.Run("retried once, then succeeds", func(t *testing.T) {
		e := newEnv(t, nil)
		e.g.createErrs = []error{unavailable}
		e.start(t)
		b, err := e.svc.Submit(context.Background(), e.p, Submit{Template: "app", Recipe: "FROM base\nRUN true"})
		if err != nil {
			t.Fatal(err)
		}
		got := e.wait(t, b.ID)
		if got.Status != StatusSuccess || got.Attempts != 2 {
			t.Fatalf("build = %+v", got.Build)
		}
	})
	t.Run("fails after max attempts", func(t *testing.T) {
		e := newEnv(t, nil)
		e.g.createErrs = []error{unavailable, unavailable, unavailable}
		e.start(t)
		b, err := e.svc.Submit(context.Background(), e.p, Submit{Template: "app", Recipe: "FROM base\nRUN true"})
		if err != nil {
			t.Fatal(err)
		}
		got := e.wait(t, b.ID)
		if got.Status != StatusFailed || got.Attempts != 2 || !strings.Contains(got.Error, "after 2 attempts: the sandbox host is unreachable") {
			t.Fatalf("build = %+v", got.Build)
		}
	})
}

// A worker that dies mid-build (simulated: a claim whose heartbeat stops)
// is found by the sweeper: retried with a new job, then failed once its
// attempts are spent; the dead attempt's sandbox is destroyed.
func TestSweepDeadWorker(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.MaxAttempts = 2 })
	ctx := context.Background()
	b, err := e.svc.Submit(ctx, e.p, Submit{Template: "app", Recipe: "FROM base\nRUN true"})
	if err != nil {
		t.Fatal(err)
	}
	q := e.se.Store.Queries()
	dead := func(t *testing.T) pgtype.UUID {
		t.Helper()
		cur, _ := q.GetBuild(ctx, b.ID)
		claimed, err := q.ClaimBuild(ctx, db.ClaimBuildParams{ID: b.ID, JobID: cur.JobID})
		if err != nil {
			t.Fatalf("claim: %v", err)
		}
		sbx := randomID()
		if err := q.SetBuildSandbox(ctx, db.SetBuildSandboxParams{ID: b.ID, JobID: claimed.JobID, SandboxID: sbx}); err != nil {
			t.Fatal(err)
		}
		return sbx
	}
	later := func() time.Time { return time.Now().Add(time.Hour) }
	t.Run("fresh heartbeat: left alone", func(t *testing.T) {
		dead(t)
		n, err := e.svc.Sweep(ctx)
		if err != nil || n != 0 {
			t.Fatalf("Sweep = %d, %v; want 0", n, err)
		}
	})
	t.Run("stale: requeued with a new job", func(t *testing.T) {
		before, _ := q.GetBuild(ctx, b.ID)
		e.svc.now = later
		n, err := e.svc.Sweep(ctx)
		e.svc.now = time.Now
		if err != nil || n != 1 {
			t.Fatalf("Sweep = %d, %v; want 1", n, err)
		}
		got, _ := q.GetBuild(ctx, b.ID)
		if got.Status != StatusPending || got.JobID == before.JobID || got.SandboxID.Valid {
			t.Fatalf("after the sweep: %+v", got)
		}
		if _, d, _ := e.g.snapshot(); d != 1 {
			t.Errorf("the dead attempt's sandbox was not destroyed (%d destroys)", d)
		}
	})
	t.Run("stale on its last attempt: failed", func(t *testing.T) {
		dead(t)
		e.svc.now = later
		n, err := e.svc.Sweep(ctx)
		e.svc.now = time.Now
		if err != nil || n != 1 {
			t.Fatalf("Sweep = %d, %v", n, err)
		}
		got, _ := q.GetBuild(ctx, b.ID)
		if got.Status != StatusFailed || got.Attempts != 2 || !strings.Contains(got.Error, "its worker stopped") || !got.FinishedAt.Valid {
			t.Fatalf("after the sweep: %+v", got)
		}
	})
	t.Run("the old jobs, when they run, change nothing", func(t *testing.T) {
		e.start(t)
		waitFor(t, "every build job worked", func() bool {
			var n int
			e.se.Store.Pool().QueryRow(ctx, "SELECT count(*) FROM river_job WHERE kind = 'build' AND state IN ('available', 'running', 'scheduled')").Scan(&n)
			return n == 0
		})
		got, _ := q.GetBuild(ctx, b.ID)
		if got.Status != StatusFailed {
			t.Fatalf("status %s", got.Status)
		}
		if c, _, _ := e.g.snapshot(); c != 0 {
			t.Errorf("%d sandboxes created by stale jobs", c)
		}
	})
}

// A build whose job River dropped (deleted here) is requeued by the sweeper.
func TestSweepLostJob(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	b, err := e.svc.Submit(ctx, e.p, Submit{Template: "app", Recipe: "FROM base\nRUN true"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.se.Store.Pool().Exec(ctx, "DELETE FROM river_job WHERE id = $1", b.JobID.Int64); err != nil {
		t.Fatal(err)
	}
	e.svc.now = func() time.Time { return time.Now().Add(time.Hour) }
	n, err := e.svc.Sweep(ctx)
	e.svc.now = time.Now
	if err != nil || n != 1 {
		t.Fatalf("Sweep = %d, %v", n, err)
	}
	e.start(t)
	if got := e.wait(t, b.ID); got.Status != StatusSuccess {
		t.Fatalf("build = %+v", got.Build)
	}
}

func TestWorkersBoundConcurrency(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Workers = 2 })
	release := make(chan struct{})
	e.g.onExec = func(ctx context.Context, cmd service.ExecCommand, out func(string, []byte)) (service.ExecExit, error) {
		if cmd.Cmd == "wait" {
			select {
			case <-release:
			case <-ctx.Done():
			}
		}
		return service.ExecExit{}, nil
	}
	e.start(t)
	var ids []pgtype.UUID
	for i := range 4 {
		b, err := e.svc.Submit(context.Background(), e.p, Submit{Template: fmt.Sprintf("t%d", i), Recipe: "FROM base\nRUN wait"})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, b.ID)
	}
	waitFor(t, "two builds running", func() bool {
		p, r, _ := e.svc.Depth(context.Background())
		return r == 2 && p == 2
	})
	close(release)
	for _, id := range ids {
		if got := e.wait(t, id); got.Status != StatusSuccess {
			t.Fatalf("build = %+v", got.Build)
		}
	}
	if e.g.maxRun != 2 {
		t.Errorf("at most %d builds ran at once, want 2", e.g.maxRun)
	}
}
