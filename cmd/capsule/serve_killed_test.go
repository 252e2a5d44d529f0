package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/hosttest"
)

// The fault-injection test of `capsule serve` (network slot pool
// hosttest.KillPool) (and of the agent it
// embeds): the real binary is killed with SIGKILL while an operation of
// the API is under way, at moments derived from the measured duration of
// the same operation in the same run (a production binary has no crash
// hooks: timing is the way), and started again on the same directories.
// The agent half, with exact crash points, is internal/sandbox's
// TestAgentKilledAtEachStepKeepsSandboxes.

// killFractions are the moments of the kills, as fractions of the
// operation's measured duration after its request is written: right
// after the request, mid-way, near the end.
var killFractions = []float64{0, 0.5, 0.9}

// killTracked is a sandbox the test keeps and checks after every restart.
type killTracked struct {
	sb crashSandbox
	// counting: a process of the sandbox counts in memory in /tmp/c;
	// counter is its value before the last kill.
	counting bool
	counter  int
}

// killRig drives one platform (data directory) through kills and
// restarts of its serve process.
type killRig struct {
	top     *testing.T
	ctx     context.Context
	bin     string
	d       *serveDirs
	key     string
	srv     *serveProc
	tracked map[string]*killTracked
}

// in makes p report its failures to t (a step's test).
func (p *serveProc) in(t *testing.T) *serveProc { p.t = t; return p }

// restart SIGKILLs the serve process and starts another on the same
// directories (its cleanup belongs to the whole test, not to the step).
func (r *killRig) restart(t *testing.T) {
	t.Helper()
	r.srv.kill9()
	r.srv = r.d.start(r.top, r.bin).in(t)
	r.srv.waitHealthy(r.ctx)
}

func (r *killRig) call(t *testing.T, method, path string, in, out any) int {
	t.Helper()
	return r.srv.in(t).call(t, r.ctx, r.key, method, path, in, out)
}

func (r *killRig) exec(t *testing.T, id, cmd string) string {
	t.Helper()
	return r.srv.in(t).execIn(t, r.ctx, r.key, id, cmd)
}

// create creates a sandbox of template and returns it with the duration
// of the call.
func (r *killRig) create(t *testing.T, template string) (crashSandbox, time.Duration) {
	t.Helper()
	var sb crashSandbox
	start := time.Now()
	if code := r.call(t, "POST", "/v1/sandboxes", map[string]any{"template": template, "timeout_sec": 3600}, &sb); code != http.StatusCreated {
		t.Fatalf("create from %s: %d\n%s", template, code, r.srv.logText())
	}
	return sb, time.Since(start)
}

// timed runs a call that must answer want and returns its duration.
func (r *killRig) timed(t *testing.T, method, path string, in any, want int) time.Duration {
	t.Helper()
	start := time.Now()
	var out any
	if want != http.StatusNoContent {
		out = &map[string]any{}
	}
	if code := r.call(t, method, path, in, out); code != want {
		t.Fatalf("%s %s: %d, want %d\n%s", method, path, code, want, r.srv.logText())
	}
	return time.Since(start)
}

// prepare gives sb a synced file and a process counting in memory, and
// tracks it.
func (r *killRig) prepare(t *testing.T, sb crashSandbox) *killTracked {
	t.Helper()
	r.exec(t, sb.ID, "echo synced > /root/synced.txt; sync")
	k := &killTracked{sb: sb}
	r.startCounter(t, k)
	r.tracked[sb.ID] = k
	return k
}

func (r *killRig) startCounter(t *testing.T, k *killTracked) {
	t.Helper()
	// /tmp may be on the disk: a cold boot finds the old count there.
	r.exec(t, k.sb.ID, `rm -f /tmp/c; sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/c.tmp; mv /tmp/c.tmp /tmp/c; sleep 0.2; done' >/dev/null 2>&1 </dev/null &`)
	k.counting, k.counter = true, 0
	for k.counter < 2 {
		fmt.Sscan(r.exec(t, k.sb.ID, "cat /tmp/c 2>/dev/null || echo 0"), &k.counter)
	}
}

// readCounters notes every running counting sandbox's counter (before a
// kill; a paused one's stays as it was noted before its pause).
func (r *killRig) readCounters(t *testing.T) {
	t.Helper()
	api := r.apiSandboxes(t)
	for id, k := range r.tracked {
		if k.counting && api[id].State == "running" {
			fmt.Sscan(r.exec(t, k.sb.ID, "cat /tmp/c"), &k.counter)
		}
	}
}

// killDuring sends the request in the background and SIGKILLs serve
// frac×d after it is written (or as soon as it is answered, if sooner),
// then restarts serve.
func (r *killRig) killDuring(t *testing.T, method, path string, in any, d time.Duration, frac float64) {
	t.Helper()
	b, _ := json.Marshal(in)
	sent, answered := make(chan struct{}), make(chan struct{})
	ctx, cancel := context.WithCancel(r.ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) { close(sent) },
	}), method, r.srv.url+path, bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-API-Key", r.key)
	req.Header.Set("Content-Type", "application/json")
	go func() {
		defer close(answered)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			t.Logf("%s %s answered %d before the kill", method, path, resp.StatusCode)
		}
	}()
	select {
	case <-sent:
	case <-answered:
		t.Fatalf("%s %s failed before it was sent", method, path)
	}
	delay := time.Duration(frac * float64(d))
	select {
	case <-time.After(delay): // the moment of the kill is the point
	case <-answered:
	}
	t.Logf("SIGKILL %v after %s %s (measured %v)", delay, method, path, d)
	r.restart(t)
	<-answered
}

// apiSandboxes lists the team's sandboxes by ID.
func (r *killRig) apiSandboxes(t *testing.T) map[string]crashSandbox {
	t.Helper()
	all := map[string]crashSandbox{}
	cursor := ""
	for {
		var page struct {
			Sandboxes  []crashSandbox `json:"sandboxes"`
			NextCursor string         `json:"next_cursor"`
		}
		if code := r.call(t, "GET", "/v1/sandboxes?limit=100&cursor="+cursor, nil, &page); code != http.StatusOK {
			t.Fatalf("list sandboxes: %d", code)
		}
		for _, sb := range page.Sandboxes {
			all[sb.ID] = sb
		}
		if cursor = page.NextCursor; cursor == "" {
			return all
		}
	}
}

// hostState is the agent's state of sandbox id from its state file ("" when
// the host has no directory for it).
func (r *killRig) hostState(t *testing.T, id string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(r.d.data, "sandboxes", id, "state.json"))
	if os.IsNotExist(err) {
		if _, err := os.Stat(filepath.Join(r.d.data, "sandboxes", id)); err == nil {
			return "no state file"
		}
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatalf("state file of %s: %v", id, err)
	}
	return st.State
}

// checkAgreement: the API's states and the host's agree, settled (no
// transitional state), and the host has no sandbox the API does not
// list as live.
func (r *killRig) checkAgreement(t *testing.T) map[string]crashSandbox {
	t.Helper()
	api := r.apiSandboxes(t)
	want := map[string][]string{
		// An interrupted create is error with nothing on the host; a
		// tracked sandbox's disk is checked by settle.
		"running": {"running"}, "paused": {"paused"}, "error": {"stopped", "error", ""},
		"stopped": {""}, "missing": {""},
	}
	for id, sb := range api {
		host := r.hostState(t, id)
		ok, known := want[sb.State]
		if !known {
			t.Errorf("%s is %s (%s) after the restart: not settled", id, sb.State, sb.StateReason)
			continue
		}
		if !slices.Contains(ok, host) {
			t.Errorf("%s: the API says %s (%s), the host %q", id, sb.State, sb.StateReason, host)
		}
	}
	dirs, _ := os.ReadDir(filepath.Join(r.d.data, "sandboxes"))
	for _, e := range dirs {
		if sb, ok := api[e.Name()]; !ok || sb.State == "stopped" || sb.State == "missing" {
			t.Errorf("the host keeps sandbox %s, which the API lists as %q", e.Name(), sb.State)
		}
	}
	return api
}

// settle checks every tracked sandbox after a restart and leaves it
// running: running (file there, counter advanced), paused (resumes with
// its memory), or error with its disk kept (resumes cold, file there).
func (r *killRig) settle(t *testing.T) {
	t.Helper()
	for id, k := range r.tracked {
		var sb crashSandbox
		if code := r.call(t, "GET", "/v1/sandboxes/"+id, nil, &sb); code != http.StatusOK {
			t.Fatalf("tracked sandbox %s: %d (lost)", id, code)
		}
		memory := true
		switch sb.State {
		case "running":
		case "paused":
			r.timed(t, "POST", "/v1/sandboxes/"+id+"/resume", nil, http.StatusOK)
		case "error":
			if _, err := os.Stat(filepath.Join(r.d.data, "sandboxes", id)); err != nil {
				t.Fatalf("%s is error (%s) without its disk: %v", id, sb.StateReason, err)
			}
			t.Logf("%s is error (%s): resuming it cold", id, sb.StateReason)
			r.timed(t, "POST", "/v1/sandboxes/"+id+"/resume", nil, http.StatusOK)
			memory = false
		default:
			t.Fatalf("tracked sandbox %s is %s (%s)", id, sb.State, sb.StateReason)
		}
		var now crashSandbox
		if code := r.call(t, "GET", "/v1/sandboxes/"+id, nil, &now); code != http.StatusOK || now.State != "running" || now.EnvdURL == "" {
			t.Errorf("%s (was %s) once settled: %d %+v (running, with its envd_url)", id, sb.State, code, now)
		}
		if got := r.exec(t, id, "cat /root/synced.txt"); got != "synced" {
			t.Fatalf("%s (was %s): synced file %q", id, sb.State, got)
		}
		if !k.counting {
			continue
		}
		if !memory {
			r.startCounter(t, k)
			continue
		}
		var n int
		fmt.Sscan(r.exec(t, id, "cat /tmp/c"), &n)
		if n < k.counter || (sb.State == "running" && n == k.counter) {
			t.Fatalf("%s (was %s): counter %d, %d before the kill", id, sb.State, n, k.counter)
		}
		k.counter = n
	}
}

// gone: nothing of sandbox id is left on the host.
func (r *killRig) gone(t *testing.T, id string) {
	t.Helper()
	for _, p := range []string{filepath.Join(r.d.data, "sandboxes", id), filepath.Join(r.d.run, id)} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("destroyed sandbox %s left %s", id, p)
		}
	}
	if out := hosttest.SandboxVMMs(id); len(out) > 0 {
		t.Errorf("destroyed sandbox %s left its VMM: %s", id, out)
	}
}

// destroy destroys sandbox id (which must succeed, whatever its state)
// and checks that nothing of it is left.
func (r *killRig) destroy(t *testing.T, id string) {
	t.Helper()
	if code := r.call(t, "DELETE", "/v1/sandboxes/"+id, nil, nil); code != http.StatusNoContent {
		t.Fatalf("destroy %s: %d\n%s", id, code, r.srv.logText())
	}
	delete(r.tracked, id)
	r.gone(t, id)
}

// checkTemplates: every snapshot template on the host is one of the
// team's snapshots.
func (r *killRig) checkTemplates(t *testing.T) {
	t.Helper()
	var list struct {
		Snapshots []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"snapshots"`
	}
	if code := r.call(t, "GET", "/v1/snapshots", nil, &list); code != http.StatusOK {
		t.Fatalf("list snapshots: %d", code)
	}
	known := map[string]bool{}
	for _, s := range list.Snapshots {
		known[s.ID] = true
	}
	// A template's index (tpl-<32 hex>.json) and directory
	// (tpl-<32 hex>-<random>).
	const idLen = len("tpl-") + 32
	dirs, _ := os.ReadDir(filepath.Join(r.d.data, "templates"))
	for _, e := range dirs {
		if strings.HasPrefix(e.Name(), "tpl-") && (len(e.Name()) < idLen || !known[e.Name()[:idLen]]) {
			t.Errorf("template files %s on the host belong to no snapshot", e.Name())
		}
	}
}

// TestServeKilledAtEachStep: `capsule serve` (with its agent) is killed
// with SIGKILL right after the request, mid-way and near the end of a
// create, a pause, a resume, a snapshot and a destroy, and started again
// on the same directories. After each restart the API and the host
// agree, and every sandbox is running with its data and memory, paused,
// or error with its disk kept (resuming it boots it cold with its
// files); an interrupted create leaves a running sandbox, an error, or
// none; an interrupted destroy leaves the sandbox gone or whole (a
// second destroy succeeds and leaves nothing); an interrupted snapshot
// exists (a sandbox created from it has the file) or leaves no files. A
// bystander sandbox runs through all of it. After the final stop nothing
// is left: no VMM, no network namespace, no run directory, no sandbox
// or snapshot directory.
func TestServeKilledAtEachStep(t *testing.T) {
	bin := serveBinary(t)
	d := newServeDirs(t)
	d.pool = hosttest.KillPool
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	r := &killRig{top: t, ctx: ctx, bin: bin, d: d, tracked: map[string]*killTracked{}}
	r.srv = d.start(t, bin)
	r.srv.waitHealthy(ctx)
	r.key = d.apiKey(t)

	// The bystander and the target of pause, resume and snapshot.
	bystander, _ := r.create(t, "minimal")
	r.prepare(t, bystander)
	target, dCreate := r.create(t, "minimal")
	r.prepare(t, target)
	// The durations of the operations, measured here, place the kills.
	dPause := r.timed(t, "POST", "/v1/sandboxes/"+target.ID+"/pause", nil, http.StatusOK)
	dResume := r.timed(t, "POST", "/v1/sandboxes/"+target.ID+"/resume", nil, http.StatusOK)
	dSnap := r.timed(t, "POST", "/v1/snapshots", map[string]any{"sandbox_id": target.ID, "name": "measured"}, http.StatusCreated)
	t.Logf("measured: create %v, pause %v, resume %v, snapshot %v", dCreate, dPause, dResume, dSnap)
	snapshots := []string{"measured"}

	after := func(t *testing.T) map[string]crashSandbox {
		t.Helper()
		// What the start-up recovery did, for the record of the run.
		for _, line := range strings.Split(r.srv.logText(), "\n") {
			for _, what := range []string{"orphan snapshot template deleted", "cut short", "did not survive", "sandbox reconciled"} {
				if strings.Contains(line, what) {
					t.Logf("restarted serve: %s", line)
					break
				}
			}
		}
		api := r.checkAgreement(t)
		r.checkTemplates(t)
		r.settle(t)
		return api
	}

	for _, f := range killFractions {
		t.Run(fmt.Sprintf("create/kill at %.0f%%", f*100), func(t *testing.T) {
			before := r.apiSandboxes(t)
			r.readCounters(t)
			r.killDuring(t, "POST", "/v1/sandboxes", map[string]any{"template": "minimal", "timeout_sec": 3600}, dCreate, f)
			api := after(t)
			for id, sb := range api {
				if _, ok := before[id]; ok {
					continue
				}
				switch sb.State {
				case "running":
					var got crashSandbox
					if r.call(t, "GET", "/v1/sandboxes/"+id, nil, &got); got.EnvdURL == "" {
						t.Errorf("the interrupted create's sandbox %s runs without an envd_url: %+v", id, got)
					}
					if got := r.exec(t, id, "echo ok"); got != "ok" {
						t.Fatalf("the interrupted create's sandbox %s: exec %q", id, got)
					}
				case "error":
					t.Logf("the interrupted create's sandbox %s: error (%s)", id, sb.StateReason)
				default:
					t.Fatalf("the interrupted create's sandbox %s: %s (%s)", id, sb.State, sb.StateReason)
				}
				r.destroy(t, id)
			}
		})
	}

	for _, f := range killFractions {
		t.Run(fmt.Sprintf("pause/kill at %.0f%%", f*100), func(t *testing.T) {
			r.readCounters(t)
			r.killDuring(t, "POST", "/v1/sandboxes/"+target.ID+"/pause", nil, dPause, f)
			after(t)
		})
	}

	for _, f := range killFractions {
		t.Run(fmt.Sprintf("resume/kill at %.0f%%", f*100), func(t *testing.T) {
			r.timed(t, "POST", "/v1/sandboxes/"+target.ID+"/pause", nil, http.StatusOK)
			r.readCounters(t)
			r.killDuring(t, "POST", "/v1/sandboxes/"+target.ID+"/resume", nil, dResume, f)
			after(t)
		})
	}

	for i, f := range killFractions {
		name := fmt.Sprintf("killed-%d", i)
		t.Run(fmt.Sprintf("snapshot/kill at %.0f%%", f*100), func(t *testing.T) {
			r.readCounters(t)
			r.killDuring(t, "POST", "/v1/snapshots", map[string]any{"sandbox_id": target.ID, "name": name}, dSnap, f)
			after(t)
			var snap map[string]any
			switch code := r.call(t, "GET", "/v1/snapshots/"+name, nil, &snap); code {
			case http.StatusOK:
				snapshots = append(snapshots, name)
				child, _ := r.create(t, name)
				if got := r.exec(t, child.ID, "cat /root/synced.txt"); got != "synced" {
					t.Errorf("a sandbox of the interrupted snapshot: file %q", got)
				}
				r.destroy(t, child.ID)
			case http.StatusNotFound:
				t.Logf("the interrupted snapshot %s does not exist", name)
			default:
				t.Fatalf("get snapshot %s: %d", name, code)
			}
		})
	}

	var dDestroy time.Duration
	for i, f := range append([]float64{-1}, killFractions...) {
		name := fmt.Sprintf("destroy/kill at %.0f%%", f*100)
		if i == 0 {
			name = "destroy/measured"
		}
		t.Run(name, func(t *testing.T) {
			victim, _ := r.create(t, "minimal")
			r.prepare(t, victim)
			if i == 0 {
				dDestroy = r.timed(t, "DELETE", "/v1/sandboxes/"+victim.ID, nil, http.StatusNoContent)
				delete(r.tracked, victim.ID)
				r.gone(t, victim.ID)
				t.Logf("measured: destroy %v", dDestroy)
				return
			}
			delete(r.tracked, victim.ID) // it may be gone
			r.readCounters(t)
			r.killDuring(t, "DELETE", "/v1/sandboxes/"+victim.ID, nil, dDestroy, f)
			after(t)
			var sb crashSandbox
			switch code := r.call(t, "GET", "/v1/sandboxes/"+victim.ID, nil, &sb); {
			case code == http.StatusNotFound || sb.State == "stopped":
				r.gone(t, victim.ID)
			case code == http.StatusOK:
				t.Logf("the interrupted destroy left %s %s (%s)", victim.ID, sb.State, sb.StateReason)
			default:
				t.Fatalf("get %s: %d", victim.ID, code)
			}
			r.destroy(t, victim.ID)
		})
	}

	t.Run("destroy everything", func(t *testing.T) {
		for id, sb := range r.apiSandboxes(t) {
			if sb.State != "stopped" {
				r.destroy(t, id)
			}
		}
		for _, name := range snapshots {
			if code := r.call(t, "DELETE", "/v1/snapshots/"+name, nil, nil); code != http.StatusNoContent {
				t.Errorf("delete snapshot %s: %d", name, code)
			}
		}
		r.checkAgreement(t)
		r.checkTemplates(t)
	})
	r.srv.in(t).stop()
	if code := r.srv.wait(ctx); code != 0 {
		t.Fatalf("serve exited %d:\n%s", code, r.srv.logText())
	}
	t.Run("nothing left", func(t *testing.T) {
		if out, _ := exec.Command("pgrep", "-af", "qemu-system.*"+d.root).Output(); len(out) > 0 {
			t.Errorf("VMMs left: %s", out)
		}
		if out, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(out), "ckill-") {
			t.Errorf("network namespaces left: %s", out)
		}
		for _, dir := range []string{d.run, filepath.Join(d.data, "sandboxes"), filepath.Join(d.data, "templates")} {
			entries, _ := os.ReadDir(dir)
			for _, e := range entries {
				t.Errorf("left in %s: %s", dir, e.Name())
			}
		}
	})
}
