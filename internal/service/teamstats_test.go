package service

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// testClock is the services' injected clock.
type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *testClock) String() string  { return c.Now().Format(time.RFC3339) }
func day(d int, hm string) time.Time { return statsD0.AddDate(0, 0, d).Add(parseHM(hm)) }
func parseHM(hm string) time.Duration {
	t, _ := time.Parse("15:04", hm)
	return time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute
}
func near(a, b float64) bool         { return math.Abs(a-b) < 1e-6*max(1, math.Abs(b)) }
func minutes(a, b time.Time) float64 { return b.Sub(a).Minutes() }
func overlap(a, b, c, d time.Time) float64 {
	lo, hi := a, b
	if c.After(lo) {
		lo = c
	}
	if d.Before(hi) {
		hi = d
	}
	if !hi.After(lo) {
		return 0
	}
	return minutes(lo, hi)
}

// statsD0 is the first day of the tests' timeline (UTC midnight).
var statsD0 = time.Date(2031, 3, 1, 0, 0, 0, 0, time.UTC)

// stretch is a stretch of a sandbox's life in one state: [from, to).
type stretch struct {
	from, to time.Time
	state    string
}

// life is a sandbox's timeline and what it used while running.
type life struct {
	team         int
	vcpus, mem   int32
	phases       []stretch
	cpuPct       float64 // the VMM's CPU while running
	pssMiB       int64   // its PSS while running (0: only RSS was read)
	rssMiB       int64
	id           pgtype.UUID
	currentState string
}

func (l *life) stateAt(t time.Time) string {
	for _, p := range l.phases {
		if !t.Before(p.from) && t.Before(p.to) {
			return p.state
		}
	}
	return store.SandboxStopped
}

// figuresAt computes, from the timelines alone, what team's sandboxes hold
// at t: the definition the stats must follow (running and starting
// reserve vCPUs and memory, paused ⌈Σ memory / 2⌉).
func figuresAt(lives []*life, team int, t time.Time) TeamFigures {
	var f TeamFigures
	var pausedMem int64
	for _, l := range lives {
		if l.team != team {
			continue
		}
		switch l.stateAt(t) {
		case store.SandboxRunning:
			f.Running++
			f.ReservedVCPUs += l.vcpus
			f.ReservedMemoryMB += int64(l.mem)
		case store.SandboxStarting:
			f.ReservedVCPUs += l.vcpus
			f.ReservedMemoryMB += int64(l.mem)
		case store.SandboxPaused:
			f.Paused++
			pausedMem += int64(l.mem)
		}
	}
	f.ReservedMemoryMB += (pausedMem + 1) / 2
	return f
}

// expectedUsage computes a team's usage of a day from the timelines:
// reserved from the phases' lengths, used from what the sandboxes used
// while they ran.
func expectedUsage(lives []*life, team int, d time.Time) UsageDay {
	u := UsageDay{Day: d}
	end := d.Add(24 * time.Hour)
	for _, l := range lives {
		if l.team != team {
			continue
		}
		for _, p := range l.phases {
			m := overlap(p.from, p.to, d, end)
			switch p.state {
			case store.SandboxRunning:
				mem := l.pssMiB
				if mem == 0 {
					mem = l.rssMiB
				}
				u.CPUUsedMinutes += l.cpuPct / 100 * m
				u.MemoryUsedMiBMinutes += float64(mem) * m
				fallthrough
			case store.SandboxStarting:
				u.VCPUReservedMinutes += float64(l.vcpus) * m
				u.MemoryReservedMiBMinutes += float64(l.mem) * m
			case store.SandboxPaused:
				u.MemoryReservedMiBMinutes += float64(l.mem) / 2 * m // even sizes: ⌈Σ/2⌉ = Σ/2
			}
		}
	}
	return u
}

type statsEnv struct {
	st    *store.Store
	svc   *Services
	clk   *testClock
	lives []*life
	teams []Principal
}

// newStatsEnv is the services on an injected clock over a fresh database
// (no agent: the sandboxes are records) with n teams.
func newStatsEnv(t *testing.T, n int) *statsEnv {
	t.Helper()
	ctx := context.Background()
	clk := &testClock{t: statsD0}
	st, svc := testServices(t, map[string]agentclient.Endpoint{LocalHost: {URL: unreachable, Token: "unused"}},
		func(c *ServicesConfig) { c.Now = clk.Now })
	e := &statsEnv{st: st, svc: svc, clk: clk}
	for i := range n {
		a, err := svc.Accounts.Signup(ctx, Signup{Email: fmt.Sprintf("team%d@example.com", i), Password: "correct horse battery"})
		if err != nil {
			t.Fatal(err)
		}
		e.teams = append(e.teams, a.Principal())
	}
	return e
}

// add records l's sandbox: created at its first phase, stopped at the end
// of its last (its state follows the clock in apply).
func (e *statsEnv) add(t *testing.T, l *life) {
	t.Helper()
	ctx := context.Background()
	row, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: pgUUID(e.teams[l.team].TeamID), Template: "minimal",
		State: store.SandboxStopped, VCPUs: l.vcpus, MemoryMB: l.mem, AllowInternetAccess: true, Metadata: []byte(`{}`)})
	if err != nil {
		t.Fatal(err)
	}
	l.id, l.currentState = row.ID, store.SandboxStopped
	if _, err := e.st.Pool().Exec(ctx, `UPDATE sandboxes SET created_at = $2, stopped_at = $3 WHERE id = $1`,
		row.ID, l.phases[0].from, l.phases[len(l.phases)-1].to); err != nil {
		t.Fatal(err)
	}
	e.lives = append(e.lives, l)
}

// storePoints stores l's 5-minute metric points while it ran, as a pause
// or destroy stores them.
func (e *statsEnv) storePoints(t *testing.T, l *life) {
	t.Helper()
	p := db.UpsertSandboxMetricsParams{SandboxID: l.id, Tier: MetricTier24h}
	for _, ph := range l.phases {
		if ph.state != store.SandboxRunning {
			continue
		}
		for ts := ph.from; ts.Before(ph.to); ts = ts.Add(5 * time.Minute) {
			p.Ts = append(p.Ts, ts)
			p.CpuPct = append(p.CpuPct, l.cpuPct)
			p.MemRss = append(p.MemRss, l.rssMiB<<20)
			p.MemPss = append(p.MemPss, l.pssMiB<<20)
			p.DiskUsed = append(p.DiskUsed, 1<<20)
			p.HasGuest = append(p.HasGuest, false)
			p.GuestCpuCount = append(p.GuestCpuCount, 0)
			p.GuestCpuPct = append(p.GuestCpuPct, 0)
			p.GuestMemUsed = append(p.GuestMemUsed, 0)
			p.GuestMemTotal = append(p.GuestMemTotal, 0)
			p.GuestMemCache = append(p.GuestMemCache, 0)
			p.GuestDiskUsed = append(p.GuestDiskUsed, 0)
			p.GuestDiskTotal = append(p.GuestDiskTotal, 0)
		}
	}
	if err := e.st.Queries().UpsertSandboxMetrics(context.Background(), p); err != nil {
		t.Fatal(err)
	}
}

// apply moves the sandboxes' states to what their timelines say at t.
func (e *statsEnv) apply(t *testing.T, at time.Time) {
	t.Helper()
	for _, l := range e.lives {
		if s := l.stateAt(at); s != l.currentState {
			if _, err := e.st.Pool().Exec(context.Background(), `UPDATE sandboxes SET state = $2 WHERE id = $1`, l.id, s); err != nil {
				t.Fatal(err)
			}
			l.currentState = s
		}
	}
}

// run samples every 10 s slot of [from, to) through the service's
// sampler, the states following the timelines; at is called after the
// sample of each slot. (Outside the windows the tests run, nothing is
// alive: a sample there records nothing, so skipping it changes nothing.)
func (e *statsEnv) run(t *testing.T, from, to time.Time, at func(time.Time)) {
	t.Helper()
	for ts := from; ts.Before(to); ts = ts.Add(TeamStatsInterval) {
		e.clk.Set(ts)
		e.apply(t, ts)
		if _, err := e.svc.Stats.Sample(context.Background()); err != nil {
			t.Fatal(err)
		}
		if at != nil {
			at(ts)
		}
	}
}

// checkStats compares the stats of team over rng with the figures the
// timelines give for every sampled slot up to now (from sampledFrom).
func (e *statsEnv) checkStats(t *testing.T, team int, rng string, sampledFrom time.Time) {
	t.Helper()
	now := e.clk.Now()
	got, err := e.svc.Stats.Stats(context.Background(), e.teams[team], rng)
	if err != nil {
		t.Fatal(err)
	}
	r := TeamStatsRanges[rng]
	if want := int(r.Span / r.Step); len(got.Points) != want {
		t.Fatalf("%s: %d points, want %d", rng, len(got.Points), want)
	}
	wantNow := figuresAt(e.lives, team, now)
	if got.Now != wantNow {
		t.Errorf("%s at %s: now = %+v, want %+v", rng, now.Format(time.TimeOnly), got.Now, wantNow)
	}
	peak := wantNow
	for i, pt := range got.Points {
		want := TeamFigures{}
		for ts := pt.Timestamp; ts.Before(pt.Timestamp.Add(r.Step)); ts = ts.Add(TeamStatsInterval) {
			if !ts.Before(sampledFrom) && !ts.After(now) {
				want = want.max(figuresAt(e.lives, team, ts))
			}
		}
		peak = peak.max(want)
		if pt.TeamFigures != want {
			t.Errorf("%s: point %d (%s) = %+v, want %+v", rng, i, pt.Timestamp.Format(time.DateTime), pt.TeamFigures, want)
		}
		if i > 0 && pt.Timestamp.Sub(got.Points[i-1].Timestamp) != r.Step {
			t.Errorf("%s: points %d and %d are not %s apart", rng, i-1, i, r.Step)
		}
	}
	if last := got.Points[len(got.Points)-1].Timestamp; last.After(now) || now.Sub(last) >= r.Step {
		t.Errorf("%s: last bucket %s does not hold now %s", rng, last, now)
	}
	if got.Peak != peak {
		t.Errorf("%s: peak = %+v, want %+v", rng, got.Peak, peak)
	}
}

func sameUsage(a, b UsageDay) bool {
	return near(a.CPUUsedMinutes, b.CPUUsedMinutes) && near(a.MemoryUsedMiBMinutes, b.MemoryUsedMiBMinutes) &&
		near(a.VCPUReservedMinutes, b.VCPUReservedMinutes) && near(a.MemoryReservedMiBMinutes, b.MemoryReservedMiBMinutes)
}

// checkUsage compares team's usage of [from, to] with the timelines;
// live says which days must be computed live.
func (e *statsEnv) checkUsage(t *testing.T, team int, from, to int, live map[int]bool) {
	t.Helper()
	got, err := e.svc.Stats.Usage(context.Background(), e.teams[team], statsD0.AddDate(0, 0, from).Format(time.DateOnly),
		statsD0.AddDate(0, 0, to).Format(time.DateOnly))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Days) != to-from+1 {
		t.Fatalf("%d days, want %d", len(got.Days), to-from+1)
	}
	var total UsageDay
	for i, d := range got.Days {
		want := expectedUsage(e.lives, team, statsD0.AddDate(0, 0, from+i))
		total.add(want)
		if !d.Day.Equal(want.Day) || !sameUsage(d, want) {
			t.Errorf("team %d, day %d: %+v, want %+v", team, from+i, d, want)
		}
		if d.Live != live[from+i] {
			t.Errorf("team %d, day %d: live %v, want %v", team, from+i, d.Live, live[from+i])
		}
	}
	if !sameUsage(got.Total, total) {
		t.Errorf("team %d: total %+v, want %+v", team, got.Total, total)
	}
}

// TestTeamStatsAndUsage runs sandboxes' lifetimes (records whose states
// follow an injected clock) through the service's 10 s sampler and checks
// that the stats ranges, the now and peak figures and the daily usage
// (used and reserved, live and rolled up) match what the lifetimes give,
// computed here independently, per team (a team never sees another's);
// then that the rollup catches up on every day it missed and that it,
// not the raw rows, is what past days are read from.
func TestTeamStatsAndUsage(t *testing.T) {
	e := newStatsEnv(t, 2)
	ctx := context.Background()
	run, pause, start := store.SandboxRunning, store.SandboxPaused, store.SandboxStarting
	lives := []*life{
		// Team 0: one sandbox across midnight, paused and resumed; one
		// that starts and runs after midnight; one on day 2.
		{team: 0, vcpus: 2, mem: 1024, cpuPct: 50, pssMiB: 300, rssMiB: 700, phases: []stretch{
			{day(0, "23:00"), day(1, "00:30"), run}, {day(1, "00:30"), day(1, "01:00"), pause}, {day(1, "01:00"), day(1, "01:20"), run}}},
		{team: 0, vcpus: 1, mem: 512, cpuPct: 25, pssMiB: 100, rssMiB: 400, phases: []stretch{
			{day(1, "00:00"), day(1, "00:05"), start}, {day(1, "00:05"), day(1, "00:40"), run}}},
		{team: 0, vcpus: 4, mem: 2048, cpuPct: 100, pssMiB: 1000, rssMiB: 1200, phases: []stretch{
			{day(2, "12:00"), day(2, "12:30"), run}}},
		// Team 1: one sandbox across midnight (no PSS read: its RSS counts).
		{team: 1, vcpus: 1, mem: 256, cpuPct: 10, rssMiB: 100, phases: []stretch{
			{day(0, "23:30"), day(1, "00:10"), run}}},
	}
	for _, l := range lives {
		e.add(t, l)
		e.storePoints(t, l)
	}

	t.Run("stats", func(t *testing.T) {
		w1 := day(0, "22:55")
		checks := map[time.Time]func(){
			day(0, "23:40"): func() { e.checkStats(t, 0, "5m", w1); e.checkStats(t, 1, "5m", w1) },
			day(1, "00:20"): func() {
				for _, rng := range []string{"5m", "1h", "6h", "24h"} {
					e.checkStats(t, 0, rng, w1)
					e.checkStats(t, 1, rng, w1)
				}
			},
			day(1, "00:45"): func() { e.checkStats(t, 0, "1h", w1) }, // paused: no vCPU, half its memory
		}
		e.run(t, w1, day(1, "01:25"), func(ts time.Time) {
			if c := checks[ts]; c != nil {
				c()
			}
		})
		// Nothing runs any more: now is zeros, the peaks remain.
		for _, rng := range []string{"1h", "24h", "30d"} {
			e.checkStats(t, 0, rng, w1)
			e.checkStats(t, 1, rng, w1)
		}
		e.run(t, day(2, "11:55"), day(2, "12:35"), nil)
		e.checkStats(t, 0, "30d", w1)
		e.checkStats(t, 1, "30d", w1)
	})

	t.Run("usage live", func(t *testing.T) {
		// Today is day 2, nothing is rolled up: every day is computed.
		e.checkUsage(t, 0, 0, 2, map[int]bool{0: true, 1: true, 2: true})
		e.checkUsage(t, 1, 0, 2, map[int]bool{0: true, 1: true, 2: true})
	})

	t.Run("rollup", func(t *testing.T) {
		rolled, err := e.svc.Stats.RollUp(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// The retention window up to yesterday: 60 days, days 0 and 1 last.
		if len(rolled) != 60 || !rolled[58].Equal(statsD0) || !rolled[59].Equal(day(1, "00:00")) {
			t.Fatalf("rolled up %d days, last %v", len(rolled), rolled[len(rolled)-2:])
		}
		again, err := e.svc.Stats.RollUp(ctx)
		if err != nil || len(again) != 0 {
			t.Fatalf("a second rollup rolled %v, %v", again, err)
		}
		// Past days now come from the rollup: drop their raw rows (as
		// retention would) and they read the same.
		for _, q := range []string{`DELETE FROM team_stats WHERE ts < $1`, `DELETE FROM sandbox_metrics WHERE ts < $1`} {
			if _, err := e.st.Pool().Exec(ctx, q, day(2, "00:00")); err != nil {
				t.Fatal(err)
			}
		}
		e.checkUsage(t, 0, 0, 2, map[int]bool{2: true})
		e.checkUsage(t, 1, 0, 2, map[int]bool{2: true})
	})

	t.Run("rollup catches up", func(t *testing.T) {
		// The job did not run for three days.
		e.clk.Set(day(5, "01:00"))
		rolled, err := e.svc.Stats.RollUp(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := []time.Time{day(2, "00:00"), day(3, "00:00"), day(4, "00:00")}
		if fmt.Sprint(rolled) != fmt.Sprint(want) {
			t.Fatalf("rolled up %v, want %v", rolled, want)
		}
		if _, err := e.st.Pool().Exec(ctx, `DELETE FROM team_stats; DELETE FROM sandbox_metrics`); err != nil {
			t.Fatal(err)
		}
		e.checkUsage(t, 0, 0, 5, map[int]bool{5: true})
		e.checkUsage(t, 1, 0, 5, map[int]bool{5: true})
		// Days after today are left out.
		got, err := e.svc.Stats.Usage(ctx, e.teams[0], day(4, "00:00").Format(time.DateOnly), day(9, "00:00").Format(time.DateOnly))
		if err != nil || len(got.Days) != 2 {
			t.Fatalf("usage to a future day: %+v, %v", got, err)
		}
	})
}

// TestTeamStatsPausedMemory: paused sandboxes reserve no vCPU and
// ⌈Σ memory / 2⌉ of the team's paused memory; stopped, failed and lost
// ones nothing; now is read from the table (zeros when nothing is held).
func TestTeamStatsPausedMemory(t *testing.T) {
	e := newStatsEnv(t, 1)
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		state string
		vcpus int32
		mem   int32
		want  TeamFigures
	}{
		{"nothing", "", 0, 0, TeamFigures{}},
		{"paused 255", store.SandboxPaused, 2, 255, TeamFigures{Paused: 1, ReservedMemoryMB: 128}},
		{"paused 256 more", store.SandboxPaused, 2, 256, TeamFigures{Paused: 2, ReservedMemoryMB: 256}},
		{"stopped", store.SandboxStopped, 8, 8192, TeamFigures{Paused: 2, ReservedMemoryMB: 256}},
		{"error", store.SandboxError, 8, 8192, TeamFigures{Paused: 2, ReservedMemoryMB: 256}},
		{"missing", store.SandboxMissing, 8, 8192, TeamFigures{Paused: 2, ReservedMemoryMB: 256}},
		{"pausing", store.SandboxPausing, 1, 100, TeamFigures{Paused: 2, ReservedVCPUs: 1, ReservedMemoryMB: 356}},
		{"running", store.SandboxRunning, 3, 1000, TeamFigures{Running: 1, Paused: 2, ReservedVCPUs: 4, ReservedMemoryMB: 1356}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.state != "" {
				if _, err := e.st.Queries().InsertSandbox(ctx, db.InsertSandboxParams{TeamID: pgUUID(e.teams[0].TeamID), Template: "minimal",
					State: tc.state, VCPUs: tc.vcpus, MemoryMB: tc.mem, AllowInternetAccess: true, Metadata: []byte(`{}`)}); err != nil {
					t.Fatal(err)
				}
			}
			got, err := e.svc.Stats.Stats(ctx, e.teams[0], "5m")
			if err != nil || got.Now != tc.want {
				t.Fatalf("now = %+v, %v; want %+v", got.Now, err, tc.want)
			}
		})
	}
}

// TestTeamStatsPrune: samples and hourly maxima older than 60 days go,
// rollups older than the usage retention go, the rest stays.
func TestTeamStatsPrune(t *testing.T) {
	e := newStatsEnv(t, 1)
	ctx := context.Background()
	team := pgUUID(e.teams[0].TeamID)
	now := day(100, "12:00")
	e.clk.Set(now)
	q := e.st.Queries()
	for _, ts := range []time.Time{now.Add(-61 * 24 * time.Hour), now.Add(-59 * 24 * time.Hour)} {
		args := db.InsertTeamStatsParams{Ts: ts, TeamIds: []pgtype.UUID{team}, Running: []int32{1}, Paused: []int32{0},
			VCPUs: []int32{1}, MemoryMB: []int64{512}}
		if err := q.InsertTeamStats(ctx, args); err != nil {
			t.Fatal(err)
		}
		if err := q.UpsertTeamStatsRollup(ctx, db.UpsertTeamStatsRollupParams{TeamIds: args.TeamIds, Running: args.Running,
			Paused: args.Paused, VCPUs: args.VCPUs, MemoryMB: args.MemoryMB, StepS: []int32{300, 3600},
			Buckets: []time.Time{ts.Truncate(5 * time.Minute), ts.Truncate(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []time.Time{dayOf(now).AddDate(0, 0, -UsageRetentionDays-1), dayOf(now).AddDate(0, 0, -10)} {
		if _, err := e.st.Pool().Exec(ctx, `INSERT INTO team_usage_daily VALUES ($1, $2, 1, 1, 1, 1)`, team, d); err != nil {
			t.Fatal(err)
		}
		if err := q.MarkUsageDayRolledUp(ctx, db.MarkUsageDayRolledUpParams{Day: pgDate(d), RolledAt: now}); err != nil {
			t.Fatal(err)
		}
	}
	n, err := e.svc.Stats.Prune(ctx)
	if err != nil || n != 5 {
		t.Fatalf("Prune = %d, %v; want 5 rows (a sample, its 5 minutes, its hour, a rollup, its mark)", n, err)
	}
	for _, c := range []struct {
		table string
		want  int
	}{{"team_stats", 1}, {"team_stats_rollup", 2}, {"team_usage_daily", 1}, {"usage_rollup_days", 1}} {
		var got int
		if err := e.st.Pool().QueryRow(ctx, "SELECT count(*) FROM "+c.table).Scan(&got); err != nil || got != c.want {
			t.Errorf("%s: %d rows, %v; want %d", c.table, got, err, c.want)
		}
	}
}

// TestTeamStatsBadRequests: bad ranges are refused (ErrInvalid) before
// anything is read.
func TestTeamStatsBadRequests(t *testing.T) {
	e := newStatsEnv(t, 1)
	ctx := context.Background()
	p := e.teams[0]
	for _, tc := range []struct{ name, from, to string }{
		{"from after to", "2031-03-05", "2031-03-01"},
		{"367 days", "2030-01-01", "2031-01-02"},
		{"bad from", "2031-3-1", "2031-03-02"},
		{"bad to", "2031-03-01", "tomorrow"},
		{"no from", "", "2031-03-02"},
		{"a time", "2031-03-01T00:00:00Z", "2031-03-02"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := e.svc.Stats.Usage(ctx, p, tc.from, tc.to); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Usage(%q, %q) = %v, want invalid", tc.from, tc.to, err)
			}
		})
	}
	t.Run("366 days", func(t *testing.T) {
		if _, err := e.svc.Stats.Usage(ctx, p, "2030-01-01", "2031-01-01"); err != nil {
			t.Fatal(err)
		}
	})
	for _, rng := range []string{"", "10m", "7d", "30D"} {
		t.Run("range "+rng, func(t *testing.T) {
			if _, err := e.svc.Stats.Stats(ctx, p, rng); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Stats(%q) = %v, want invalid", rng, err)
			}
		})
	}
}
