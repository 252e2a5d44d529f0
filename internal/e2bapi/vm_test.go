package e2bapi

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/service"
)

// TestE2BFlowRealVM drives the facade as the SDK does, with a real agent
// and real VMs (three: one cold boot, two restores of a snapshot): create
// → getInfo → metrics → setTimeout → pause (204, then 409) → connect (201,
// resumed, memory intact) → connect (200) → snapshot → create from it →
// kill (204, then 404), another team refused throughout, then the timeout:
// the reaper pauses the sandbox created with autoPause and kills the one
// created without. Its network slot pool (cte, 198.18.106.0/24 +
// 198.18.107.0/24) is its own.
func TestE2BFlowRealVM(t *testing.T) {
	url := hosttest.StartAgent(t, hosttest.E2BPool).URL
	e := newEnv(t, url, hosttest.AgentToken)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, key := e.account(t, "sdk@example.com")
	_, keyB := e.account(t, "intruder@example.com")
	t.Cleanup(func() {
		items, _, _ := e.sbx.List(context.Background(), p, service.ListFilter{})
		for _, sb := range items {
			_ = e.sbx.Destroy(context.Background(), p, sb.ID)
		}
	})
	envdOf := func(id, token string) *envdclient.Client {
		t.Helper()
		sb, err := e.sbx.Get(ctx, p, uuidOf(t, id))
		if err != nil || sb.EnvdURL == "" {
			t.Fatalf("envd of %s: %+v %v", id, sb, err)
		}
		c := envdclient.New(sb.EnvdURL, token)
		t.Cleanup(c.Close)
		return c
	}
	shell := func(c *envdclient.Client, script string) string {
		t.Helper()
		res, err := c.Shell(ctx, script)
		if err != nil || res.ExitCode != 0 {
			t.Fatalf("%q: %+v %v", script, res, err)
		}
		return strings.TrimSpace(string(res.Stdout))
	}
	counter := func(c *envdclient.Client) int {
		t.Helper()
		n, err := strconv.Atoi(shell(c, "cat /tmp/counter"))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	info := func(id, k string) (resp, sandboxDetailJSON) {
		t.Helper()
		r := e.do(t, "GET", "/sandboxes/"+id, k, nil)
		var d sandboxDetailJSON
		if r.status == 200 {
			r.expect(t, 200, &d)
		}
		return r, d
	}

	// Create (v2), as Sandbox.create('minimal', {timeoutMs: 60000,
	// metadata, envs, lifecycle: {onTimeout: 'pause'}}).
	r := e.do(t, "POST", "/v2/sandboxes", key, map[string]any{
		"templateID": "minimal", "timeout": 60, "autoPause": true,
		"metadata": map[string]string{"run": "vm"}, "envVars": map[string]string{"GREETING": "hello"},
	})
	var a sandboxJSON
	r.expect(t, 201, &a)
	checkKeys(t, "Sandbox", r.body, sandboxKeys...)
	if len(a.SandboxID) != 32 || a.TemplateID != "minimal" || a.EnvdAccessToken == "" || a.TrafficAccessToken != nil ||
		a.Domain == nil || *a.Domain != testDomain || a.ClientID != clientID {
		t.Fatalf("created: %+v", a)
	}
	// envd is ready with /init applied: the token, the env vars.
	ca := envdOf(a.SandboxID, a.EnvdAccessToken)
	if got := shell(ca, `echo "$GREETING"`); got != "hello" {
		t.Fatalf("env var: %q", got)
	}
	shell(ca, `setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.2; done' </dev/null >/dev/null 2>&1 &`)

	r, d := info(a.SandboxID, key)
	r.expect(t, 200, nil)
	checkKeys(t, "SandboxDetail", r.body, detailKeys...)
	if d.State != "running" || d.Metadata["run"] != "vm" || d.EnvdAccessToken != a.EnvdAccessToken || d.Lifecycle.OnTimeout != "pause" ||
		time.Until(d.EndAt) < 50*time.Second || time.Until(d.EndAt) > 70*time.Second || d.CPUCount != service.DefaultVCPUs ||
		d.MemoryMB != service.DefaultMemoryMB {
		t.Fatalf("getInfo: %+v", d)
	}
	e.do(t, "GET", "/sandboxes/"+a.SandboxID, keyB, nil).expect(t, 404, nil)

	// Metrics, one and many: the host samples every 0.5 s, the guest's
	// figures come with the sample after envd answered.
	var ms []metricJSON
	for deadline := time.Now().Add(30 * time.Second); ; {
		r = e.do(t, "GET", "/sandboxes/"+a.SandboxID+"/metrics", key, nil)
		r.expect(t, 200, &ms)
		if len(ms) > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond) // the next sample
	}
	var raws []json.RawMessage
	_ = json.Unmarshal(r.body, &raws)
	if len(ms) < 1 {
		t.Fatalf("metrics: %s", r.body)
	}
	checkKeys(t, "SandboxMetric", raws[0], metricKeys...)
	if m := ms[len(ms)-1]; m.CPUCount < 1 || m.MemTotal < 100<<20 || m.MemUsed <= 0 || m.MemUsed > m.MemTotal || m.DiskTotal <= 0 ||
		m.DiskUsed <= 0 || m.CPUUsedPct < 0 || m.CPUUsedPct > 100 || m.TimestampUnix != m.Timestamp.Unix() ||
		time.Since(m.Timestamp).Abs() > time.Minute {
		t.Fatalf("metric %+v", m)
	}
	e.do(t, "GET", "/sandboxes/"+a.SandboxID+"/metrics", keyB, nil).expect(t, 404, nil)
	// getMetrics({start, end}) for a window before the sandbox existed:
	// no sample (it used to answer the sample of now).
	created := ms[0].Timestamp.Unix()
	r = e.do(t, "GET", fmt.Sprintf("/sandboxes/%s/metrics?start=%d&end=%d", a.SandboxID, created-3600, created-600), key, nil)
	if r.expect(t, 200, nil); strings.TrimSpace(string(r.body)) != "[]" {
		t.Fatalf("metrics of a window before the sandbox existed: %s", r.body)
	}
	var many struct {
		Sandboxes map[string]metricJSON `json:"sandboxes"`
	}
	e.do(t, "GET", "/sandboxes/metrics?sandbox_ids="+a.SandboxID, key, nil).expect(t, 200, &many)
	if m, ok := many.Sandboxes[a.SandboxID]; !ok || m.MemTotal != ms[len(ms)-1].MemTotal || len(many.Sandboxes) != 1 {
		t.Fatalf("metrics many: %+v", many)
	}

	// setTimeout, then pause: 204, then 409 (pause() returns false).
	e.do(t, "POST", "/sandboxes/"+a.SandboxID+"/timeout", key, map[string]any{"timeout": 120}).expect(t, 204, nil)
	if _, d := info(a.SandboxID, key); time.Until(d.EndAt) < 110*time.Second {
		t.Fatalf("endAt after setTimeout(120): %v", d.EndAt)
	}
	e.do(t, "POST", "/sandboxes/"+a.SandboxID+"/pause", keyB, nil).expect(t, 404, nil)
	e.do(t, "POST", "/sandboxes/"+a.SandboxID+"/pause", key, map[string]any{}).expect(t, 204, nil)
	e.do(t, "POST", "/sandboxes/"+a.SandboxID+"/pause", key, nil).expect(t, 409, nil)
	if _, d := info(a.SandboxID, key); d.State != "paused" {
		t.Fatalf("after pause: %+v", d)
	}
	// Paused: the history stored at the pause, which holds at least
	// what was read while it ran.
	var stored []metricJSON
	e.do(t, "GET", "/sandboxes/"+a.SandboxID+"/metrics", key, nil).expect(t, 200, &stored)
	if len(stored) < len(ms) || !stored[0].Timestamp.Equal(ms[0].Timestamp.Truncate(time.Microsecond)) || stored[0].MemTotal != ms[0].MemTotal {
		t.Fatalf("metrics of a paused sandbox: %d samples from %v, %d while it ran from %v", len(stored), stored, len(ms), ms[0])
	}
	if got := ids(t, e.do(t, "GET", "/v2/sandboxes?state=paused", key, nil)); !slices.Equal(got, []string{a.SandboxID}) {
		t.Fatalf("paused list: %v", got)
	}

	// connect resumes it (201) with its memory; connect again is 200.
	e.do(t, "POST", "/v2/sandboxes/"+a.SandboxID+"/connect", keyB, map[string]any{"timeout": 60}).expect(t, 404, nil)
	var c1, c2 sandboxJSON
	e.do(t, "POST", "/v2/sandboxes/"+a.SandboxID+"/connect", key, map[string]any{"timeout": 60}).expect(t, 201, &c1)
	e.do(t, "POST", "/v2/sandboxes/"+a.SandboxID+"/connect", key, map[string]any{}).expect(t, 200, &c2)
	if c1.SandboxID != a.SandboxID || c1.EnvdAccessToken != a.EnvdAccessToken || c2.EnvdAccessToken != a.EnvdAccessToken {
		t.Fatalf("connect: %+v / %+v", c1, c2)
	}
	ca = envdOf(a.SandboxID, c1.EnvdAccessToken)
	n1 := counter(ca)
	time.Sleep(time.Second)
	if n2 := counter(ca); n2 <= n1 {
		t.Fatalf("the background process did not survive pause and connect: %d then %d", n1, n2)
	}

	// Snapshot (it keeps running), usable as a template.
	r = e.do(t, "POST", "/sandboxes/"+a.SandboxID+"/snapshots", key, map[string]any{"name": "snap1"})
	var snap snapshotInfoJSON
	r.expect(t, 201, &snap)
	checkKeys(t, "SnapshotInfo", r.body, snapshotKeys...)
	slug, err := e.sbx.TeamSlug(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if full := slug + "/snap1:default"; snap.SnapshotID != full || !slices.Equal(snap.Names, []string{full}) {
		t.Fatalf("snapshot: %+v", snap)
	}
	var snaps []snapshotInfoJSON
	e.do(t, "GET", "/snapshots?sandboxID="+a.SandboxID, key, nil).expect(t, 200, &snaps)
	if len(snaps) != 1 || snaps[0].SnapshotID != snap.SnapshotID {
		t.Fatalf("snapshots: %+v", snaps)
	}
	e.do(t, "GET", "/snapshots", keyB, nil).expect(t, 200, &snaps)
	if len(snaps) != 0 {
		t.Fatalf("another team sees the snapshot: %+v", snaps)
	}
	if _, d := info(a.SandboxID, key); d.State != "running" {
		t.Fatalf("after the snapshot: %+v", d)
	}

	// B from the snapshot (v1, as Python 2.45 sends it; killed at its
	// timeout by default), C likewise to be killed.
	var b, c sandboxJSON
	e.do(t, "POST", "/sandboxes", key, map[string]any{"templateID": snap.SnapshotID, "secure": true, "metadata": map[string]string{},
		"envVars": map[string]string{}, "allow_internet_access": true}).expect(t, 201, &b)
	if b.TemplateID != "snap1" || b.SandboxID == a.SandboxID {
		t.Fatalf("from the snapshot: %+v", b)
	}
	if n := counter(envdOf(b.SandboxID, b.EnvdAccessToken)); n < n1 {
		t.Fatalf("the snapshot's counter in B: %d", n)
	}
	if _, d := info(b.SandboxID, key); d.Lifecycle.OnTimeout != "kill" || time.Until(d.EndAt) > 20*time.Second {
		t.Fatalf("B: %+v", d)
	}
	e.do(t, "POST", "/v2/sandboxes", key, map[string]any{"templateID": "snap1:default"}).expect(t, 201, &c)
	e.do(t, "DELETE", "/sandboxes/"+c.SandboxID, keyB, nil).expect(t, 404, nil)
	e.do(t, "DELETE", "/sandboxes/"+c.SandboxID, key, nil).expect(t, 204, nil)
	e.do(t, "DELETE", "/sandboxes/"+c.SandboxID, key, nil).expect(t, 404, nil)
	e.do(t, "GET", "/sandboxes/"+c.SandboxID, key, nil).expect(t, 404, nil)
	e.do(t, "POST", "/v2/sandboxes/"+c.SandboxID+"/connect", key, nil).expect(t, 404, nil)

	// Egress rules, replaced live (updateNetwork) and shown in the detail;
	// another team's sandbox and a killed one are not found, bad rules 400.
	rules := map[string]any{"allowOut": []string{"api.example.com", "*.pypi.org", "1.1.1.1"}, "denyOut": []string{"0.0.0.0/0"}}
	e.do(t, "PUT", "/sandboxes/"+b.SandboxID+"/network", keyB, rules).expect(t, 404, nil)
	e.do(t, "PUT", "/sandboxes/"+c.SandboxID+"/network", key, rules).expect(t, 404, nil)
	e.do(t, "PUT", "/sandboxes/"+b.SandboxID+"/network", key, map[string]any{"allowOut": []string{"api.example.com"}}).expect(t, 400, nil)
	e.do(t, "PUT", "/sandboxes/"+b.SandboxID+"/network", key, rules).expect(t, 204, nil)
	if _, d := info(b.SandboxID, key); !slices.Equal(d.Network.AllowOut, rules["allowOut"].([]string)) ||
		!slices.Equal(d.Network.DenyOut, []string{"0.0.0.0/0"}) {
		t.Fatalf("B's network after updateNetwork: %+v", d.Network)
	}
	e.do(t, "PUT", "/sandboxes/"+b.SandboxID+"/network", key, map[string]any{}).expect(t, 204, nil) // clears
	if _, d := info(b.SandboxID, key); len(d.Network.AllowOut)+len(d.Network.DenyOut) != 0 || !d.AllowInternetAccess {
		t.Fatalf("B's network after clearing: %+v", d)
	}

	// The timeout, an hour later: A (autoPause) is paused, B is killed.
	later := time.Now().Add(time.Hour)
	res, err := service.NewReaper(e.sbx, service.ReaperConfig{Now: func() time.Time { return later }}).Pass(ctx)
	if err != nil || res.Paused != 1 || res.Destroyed != 1 {
		t.Fatalf("reaper: %+v %v", res, err)
	}
	if _, d := info(a.SandboxID, key); d.State != "paused" {
		t.Fatalf("A after its timeout: %+v", d)
	}
	e.do(t, "GET", "/sandboxes/"+b.SandboxID, key, nil).expect(t, 404, nil)
	e.do(t, "DELETE", "/sandboxes/"+b.SandboxID, key, nil).expect(t, 404, nil)

	// The snapshot goes, by its snapshotID URL-encoded as the SDK sends
	// it; the paused A is killed.
	encoded := strings.NewReplacer("/", "%2F", ":", "%3A").Replace(snap.SnapshotID)
	e.do(t, "DELETE", "/templates/"+encoded, keyB, nil).expect(t, 404, nil)
	e.do(t, "DELETE", "/templates/snap1", keyB, nil).expect(t, 404, nil)
	e.do(t, "DELETE", "/templates/"+encoded, key, nil).expect(t, 204, nil)
	e.do(t, "DELETE", "/templates/"+encoded, key, nil).expect(t, 404, nil)
	e.do(t, "DELETE", "/templates/snap1", key, nil).expect(t, 404, nil)
	e.do(t, "POST", "/v2/sandboxes", key, map[string]any{"templateID": "snap1"}).expect(t, 404, nil)
	e.do(t, "DELETE", "/sandboxes/"+a.SandboxID, key, nil).expect(t, 204, nil)
	e.do(t, "GET", "/sandboxes/"+a.SandboxID, key, nil).expect(t, 404, nil)
	if got := ids(t, e.do(t, "GET", "/v2/sandboxes", key, nil)); len(got) != 0 {
		t.Fatalf("left listed: %v", got)
	}
}
