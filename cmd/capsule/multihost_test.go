package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/agentreg"
	"github.com/capsulehq/capsule/internal/hosttest"
)

// The cluster test of issue 11: `capsule serve` and three real `capsule
// agent` processes on one machine, each agent in a network namespace of
// its own (a veth to the host: hosttest.MultiHostLinks), with its own data
// directory and network slot pool (hosttest.MultiHostPools), registered
// through the API like any remote host. Heartbeats every second and
// unreachable after 6 s make the outages quick.

const (
	clusterBeat        = time.Second
	clusterUnreachable = 6 * time.Second
)

// clusterAgent is one agent of the cluster and its host's ID.
type clusterAgent struct {
	*nsAgent
	hostID string
}

// newClusterAgent makes agent n's namespace and link; the agent is
// stopped and they are removed at top's cleanup (they outlive t, the
// step).
func newClusterAgent(t, top *testing.T, root string, n int) *clusterAgent {
	t.Helper()
	p := hosttest.MultiHostPools[n]
	l := hosttest.MultiHostLinks
	a, err := newNSAgent(root, n, l.HostCIDR, l.Name, l.Veth, nsSlotNet{name: p.Name, hostCIDR: p.HostCIDR, linkCIDR: p.LinkCIDR})
	if err != nil {
		t.Fatal(err)
	}
	top.Cleanup(func() {
		a.stop()
		if top.Failed() {
			top.Logf("agent %d (%s):\n%s", a.n, a.ns, a.logText())
		}
		a.remove()
	})
	return &clusterAgent{nsAgent: a}
}

// start runs the agent against the control plane at cpURL, registering
// with token when not empty.
func (a *clusterAgent) start(t *testing.T, bin, cpURL, token string) {
	t.Helper()
	if err := a.nsAgent.start(bin, cpURL, token, hosttest.StoreDir, "--base=false", "--warm-images=false",
		"--net-max-slots", "8", "--max-vcpus", "8", "--max-memory-mb", "2048"); err != nil {
		t.Fatal(err)
	}
}

// clusterClient calls the API with a session token.
type clusterClient struct {
	t     *testing.T
	ctx   context.Context
	url   string
	token string
}

func (c clusterClient) do(method, path string, in, out any) int {
	c.t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(c.ctx, method, c.url+path, body)
	if err != nil {
		c.t.Fatal(err)
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		c.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(b, out); err != nil {
			c.t.Fatalf("%s %s: decode %s: %v", method, path, b, err)
		}
	}
	if resp.StatusCode >= 300 {
		c.t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

type createdClusterHost struct {
	Host              clusterHost `json:"host"`
	RegistrationToken string      `json:"registration_token"`
}

type clusterHost struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"`
}

// until polls cond every 200 ms until it holds or d passes, and returns
// how long it took.
func until(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(200 * time.Millisecond)
	}
	return time.Since(start)
}

func TestMultiHostCluster(t *testing.T) {
	bin := serveBinary(t)
	top := t
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()

	d := newServeDirs(t)
	d.pool = hosttest.MultiHostPools[0]
	d.listenHost = "0.0.0.0"
	d.args = []string{"-signup", "open", "-host-heartbeat-interval", clusterBeat.String(),
		"-host-unreachable-after", clusterUnreachable.String()}
	srv := d.start(t, bin)
	srv.waitHealthy(ctx)
	port := strings.TrimPrefix(srv.url, "http://127.0.0.1:")

	var af adminFile
	b, err := os.ReadFile(filepath.Join(d.data, "admin.json"))
	if err != nil || json.Unmarshal(b, &af) != nil {
		t.Fatalf("admin.json: %v", err)
	}
	anon := clusterClient{t: t, ctx: ctx, url: srv.url}
	var sess struct {
		Token string `json:"token"`
		Team  struct {
			ID string `json:"id"`
		} `json:"team"`
	}
	if code := anon.do("POST", "/v1/auth/login", map[string]string{"email": af.Email, "password": af.Password}, &sess); code != 200 {
		t.Fatalf("admin login: %d", code)
	}
	admin := clusterClient{t: t, ctx: ctx, url: srv.url, token: sess.Token}
	adminTeam := sess.Team.ID

	hostOf := func(id string) clusterHost {
		admin.t.Helper()
		var h clusterHost
		if code := admin.do("GET", "/v1/hosts/"+id, nil, &h); code != 200 {
			admin.t.Fatalf("GET host %s: %d", id, code)
		}
		return h
	}
	// where lists the live sandboxes of host id.
	where := func(id string) map[string]bool {
		admin.t.Helper()
		var prev struct {
			Sandboxes []struct {
				ID string `json:"id"`
			} `json:"sandboxes"`
		}
		if code := admin.do("GET", "/v1/hosts/"+id+"/delete-preview", nil, &prev); code != 200 {
			admin.t.Fatalf("delete preview of %s: %d", id, code)
		}
		out := map[string]bool{}
		for _, s := range prev.Sandboxes {
			out[s.ID] = true
		}
		return out
	}
	sandbox := func(c clusterClient, id string) crashSandbox {
		c.t.Helper()
		var sb crashSandbox
		if code := c.do("GET", "/v1/sandboxes/"+id, nil, &sb); code != 200 {
			c.t.Fatalf("GET sandbox %s: %d", id, code)
		}
		return sb
	}
	execIn := func(c clusterClient, id, cmd string) string {
		c.t.Helper()
		var res struct {
			Stdout   string `json:"stdout"`
			ExitCode int    `json:"exit_code"`
		}
		if code := c.do("POST", "/v1/sandboxes/"+id+"/exec", map[string]any{"cmd": cmd, "timeout_sec": 60}, &res); code != 200 || res.ExitCode != 0 {
			c.t.Fatalf("exec %q in %s: %d, exit %d", cmd, id, code, res.ExitCode)
		}
		return strings.TrimSpace(res.Stdout)
	}
	create := func(c clusterClient) crashSandbox {
		c.t.Helper()
		var sb crashSandbox
		if code := c.do("POST", "/v1/sandboxes", map[string]any{"template": "minimal", "memory_mb": 256, "timeout_sec": 3600}, &sb); code != 201 {
			c.t.Fatalf("create: %d\n%s", code, srv.logText())
		}
		return sb
	}

	root, err := os.MkdirTemp("", "capsule-cluster-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(root)
		}
	})
	agents := make([]*clusterAgent, 4)
	tokens := make([]string, 4)

	t.Run("register three agents", func(t *testing.T) {
		admin.t = t
		for n := 1; n <= 3; n++ {
			a := newClusterAgent(t, top, root, n)
			agents[n] = a
			var nh createdClusterHost
			if code := admin.do("POST", "/v1/hosts", map[string]any{"name": fmt.Sprintf("node-%d", n), "type": "regular",
				"address": a.address()}, &nh); code != 201 {
				t.Fatalf("create host %d: %d", n, code)
			}
			a.hostID, tokens[n] = nh.Host.ID, nh.RegistrationToken
			a.start(t, bin, "http://"+a.hostIP.String()+":"+port, nh.RegistrationToken)
		}
		for _, a := range agents[1:] {
			until(t, 3*time.Minute, "host "+a.hostID+" online", func() bool { return hostOf(a.hostID).Status == "online" })
		}
		// The embedded host takes no sandbox from here on: the spread is
		// the three agents'.
		var hosts struct {
			Hosts []clusterHost `json:"hosts"`
		}
		if code := admin.do("GET", "/v1/hosts", nil, &hosts); code != 200 {
			t.Fatalf("list hosts: %d", code)
		}
		for _, h := range hosts.Hosts {
			if h.Name == "local" {
				if code := admin.do("PATCH", "/v1/hosts/"+h.ID, map[string]any{"status": "draining"}, nil); code != 200 {
					t.Fatalf("drain local: %d", code)
				}
			}
		}
	})

	var sbs []crashSandbox
	t.Run("nine sandboxes spread by load", func(t *testing.T) {
		admin.t = t
		for range 9 {
			sbs = append(sbs, create(admin))
		}
		for _, a := range agents[1:] {
			if n := len(where(a.hostID)); n != 3 {
				t.Errorf("host %s has %d sandboxes, want 3 of 9 (equal hosts, least loaded first)", a.hostID, n)
			}
		}
		for _, sb := range sbs {
			execIn(admin, sb.ID, "echo kept-"+sb.ID+" > /root/kept; sync")
		}
	})

	t.Run("a snapshot made on one host starts a sandbox on another", func(t *testing.T) {
		admin.t = t
		src := sbs[0]
		var home *clusterAgent
		for _, a := range agents[1:] {
			if where(a.hostID)[src.ID] {
				home = a
			}
		}
		if home == nil {
			t.Fatal("the source sandbox is on no agent")
		}
		execIn(admin, src.ID, "echo from-"+home.hostID+" > /root/replica-mark; (sleep 7777 >/dev/null 2>&1 &)")
		var snap struct {
			ID string `json:"id"`
		}
		if code := admin.do("POST", "/v1/snapshots", map[string]any{"sandbox_id": src.ID, "name": "across-hosts"}, &snap); code != 201 {
			t.Fatalf("snapshot: %d", code)
		}
		// Its host drains: the create goes to another, which copies the
		// template from it.
		if code := admin.do("PATCH", "/v1/hosts/"+home.hostID, map[string]any{"status": "draining"}, nil); code != 200 {
			t.Fatalf("drain the snapshot's host: %d", code)
		}
		var sb crashSandbox
		if code := admin.do("POST", "/v1/sandboxes", map[string]any{"template": "across-hosts", "timeout_sec": 3600}, &sb); code != 201 {
			t.Fatalf("create from the snapshot: %d\n%s", code, srv.logText())
		}
		if code := admin.do("PATCH", "/v1/hosts/"+home.hostID, map[string]any{"status": "online"}, nil); code != 200 {
			t.Fatalf("undrain: %d", code)
		}
		var copyHost *clusterAgent
		for _, a := range agents[1:] {
			if where(a.hostID)[sb.ID] {
				copyHost = a
			}
		}
		if copyHost == nil || copyHost == home {
			t.Fatalf("the sandbox from the snapshot is not on another host")
		}
		if got := execIn(admin, sb.ID, "cat /root/replica-mark"); got != "from-"+home.hostID {
			t.Errorf("the snapshot's file on the other host: %q", got)
		}
		if got := execIn(admin, sb.ID, "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"); !strings.Contains(got, "sleep 7777") {
			t.Errorf("the snapshot's process on the other host: %q", got)
		}
		if code := admin.do("DELETE", "/v1/sandboxes/"+sb.ID, nil, nil); code != 204 {
			t.Errorf("destroy: %d", code)
		}
		// The deletion reaches both hosts.
		if code := admin.do("DELETE", "/v1/snapshots/across-hosts", nil, nil); code != 204 {
			t.Fatalf("delete the snapshot: %d", code)
		}
		for _, a := range []*clusterAgent{home, copyHost} {
			if _, err := os.Stat(filepath.Join(a.data, "templates", snap.ID+".json")); !os.IsNotExist(err) {
				t.Errorf("host %s still has the template: %v", a.hostID, err)
			}
		}
	})

	var killToUnreachable time.Duration
	t.Run("SIGKILLed agent: unreachable, missing, then back with nothing lost", func(t *testing.T) {
		admin.t = t
		a := agents[1]
		on := where(a.hostID)
		a.kill()
		killed := time.Now()
		until(t, clusterUnreachable+30*time.Second, "host unreachable", func() bool { return hostOf(a.hostID).Status == "unreachable" })
		killToUnreachable = time.Since(killed)
		for id := range on {
			if st := sandbox(admin, id).State; st != "missing" {
				t.Errorf("sandbox %s of the unreachable host is %s, want missing", id, st)
			}
		}
		a.start(t, bin, "http://"+a.hostIP.String()+":"+port, "")
		until(t, 3*time.Minute, "host back online", func() bool { return hostOf(a.hostID).Status == "online" })
		for id := range on {
			if st := sandbox(admin, id).State; st != "running" {
				t.Errorf("sandbox %s is %s after its host came back, want running", id, st)
			}
			if got := execIn(admin, id, "cat /root/kept"); got != "kept-"+id {
				t.Errorf("sandbox %s: /root/kept = %q", id, got)
			}
		}
		t.Logf("agent kill → host unreachable: %.1f s", killToUnreachable.Seconds())
	})

	t.Run("control plane unreachable: sandboxes paused, later resumed", func(t *testing.T) {
		admin.t = t
		a := agents[2]
		on := where(a.hostID)
		logFrom := len(a.logText())
		if err := a.setLink(false); err != nil {
			t.Fatal(err)
		}
		until(t, clusterUnreachable+30*time.Second, "host unreachable", func() bool { return hostOf(a.hostID).Status == "unreachable" })
		// The agent pauses after three missed beats; give the pauses time.
		until(t, 2*time.Minute, "the agent paused its sandboxes", func() bool {
			return strings.Count(a.logText()[logFrom:], "sandbox paused") >= len(on)
		})
		if err := a.setLink(true); err != nil {
			t.Fatal(err)
		}
		until(t, 3*time.Minute, "host back online", func() bool { return hostOf(a.hostID).Status == "online" })
		for id := range on {
			if st := sandbox(admin, id).State; st != "paused" {
				t.Errorf("sandbox %s is %s after the outage, want paused", id, st)
			}
			if code := admin.do("POST", "/v1/sandboxes/"+id+"/resume", nil, nil); code != 200 {
				t.Errorf("resume %s: %d", id, code)
			}
			if got := execIn(admin, id, "cat /root/kept"); got != "kept-"+id {
				t.Errorf("sandbox %s: /root/kept = %q", id, got)
			}
		}
	})

	t.Run("reused registration token and replayed refresh token refused", func(t *testing.T) {
		anon.t = t
		if code := anon.do("POST", "/v1/hosts/register", map[string]any{"token": tokens[1], "arch": "amd64", "vcpus": 2,
			"memory_mb": 1024, "disk_mb": 1024, "address": agents[1].address(), "version": "x", "csr": "x"}, nil); code != 400 && code != 409 {
			t.Errorf("reused registration token: %d, want 409 (or 400 for the bad CSR, before the token is looked at)", code)
		}
		var creds struct {
			RefreshToken string `json:"refresh_token"`
		}
		b, err := os.ReadFile(filepath.Join(agents[2].data, "agent", agentreg.CredentialsFile))
		if err != nil || json.Unmarshal(b, &creds) != nil || creds.RefreshToken == "" {
			t.Fatalf("agent 2's credentials: %v", err)
		}
		var next struct {
			RefreshToken string `json:"refresh_token"`
		}
		if code := anon.do("POST", "/v1/hosts/refresh", map[string]string{"refresh_token": creds.RefreshToken}, &next); code != 200 {
			t.Fatalf("first refresh: %d", code)
		}
		// The successor is used: the old token's grace (a crash before
		// the agent stored the new one) is over.
		if code := anon.do("POST", "/v1/hosts/refresh", map[string]string{"refresh_token": next.RefreshToken}, nil); code != 200 {
			t.Fatalf("refresh with the successor: %d", code)
		}
		if code := anon.do("POST", "/v1/hosts/refresh", map[string]string{"refresh_token": creds.RefreshToken}, nil); code != 401 {
			t.Errorf("replayed refresh token: %d, want 401", code)
		}
	})

	t.Run("force-delete a host", func(t *testing.T) {
		admin.t = t
		a := agents[3]
		on := where(a.hostID)
		if code := admin.do("DELETE", "/v1/hosts/"+a.hostID, nil, nil); code != 409 {
			t.Errorf("delete without force: %d, want 409", code)
		}
		if code := admin.do("DELETE", "/v1/hosts/"+a.hostID+"?force=true", nil, nil); code != 200 {
			t.Fatalf("force delete: %d", code)
		}
		for id := range on {
			if st := sandbox(admin, id).State; st != "stopped" {
				t.Errorf("sandbox %s of the deleted host is %s, want stopped", id, st)
			}
		}
		select {
		case <-a.exited():
		case <-time.After(2 * time.Minute):
			t.Fatalf("the deleted host's agent did not exit:\n%s", a.logText())
		}
		if code := a.exitCode(); code != exitHostDeleted {
			t.Errorf("the deleted host's agent exited %d, want %d", code, exitHostDeleted)
		}
	})

	t.Run("BYOC team on its own host only", func(t *testing.T) {
		admin.t = t
		if code := admin.do("PUT", "/v1/admin/teams/"+adminTeam+"/byoc", map[string]any{"enabled": true}, nil); code != 200 {
			t.Fatalf("enable BYOC: %d", code)
		}
		a := agents[3]
		a.data += "-byoc"
		var nh createdClusterHost
		if code := admin.do("POST", "/v1/hosts", map[string]any{"name": "byoc-1", "type": "byoc", "address": a.address()}, &nh); code != 201 {
			t.Fatalf("create BYOC host: %d", code)
		}
		a.hostID = nh.Host.ID
		a.start(t, bin, "http://"+a.hostIP.String()+":"+port, nh.RegistrationToken)
		until(t, 3*time.Minute, "BYOC host online", func() bool { return hostOf(a.hostID).Status == "online" })

		var other struct {
			Token string `json:"token"`
		}
		creds := map[string]string{"email": "other@cluster.test", "password": "other-team-password", "name": "Other"}
		if code := anon.do("POST", "/v1/auth/signup", creds, nil); code != 201 {
			t.Fatalf("signup: %d", code)
		}
		if code := anon.do("POST", "/v1/auth/login", creds, &other); code != 200 {
			t.Fatalf("login: %d", code)
		}
		team := clusterClient{t: t, ctx: ctx, url: srv.url, token: other.Token}
		anon.t = t
		mine := []crashSandbox{create(admin), create(admin)}
		theirs := []crashSandbox{create(team), create(team)}
		onBYOC := where(a.hostID)
		for _, sb := range mine {
			if !onBYOC[sb.ID] {
				t.Errorf("the BYOC team's sandbox %s is not on its host", sb.ID)
			}
		}
		for _, sb := range theirs {
			if onBYOC[sb.ID] {
				t.Errorf("another team's sandbox %s landed on the BYOC host", sb.ID)
			}
		}
		for _, sb := range append(mine, theirs...) {
			c := admin
			if slicesContains(theirs, sb) {
				c = team
			}
			c.do("DELETE", "/v1/sandboxes/"+sb.ID, nil, nil)
		}
	})

	admin.t = t
	for _, sb := range sbs {
		admin.do("DELETE", "/v1/sandboxes/"+sb.ID, nil, nil)
	}
	if killToUnreachable > 0 {
		t.Logf("figures: kill_to_unreachable_s=%.1f (window %v)", killToUnreachable.Seconds(), clusterUnreachable)
	}
}

func slicesContains(list []crashSandbox, sb crashSandbox) bool {
	for _, x := range list {
		if x.ID == sb.ID {
			return true
		}
	}
	return false
}
