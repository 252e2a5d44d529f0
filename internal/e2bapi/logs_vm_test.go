package e2bapi

import (
	"context"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/service"
)

type logsV2JSON struct {
	Logs []sandboxLogEntryJSON `json:"logs"`
}

type logsV1JSON struct {
	Logs       []sandboxLogJSON      `json:"logs"`
	LogEntries []sandboxLogEntryJSON `json:"logEntries"`
}

// TestSandboxLogsRealVM: the logs of a real sandbox (E2B's v1 and v2
// routes) hold its lifecycle events and its console (what the guest
// writes to /dev/console, envd's log), while it runs, while it is paused
// and after it is killed; guest output comes as JSON text (HTML escaped,
// no terminal escapes, nosniff); another team's sandbox is a 404. Its
// network slot pool (ce2, 198.18.152.0/24 + 198.18.153.0/24) is its own.
func TestSandboxLogsRealVM(t *testing.T) {
	agentURL := hosttest.StartAgent(t, hosttest.E2BLogsPool).URL
	e := newEnv(t, agentURL, hosttest.AgentToken)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	p, key := e.account(t, "logs@example.com")
	_, keyB := e.account(t, "intruder@example.com")
	t.Cleanup(func() {
		items, _, _ := e.sbx.List(context.Background(), p, service.ListFilter{})
		for _, sb := range items {
			_ = e.sbx.Destroy(context.Background(), p, sb.ID)
		}
	})

	var a sandboxJSON
	e.do(t, "POST", "/v2/sandboxes", key, map[string]any{"templateID": "minimal", "timeout": 300}).expect(t, 201, &a)
	sb, err := e.sbx.Get(ctx, p, uuidOf(t, a.SandboxID))
	if err != nil {
		t.Fatal(err)
	}
	c := envdclient.New(sb.EnvdURL, a.EnvdAccessToken)
	t.Cleanup(c.Close)
	// The guest writes markup and terminal escapes to its console.
	const marker = "capsule-console-marker"
	res, err := c.Shell(ctx, `printf '<script>alert(1)</script> %s \033[31mred\033[0m\n' `+marker+` > /dev/console`)
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("write to the console: %+v %v", res, err)
	}
	path := "/v2/sandboxes/" + a.SandboxID + "/logs"
	logs := func(q url.Values) (resp, []sandboxLogEntryJSON) {
		t.Helper()
		r := e.do(t, "GET", path+"?"+q.Encode(), key, nil)
		var out logsV2JSON
		r.expect(t, 200, &out)
		return r, out.Logs
	}
	find := func(entries []sandboxLogEntryJSON, pred func(sandboxLogEntryJSON) bool) (sandboxLogEntryJSON, bool) {
		i := slices.IndexFunc(entries, pred)
		if i < 0 {
			return sandboxLogEntryJSON{}, false
		}
		return entries[i], true
	}
	hasMarker := func(l sandboxLogEntryJSON) bool { return strings.Contains(l.Message, marker) }
	event := func(ev string) func(sandboxLogEntryJSON) bool {
		return func(l sandboxLogEntryJSON) bool { return l.Fields["source"] == "lifecycle" && l.Fields["event"] == ev }
	}
	// The console is copied as the guest writes it: wait for the line.
	var r resp
	var entries []sandboxLogEntryJSON
	for deadline := time.Now().Add(30 * time.Second); ; {
		r, entries = logs(url.Values{})
		if _, ok := find(entries, hasMarker); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond) // the console's copy
	}
	line, ok := find(entries, hasMarker)
	if !ok {
		t.Fatalf("no console line with the marker in %d entries: %+v", len(entries), entries)
	}
	if want := "<script>alert(1)</script> " + marker + " red"; line.Message != want || line.Fields["source"] != "console" || line.Level != "info" {
		t.Fatalf("console line %+v, want message %q", line, want)
	}
	if strings.Contains(string(r.body), "<script>") || !strings.Contains(string(r.body), `\u003cscript\u003e`) {
		t.Fatalf("markup not escaped in the body: %s", r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "application/json" || r.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("headers: %v", r.header)
	}
	if _, ok := find(entries, event("sandbox.create")); !ok {
		t.Fatalf("no creation event: %+v", entries)
	}
	if _, ok := find(entries, func(l sandboxLogEntryJSON) bool { return l.Fields["source"] == "envd" }); !ok {
		t.Fatalf("no line of envd's log: %+v", entries)
	}
	for i := 1; i < len(entries); i++ {
		if entries[i].Timestamp.Before(entries[i-1].Timestamp) {
			t.Fatalf("entries out of order at %d: %+v then %+v", i, entries[i-1], entries[i])
		}
	}
	// Filters and direction.
	if _, got := logs(url.Values{"search": {strings.ToUpper(marker)}}); len(got) != 1 || !hasMarker(got[0]) {
		t.Fatalf("search: %+v", got)
	}
	if _, got := logs(url.Values{"level": {"error"}}); slices.ContainsFunc(got, func(l sandboxLogEntryJSON) bool { return l.Level != "error" }) {
		t.Fatalf("level error: %+v", got)
	}
	if _, got := logs(url.Values{"direction": {"backward"}, "limit": {"1"}}); len(got) != 1 || !reflect.DeepEqual(got[0], entries[len(entries)-1]) {
		t.Fatalf("newest entry: %+v, want %+v", got, entries[len(entries)-1])
	}
	after := line.Timestamp.Add(time.Millisecond).UnixMilli()
	if _, got := logs(url.Values{"cursor": {strconv.FormatInt(after, 10)}, "search": {marker}}); len(got) != 0 {
		t.Fatalf("cursor after the line: %+v", got)
	}
	for _, q := range []string{"?level=fatal", "?direction=up", "?limit=1001", "?cursor=x", "?search=" + strings.Repeat("x", 257)} {
		e.do(t, "GET", path+q, key, nil).expect(t, 400, nil)
	}
	e.do(t, "GET", path, keyB, nil).expect(t, 404, nil)
	e.do(t, "GET", "/sandboxes/"+a.SandboxID+"/logs", keyB, nil).expect(t, 404, nil)

	// v1: raw lines and entries.
	var v1 logsV1JSON
	e.do(t, "GET", "/sandboxes/"+a.SandboxID+"/logs?limit=1000", key, nil).expect(t, 200, &v1)
	if len(v1.Logs) != len(v1.LogEntries) || !slices.ContainsFunc(v1.Logs, func(l sandboxLogJSON) bool { return strings.Contains(l.Line, marker) }) {
		t.Fatalf("v1: %+v", v1)
	}

	// Paused: the host still has its console.
	e.do(t, "POST", "/sandboxes/"+a.SandboxID+"/pause", key, nil).expect(t, 204, nil)
	_, entries = logs(url.Values{})
	if _, ok := find(entries, hasMarker); !ok {
		t.Fatalf("paused: no console line: %+v", entries)
	}
	if _, ok := find(entries, event("sandbox.pause")); !ok {
		t.Fatalf("paused: no pause event: %+v", entries)
	}

	// Killed: the console kept at the destroy, the events from the audit
	// log, though the sandbox itself is not found any more.
	e.do(t, "DELETE", "/sandboxes/"+a.SandboxID, key, nil).expect(t, 204, nil)
	e.do(t, "GET", "/sandboxes/"+a.SandboxID, key, nil).expect(t, 404, nil)
	_, entries = logs(url.Values{})
	for _, ev := range []string{"sandbox.create", "sandbox.pause", "sandbox.destroy"} {
		if _, ok := find(entries, event(ev)); !ok {
			t.Fatalf("killed: no %s event: %+v", ev, entries)
		}
	}
	if l, ok := find(entries, hasMarker); !ok || !reflect.DeepEqual(l, line) {
		t.Fatalf("killed: console line %+v, want %+v", l, line)
	}
	e.do(t, "GET", path, keyB, nil).expect(t, 404, nil)
}
