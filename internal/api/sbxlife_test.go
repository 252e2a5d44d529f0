package api

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

func teamUUID(t *testing.T, wire string) pgtype.UUID {
	t.Helper()
	id, err := wireid.Parse(wireid.Team, wire)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// TestPingAndTimeoutRoutes: POST /v1/sandboxes/{id}/ping and /timeout
// (the agent is unreachable: ping of a running sandbox is 503).
func TestPingAndTimeoutRoutes(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	_, keyA, teamA := e.account(t, "a@example.com")
	_, keyB, _ := e.account(t, "b@example.com")
	ins := func(state string) string {
		r, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
			TeamID: teamUUID(t, teamA), Template: "minimal", State: state, VCPUs: 1, MemoryMB: 256, TimeoutSec: 60, Metadata: []byte(`{}`),
		})
		if err != nil {
			t.Fatal(err)
		}
		return service.ID(r.ID)
	}
	running, paused, stopped := ins(store.SandboxRunning), ins(store.SandboxPaused), ins(store.SandboxStopped)
	for _, tc := range []struct {
		name, path, authz string
		body              any
		want              int
	}{
		{"ping, no auth", running + "/ping", "", nil, 401},
		{"ping, other team", running + "/ping", keyB, nil, 404},
		{"ping, malformed ID", "nope/ping", keyA, nil, 404},
		{"ping, paused", paused + "/ping", keyA, nil, 409},
		{"ping, stopped", stopped + "/ping", keyA, nil, 409},
		{"ping, agent down", running + "/ping", keyA, nil, 503},
		{"timeout, no auth", running + "/timeout", "", map[string]any{"timeout_sec": 10}, 401},
		{"timeout, other team", running + "/timeout", keyB, map[string]any{"timeout_sec": 10}, 404},
		{"timeout, missing", running + "/timeout", keyA, map[string]any{}, 400},
		{"timeout, negative", running + "/timeout", keyA, map[string]any{"timeout_sec": -1}, 400},
		{"timeout, too long", running + "/timeout", keyA, map[string]any{"timeout_sec": 31 * 24 * 3600}, 400},
		{"timeout, wrong type", running + "/timeout", keyA, `{"timeout_sec":"10"}`, 400},
		{"timeout, stopped", stopped + "/timeout", keyA, map[string]any{"timeout_sec": 10}, 409},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := e.do(t, "POST", "/v1/sandboxes/"+tc.path, tc.authz, tc.body, nil); c != tc.want {
				t.Fatalf("%d, want %d", c, tc.want)
			}
		})
	}
	var sb sandboxJSON
	if c := e.do(t, "POST", "/v1/sandboxes/"+running+"/timeout", keyA, map[string]any{"timeout_sec": 120}, &sb); c != 200 ||
		sb.TimeoutSec != 120 || sb.EndAt == nil || time.Until(*sb.EndAt) < 100*time.Second {
		t.Fatalf("set timeout: %d %+v", c, sb)
	}
	sb = sandboxJSON{}
	if c := e.do(t, "POST", "/v1/sandboxes/"+running+"/timeout", keyA, map[string]any{"timeout_sec": 0}, &sb); c != 200 || sb.TimeoutSec != 0 || sb.EndAt != nil {
		t.Fatalf("timeout 0: %d %+v", c, sb)
	}
	sb = sandboxJSON{}
	if c := e.do(t, "POST", "/v1/sandboxes/"+paused+"/timeout", keyA, map[string]any{"timeout_sec": 30}, &sb); c != 200 || sb.TimeoutSec != 30 || sb.EndAt != nil {
		t.Fatalf("timeout of a paused sandbox: %d %+v", c, sb)
	}
}

// TestSnapshotRoutes: /v1/snapshots over templates put into the database
// (the agent is unreachable, so creating a snapshot gets as far as 503).
func TestSnapshotRoutes(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	_, keyA, teamA := e.account(t, "a@example.com")
	_, keyB, teamB := e.account(t, "b@example.com")
	n := byte(0)
	mk := func(team pgtype.UUID, name string) string {
		n++
		r, err := e.st.Queries().InsertTemplate(ctx, db.InsertTemplateParams{ID: pgtype.UUID{Bytes: [16]byte{15: n}, Valid: true},
			TeamID: team, Name: name, Kind: store.TemplateSnapshot, VCPUs: 2, MemoryMB: 512, DiskMB: 128, SizeBytes: 4096, Metadata: []byte(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		return service.TemplateID(r.ID)
	}
	ownA := mk(teamUUID(t, teamA), "snap-a")
	pub := mk(store.PlatformTeamID, "pub")
	ownB := mk(teamUUID(t, teamB), "snap-b")
	sbA, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
		TeamID: teamUUID(t, teamA), Template: "minimal", State: store.SandboxRunning, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	sbAPaused, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{
		TeamID: teamUUID(t, teamA), Template: "minimal", State: store.SandboxPaused, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`),
	})
	if err != nil {
		t.Fatal(err)
	}

	var list struct {
		Snapshots []snapshotJSON `json:"snapshots"`
	}
	if c := e.do(t, "GET", "/v1/snapshots", keyA, nil, &list); c != 200 || len(list.Snapshots) != 2 ||
		list.Snapshots[0].ID != pub || !list.Snapshots[0].Public || list.Snapshots[1].ID != ownA || list.Snapshots[1].Public ||
		list.Snapshots[1].Name != "snap-a" || list.Snapshots[1].Kind != "snapshot" || list.Snapshots[1].VCPUs != 2 ||
		list.Snapshots[1].MemoryMB != 512 || list.Snapshots[1].DiskMB != 128 || list.Snapshots[1].SizeBytes != 4096 {
		t.Fatalf("list: %d %+v", c, list)
	}
	var one snapshotJSON
	if c := e.do(t, "GET", "/v1/snapshots/snap-a", keyA, nil, &one); c != 200 || one.ID != ownA {
		t.Fatalf("get: %d %+v", c, one)
	}
	if c := e.do(t, "GET", "/v1/snapshots/pub", keyB, nil, &one); c != 200 || one.ID != pub || !one.Public {
		t.Fatalf("get public: %d %+v", c, one)
	}
	name129 := strings.Repeat("a", 129)
	validBody := func(name string) map[string]any {
		return map[string]any{"sandbox_id": service.ID(sbA.ID), "name": name}
	}
	for _, tc := range []struct {
		name, method, path, authz string
		body                      any
		want                      int
	}{
		{"list, no auth", "GET", "/v1/snapshots", "", nil, 401},
		{"get, no auth", "GET", "/v1/snapshots/snap-a", "", nil, 401},
		{"create, no auth", "POST", "/v1/snapshots", "", validBody("x"), 401},
		{"delete, no auth", "DELETE", "/v1/snapshots/snap-a", "", nil, 401},
		{"get, other team", "GET", "/v1/snapshots/snap-a", keyB, nil, 404},
		{"delete, other team", "DELETE", "/v1/snapshots/snap-a", keyB, nil, 404},
		{"delete, public", "DELETE", "/v1/snapshots/pub", keyA, nil, 403},
		{"delete, unknown", "DELETE", "/v1/snapshots/nope", keyA, nil, 404},
		{"delete, path-like", "DELETE", "/v1/snapshots/..%2Fsnap-a", keyA, nil, 404},
		{"get, path-like", "GET", "/v1/snapshots/..%2Fsnap-b", keyA, nil, 404},
		{"get, a slash", "GET", "/v1/snapshots/x%2Fsnap-a", keyA, nil, 404},
		{"delete, a slash", "DELETE", "/v1/snapshots/x%2Fsnap-a", keyA, nil, 404},
		{"create from another team's sandbox", "POST", "/v1/snapshots", keyB, validBody("x"), 404},
		{"create from a malformed sandbox ID", "POST", "/v1/snapshots", keyA, map[string]any{"sandbox_id": "sb-1", "name": "x"}, 404},
		{"create from a paused sandbox", "POST", "/v1/snapshots", keyA, map[string]any{"sandbox_id": service.ID(sbAPaused.ID), "name": "x"}, 409},
		{"create over an existing name", "POST", "/v1/snapshots", keyA, validBody("snap-a"), 409},
		{"create, unknown field", "POST", "/v1/snapshots", keyA, `{"sandbox_id":"` + service.ID(sbA.ID) + `","name":"x","public":true}`, 400},
		{"name ../x", "POST", "/v1/snapshots", keyA, validBody("../x"), 400},
		{"name a/b", "POST", "/v1/snapshots", keyA, validBody("a/b"), 400},
		{"name .", "POST", "/v1/snapshots", keyA, validBody("."), 400},
		{"name ..", "POST", "/v1/snapshots", keyA, validBody(".."), 400},
		{"name empty", "POST", "/v1/snapshots", keyA, validBody(""), 400},
		{"name of 129", "POST", "/v1/snapshots", keyA, validBody(name129), 400},
		{"name with NUL", "POST", "/v1/snapshots", keyA, validBody("a\x00b"), 400},
		{"name base", "POST", "/v1/snapshots", keyA, validBody("base"), 400},
		{"name minimal", "POST", "/v1/snapshots", keyA, validBody("minimal"), 400},
		{"agent down", "POST", "/v1/snapshots", keyA, validBody("fresh"), 503},
		{"overwrite, agent down", "POST", "/v1/snapshots", keyA, map[string]any{"sandbox_id": service.ID(sbA.ID), "name": "snap-a", "overwrite": true}, 503},
		{"sandbox from another team's snapshot", "POST", "/v1/sandboxes", keyA, map[string]any{"template": "snap-b"}, 404},
		{"sandbox with another shape", "POST", "/v1/sandboxes", keyA, map[string]any{"template": "snap-a", "vcpus": 1}, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c := e.do(t, tc.method, tc.path, tc.authz, tc.body, nil); c != tc.want {
				t.Fatalf("%d, want %d", c, tc.want)
			}
			// Nothing changed.
			for _, team := range []pgtype.UUID{teamUUID(t, teamA), teamUUID(t, teamB)} {
				rows, err := e.st.Queries().ListTemplates(ctx, team)
				if err != nil || len(rows) != 2 {
					t.Fatalf("templates: %d, %v", len(rows), err)
				}
			}
		})
	}
	if c := e.do(t, "GET", "/v1/snapshots", keyB, nil, &list); c != 200 || len(list.Snapshots) != 2 || list.Snapshots[1].ID != ownB {
		t.Fatalf("team B's list: %d %+v", c, list)
	}
}

// TestEnvVarsNotReturned: env vars go in with create and never come out.
func TestEnvVarsNotReturned(t *testing.T) {
	e := newAPI(t, "", "")
	_, key, _ := e.account(t, "env@example.com")
	if c := e.do(t, "POST", "/v1/sandboxes", key, map[string]any{"template": "minimal", "env_vars": map[string]string{"TOKEN": "plain-secret-4711"}}, nil); c != 503 {
		t.Fatalf("create with the agent down: %d", c)
	}
	var page struct {
		Sandboxes []json.RawMessage `json:"sandboxes"`
	}
	if c := e.do(t, "GET", "/v1/sandboxes", key, nil, &page); c != 200 || len(page.Sandboxes) != 1 {
		t.Fatalf("list: %d %d", c, len(page.Sandboxes))
	}
	var sb sandboxJSON
	if err := json.Unmarshal(page.Sandboxes[0], &sb); err != nil {
		t.Fatal(err)
	}
	var got json.RawMessage
	if c := e.do(t, "GET", "/v1/sandboxes/"+sb.ID, key, nil, &got); c != 200 {
		t.Fatalf("get: %d", c)
	}
	for _, body := range []json.RawMessage{page.Sandboxes[0], got} {
		if s := string(body); strings.Contains(s, "plain-secret") || strings.Contains(s, "TOKEN") || strings.Contains(s, "env_vars") {
			t.Fatalf("env vars in %s", s)
		}
	}
}
