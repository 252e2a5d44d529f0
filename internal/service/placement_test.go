package service

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// addHost inserts a host of team with a fresh heartbeat (status online)
// and the given totals; nobody answers at its address.
func (e *env) addHost(t *testing.T, team pgtype.UUID, name string, vcpus int32, memoryMB int64) pgtype.UUID {
	t.Helper()
	ctx := context.Background()
	h, err := e.st.Queries().CreateHostRecord(ctx, db.CreateHostRecordParams{TeamID: team, Name: name, Address: "127.0.0.1:1",
		Tags: []string{}, TokenHash: []byte(strings.Repeat(name[:1], 32))[:32], TokenExpiresAt: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Pool().Exec(ctx, `UPDATE hosts SET status = 'online', last_heartbeat_at = now(), total_vcpus = $2,
		total_memory_mb = $3, total_disk_mb = 100000 WHERE id = $1`, h.ID, vcpus, memoryMB); err != nil {
		t.Fatal(err)
	}
	return h.ID
}

func (e *env) hostStatus(t *testing.T, id pgtype.UUID) string {
	t.Helper()
	h, err := e.st.Queries().GetHost(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return h.Status
}

// TestCreateSchedules: a create goes to the scheduler's host (the least
// loaded admissible one) and is recorded there, even when that host's
// agent then fails; a BYOC team lands only on its own hosts, and nobody
// else does; nothing fitting is 503 with the scheduler's reason.
func TestCreateSchedules(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// The static host takes nothing here: the choice is between a and b.
	if _, err := e.st.Pool().Exec(ctx, `UPDATE hosts SET status = 'draining' WHERE name = $1`, LocalHost); err != nil {
		t.Fatal(err)
	}
	_, p := e.signup(t, "sched@example.com")
	busy := e.addHost(t, store.PlatformTeamID, "a-busy", 4, 2048)
	idle := e.addHost(t, store.PlatformTeamID, "b-idle", 4, 2048)
	if _, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{ID: store.NewUUID(), TeamID: pgUUID(p.TeamID), HostID: busy, Template: "base",
		State: store.SandboxRunning, VCPUs: 1, MemoryMB: 1024, Metadata: []byte(`{}`)}); err != nil {
		t.Fatal(err)
	}
	// createdOn creates (the agent is unreachable: the create fails after
	// the record was written on its host) and returns the record's host.
	createdOn := func(t *testing.T, p Principal, mem int32) (pgtype.UUID, error) {
		t.Helper()
		before := map[pgtype.UUID]bool{}
		rows, _ := e.st.Pool().Query(ctx, `SELECT id FROM sandboxes WHERE team_id = $1`, pgUUID(p.TeamID))
		for rows.Next() {
			var id pgtype.UUID
			_ = rows.Scan(&id)
			before[id] = true
		}
		rows.Close()
		_, err := e.sbx.Create(ctx, p, CreateSandbox{Template: "base", MemoryMB: mem})
		var host pgtype.UUID
		rows, _ = e.st.Pool().Query(ctx, `SELECT id, host_id FROM sandboxes WHERE team_id = $1`, pgUUID(p.TeamID))
		defer rows.Close()
		for rows.Next() {
			var id, h pgtype.UUID
			_ = rows.Scan(&id, &h)
			if !before[id] {
				host = h
			}
		}
		return host, err
	}

	t.Run("least loaded", func(t *testing.T) {
		h, err := createdOn(t, p, 512)
		if h != idle {
			t.Fatalf("created on %s (%v), want the idle host %s", hostWireID(h), err, hostWireID(idle))
		}
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("create with the agent down = %v, want ErrUnavailable", err)
		}
	})
	t.Run("nothing fits: 503 with the reason, nothing recorded", func(t *testing.T) {
		h, err := createdOn(t, p, 4096)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "not_enough_memory") || h.Valid {
			t.Errorf("create of 4096 MiB = %v on %v, want 503 not_enough_memory and no record", err, h)
		}
	})
	t.Run("BYOC team on its own hosts only", func(t *testing.T) {
		a, byoc := e.signup(t, "byoc@example.com")
		if _, err := e.st.Pool().Exec(ctx, `UPDATE teams SET is_byoc = true WHERE id = $1`, pgUUID(a.Team.ID)); err != nil {
			t.Fatal(err)
		}
		if _, err := createdOn(t, byoc, 512); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "no_byoc_host") {
			t.Fatalf("BYOC team without a host: %v, want 503 no_byoc_host", err)
		}
		own := e.addHost(t, pgUUID(a.Team.ID), "c-byoc", 64, 65536)
		if h, _ := createdOn(t, byoc, 512); h != own {
			t.Errorf("BYOC team's sandbox on %s, want its host %s", hostWireID(h), hostWireID(own))
		}
		// The BYOC host is the emptiest: still nobody else's.
		for range 3 {
			if h, _ := createdOn(t, p, 256); h == own || !h.Valid {
				t.Errorf("another team's sandbox on %v (the BYOC host is %s)", hostWireID(h), hostWireID(own))
			}
		}
	})
}

// TestMonitorMarksSilentHostsDown: a host without a heartbeat for the
// window is unreachable and its live sandboxes missing (audited as the
// system's host.marked_down); a heartbeat alone does not bring it back —
// it stays unreachable until its agent could be reconciled (here it
// cannot: nothing answers at its address); a host with a fresh heartbeat
// is left alone.
func TestMonitorMarksSilentHostsDown(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	_, p := e.signup(t, "mon@example.com")
	silent := e.addHost(t, store.PlatformTeamID, "silent", 4, 4096)
	fresh := e.addHost(t, store.PlatformTeamID, "fresh", 4, 4096)
	ins := func(host pgtype.UUID, state string) pgtype.UUID {
		r, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{ID: store.NewUUID(), TeamID: pgUUID(p.TeamID), HostID: host, Template: "base",
			State: state, VCPUs: 1, MemoryMB: 256, Metadata: []byte(`{}`)})
		if err != nil {
			t.Fatal(err)
		}
		return r.ID
	}
	running, paused, starting, onFresh := ins(silent, store.SandboxRunning), ins(silent, store.SandboxPaused),
		ins(silent, store.SandboxStarting), ins(fresh, store.SandboxRunning)
	if _, err := e.st.Pool().Exec(ctx, `UPDATE hosts SET last_heartbeat_at = now() - interval '2 minutes' WHERE id = $1`, silent); err != nil {
		t.Fatal(err)
	}
	m := NewMonitor(e.sbx, MonitorConfig{UnreachableAfter: time.Minute})
	state := func(id pgtype.UUID) string {
		r, err := e.st.Queries().GetSandboxByID(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return r.State
	}

	t.Run("marked down", func(t *testing.T) {
		rep, err := m.Pass(ctx)
		if err != nil || rep.Down != 1 || rep.Missing != 2 {
			t.Fatalf("pass = %+v, %v; want 1 host down, 2 sandboxes missing", rep, err)
		}
		if st := e.hostStatus(t, silent); st != store.HostUnreachable {
			t.Errorf("silent host is %s", st)
		}
		for id, want := range map[pgtype.UUID]string{running: store.SandboxMissing, paused: store.SandboxMissing,
			starting: store.SandboxStarting, onFresh: store.SandboxRunning} {
			if got := state(id); got != want {
				t.Errorf("sandbox %s is %s, want %s", ID(id), got, want)
			}
		}
		var n int
		if err := e.st.Pool().QueryRow(ctx, `SELECT count(*) FROM audit_logs WHERE action = 'host.marked_down' AND resource_id = $1
			AND actor_type = 'system'`, hostWireID(silent)).Scan(&n); err != nil || n != 1 {
			t.Errorf("host.marked_down audit rows = %d, %v; want 1", n, err)
		}
	})
	t.Run("a second pass changes nothing", func(t *testing.T) {
		if rep, err := m.Pass(ctx); err != nil || rep.Down != 0 || rep.Up != 0 {
			t.Errorf("pass = %+v, %v", rep, err)
		}
	})
	t.Run("a heartbeat alone does not bring it back", func(t *testing.T) {
		if _, err := e.st.Queries().RecordHostHeartbeat(ctx, db.RecordHostHeartbeatParams{ID: silent, TotalVCPUs: 4, TotalMemoryMB: 4096}); err != nil {
			t.Fatal(err)
		}
		if st := e.hostStatus(t, silent); st != store.HostUnreachable {
			t.Fatalf("after a heartbeat the host is %s, want unreachable until reconciled", st)
		}
		rep, err := m.Pass(ctx)
		if err != nil || rep.Up != 0 {
			t.Errorf("pass = %+v, %v; want nothing up (its agent cannot be reconciled)", rep, err)
		}
		if st := e.hostStatus(t, silent); st != store.HostUnreachable {
			t.Errorf("host is %s, want unreachable", st)
		}
		if got := state(running); got != store.SandboxMissing {
			t.Errorf("sandbox is %s, want missing", got)
		}
	})
}
