package api

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestSandboxLogs: GET /v1/sandboxes/{id}/logs of a destroyed sandbox
// (its console kept in the database, its events in the audit log): pages
// in both directions, filters, JSON-only guest output, another team's
// sandbox a 404, and the retention prune.
func TestSandboxLogs(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	_, keyA, teamA := e.account(t, "a@example.com")
	_, keyB, _ := e.account(t, "b@example.com")
	tid, err := wireid.Parse(wireid.Team, teamA)
	if err != nil {
		t.Fatal(err)
	}
	q := e.st.Queries()
	row, err := q.InsertSandbox(ctx, db.InsertSandboxParams{TeamID: tid, Template: "base", State: store.SandboxStopped,
		VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	id := service.ID(row.ID)
	created := time.Now().Add(-time.Hour).UTC().Truncate(time.Microsecond)
	if _, err := e.st.Pool().Exec(ctx, "UPDATE sandboxes SET created_at = $2 WHERE id = $1", row.ID, created); err != nil {
		t.Fatal(err)
	}
	envdAt := created.Add(2 * time.Second)
	console := "[    0.1] kernel line\n" +
		"time=" + envdAt.Format(time.RFC3339Nano) + ` level=WARN msg="envd warned" path=/x` + "\n" +
		"<img src=x onerror=alert(1)> \x1b[1mbold\x1b[0m\n"
	if err := q.SaveSandboxConsole(ctx, db.SaveSandboxConsoleParams{SandboxID: row.ID, Console: []byte(console)}); err != nil {
		t.Fatal(err)
	}
	for _, ev := range []struct{ action, status string }{
		{"sandbox.create", "success"}, {"sandbox.pause", "error"}, {"sandbox.destroy", "success"},
	} {
		if _, err := q.InsertAuditLog(ctx, db.InsertAuditLogParams{TeamID: tid, ActorType: "system", ActorName: "system",
			ResourceType: "sandbox", ResourceID: id, Action: ev.action, Scope: "team", Status: ev.status,
			Metadata: []byte(`{"why":"test"}`)}); err != nil {
			t.Fatal(err)
		}
	}
	type page struct {
		Logs       []sandboxLogEntryJSON `json:"logs"`
		NextCursor string                `json:"next_cursor"`
	}
	get := func(key string, v url.Values) (int, page) {
		t.Helper()
		var p page
		c := e.do(t, "GET", "/v1/sandboxes/"+id+"/logs?"+v.Encode(), key, nil, &p)
		return c, p
	}
	all := func(v url.Values) []string {
		t.Helper()
		var out []string
		for pages := 0; ; pages++ {
			if pages > 10 {
				t.Fatal("paging does not end")
			}
			c, p := get(keyA, v)
			if c != 200 {
				t.Fatalf("%v: %d", v, c)
			}
			for _, l := range p.Logs {
				out = append(out, l.Source+": "+l.Message)
			}
			if p.NextCursor == "" {
				return out
			}
			v.Set("cursor", p.NextCursor)
		}
	}
	want := []string{
		"console: [    0.1] kernel line",
		"envd: envd warned",
		"console: <img src=x onerror=alert(1)> bold",
		"lifecycle: sandbox created",
		"lifecycle: sandbox paused (failed)",
		"lifecycle: sandbox killed",
	}
	backward := slices.Clone(want)
	slices.Reverse(backward)
	for _, tc := range []struct {
		name string
		v    url.Values
		want []string
	}{
		{"everything", url.Values{}, want},
		{"pages of 2", url.Values{"limit": {"2"}}, want},
		{"backward by 4", url.Values{"limit": {"4"}, "direction": {"backward"}}, backward},
		{"warn and up", url.Values{"level": {"warn"}, "limit": {"1"}}, []string{want[1], want[4]}},
		{"search", url.Values{"search": {"SANDBOX"}}, want[3:]},
		{"since", url.Values{"since": {envdAt.In(time.FixedZone("x", -3*3600)).Format(time.RFC3339Nano)}}, want[1:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := all(tc.v); !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
	_, p := get(keyA, url.Values{"limit": {"3"}, "direction": {"backward"}})
	if l := p.Logs[1]; l.Level != "error" || l.Fields["event"] != "sandbox.pause" || l.Fields["why"] != "test" || l.Fields["actor"] != "system" {
		t.Fatalf("event entry %+v", l)
	}
	// Raw: JSON with the markup escaped, nosniff.
	req, _ := http.NewRequest("GET", e.srv.URL+"/v1/sandboxes/"+id+"/logs", nil)
	req.Header.Set("X-API-Key", keyA)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/json" || res.Header.Get("X-Content-Type-Options") != "nosniff" ||
		strings.Contains(string(body), "<img") || strings.Contains(string(body), "\x1b") {
		t.Fatalf("raw answer %d %v: %s", res.StatusCode, res.Header, body)
	}
	for _, v := range []url.Values{{"level": {"fatal"}}, {"direction": {"sideways"}}, {"limit": {"1001"}}, {"limit": {"0"}},
		{"since": {"yesterday"}}, {"cursor": {"!!"}}, {"search": {strings.Repeat("s", 257)}}} {
		if c, _ := get(keyA, v); c != 400 {
			t.Fatalf("%v: %d, want 400", v, c)
		}
	}
	if c, _ := get(keyB, url.Values{}); c != 404 {
		t.Fatalf("another team's sandbox: %d", c)
	}
	if c := e.do(t, "GET", "/v1/sandboxes/"+strings.Repeat("0", 32)+"/logs", keyA, nil, nil); c != 404 {
		t.Fatalf("unknown sandbox: %d", c)
	}

	// Retention: a prune before the console's time keeps it, one after
	// deletes it; the events stay (the audit log's own retention).
	sbx := e.h.cfg.Sandboxes
	if n, err := sbx.PruneLogs(ctx, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("early prune: %d %v", n, err)
	}
	if n, err := sbx.PruneLogs(ctx, time.Now().Add(time.Minute)); err != nil || n != 1 {
		t.Fatalf("prune: %d %v", n, err)
	}
	if got := all(url.Values{}); !slices.Equal(got, want[3:]) {
		t.Fatalf("after the prune: %q", got)
	}
}
