package main

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/hosttest"
)

// The crash test of template builds (issue 13): `capsule serve` is killed
// with SIGKILL while a build's RUN step runs in its build sandbox, and
// started again on the same directories. The build must end — retried to
// success while it has attempts left, else failed with a reason — and
// never stay running; the killed attempt's sandbox must be destroyed (no
// VMM, no live sandbox row, no network slot). Network slot pool
// hosttest.BuildKillPool.

// killBuildRecipe has a RUN step long enough to be killed in (its name
// makes each build's steps its own: the layer cache would skip them).
const killBuildRecipe = `FROM minimal
RUN echo step-one-started; sleep 25; echo step-one-done # %s
RUN echo built > /root/built.txt
`

type killBuild struct {
	ID          string `json:"id"`
	Status      string `json:"status"`
	Error       string `json:"error"`
	Attempts    int    `json:"attempts"`
	CurrentStep int    `json:"current_step"`
	FailedStep  *int   `json:"failed_step"`
	Steps       []struct {
		Status string `json:"status"`
	} `json:"steps"`
}

type killBuildSandbox struct {
	ID       string            `json:"id"`
	State    string            `json:"state"`
	Metadata map[string]string `json:"metadata"`
}

// buildRig drives builds through kills of serve.
type buildRig struct {
	*killRig
}

func (r *buildRig) build(t *testing.T, tpl, id string) killBuild {
	t.Helper()
	var b killBuild
	if code := r.call(t, "GET", "/v1/templates/"+tpl+"/builds/"+id, nil, &b); code != http.StatusOK {
		t.Fatalf("get build %s: %d", id, code)
	}
	return b
}

// buildSandboxes are the live sandboxes of build id (by its metadata).
func (r *buildRig) buildSandboxes(t *testing.T, id string) []killBuildSandbox {
	t.Helper()
	var page struct {
		Sandboxes []killBuildSandbox `json:"sandboxes"`
	}
	q := url.Values{"metadata": {"capsule_build=" + id}}
	if code := r.call(t, "GET", "/v1/sandboxes?"+q.Encode(), nil, &page); code != http.StatusOK {
		t.Fatalf("list the build's sandboxes: %d", code)
	}
	var live []killBuildSandbox
	for _, sb := range page.Sandboxes {
		if sb.State != "stopped" {
			live = append(live, sb)
		}
	}
	return live
}

// waitStepRunning waits until attempt n of build id runs its first step
// (its output is in the log) and returns the attempt's sandbox.
func (r *buildRig) waitStepRunning(t *testing.T, tpl, id string, attempt int) killBuildSandbox {
	t.Helper()
	for {
		b := r.build(t, tpl, id)
		if b.Status != "pending" && b.Status != "running" {
			t.Fatalf("build %s ended %s (%s) before attempt %d ran its step\n%s", id, b.Status, b.Error, attempt, r.srv.logText())
		}
		if b.Status == "running" && b.Attempts == attempt && b.CurrentStep == 1 && len(b.Steps) > 0 && b.Steps[0].Status == "running" {
			var logs struct {
				Lines []struct {
					Line string `json:"line"`
				} `json:"lines"`
			}
			r.call(t, "GET", "/v1/templates/"+tpl+"/builds/"+id+"/logs?offset=0", nil, &logs)
			started := 0
			for _, l := range logs.Lines {
				if l.Line == "step-one-started" {
					started++
				}
			}
			if started == attempt {
				sbs := r.buildSandboxes(t, id)
				if len(sbs) != 1 {
					t.Fatalf("attempt %d of build %s runs in %d sandboxes: %+v", attempt, id, len(sbs), sbs)
				}
				return sbs[0]
			}
		}
		select {
		case <-r.ctx.Done():
			t.Fatalf("attempt %d of build %s never ran its step: %+v", attempt, id, b)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitEnd waits until build id ends.
func (r *buildRig) waitEnd(t *testing.T, tpl, id string) killBuild {
	t.Helper()
	for {
		b := r.build(t, tpl, id)
		switch b.Status {
		case "success", "failed", "cancelled":
			return b
		}
		select {
		case <-r.ctx.Done():
			t.Fatalf("build %s still %s (attempt %d, step %d)\n%s", id, b.Status, b.Attempts, b.CurrentStep, r.srv.logText())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// sandboxGone waits until sandbox id is destroyed: no live row, no VMM,
// nothing of it on the host.
func (r *buildRig) sandboxGone(t *testing.T, id string) {
	t.Helper()
	for {
		var sb killBuildSandbox
		code := r.call(t, "GET", "/v1/sandboxes/"+id, nil, &sb)
		if code == http.StatusNotFound || (code == http.StatusOK && sb.State == "stopped") {
			break
		}
		select {
		case <-r.ctx.Done():
			t.Fatalf("the killed attempt's sandbox %s is still %d %s", id, code, sb.State)
		case <-time.After(500 * time.Millisecond):
		}
	}
	r.gone(t, id)
}

// TestServeKilledMidBuild: serve is SIGKILLed while a build's RUN step
// runs. After a restart the sweeper finds the build's heartbeat stale,
// destroys the dead attempt's sandbox and retries the build, which
// succeeds; killed again in its last attempt, a build fails, naming why.
// Neither is left running, and no build sandbox, VMM or network slot is
// left behind.
func TestServeKilledMidBuild(t *testing.T) {
	bin := serveBinary(t)
	d := newServeDirs(t)
	d.pool = hosttest.BuildKillPool
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	r := &buildRig{&killRig{top: t, ctx: ctx, bin: bin, d: d, tracked: map[string]*killTracked{}}}
	r.srv = d.start(t, bin)
	r.srv.waitHealthy(ctx)
	r.key = d.apiKey(t)

	submit := func(t *testing.T, tpl string) string {
		t.Helper()
		var b killBuild
		if code := r.call(t, "POST", "/v1/templates/"+tpl+"/builds", map[string]any{"recipe": fmt.Sprintf(killBuildRecipe, tpl), "memory_mb": 256, "vcpus": 1}, &b); code != http.StatusAccepted {
			t.Fatalf("submit: %d\n%s", code, r.srv.logText())
		}
		return b.ID
	}
	var killed []string // the killed attempts' sandboxes
	for _, tc := range []struct {
		name  string
		tpl   string
		kills int // kills, each during the step of the next attempt
		want  string
	}{
		{name: "killed once: retried to success", tpl: "killed-once", kills: 1, want: "success"},
		{name: "killed in every attempt: failed", tpl: "killed-twice", kills: 2, want: "failed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tpl := tc.tpl
			id := submit(t, tpl)
			for k := 1; k <= tc.kills; k++ {
				sb := r.waitStepRunning(t, tpl, id, k)
				t.Logf("SIGKILL serve during attempt %d of %s (sandbox %s)", k, id, sb.ID)
				killed = append(killed, sb.ID)
				r.restart(t)
				if b := r.build(t, tpl, id); b.Status != "running" {
					t.Fatalf("right after the restart the build is %s, want still running (its heartbeat not yet stale)", b.Status)
				}
				t.Run("killed attempt's sandbox destroyed", func(t *testing.T) { r.sandboxGone(t, sb.ID) })
			}
			b := r.waitEnd(t, tpl, id)
			if b.Status != tc.want {
				t.Fatalf("build ended %s (%q), want %s\n%s", b.Status, b.Error, tc.want, r.srv.logText())
			}
			switch tc.want {
			case "success":
				if b.Attempts != 2 {
					t.Errorf("attempts %d, want 2 (the killed one and its retry)", b.Attempts)
				}
				sb, _ := r.create(t, tpl)
				if got := r.exec(t, sb.ID, "cat /root/built.txt"); got != "built" {
					t.Errorf("a sandbox of the built template reads %q", got)
				}
				r.destroy(t, sb.ID)
			case "failed":
				if !strings.Contains(b.Error, "after 2 attempts") || !strings.Contains(b.Error, "worker stopped") {
					t.Errorf("the failure's reason %q does not say the worker stopped in its last attempt", b.Error)
				}
			}
			if live := r.buildSandboxes(t, id); len(live) != 0 {
				t.Errorf("the ended build keeps sandboxes: %+v", live)
			}
		})
	}
	t.Run("nothing left", func(t *testing.T) {
		api := r.apiSandboxes(t)
		for id, sb := range api {
			if sb.State != "stopped" {
				t.Errorf("sandbox %s is %s", id, sb.State)
			}
			if st := r.hostState(t, id); st != "" {
				t.Errorf("the host keeps sandbox %s (%s)", id, st)
			}
		}
		for _, id := range killed {
			r.gone(t, id)
		}
		// Released network slots are kept for reuse while serve runs;
		// stopped, it leaves none (nor a VMM).
		r.srv.stop()
		if code := r.srv.wait(ctx); code != 0 {
			t.Fatalf("serve exited %d:\n%s", code, r.srv.logText())
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), d.pool.Name+"-") {
			t.Errorf("network namespaces left: %s", out)
		}
		if out, _ := exec.Command("pgrep", "-af", "qemu-system.*"+d.root).Output(); len(out) > 0 {
			t.Errorf("VMMs left: %s", out)
		}
	})
	if t.Failed() {
		t.Logf("the last serve's log:\n%s", r.srv.logText())
	}
}
