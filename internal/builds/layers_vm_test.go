package builds

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/service/servicetest"
)

// cacheRecipe's RUN writes a value that differs at every run: a sandbox
// of the template shows whether the step ran again or came from a layer.
const cacheRecipe = `FROM minimal
ENV MODE=cached
USER app
WORKDIR /srv/app
COPY site ./site --chown=app
RUN cat /proc/sys/kernel/random/uuid > stamp.txt
`

// TestLayerCacheInVMs: identical step prefixes reuse a cached layer
// (issue 13), with real VMs (network slot pool cbk2): an unchanged rebuild
// runs none of its steps, an appended step runs alone on the cached
// prefix, another archive or a rebuilt FROM template misses, another
// team never hits, and each team keeps at most LayerKeep layers.
func TestLayerCacheInVMs(t *testing.T) {
	a := hosttest.StartAgent(t, hosttest.BuildCachePool)
	se := servicetest.New(t, a.URL, hosttest.AgentToken)
	p, _ := se.Account(t, "cache@example.com")
	other, _ := se.Account(t, "other@example.com")
	e := &vmEnv{&env{se: se, p: p}}
	e.svc = e.newService(t)
	e.start(t)
	ctx := context.Background()
	arc := contextArchive(t)

	type built struct {
		b          Build
		log        []LogLine
		cached, ok bool
	}
	build := func(t *testing.T, who service.Principal, name, recipe string, archive []byte) built {
		t.Helper()
		req := Submit{Template: name, Recipe: recipe, VCPUs: 1, MemoryMB: 256}
		if archive != nil {
			req.Archive, req.ArchiveSize = bytes.NewReader(archive), int64(len(archive))
		}
		b, err := e.svc.Submit(ctx, who, req)
		if err != nil {
			t.Fatal(err)
		}
		var got Build
		for deadline := time.Now().Add(5 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
			if got, err = e.svc.Get(ctx, who, b.ID, false); err != nil {
				t.Fatal(err)
			}
			if Finished(got.Status) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("build %s did not end", ID(b.ID))
			}
		}
		lines, _, err := e.svc.Logs(ctx, who, b.ID, false, 0, MaxLogPage)
		if err != nil {
			t.Fatal(err)
		}
		out := built{b: got, log: lines, ok: got.Status == StatusSuccess}
		for _, l := range lines {
			out.cached = out.cached || strings.Contains(l.Line, "are cached; creating the build sandbox from their layer")
		}
		if !out.ok {
			t.Fatalf("build of %s: %+v\n%v", name, got.Build, lines)
		}
		t.Logf("build of %s: %s (cached %v)", name, got.FinishedAt.Time.Sub(got.StartedAt.Time), out.cached)
		return out
	}
	read := func(t *testing.T, who service.Principal, tpl, cmd string) string {
		t.Helper()
		sb, err := e.se.Sandboxes.Create(ctx, who, service.CreateSandbox{Template: tpl})
		if err != nil {
			t.Fatalf("create from %s: %v", tpl, err)
		}
		defer e.se.Sandboxes.Destroy(context.Background(), who, sb.ID)
		res, err := e.se.Sandboxes.Run(ctx, who, sb.ID, service.ExecCommand{Cmd: cmd, TimeoutSec: 30}, nil, false)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("run %q: %+v, %v", cmd, res, err)
		}
		return strings.TrimSpace(string(res.Stdout))
	}
	hasLine := func(log []LogLine, s string) bool {
		for _, l := range log {
			if strings.Contains(l.Line, s) {
				return true
			}
		}
		return false
	}
	const files = "cat stamp.txt site/index.html; echo $MODE"

	var first string
	t.Run("the first build runs every step and caches the layer", func(t *testing.T) {
		got := build(t, p, "cache-a", cacheRecipe, arc)
		if got.cached || !hasLine(got.log, "cached the layer of steps 1-5") {
			t.Fatalf("first build: cached %v\n%v", got.cached, got.log)
		}
		first = read(t, p, "cache-a", files)
	})
	t.Run("an identical rebuild runs no step", func(t *testing.T) {
		got := build(t, p, "cache-a", cacheRecipe, arc)
		if !got.cached || !hasLine(got.log, "step 5/5 (line 6): cached") {
			t.Fatalf("rebuild did not use the layer\n%v", got.log)
		}
		if now := read(t, p, "cache-a", files); now != first {
			t.Fatalf("rebuilt template reads %q, the first %q: the RUN step ran again", now, first)
		}
	})
	t.Run("an appended step runs on the cached prefix", func(t *testing.T) {
		got := build(t, p, "cache-b", cacheRecipe+"RUN echo extra > extra.txt\n", arc)
		if !got.cached || !hasLine(got.log, "step 5/6 (line 6): cached") || hasLine(got.log, "step 6/6 (line 7): cached") {
			t.Fatalf("appended build\n%v", got.log)
		}
		if now := read(t, p, "cache-b", files+"; cat extra.txt"); now != first+"\nextra" {
			t.Fatalf("template reads %q, want the cached prefix's %q and extra", now, first)
		}
	})
	t.Run("another archive misses", func(t *testing.T) {
		other := tarOf(t, map[string]string{"site/index.html": "<h1>other</h1>\n"})
		got := build(t, p, "cache-c", cacheRecipe, other)
		if got.cached {
			t.Fatalf("a build with another archive used a layer\n%v", got.log)
		}
		if now := read(t, p, "cache-c", files); now == first || !strings.Contains(now, "<h1>other</h1>") {
			t.Fatalf("template reads %q", now)
		}
	})
	t.Run("another team never hits", func(t *testing.T) {
		got := build(t, other, "cache-a", cacheRecipe, arc)
		if got.cached {
			t.Fatalf("another team's build used this team's layer\n%v", got.log)
		}
		if now := read(t, other, "cache-a", files); now == first {
			t.Fatalf("another team's template has this team's stamp %q", now)
		}
	})
	t.Run("a rebuilt FROM template misses", func(t *testing.T) {
		build(t, p, "cache-base", "FROM minimal\nRUN echo v1 > /v\n", nil)
		child := "FROM cache-base\nRUN cat /v > /copy\n"
		build(t, p, "cache-child", child, nil)
		if got := build(t, p, "cache-child", child, nil); !got.cached {
			t.Fatalf("the unchanged child did not use its layer\n%v", got.log)
		}
		build(t, p, "cache-base", "FROM minimal\nRUN echo v2 > /v\n", nil)
		if got := build(t, p, "cache-child", child, nil); got.cached {
			t.Fatalf("the child of a rebuilt FROM used the old layer\n%v", got.log)
		}
		if v := read(t, p, "cache-child", "cat /copy"); v != "v2" {
			t.Fatalf("child reads %q, want v2", v)
		}
	})
	t.Run("at most LayerKeep layers, every one a hidden template", func(t *testing.T) {
		team := pg(p.TeamID)
		var layers, hidden int
		if err := se.Store.Pool().QueryRow(ctx, `SELECT count(*) FROM build_layers WHERE team_id = $1`, team).Scan(&layers); err != nil {
			t.Fatal(err)
		}
		if err := se.Store.Pool().QueryRow(ctx, `SELECT count(*) FROM templates WHERE team_id = $1 AND hidden`, team).Scan(&hidden); err != nil {
			t.Fatal(err)
		}
		if layers > LayerKeep || layers != hidden {
			t.Fatalf("%d layers (at most %d), %d hidden templates", layers, LayerKeep, hidden)
		}
		list, err := se.Sandboxes.ListSnapshots(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range list {
			if strings.HasPrefix(s.Name, "v..") {
				t.Errorf("a layer is listed: %s", s.Name)
			}
		}
	})
	t.Run("no build sandbox outlives its build", func(t *testing.T) {
		if n := e.liveBuildSandboxes(t); n != 0 {
			t.Fatalf("%d build sandboxes still live", n)
		}
	})
}
