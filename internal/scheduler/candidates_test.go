package scheduler_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/scheduler"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// TestCandidatesQuery runs the candidates query on a real PostgreSQL: the
// reservations it sums are those of scheduler.Reservation for every state,
// it returns the host team's hosts only, and it tells which hosts hold the
// template; Choose over its rows then picks the expected host.
func TestCandidatesQuery(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := store.Open(ctx, pgtest.StartForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	pool := st.Pool()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := pool.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	var team, byocTeam pgtype.UUID
	if err := pool.QueryRow(ctx, `INSERT INTO teams (name) VALUES ('regular') RETURNING id`).Scan(&team); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO teams (name, is_byoc) VALUES ('byoc', true) RETURNING id`).Scan(&byocTeam); err != nil {
		t.Fatal(err)
	}
	newHost := func(name string, owner pgtype.UUID, status string, cpus int) pgtype.UUID {
		t.Helper()
		var id pgtype.UUID
		if err := pool.QueryRow(ctx, `INSERT INTO hosts (name, team_id, status, total_vcpus, total_memory_mb, total_disk_mb,
		    labels, last_heartbeat_at) VALUES ($1, $2, $3, $4, 16384, 102400, '{"zone":"a","n":1}', now()) RETURNING id`,
			name, owner, status, cpus).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	p1 := newHost("p1", store.PlatformTeamID, "online", 4)
	p2 := newHost("p2", store.PlatformTeamID, "online", 4)
	p3 := newHost("p3", store.PlatformTeamID, "draining", 4)
	b1 := newHost("b1", byocTeam, "online", 8)
	var tpl pgtype.UUID
	if err := pool.QueryRow(ctx, `INSERT INTO templates (team_id, name, kind, vcpus, memory_mb) VALUES ($1, 'snap', 'snapshot', 1, 512)
	    RETURNING id`, team).Scan(&tpl); err != nil {
		t.Fatal(err)
	}
	if err := st.Queries().UpsertHostTemplate(ctx, db.UpsertHostTemplateParams{HostID: p2, TemplateID: tpl, SizeBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	// One sandbox in every state on p1 (2 vCPUs, 1024 MiB, 100 MiB of disk)
	// and a running one of another size on p2, p3 and b1.
	want := map[pgtype.UUID]scheduler.Resources{}
	for _, state := range store.SandboxStates {
		exec(`INSERT INTO sandboxes (team_id, host_id, template, state, vcpus, memory_mb, disk_mb) VALUES ($1, $2, 'base', $3, 2, 1024, 100)`,
			team, p1, state)
		r := scheduler.Reservation(state, 2, 1024, 100)
		w := want[p1]
		want[p1] = scheduler.Resources{VCPUs: w.VCPUs + r.VCPUs, MemoryMB: w.MemoryMB + r.MemoryMB, DiskMB: w.DiskMB + r.DiskMB}
	}
	for _, h := range []pgtype.UUID{p2, p3, b1} {
		exec(`INSERT INTO sandboxes (team_id, host_id, template, state, vcpus, memory_mb, disk_mb) VALUES ($1, $2, 'base', 'running', 1, 3000, 7)`,
			team, h)
	}
	want[p2] = scheduler.Resources{VCPUs: 1, MemoryMB: 3000, DiskMB: 7}
	want[p3] = scheduler.Resources{} // not online: not summed
	want[b1] = scheduler.Resources{VCPUs: 1, MemoryMB: 3000, DiskMB: 7}
	if want[p1] != (scheduler.Resources{VCPUs: 10, MemoryMB: 5120, DiskMB: 700 + 1024}) {
		t.Fatalf("Reservation sums on p1 = %+v; the test's arithmetic changed", want[p1])
	}

	for _, tc := range []struct {
		name      string
		req       scheduler.Request
		hosts     []string
		holders   []string
		choose    string
		chooseErr scheduler.Reason
	}{
		{name: "regular team sees the platform's hosts; affinity to p2",
			req:   scheduler.Request{Team: team.Bytes, Resources: scheduler.Resources{VCPUs: 1, MemoryMB: 512}, Template: tpl.Bytes, HasTemplate: true},
			hosts: []string{"p1", "p2", "p3"}, holders: []string{"p2"}, choose: "p2"},
		{name: "without template the least loaded: p2 at 3512/16384 memory beats p1 at 11/16 vCPUs",
			req:   scheduler.Request{Team: team.Bytes, Resources: scheduler.Resources{VCPUs: 1, MemoryMB: 512}},
			hosts: []string{"p1", "p2", "p3"}, choose: "p2"},
		{name: "7 vCPUs and 14000 MiB: memory short on p1 and p2, CPU on p1 only",
			req:   scheduler.Request{Team: team.Bytes, Resources: scheduler.Resources{VCPUs: 7, MemoryMB: 14000}},
			hosts: []string{"p1", "p2", "p3"}, chooseErr: scheduler.NotEnoughMemory},
		{name: "BYOC team sees its own host only",
			req:   scheduler.Request{Team: byocTeam.Bytes, BYOC: true, Resources: scheduler.Resources{VCPUs: 1, MemoryMB: 512}, Template: tpl.Bytes, HasTemplate: true},
			hosts: []string{"b1"}, choose: "b1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := db.ListSchedulingCandidatesParams{TeamID: pgtype.UUID{Bytes: scheduler.HostTeam(tc.req), Valid: true}}
			if tc.req.HasTemplate {
				p.TemplateID = pgtype.UUID{Bytes: tc.req.Template, Valid: true}
			}
			rows, err := st.Queries().ListSchedulingCandidates(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			hosts := scheduler.Candidates(rows, tc.req)
			var names, holders []string
			for i, h := range hosts {
				names = append(names, h.Name)
				if len(h.Templates) > 0 {
					holders = append(holders, h.Name)
				}
				if w := want[rows[i].ID]; h.Reserved != w {
					t.Errorf("%s reserved %+v; want %+v", h.Name, h.Reserved, w)
				}
				if h.Tags["zone"] != "a" || len(h.Tags) != 1 {
					t.Errorf("%s tags %v; want zone=a only (non-string labels are not tags)", h.Name, h.Tags)
				}
			}
			if !equal(names, tc.hosts) || !equal(holders, tc.holders) {
				t.Fatalf("hosts %v holding %v; want %v holding %v", names, holders, tc.hosts, tc.holders)
			}
			got, err := scheduler.New(scheduler.Config{}).Choose(hosts, tc.req, time.Now())
			if tc.chooseErr != "" {
				var nh *scheduler.NoHostError
				if !errors.As(err, &nh) || nh.Reason != tc.chooseErr {
					t.Fatalf("Choose = %v, %v; want %s", got.Host, err, tc.chooseErr)
				}
				return
			}
			if err != nil || got.Host.Name != tc.choose {
				t.Fatalf("Choose = %v, %v; want %s", got.Host, err, tc.choose)
			}
		})
	}
}

// TestLockHostForPlacement: the placement re-check locks the chosen host's
// row (a second transaction cannot lock it meanwhile) and sums its
// reservations as the candidates query does, so admission of two creates
// racing for the last room of a host is decided one after the other.
func TestLockHostForPlacement(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := store.Open(ctx, pgtest.StartForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	pool := st.Pool()
	var host, team pgtype.UUID
	if err := pool.QueryRow(ctx, `INSERT INTO teams (name) VALUES ('t') RETURNING id`).Scan(&team); err != nil {
		t.Fatal(err)
	}
	if err := pool.QueryRow(ctx, `INSERT INTO hosts (name, status, total_vcpus, total_memory_mb, total_disk_mb, last_heartbeat_at)
	    VALUES ('h', 'online', 2, 4096, 10000, now()) RETURNING id`).Scan(&host); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO sandboxes (team_id, host_id, template, state, vcpus, memory_mb, disk_mb)
	    VALUES ($1, $2, 'base', 'running', 1, 3072, 10), ($1, $2, 'base', 'paused', 1, 512, 10)`, team, host); err != nil {
		t.Fatal(err)
	}
	req := scheduler.Request{Team: team.Bytes, Resources: scheduler.Resources{VCPUs: 1, MemoryMB: 1024}}
	s := scheduler.New(scheduler.Config{})

	tx1, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx1.Rollback(ctx)
	row, err := st.Queries().WithTx(tx1).LockHostForPlacement(ctx, host)
	if err != nil {
		t.Fatal(err)
	}
	h := scheduler.Locked(row)
	if want := (scheduler.Resources{VCPUs: 1, MemoryMB: 3072, DiskMB: 10 + 10 + 512}); h.Reserved != want {
		t.Fatalf("reserved %+v; want %+v", h.Reserved, want)
	}
	if !s.Admissible(&h, req, time.Now()) {
		t.Fatal("1024 MiB on a host with 1024 MiB free: not admissible")
	}

	t.Run("a second placement waits for the first", func(t *testing.T) {
		tx2, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer tx2.Rollback(ctx)
		if _, err := tx2.Exec(ctx, "SET LOCAL lock_timeout = '200ms'"); err != nil {
			t.Fatal(err)
		}
		_, err = st.Queries().WithTx(tx2).LockHostForPlacement(ctx, host)
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "55P03" { // lock_not_available
			t.Fatalf("a second transaction's lock = %v; want a lock timeout while the first holds it", err)
		}
	})
	t.Run("after the first inserted its sandbox, the second sees it", func(t *testing.T) {
		if _, err := tx1.Exec(ctx, `INSERT INTO sandboxes (team_id, host_id, template, state, vcpus, memory_mb)
		    VALUES ($1, $2, 'base', 'starting', 1, 1024)`, team, host); err != nil {
			t.Fatal(err)
		}
		if err := tx1.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		row, err := st.Queries().LockHostForPlacement(ctx, host)
		if err != nil {
			t.Fatal(err)
		}
		h := scheduler.Locked(row)
		if s.Admissible(&h, req, time.Now()) {
			t.Fatalf("host full (%+v reserved of %+v) still admits 1024 MiB", h.Reserved, h.Total)
		}
	})
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
