package api

import (
	"context"
	"fmt"
	"testing"

	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestTeamDeleteDestroysSandboxesRealVM: deleting a team destroys its
// sandboxes through the agent (a real VM here, plus one in state error
// the agent does not know) and kills its API keys; another team's
// sandbox is left alone. Its network slot pool (cta, 198.18.100.0/24 +
// 198.18.101.0/24) is its own.
func TestTeamDeleteDestroysSandboxesRealVM(t *testing.T) {
	url := hosttest.StartAgent(t, hosttest.APITeamsPool).URL
	e := newAPI(t, url, hosttest.AgentToken)
	ctx := context.Background()
	owner := e.user(t, "vm-owner@example.com")

	var team teamDetailJSON
	if c := e.do(t, "POST", "/v1/teams", owner.jwt, map[string]string{"name": "doomed"}, &team); c != 201 {
		t.Fatalf("create team: %d", c)
	}
	var sess sessionJSON
	if c := e.do(t, "POST", "/v1/auth/switch-team", owner.jwt, map[string]string{"team_id": team.ID}, &sess); c != 200 {
		t.Fatalf("switch: %d", c)
	}
	var k apiKeyJSON
	if c := e.do(t, "POST", "/v1/api-keys", sess.Token, map[string]string{"name": "ci"}, &k); c != 201 {
		t.Fatalf("key: %d", c)
	}
	var sb sandboxJSON
	if c := e.do(t, "POST", "/v1/sandboxes", k.Key, map[string]any{"template": "minimal", "vcpus": 1, "memory_mb": 256, "timeout_sec": 600}, &sb); c != 201 || sb.State != "running" {
		t.Fatalf("create sandbox: %d %+v", c, sb)
	}
	t.Cleanup(func() { e.do(t, "DELETE", "/v1/sandboxes/"+sb.ID, k.Key, nil, nil) })
	tid := mustUUID(t, wireid.Team, team.ID)
	broken, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: tid, Template: "minimal", State: store.SandboxError, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	elsewhere, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: mustUUID(t, wireid.Team, owner.team), Template: "minimal", State: store.SandboxPaused, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}

	var del struct {
		Destroyed    int `json:"sandboxes_destroyed"`
		NotDestroyed int `json:"sandboxes_not_destroyed"`
	}
	if c := e.do(t, "DELETE", "/v1/teams/"+team.ID, owner.jwt, nil, &del); c != 200 || del.Destroyed != 2 || del.NotDestroyed != 0 {
		t.Fatalf("delete team: %d %+v", c, del)
	}
	for _, id := range []string{sb.ID, wireid.Format(wireid.Sandbox, broken.ID)} {
		row, err := e.st.Queries().GetSandboxByID(ctx, mustUUID(t, wireid.Sandbox, id))
		if err != nil || row.State != store.SandboxStopped {
			t.Fatalf("sandbox %s after the team's deletion: %s, %v", id, row.State, err)
		}
	}
	if row, _ := e.st.Queries().GetSandboxByID(ctx, elsewhere.ID); row.State != store.SandboxPaused {
		t.Fatalf("another team's sandbox: %s", row.State)
	}
	if c := e.do(t, "GET", "/v1/sandboxes", k.Key, nil, nil); c != 401 {
		t.Fatalf("the deleted team's key: %d", c)
	}
	if c := e.do(t, "GET", "/v1/sandboxes", sess.Token, nil, nil); c != 401 {
		t.Fatalf("a session of the deleted team: %d", c)
	}
	// The owner's login falls back to the remaining team.
	var login sessionJSON
	if c := e.do(t, "POST", "/v1/auth/login", "", creds{"email": owner.email, "password": "correct horse battery"}, &login); c != 200 || login.Team == nil || login.Team.ID != owner.team {
		t.Fatalf("login after delete: %d %+v", c, login.Team)
	}
	got := fmt.Sprint(auditActions(t, e, team.ID))
	want := "[team.create api_key.create sandbox.create team.delete sandbox.destroy sandbox.destroy]"
	if got != want {
		t.Fatalf("audit: %s, want %s", got, want)
	}
}
