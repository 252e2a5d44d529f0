package builds

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/service/servicetest"
	"github.com/capsulehq/capsule/internal/store"
)

// vmEnv is the build service over the real sandbox service, a real agent
// and real VMs (network slot pool cbld).
type vmEnv struct {
	*env
}

func newVMEnv(t *testing.T) *vmEnv {
	t.Helper()
	a := hosttest.StartAgent(t, hosttest.BuildsPool)
	se := servicetest.New(t, a.URL, hosttest.AgentToken)
	p, _ := se.Account(t, "builder@example.com")
	e := &env{se: se, p: p}
	e.svc = e.newService(t)
	return &vmEnv{e}
}

// newService is one more control plane's build service over the same
// database and agent (a replica).
func (e *env) newService(t *testing.T) *Service {
	t.Helper()
	svc, err := New(Config{Store: e.se.Store, Sandboxes: e.se.Sandboxes, Audit: e.se.Audit, RetryDelay: 100 * time.Millisecond,
		HeartbeatInterval: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func (e *vmEnv) run(t *testing.T, id service.SandboxID, cmd string) string {
	t.Helper()
	res, err := e.se.Sandboxes.Run(context.Background(), e.p, id, service.ExecCommand{Cmd: cmd, TimeoutSec: 30}, nil, false)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("run %q: %+v, %v", cmd, res, err)
	}
	return strings.TrimSpace(string(res.Stdout))
}

// liveBuildSandboxes counts the build sandboxes that are not stopped.
func (e *vmEnv) liveBuildSandboxes(t *testing.T) int {
	t.Helper()
	var n int
	if err := e.se.Store.Pool().QueryRow(context.Background(), `SELECT count(*) FROM sandboxes
		WHERE metadata ? '`+MetadataKey+`' AND state <> 'stopped'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func contextArchive(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	tw := tar.NewWriter(zw)
	for _, f := range []struct {
		name, body string
		mode       int64
	}{
		{"site/index.html", "<h1>built</h1>\n", 0o644},
		{"site/css/main.css", "h1 {}\n", 0o644},
		{"bin/serve.sh", "#!/bin/sh\necho $$ > /tmp/serve.pid\ntouch /tmp/ready\nwhile true; do sleep 1; done\n", 0o644},
	} {
		tw.WriteHeader(&tar.Header{Name: f.name, Mode: f.mode, Size: int64(len(f.body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	zw.Close()
	return b.Bytes()
}

const vmRecipe = `# every instruction
FROM minimal
ENV GREETING="hello world" MODE=prod
USER app
WORKDIR /srv/app
COPY site ./site --chown=app
COPY --chmod=0755 bin/serve.sh ./serve.sh
RUN --timeout=60s echo "built by $(id -u) in $(pwd) for $GREETING" > built.txt && \
    echo step-output
START ./serve.sh
`

// TestBuildInVMs performs issue 13's checks with real VMs: a recipe using
// every instruction and a healthcheck makes a snapshot template whose
// sandboxes see the files, env, user and workdir with the START process
// running; without the healthcheck, an image template that boots cold; a
// failing RUN fails at its line with its log; cancel mid-step; a control
// plane stopped mid-build hands the build to another; no build sandbox
// outlives its build.
func TestBuildInVMs(t *testing.T) {
	e := newVMEnv(t)
	e.start(t)
	ctx := context.Background()
	arc := contextArchive(t)
	submit := func(t *testing.T, name, recipe string, withArchive bool) Build {
		t.Helper()
		req := Submit{Template: name, Recipe: recipe, VCPUs: 1, MemoryMB: 256}
		if withArchive {
			req.Archive, req.ArchiveSize = bytes.NewReader(arc), int64(len(arc))
		}
		b, err := e.svc.Submit(ctx, e.p, req)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	create := func(t *testing.T, tpl string) service.SandboxID {
		t.Helper()
		sb, err := e.se.Sandboxes.Create(ctx, e.p, service.CreateSandbox{Template: tpl})
		if err != nil {
			t.Fatalf("create from %s: %v", tpl, err)
		}
		t.Cleanup(func() { _ = e.se.Sandboxes.Destroy(context.Background(), e.p, sb.ID) })
		return sb.ID
	}
	check := func(t *testing.T, id service.SandboxID) {
		t.Helper()
		for _, c := range []struct{ cmd, want string }{
			// busybox-static's whoami cannot look users up (no NSS): read passwd.
			{`awk -F: -v u=$(id -u) '$3 == u { print $1 }' /etc/passwd`, "app"},
			{"pwd", "/srv/app"},
			{"echo $GREETING/$MODE", "hello world/prod"},
			{"cat site/index.html", "<h1>built</h1>"},
			{`[ "$(stat -c %u site/css/main.css)" = "$(id -u)" ] && echo owned`, "owned"},
			{"stat -c %a serve.sh", "755"},
			{`[ "$(cat built.txt)" = "built by $(id -u) in /srv/app for hello world" ] && echo built`, "built"},
		} {
			if got := e.run(t, id, c.cmd); got != c.want {
				t.Errorf("%s = %q, want %q", c.cmd, got, c.want)
			}
		}
	}

	t.Run("snapshot template", func(t *testing.T) {
		b := submit(t, "app", vmRecipe+"HEALTHCHECK --interval=1s --timeout=5s --start-period=5s --retries=10 test -f /tmp/ready\n", true)
		got := e.wait(t, b.ID)
		if got.Status != StatusSuccess || got.Kind != store.TemplateSnapshot {
			t.Fatalf("build = %+v\nlog: %v", got.Build, e.logs(t, b.ID))
		}
		var stepOut bool
		for _, l := range e.logs(t, b.ID) {
			stepOut = stepOut || (l.Step == 6 && l.Stream == "stdout" && l.Line == "step-output")
		}
		if !stepOut {
			t.Errorf("RUN's output is not in the log with its step: %+v", e.logs(t, b.ID))
		}
		id := create(t, "app")
		check(t, id)
		if out := e.run(t, id, "kill -0 $(cat /tmp/serve.pid) && echo alive"); out != "alive" {
			t.Errorf("the START process is not running in the snapshot's sandbox: %q", out)
		}
	})
	t.Run("image template boots cold", func(t *testing.T) {
		b := submit(t, "app-image", vmRecipe, true)
		got := e.wait(t, b.ID)
		if got.Status != StatusSuccess || got.Kind != store.TemplateImage {
			t.Fatalf("build = %+v\nlog: %v", got.Build, e.logs(t, b.ID))
		}
		tpl, err := e.se.Sandboxes.LookupTemplate(ctx, e.p, "app-image")
		if err != nil || tpl.Snapshot == nil || tpl.Snapshot.Kind != store.TemplateImage {
			t.Fatalf("template = %+v, %v", tpl, err)
		}
		id := create(t, "app-image")
		check(t, id)
		if out := e.run(t, id, "test -e /tmp/serve.pid && echo running || echo cold"); out != "cold" {
			t.Errorf("an image template's sandbox runs START: %q", out)
		}
	})
	t.Run("a failing RUN fails at its line", func(t *testing.T) {
		b := submit(t, "bad", "FROM minimal\nRUN echo before\n\nRUN echo oops >&2; exit 7\nRUN echo never", false)
		got := e.wait(t, b.ID)
		if got.Status != StatusFailed || got.FailedLine.Int32 != 4 || got.FailedStep.Int32 != 2 || got.Error != "line 4: RUN exited with status 7" {
			t.Fatalf("build = %+v", got.Build)
		}
		var kept bool
		for _, l := range e.logs(t, b.ID) {
			kept = kept || (l.Step == 2 && l.Stream == "stderr" && l.Line == "oops")
		}
		if !kept {
			t.Errorf("the failing step's output is not in the log: %+v", e.logs(t, b.ID))
		}
		if _, err := e.se.Sandboxes.LookupTemplate(ctx, e.p, "bad"); err == nil {
			t.Error("a failed build made a template")
		}
	})
	t.Run("cancel mid-step", func(t *testing.T) {
		b := submit(t, "slow", "FROM minimal\nRUN sleep 600", false)
		waitFor(t, "the step running", func() bool {
			cur, _ := e.svc.Get(ctx, e.p, b.ID, false)
			return cur.Status == StatusRunning && cur.CurrentStep == 1 && cur.SandboxID.Valid
		})
		asked := time.Now()
		if _, err := e.svc.Cancel(ctx, e.p, b.ID, false); err != nil {
			t.Fatal(err)
		}
		got := e.wait(t, b.ID)
		took := time.Since(asked)
		if got.Status != StatusCancelled {
			t.Fatalf("build = %+v", got.Build)
		}
		if took > 30*time.Second {
			t.Errorf("cancel took %s", took)
		}
		t.Logf("cancelled in %s", took)
	})
	t.Run("a control plane stopped mid-build hands it over", func(t *testing.T) {
		// This replica stops working; a second one (started later) takes
		// the build over.
		sctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		b := submit(t, "handover", "FROM minimal\nRUN sleep 5\nRUN echo done", false)
		waitFor(t, "the step running", func() bool {
			cur, _ := e.svc.Get(ctx, e.p, b.ID, false)
			return cur.Status == StatusRunning && cur.CurrentStep == 1 && cur.SandboxID.Valid
		})
		stopCtx, stop := context.WithTimeout(sctx, 100*time.Millisecond)
		_ = e.svc.Stop(stopCtx) // interrupts the running build
		stop()
		cur, _ := e.svc.Get(ctx, e.p, b.ID, false)
		if cur.Status != StatusPending || cur.Attempts != 1 {
			t.Fatalf("after the stop: %+v", cur.Build)
		}
		other := e.newService(t)
		if err := other.Start(sctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = other.Stop(context.Background()) })
		got := e.wait(t, b.ID)
		if got.Status != StatusSuccess || got.Attempts != 2 {
			t.Fatalf("build = %+v", got.Build)
		}
	})
	t.Run("no build sandbox outlives its build", func(t *testing.T) {
		if n := e.liveBuildSandboxes(t); n != 0 {
			t.Fatalf("%d build sandboxes still live", n)
		}
	})
}
