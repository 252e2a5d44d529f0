package api

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestTeamStatsAndUsageRoutes: the stats and usage routes answer their
// documented shapes for the caller's team only (another team's sandboxes
// never count), and refuse bad ranges with 400.
func TestTeamStatsAndUsageRoutes(t *testing.T) {
	e := newAPI(t, "", "")
	ctx := context.Background()
	_, keyA, teamA := e.account(t, "a@example.com")
	jwtB, keyB, _ := e.account(t, "b@example.com")
	tid, err := wireid.Parse(wireid.Team, teamA)
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range []struct {
		state    string
		vcpus    int32
		memoryMB int32
	}{{store.SandboxRunning, 2, 1024}, {store.SandboxPaused, 1, 512}} {
		if _, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: tid, Template: "minimal", State: sb.state,
			VCPUs: sb.vcpus, MemoryMB: sb.memoryMB, AllowInternetAccess: true, Metadata: json.RawMessage(`{}`)}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name string
		cred string
		want teamFiguresJSON
	}{
		{"own team", keyA, teamFiguresJSON{Running: 1, Paused: 1, ReservedVCPUs: 2, ReservedMemoryMB: 1024 + 256}},
		{"another team's key", keyB, teamFiguresJSON{}},
		{"another team's session", jwtB, teamFiguresJSON{}},
	} {
		t.Run("stats "+tc.name, func(t *testing.T) {
			var st teamStatsJSON
			if c := e.do(t, "GET", "/v1/sandboxes/stats?range=5m", tc.cred, nil, &st); c != 200 {
				t.Fatalf("stats: %d", c)
			}
			if st.Range != "5m" || st.StepSec != 10 || len(st.Points) != 30 || st.Now != tc.want || st.Peak != tc.want {
				t.Fatalf("stats = %+v, want now and peak %+v, 30 points of 10 s", st, tc.want)
			}
		})
	}
	t.Run("stats default range", func(t *testing.T) {
		var st teamStatsJSON
		if c := e.do(t, "GET", "/v1/sandboxes/stats", keyA, nil, &st); c != 200 || st.Range != "1h" || len(st.Points) != 120 {
			t.Fatalf("stats: %d %s %d points", c, st.Range, len(st.Points))
		}
	})
	today := time.Now().UTC().Format(time.DateOnly)
	t.Run("usage", func(t *testing.T) {
		var u usageJSON
		from := time.Now().UTC().AddDate(0, 0, -2).Format(time.DateOnly)
		if c := e.do(t, "GET", "/v1/sandboxes/usage?from="+from+"&to="+today, keyA, nil, &u); c != 200 {
			t.Fatalf("usage: %d", c)
		}
		if u.From != from || u.To != today || len(u.Days) != 3 || u.Days[2].Date != today || !u.Days[2].Live {
			t.Fatalf("usage = %+v", u)
		}
	})
	for _, tc := range []struct{ name, path string }{
		{"stats bad range", "/v1/sandboxes/stats?range=7d"},
		{"usage without dates", "/v1/sandboxes/usage"},
		{"usage from after to", "/v1/sandboxes/usage?from=2026-12-07&to=2026-12-01"},
		{"usage over 366 days", "/v1/sandboxes/usage?from=2024-01-01&to=2026-01-01"},
		{"usage bad date", "/v1/sandboxes/usage?from=2026-12-1&to=2026-12-07"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var eb errorBody
			if c := e.do(t, "GET", tc.path, keyA, nil, &eb); c != 400 || eb.Code != 400 || eb.Message == "" {
				t.Fatalf("%s: %d %+v, want 400", tc.path, c, eb)
			}
		})
	}
}
