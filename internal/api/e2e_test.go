package api

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/hosttest"
)

// TestEndToEndRealVM is the user's whole path over HTTP with a real agent
// and real VMs: signup → login → API key → create → exec → files → pause →
// resume (memory and files intact) → snapshot → create from the snapshot
// (it sees the snapshot's files) → destroy both, with another team
// refused (404) at every step and the audit log checked at the end. Its
// network slot pool (capi, 198.18.86.0/24 + 198.18.87.0/24) is its own.
func TestEndToEndRealVM(t *testing.T) {
	agent := hosttest.StartAgent(t, hosttest.APIPool)
	url := agent.URL
	e := newAPI(t, url, hosttest.AgentToken)
	jwt, key, _ := e.account(t, "e2e@example.com")
	jwtB, keyB, _ := e.account(t, "intruder@example.com")

	var sb sandboxJSON
	if c := e.do(t, "POST", "/v1/sandboxes", key, map[string]any{
		"template": "minimal", "vcpus": 1, "memory_mb": 256, "timeout_sec": 300,
		"metadata": map[string]string{"run": "e2e"}, "env_vars": map[string]string{"GREETING": "hello"},
	}, &sb); c != 201 {
		t.Fatalf("create: %d", c)
	}
	t.Cleanup(func() { e.do(t, "DELETE", "/v1/sandboxes/"+sb.ID, key, nil, nil) })
	if sb.State != "running" || len(sb.ID) != 32 || sb.EnvdURL == "" || sb.EnvdAccessToken == "" || sb.EndAt == nil {
		t.Fatalf("created: %+v", sb)
	}
	base := "/v1/sandboxes/" + sb.ID
	var got sandboxJSON
	// A session token works as well as the API key.
	if c := e.do(t, "GET", base, jwt, nil, &got); c != 200 || got.ID != sb.ID || got.State != "running" || got.EnvdURL != sb.EnvdURL {
		t.Fatalf("get: %d %+v", c, got)
	}
	var page struct {
		Sandboxes []sandboxJSON `json:"sandboxes"`
	}
	if c := e.do(t, "GET", "/v1/sandboxes?state=running&metadata=run=e2e", key, nil, &page); c != 200 || len(page.Sandboxes) != 1 || page.Sandboxes[0].ID != sb.ID {
		t.Fatalf("list: %d %+v", c, page)
	}

	// Exec: the create's env vars, the image's hostname (not the
	// kernel's "(none)"), a process left running in the background (its counter must survive the pause), a failing command.
	var ex execResultJSON
	if c := e.do(t, "POST", base+"/exec", key, map[string]any{"cmd": `echo "$GREETING from $(hostname)"; echo oops >&2; exit 3`}, &ex); c != 200 ||
		ex.Stdout != "hello from capsule\n" || ex.Stderr != "oops\n" || ex.ExitCode != 3 {
		t.Fatalf("exec: %d %+v", c, ex)
	}
	t.Logf("DEBUG %q", ex.Stdout)
	if c := e.do(t, "POST", base+"/exec", key, map[string]any{
		"cmd": `setsid sh -c 'i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.2; done' </dev/null >/dev/null 2>&1 &`,
	}, &ex); c != 200 || ex.ExitCode != 0 {
		t.Fatalf("background counter: %d %+v", c, ex)
	}

	// Files: a streamed upload, its listing, a download.
	payload := bytes.Repeat([]byte("capsule-e2e "), 100_000) // 1.2 MB
	if c := e.raw2(t, "PUT", base+"/files?path=/data/blob.bin", key, payload, nil); c != 200 {
		t.Fatalf("upload: %d", c)
	}
	var listing struct {
		Entries []fileEntryJSON `json:"entries"`
	}
	if c := e.do(t, "GET", base+"/files/list?path=/data", key, nil, &listing); c != 200 || len(listing.Entries) != 1 ||
		listing.Entries[0].Name != "blob.bin" || listing.Entries[0].Size != uint64(len(payload)) {
		t.Fatalf("list files: %d %+v", c, listing)
	}
	var down []byte
	if c := e.raw2(t, "GET", base+"/files?path=/data/blob.bin", key, nil, &down); c != 200 || !bytes.Equal(down, payload) {
		t.Fatalf("download: %d, %d bytes", c, len(down))
	}

	// Another team gets 404 for each of these.
	for _, r := range []struct{ method, path string }{
		{"GET", base}, {"DELETE", base}, {"POST", base + "/pause"}, {"POST", base + "/exec"},
		{"GET", base + "/files?path=/data/blob.bin"}, {"GET", base + "/files/list?path=/"},
	} {
		body := any(nil)
		if r.path == base+"/exec" {
			body = map[string]any{"cmd": "true"}
		}
		if c := e.do(t, r.method, r.path, keyB, body, nil); c != 404 {
			t.Fatalf("%s %s by another team: %d", r.method, r.path, c)
		}
	}

	// Pause and resume: memory (the counter goes on from where it was)
	// and files survive.
	counter := func() int {
		t.Helper()
		var r execResultJSON
		if c := e.do(t, "POST", base+"/exec", key, map[string]any{"cmd": "cat /tmp/counter"}, &r); c != 200 || r.ExitCode != 0 {
			t.Fatalf("read counter: %d %+v", c, r)
		}
		var n int
		fmt.Sscan(r.Stdout, &n)
		return n
	}
	// Egress rules: replaced, read back; another team's and bad rules
	// change nothing. The host's copy is made to differ while paused: the
	// resume gives it the record's rules again.
	rules := map[string]any{"allow_internet_access": false, "allow_out": []string{"*.example.com", "1.1.1.1/32"}, "deny_out": []string{"secret.example.com"}}
	var nw networkJSON
	if c := e.do(t, "PUT", base+"/network", key, rules, &nw); c != 200 || *nw.AllowInternetAccess || len(nw.AllowOut) != 2 {
		t.Fatalf("set network: %d %+v", c, nw)
	}
	if c := e.do(t, "PUT", base+"/network", keyB, map[string]any{}, nil); c != 404 {
		t.Fatalf("set network by another team: %d", c)
	}
	if c := e.do(t, "PUT", base+"/network", key, map[string]any{"allow_out": []string{"example.com"}}, nil); c != 400 {
		t.Fatalf("names with internet access on: %d", c)
	}
	if c := e.do(t, "PUT", base+"/network", key, map[string]any{"deny_out": []string{"10.0.0.0/40"}}, nil); c != 400 {
		t.Fatalf("bad CIDR: %d", c)
	}
	agentRules := func() *pb.NetworkRules {
		t.Helper()
		r, err := agent.Client(t).GetSandbox(t.Context(), connect.NewRequest(&pb.GetSandboxRequest{SandboxId: sb.ID}))
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg.GetSandbox().GetNetwork()
	}
	if c := e.do(t, "GET", base+"/network", key, nil, &nw); c != 200 || *nw.AllowInternetAccess || !slices.Equal(nw.DenyOut, []string{"secret.example.com"}) ||
		!slices.Equal(agentRules().GetAllowOut(), nw.AllowOut) {
		t.Fatalf("get network: %d %+v, on the host %+v", c, nw, agentRules())
	}

	before := counter()
	if c := e.do(t, "POST", base+"/pause", key, nil, &got); c != 200 || got.State != "paused" {
		t.Fatalf("pause: %d %+v", c, got)
	}
	if c := e.do(t, "POST", base+"/exec", key, map[string]any{"cmd": "true"}, nil); c != 409 {
		t.Fatalf("exec while paused: %d", c)
	}
	if _, err := agent.Client(t).SetSandboxNetwork(t.Context(), connect.NewRequest(&pb.SetSandboxNetworkRequest{SandboxId: sb.ID,
		Network: &pb.NetworkRules{AllowInternet: true}})); err != nil {
		t.Fatal(err)
	}
	if c := e.do(t, "POST", base+"/resume", key, nil, &got); c != 200 || got.State != "running" {
		t.Fatalf("resume: %d %+v", c, got)
	}
	if r := agentRules(); r.GetAllowInternet() || !slices.Equal(r.GetAllowOut(), nw.AllowOut) {
		t.Fatalf("the host's rules after the resume: %+v, want the record's %+v", r, nw)
	}
	if after := counter(); after < before {
		t.Fatalf("counter went back from %d to %d across pause/resume", before, after)
	}
	if c := e.raw2(t, "GET", base+"/files?path=/data/blob.bin", key, nil, &down); c != 200 || !bytes.Equal(down, payload) {
		t.Fatalf("download after resume: %d, %d bytes", c, len(down))
	}

	// Snapshot, then a sandbox from it sees the file.
	var snap snapshotJSON
	if c := e.do(t, "POST", "/v1/snapshots", key, map[string]any{"sandbox_id": sb.ID, "name": "e2e-snap"}, &snap); c != 201 || snap.Name != "e2e-snap" {
		t.Fatalf("snapshot: %d %+v", c, snap)
	}
	if c := e.do(t, "POST", "/v1/snapshots", keyB, map[string]any{"sandbox_id": sb.ID, "name": "stolen"}, nil); c != 404 {
		t.Fatalf("snapshot by another team: %d", c)
	}
	if c := e.do(t, "POST", "/v1/sandboxes", keyB, map[string]any{"template": "e2e-snap"}, nil); c != 404 {
		t.Fatalf("create from another team's snapshot: %d", c)
	}
	var clone sandboxJSON
	if c := e.do(t, "POST", "/v1/sandboxes", key, map[string]any{"template": "e2e-snap"}, &clone); c != 201 || clone.State != "running" || clone.ID == sb.ID {
		t.Fatalf("create from the snapshot: %d %+v", c, clone)
	}
	// Server-Timing names every phase of the create, the host's included.
	var timed []string
	for m := range strings.SplitSeq(e.header.Get("Server-Timing"), ", ") {
		timed = append(timed, strings.SplitN(m, ";", 2)[0])
	}
	if want := "api template schedule db agent-client agent host-prepare host-slot host-restore host-envd host-init host-commit commit total"; strings.Join(timed, " ") != want {
		t.Errorf("Server-Timing of a create from a snapshot: %q, want the phases %s", e.header.Get("Server-Timing"), want)
	}
	t.Cleanup(func() { e.do(t, "DELETE", "/v1/sandboxes/"+clone.ID, key, nil, nil) })
	if c := e.raw2(t, "GET", "/v1/sandboxes/"+clone.ID+"/files?path=/data/blob.bin", key, nil, &down); c != 200 || !bytes.Equal(down, payload) {
		t.Fatalf("the clone's copy of the file: %d, %d bytes", c, len(down))
	}

	// Destroy both (idempotent), and the snapshot.
	for _, id := range []string{sb.ID, clone.ID} {
		for range 2 {
			if c := e.do(t, "DELETE", "/v1/sandboxes/"+id, key, nil, nil); c != 204 {
				t.Fatalf("destroy %s: %d", id, c)
			}
		}
		if c := e.do(t, "GET", "/v1/sandboxes/"+id, key, nil, &got); c != 200 || got.State != "stopped" {
			t.Fatalf("after destroy: %d %+v", c, got)
		}
	}
	if c := e.do(t, "DELETE", "/v1/snapshots/e2e-snap", key, nil, nil); c != 204 {
		t.Fatalf("delete snapshot: %d", c)
	}
	if c := e.do(t, "GET", "/v1/sandboxes?state=running", key, nil, &page); c != 200 || len(page.Sandboxes) != 0 {
		t.Fatalf("running after destroy: %d %+v", c, page)
	}

	// The audit log tells the story, newest first, with the API key as the
	// actor; the other team's log has none of it.
	var logs auditPage
	if c := e.do(t, "GET", "/v1/audit-logs?resource_type=sandbox,snapshot&limit=200", jwt, nil, &logs); c != 200 {
		t.Fatalf("audit logs: %d", c)
	}
	var actions []string
	for i := len(logs.AuditLogs) - 1; i >= 0; i-- {
		l := logs.AuditLogs[i]
		if l.ActorType != "api_key" || l.Status != "success" {
			t.Errorf("audit %s: actor %s, status %s", l.Action, l.ActorType, l.Status)
		}
		actions = append(actions, l.Action+":"+shortID(l.ResourceID, sb.ID, clone.ID))
	}
	want := []string{
		"sandbox.create:sb", "sandbox.set_network:sb", "sandbox.pause:sb", "sandbox.resume:sb", "snapshot.create:e2e-snap",
		"sandbox.create:clone", "sandbox.destroy:sb", "sandbox.destroy:clone", "snapshot.delete:e2e-snap",
	}
	if !slices.Equal(actions, want) {
		t.Fatalf("audit trail:\n got %v\nwant %v", actions, want)
	}
	if c := e.do(t, "GET", "/v1/audit-logs?resource_type=sandbox,snapshot", jwtB, nil, &logs); c != 200 || len(logs.AuditLogs) != 0 {
		t.Fatalf("the other team's audit log: %d, %d events", c, len(logs.AuditLogs))
	}
}

func shortID(id, sb, clone string) string {
	switch id {
	case sb:
		return "sb"
	case clone:
		return "clone"
	}
	return id
}

// raw2 sends a raw body (nil: none) and reads the raw answer into out
// (when not nil).
func (e *apiEnv) raw2(t *testing.T, method, path, key string, body []byte, out *[]byte) int {
	t.Helper()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, _ := http.NewRequest(method, e.srv.URL+path, rd)
	req.Header.Set("X-API-Key", key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		*out = data
	}
	return resp.StatusCode
}
