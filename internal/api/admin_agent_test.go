package api

import (
	"context"
	"slices"
	"testing"

	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
)

// TestAdminDeleteTeamDestroysSandboxes: a platform admin who is no member
// of a team deletes it through the owner's path: each of its sandboxes
// that is not stopped is destroyed through the host agent (a real agent;
// these sandboxes have no VM, so it answers "not found", which destroy
// takes as gone) and its row ends stopped, with sandbox.destroy audited
// as the admin; another team's sandbox is left alone. Its network slot
// pool (cta) is TestTeamDeleteDestroysSandboxesRealVM's: the tests of a
// package run one after the other.
func TestAdminDeleteTeamDestroysSandboxes(t *testing.T) {
	url := hosttest.StartAgent(t, hosttest.APITeamsPool).URL
	e := newAPI(t, url, hosttest.AgentToken)
	ctx := context.Background()
	admin := e.platformAdmin(t, "root@example.com")
	owner := e.user(t, "owner@example.com")
	other := e.user(t, "other@example.com")

	var doomed []string
	for _, st := range []string{store.SandboxRunning, store.SandboxPaused, store.SandboxError, store.SandboxMissing} {
		doomed = append(doomed, service.ID(e.sandboxRow(t, owner.team, st).ID))
	}
	stopped := e.sandboxRow(t, owner.team, store.SandboxStopped)
	elsewhere := e.sandboxRow(t, other.team, store.SandboxRunning)

	var del struct {
		Destroyed    int `json:"sandboxes_destroyed"`
		NotDestroyed int `json:"sandboxes_not_destroyed"`
	}
	if c := e.do(t, "DELETE", "/v1/admin/teams/"+owner.team, admin.jwt, nil, &del); c != 200 || del.Destroyed != len(doomed) || del.NotDestroyed != 0 {
		t.Fatalf("delete: %d %+v, want %d destroyed", c, del, len(doomed))
	}
	for _, id := range doomed {
		row, err := e.st.Queries().GetSandboxByID(ctx, mustUUID(t, "", id))
		if err != nil || row.State != store.SandboxStopped {
			t.Errorf("sandbox %s of the deleted team: %s, %v", id, row.State, err)
		}
	}
	if row, _ := e.st.Queries().GetSandboxByID(ctx, stopped.ID); !row.UpdatedAt.Equal(stopped.UpdatedAt) {
		t.Errorf("the stopped sandbox was touched")
	}
	if row, _ := e.st.Queries().GetSandboxByID(ctx, elsewhere.ID); row.State != store.SandboxRunning {
		t.Errorf("another team's sandbox: %s", row.State)
	}
	var destroys int
	for _, ev := range adminAudit(t, e, admin, owner.team) {
		if ev == "sandbox.destroy "+admin.id+" team" {
			destroys++
		}
	}
	if destroys != len(doomed) || !slices.Contains(adminAudit(t, e, admin, owner.team), "team.delete "+admin.id+" admin") {
		t.Fatalf("audit: %q", adminAudit(t, e, admin, owner.team))
	}
}
