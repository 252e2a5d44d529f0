package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Team stats and usage (issue 12).
//
// A sampler on the replica that leads the background loops records every
// 10 s what each team's sandboxes hold (team_stats: running and paused
// counts, reserved vCPUs and memory) and keeps each 5-minute bucket's and
// each hour's maxima in step (team_stats_rollup, keyed by the bucket's
// width; pruned with the samples). Starting, running, pausing and
// resuming sandboxes reserve their vCPUs and memory; paused ones no vCPU and half their
// memory, ⌈Σ paused memory / 2⌉ per team (the seeds' formula). A team
// holding nothing gets no row: an absent sample is zero. GET
// /v1/sandboxes/stats reads a range as bucket maxima: the 24 h range (5-
// minute buckets) from the 5-minute rollup, 30 d (hourly buckets) from the
// hourly one, each an index range scan of the buckets that had a sample
// (at most 288 and 720 rows; the others are zeros, filled in Go), the
// shorter ranges downsampled in SQL from the samples (at most 2 160 rows);
// the "now" figures live from the sandboxes table.
//
// Usage per UTC day: CPU-minutes and memory-MiB-minutes used, from the
// stored 5-minute points of the sandboxes' metrics (sandbox_metrics tier
// 24h: the VMM's CPU, its PSS), and vCPU-minutes and memory-MiB-minutes
// reserved, from the team's samples (each worth 10 s). A day is rolled up
// (team_usage_daily) by the maintenance job once it is over; the job
// first stores the newest points of the running sandboxes (a sandbox's
// points otherwise reach the database only at its pause or destroy) and
// then rolls up every day of the retention window it has not rolled up
// yet, so a job that did not run for days catches up on all of them.
// Today, and a past day not rolled up yet, are computed live.

// Team stats and usage settings.
const (
	// TeamStatsInterval is how often the sampler records the teams'
	// figures (and what one sample is worth in the reserved minutes).
	TeamStatsInterval = 10 * time.Second
	// TeamStatsRetention is how long the samples are kept.
	TeamStatsRetention = 60 * 24 * time.Hour
	// UsageRetentionDays is how many days the daily rollups are kept.
	UsageRetentionDays = 400
	// MaxUsageDays is the longest range a usage request may span.
	MaxUsageDays = 366
	// usagePointMinutes is what one stored point of the 24 h tier is
	// worth (its 5-minute bucket).
	usagePointMinutes = 5.0
)

// TeamStatsRanges are the ranges of GET /v1/sandboxes/stats: their span
// and the width of the buckets they are read in.
var TeamStatsRanges = map[string]struct {
	Span, Step time.Duration
}{
	"5m": {5 * time.Minute, 10 * time.Second}, "1h": {time.Hour, 30 * time.Second},
	"6h": {6 * time.Hour, 2 * time.Minute}, "24h": {24 * time.Hour, 5 * time.Minute},
	"30d": {30 * 24 * time.Hour, time.Hour},
}

// rollupSteps are the bucket widths the sampler keeps maxima of
// (team_stats_rollup), for the ranges read in them (24h and 30d).
var rollupSteps = []time.Duration{5 * time.Minute, time.Hour}

// TeamFigures are what a team's sandboxes hold at a time (or a bucket's
// maxima).
type TeamFigures struct {
	Running, Paused  int32
	ReservedVCPUs    int32
	ReservedMemoryMB int64
}

func (f TeamFigures) max(o TeamFigures) TeamFigures {
	return TeamFigures{Running: max(f.Running, o.Running), Paused: max(f.Paused, o.Paused),
		ReservedVCPUs: max(f.ReservedVCPUs, o.ReservedVCPUs), ReservedMemoryMB: max(f.ReservedMemoryMB, o.ReservedMemoryMB)}
}

// TeamStatsPoint is a bucket of a range: its start and its maxima.
type TeamStatsPoint struct {
	Timestamp time.Time
	TeamFigures
}

// TeamStatsSeries is a team's figures over a range.
type TeamStatsSeries struct {
	Range    string
	Step     time.Duration
	From, To time.Time
	// Now is read live from the sandboxes table; Peak is the highest of
	// each figure over the range (now included).
	Now, Peak TeamFigures
	Points    []TeamStatsPoint
}

// UsageDay is a team's use and reservations on a UTC day (minutes).
type UsageDay struct {
	Day                      time.Time
	CPUUsedMinutes           float64
	MemoryUsedMiBMinutes     float64
	VCPUReservedMinutes      float64
	MemoryReservedMiBMinutes float64
	// Live: computed now (today, or a day not rolled up yet), not read
	// from the rollup.
	Live bool
}

func (d *UsageDay) add(o UsageDay) {
	d.CPUUsedMinutes += o.CPUUsedMinutes
	d.MemoryUsedMiBMinutes += o.MemoryUsedMiBMinutes
	d.VCPUReservedMinutes += o.VCPUReservedMinutes
	d.MemoryReservedMiBMinutes += o.MemoryReservedMiBMinutes
}

// Usage is a team's usage over a range of days.
type Usage struct {
	From, To time.Time
	Days     []UsageDay
	Total    UsageDay
}

// TeamStats samples the teams' figures and answers the stats and usage
// reads.
type TeamStats struct {
	st  *store.Store
	sbx *Sandboxes
	now func() time.Time
	log *slog.Logger
}

// NewTeamStats returns the team stats over st; sbx reaches the running
// sandboxes' hosts; now is the clock (time.Now when nil).
func NewTeamStats(st *store.Store, sbx *Sandboxes, now func() time.Time, log *slog.Logger) *TeamStats {
	if now == nil {
		now = time.Now
	}
	if log == nil {
		log = slog.Default()
	}
	return &TeamStats{st: st, sbx: sbx, now: now, log: log}
}

// Sample records what every team's sandboxes hold now, in the current
// 10 s slot (a second sample in the same slot replaces the first), and
// raises the maxima of its buckets in the rollups. It returns how many
// teams it recorded.
func (s *TeamStats) Sample(ctx context.Context) (int, error) {
	ts := s.now().UTC().Truncate(TeamStatsInterval)
	rows, err := s.st.Queries().LiveTeamStats(ctx)
	if err != nil {
		return 0, fmt.Errorf("team stats: %w", err)
	}
	if len(rows) == 0 {
		return 0, nil
	}
	n := len(rows)
	ids, running, paused, vcpus, mem := make([]pgtype.UUID, n), make([]int32, n), make([]int32, n), make([]int32, n), make([]int64, n)
	for i, r := range rows {
		ids[i], running[i], paused[i], vcpus[i], mem[i] = r.TeamID, r.Running, r.Paused, r.ReservedVCPUs, r.ReservedMemoryMB
	}
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		if err := q.InsertTeamStats(ctx, db.InsertTeamStatsParams{Ts: ts, TeamIds: ids, Running: running, Paused: paused,
			VCPUs: vcpus, MemoryMB: mem}); err != nil {
			return err
		}
		steps, buckets := make([]int32, len(rollupSteps)), make([]time.Time, len(rollupSteps))
		for i, step := range rollupSteps {
			steps[i], buckets[i] = int32(step/time.Second), ts.Truncate(step)
		}
		return q.UpsertTeamStatsRollup(ctx, db.UpsertTeamStatsRollupParams{TeamIds: ids, Running: running, Paused: paused,
			VCPUs: vcpus, MemoryMB: mem, StepS: steps, Buckets: buckets})
	})
	if err != nil {
		return 0, fmt.Errorf("team stats: %w", err)
	}
	return n, nil
}

// RunSampler samples every TeamStatsInterval until ctx ends (on the
// replica that leads the background loops).
func (s *TeamStats) RunSampler(ctx context.Context) {
	t := time.NewTicker(TeamStatsInterval)
	defer t.Stop()
	for {
		if _, err := s.Sample(ctx); err != nil && ctx.Err() == nil {
			s.log.ErrorContext(ctx, "sample the team stats", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Stats returns p's team's figures over rng (a key of TeamStatsRanges)
// up to now, in buckets of the range's step, each bucket's maxima.
func (s *TeamStats) Stats(ctx context.Context, p Principal, rng string) (TeamStatsSeries, error) {
	r, ok := TeamStatsRanges[rng]
	if !ok {
		return TeamStatsSeries{}, errorf(ErrInvalid, "range: one of 5m, 1h, 6h, 24h, 30d")
	}
	team := pgUUID(p.TeamID)
	now := s.now().UTC()
	last := now.Truncate(r.Step)
	first := last.Add(-(r.Span/r.Step - 1) * r.Step)
	out := TeamStatsSeries{Range: rng, Step: r.Step, From: first, To: now}
	q := s.st.Queries()
	var rollup []TeamStatsPoint // the buckets with a sample, from a rollup
	if slices.Contains(rollupSteps, r.Step) {
		rows, err := q.TeamStatsRollupRange(ctx, db.TeamStatsRollupRangeParams{TeamID: team, StepS: int32(r.Step / time.Second),
			First: first, Last: last})
		if err != nil {
			return TeamStatsSeries{}, fmt.Errorf("team stats: %w", err)
		}
		for _, r := range rows {
			rollup = append(rollup, TeamStatsPoint{r.Ts.UTC(), TeamFigures{r.Running, r.Paused, r.ReservedVCPUs, r.ReservedMemoryMB}})
		}
	} else {
		rows, err := q.TeamStatsSeries(ctx, db.TeamStatsSeriesParams{First: first, Last: last, TeamID: team,
			Step: pgtype.Interval{Microseconds: r.Step.Microseconds(), Valid: true}})
		if err != nil {
			return TeamStatsSeries{}, fmt.Errorf("team stats: %w", err)
		}
		out.Points = make([]TeamStatsPoint, len(rows))
		for i, r := range rows {
			out.Points[i] = TeamStatsPoint{r.Ts.UTC(), TeamFigures{r.Running, r.Paused, r.ReservedVCPUs, r.ReservedMemoryMB}}
		}
	}
	if out.Points == nil {
		out.Points = fillBuckets(first, last, r.Step, rollup)
	}
	live, err := q.LiveTeamStatsOf(ctx, team)
	if err != nil {
		return TeamStatsSeries{}, fmt.Errorf("team stats: %w", err)
	}
	out.Now = TeamFigures{live.Running, live.Paused, live.ReservedVCPUs, live.ReservedMemoryMB}
	out.Peak = out.Now
	for _, pt := range out.Points {
		out.Peak = out.Peak.max(pt.TeamFigures)
	}
	return out, nil
}

// fillBuckets returns the buckets from first to last (step apart), each
// with the figures of the point of rows (ordered by time) at its start,
// zeros where rows has none: a rollup stores only the buckets that had a
// sample.
func fillBuckets(first, last time.Time, step time.Duration, rows []TeamStatsPoint) []TeamStatsPoint {
	out := make([]TeamStatsPoint, 0, int(last.Sub(first)/step)+1)
	for ts := first; !ts.After(last); ts = ts.Add(step) {
		pt := TeamStatsPoint{Timestamp: ts}
		for len(rows) > 0 && rows[0].Timestamp.Before(ts) {
			rows = rows[1:]
		}
		if len(rows) > 0 && rows[0].Timestamp.Equal(ts) {
			pt.TeamFigures = rows[0].TeamFigures
		}
		out = append(out, pt)
	}
	return out
}

// dayOf is the UTC day of t (its midnight).
func dayOf(t time.Time) time.Time {
	y, m, d := t.UTC().Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}

func pgDate(t time.Time) pgtype.Date { return pgtype.Date{Time: t, Valid: true} }

// ParseUsageRange checks a usage request's from and to (YYYY-MM-DD, UTC
// days, from ≤ to, at most MaxUsageDays days).
func ParseUsageRange(from, to string) (time.Time, time.Time, error) {
	f, err := time.Parse(time.DateOnly, from)
	if err != nil {
		return time.Time{}, time.Time{}, errorf(ErrInvalid, "from: a date, YYYY-MM-DD")
	}
	t, err := time.Parse(time.DateOnly, to)
	if err != nil {
		return time.Time{}, time.Time{}, errorf(ErrInvalid, "to: a date, YYYY-MM-DD")
	}
	if t.Before(f) {
		return time.Time{}, time.Time{}, errorf(ErrInvalid, "from must not be after to")
	}
	if days := int(t.Sub(f)/(24*time.Hour)) + 1; days > MaxUsageDays {
		return time.Time{}, time.Time{}, errorf(ErrInvalid, "the range spans %d days; at most %d", days, MaxUsageDays)
	}
	return f, t, nil
}

// Usage returns p's team's usage per UTC day from from to to (YYYY-MM-DD,
// inclusive; days after today are left out): past days from the daily
// rollup, today and the days not rolled up yet computed live.
func (s *TeamStats) Usage(ctx context.Context, p Principal, from, to string) (Usage, error) {
	f, t, err := ParseUsageRange(from, to)
	if err != nil {
		return Usage{}, err
	}
	team := pgUUID(p.TeamID)
	today := dayOf(s.now())
	out := Usage{From: f, To: t, Days: []UsageDay{}, Total: UsageDay{}}
	if t.After(today) {
		t = today
	}
	if t.Before(f) {
		return out, nil
	}
	rows, err := s.st.Queries().TeamUsageDays(ctx, db.TeamUsageDaysParams{First: pgDate(f), Last: pgDate(t), TeamID: team})
	if err != nil {
		return Usage{}, fmt.Errorf("usage: %w", err)
	}
	var liveFrom, liveTo time.Time // the days to compute: [liveFrom, liveTo]
	for _, r := range rows {
		d := UsageDay{Day: r.Day.Time.UTC(), CPUUsedMinutes: r.CpuUsedMinutes, MemoryUsedMiBMinutes: r.MemoryUsedMibMinutes,
			VCPUReservedMinutes: r.VcpuReservedMinutes, MemoryReservedMiBMinutes: r.MemoryReservedMibMinutes}
		if !r.RolledUp || !d.Day.Before(today) {
			d = UsageDay{Day: d.Day, Live: true}
			if liveFrom.IsZero() {
				liveFrom = d.Day
			}
			liveTo = d.Day
		}
		out.Days = append(out.Days, d)
	}
	if !liveFrom.IsZero() {
		live, err := s.liveUsage(ctx, team, liveFrom, liveTo.Add(24*time.Hour))
		if err != nil {
			return Usage{}, err
		}
		for i := range out.Days {
			if out.Days[i].Live {
				out.Days[i].add(live[out.Days[i].Day])
			}
		}
	}
	for _, d := range out.Days {
		out.Total.add(d)
	}
	return out, nil
}

// liveUsage computes a team's usage per day within [start, end): the
// stored points, the running sandboxes' newest points from their hosts
// (a host that does not answer: its stored points only), the samples.
func (s *TeamStats) liveUsage(ctx context.Context, team pgtype.UUID, start, end time.Time) (map[time.Time]UsageDay, error) {
	out := map[time.Time]UsageDay{}
	q := s.st.Queries()
	skip := []pgtype.UUID{}
	if now := s.now(); now.After(start) && now.Add(-25*time.Hour).Before(end) {
		running, err := q.RunningSandboxesOfTeam(ctx, team)
		if err != nil {
			return nil, fmt.Errorf("usage: %w", err)
		}
		for _, row := range running {
			pts, src, err := s.sbx.metricPoints(ctx, row, MetricTier24h, start, end.Add(-time.Microsecond))
			if err != nil || src != "live" {
				continue // its stored points, below
			}
			skip = append(skip, row.ID)
			for _, pt := range pts {
				if pt.Timestamp.Before(start) || !pt.Timestamp.Before(end) {
					continue
				}
				d := out[dayOf(pt.Timestamp)]
				d.CPUUsedMinutes += pt.CPUPct / 100 * usagePointMinutes
				mem := pt.MemPSS
				if mem <= 0 {
					mem = pt.MemRSS
				}
				d.MemoryUsedMiBMinutes += float64(mem) / (1 << 20) * usagePointMinutes
				out[dayOf(pt.Timestamp)] = d
			}
		}
	}
	used, err := q.UsedByTeamDay(ctx, db.UsedByTeamDayParams{TeamID: team, StartTs: start, EndTs: end,
		PointMinutes: usagePointMinutes, Skip: skip})
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	for _, r := range used {
		k := r.Day.Time.UTC()
		d := out[k]
		d.CPUUsedMinutes += r.CpuMinutes
		d.MemoryUsedMiBMinutes += r.MemoryMibMinutes
		out[k] = d
	}
	reserved, err := q.ReservedByTeamDay(ctx, db.ReservedByTeamDayParams{TeamID: team, StartTs: start, EndTs: end,
		SampleMinutes: TeamStatsInterval.Minutes()})
	if err != nil {
		return nil, fmt.Errorf("usage: %w", err)
	}
	for _, r := range reserved {
		k := r.Day.Time.UTC()
		d := out[k]
		d.VCPUReservedMinutes += r.VcpuMinutes
		d.MemoryReservedMiBMinutes += r.MemoryMibMinutes
		out[k] = d
	}
	return out, nil
}

// RollUp stores the running sandboxes' newest metric points
// (CheckpointMetrics) and rolls up every past day of the retention window
// that is not rolled up yet, oldest first. It returns the days it rolled
// up.
func (s *TeamStats) RollUp(ctx context.Context) ([]time.Time, error) {
	if err := s.sbx.CheckpointMetrics(ctx); err != nil && ctx.Err() == nil {
		s.log.WarnContext(ctx, "store the running sandboxes' metrics before the usage rollup", "err", err)
	}
	now := s.now().UTC()
	today := dayOf(now)
	days, err := s.st.Queries().DaysToRollUp(ctx, db.DaysToRollUpParams{
		First: pgDate(dayOf(now.Add(-TeamStatsRetention))), Last: pgDate(today.AddDate(0, 0, -1))})
	if err != nil {
		return nil, fmt.Errorf("usage rollup: %w", err)
	}
	var rolled []time.Time
	for _, d := range days {
		day := d.Time.UTC()
		err := s.st.Tx(ctx, func(q *db.Queries) error {
			if _, err := q.RollUpUsageDay(ctx, db.RollUpUsageDayParams{Day: d, StartTs: day, EndTs: day.Add(24 * time.Hour),
				PointMinutes: usagePointMinutes, SampleMinutes: TeamStatsInterval.Minutes()}); err != nil {
				return err
			}
			return q.MarkUsageDayRolledUp(ctx, db.MarkUsageDayRolledUpParams{Day: d, RolledAt: now})
		})
		if err != nil {
			return rolled, fmt.Errorf("usage rollup of %s: %w", day.Format(time.DateOnly), err)
		}
		rolled = append(rolled, day)
	}
	return rolled, nil
}

// Prune deletes the samples older than TeamStatsRetention and the
// rollups older than UsageRetentionDays; it returns how many rows went.
func (s *TeamStats) Prune(ctx context.Context) (int64, error) {
	now := s.now().UTC()
	q := s.st.Queries()
	n, err := q.PruneTeamStats(ctx, now.Add(-TeamStatsRetention))
	if err != nil {
		return 0, fmt.Errorf("prune team stats: %w", err)
	}
	m, err := q.PruneUsage(ctx, pgDate(dayOf(now).AddDate(0, 0, -UsageRetentionDays)))
	if err != nil {
		return n, fmt.Errorf("prune usage: %w", err)
	}
	return n + m, nil
}

// RunMaintenance rolls usage up and prunes, at once and then every
// interval, until ctx ends (on the replica that leads the background
// loops).
func (s *TeamStats) RunMaintenance(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		rolled, err := s.RollUp(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.ErrorContext(ctx, "usage rollup", "err", err)
		case len(rolled) > 0:
			s.log.InfoContext(ctx, "usage rolled up", "days", len(rolled), "last", rolled[len(rolled)-1].Format(time.DateOnly))
		}
		n, err := s.Prune(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.ErrorContext(ctx, "prune team stats and usage", "err", err)
		case n > 0:
			s.log.InfoContext(ctx, "team stats and usage pruned", "rows", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// CheckpointMetrics stores the 24 h tier of every running sandbox's
// metrics newer than what is stored (its points otherwise reach the
// database only when it pauses or is destroyed), so that the usage rollup
// sees them. A host that does not answer is skipped (logged); the error
// is the first failure.
func (s *Sandboxes) CheckpointMetrics(ctx context.Context) error {
	q := s.st.Queries()
	rows, err := q.RunningSandboxes(ctx)
	if err != nil {
		return fmt.Errorf("checkpoint metrics: %w", err)
	}
	var first error
	for _, row := range rows {
		from := row.CreatedAt.Add(-5 * time.Minute)
		last, err := q.LatestSandboxMetricTs(ctx, db.LatestSandboxMetricTsParams{SandboxID: row.ID, Tier: MetricTier24h})
		switch {
		case err == nil:
			from = last // that bucket again: it may have been open
		case errors.Is(err, store.ErrNotFound), errors.Is(err, pgx.ErrNoRows):
		default:
			return fmt.Errorf("checkpoint metrics: %w", err)
		}
		c, err := s.agentFor(ctx, row.HostID)
		if err == nil {
			var resp *connect.Response[pb.GetSandboxMetricsResponse]
			resp, err = c.GetSandboxMetrics(ctx, connect.NewRequest(&pb.GetSandboxMetricsRequest{
				SandboxId: ID(row.ID), Tier: tierWire[MetricTier24h], From: timestamppb.New(from), To: timestamppb.New(s.now()),
			}))
			if err == nil {
				if pts := resp.Msg.GetSeries().GetPoints(); len(pts) > 0 {
					err = q.UpsertSandboxMetrics(ctx, upsertParams(row.ID, MetricTier24h, pts))
				}
			}
		}
		if err != nil {
			s.log.WarnContext(ctx, "store a running sandbox's metrics", "sandbox", ID(row.ID), "err", err)
			if first == nil {
				first = fmt.Errorf("checkpoint metrics of %s: %w", ID(row.ID), err)
			}
		}
	}
	return first
}
