package store_test

import (
	"database/sql"
	"slices"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql's "pgx"
	"github.com/pressly/goose/v3"

	"github.com/capsulehq/capsule/db/migrations"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
)

// Migrations that move rows are tested with rows: each step migrates an
// empty database to just before the migration, stores rows the old way,
// migrates up and checks them in the new shape, then back down and checks
// them in the old one.
func TestMigrationsKeepData(t *testing.T) {
	sqlDB, err := sql.Open("pgx", pgtest.EmptyDatabaseForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	p, err := goose.NewProvider(goose.DialectPostgres, sqlDB, migrations.FS, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		t.Fatal(err)
	}
	exec := func(t *testing.T, q string) {
		t.Helper()
		if _, err := sqlDB.ExecContext(ctx(t), q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	rows := func(t *testing.T, q string) []string {
		t.Helper()
		r, err := sqlDB.QueryContext(ctx(t), q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		defer r.Close()
		var out []string
		for r.Next() {
			var s string
			if err := r.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		return out
	}
	same := func(t *testing.T, got []string, want ...string) {
		t.Helper()
		if !slices.Equal(got, want) {
			t.Fatalf("rows = %q, want %q", got, want)
		}
	}
	const team = "'6d2c1f0e-0000-4000-8000-000000000001'"
	for _, step := range []struct {
		name    string
		version int64              // the migration under test
		before  func(t *testing.T) // rows stored the old way
		after   func(t *testing.T) // those rows in the new shape
		down    func(t *testing.T) // and back in the old one
	}{{
		name: "00021 team stats rollups in one table", version: 21,
		before: func(t *testing.T) {
			exec(t, `INSERT INTO team_stats_5m VALUES (`+team+`, '2026-12-01 10:05:00+00', 1, 2, 3, 4),
				(`+team+`, '2026-12-01 10:10:00+00', 5, 6, 7, 8)`)
			exec(t, `INSERT INTO team_stats_hourly VALUES (`+team+`, '2026-12-01 10:00:00+00', 5, 6, 7, 8)`)
		},
		after: func(t *testing.T) {
			same(t, rows(t, `SELECT step_s || ' ' || to_char(bucket AT TIME ZONE 'UTC', 'HH24:MI') || ' ' || running_max || paused_max ||
				reserved_vcpus_max || reserved_memory_mb_max FROM team_stats_rollup ORDER BY step_s, bucket`),
				"300 10:05 1234", "300 10:10 5678", "3600 10:00 5678")
		},
		down: func(t *testing.T) {
			same(t, rows(t, `SELECT to_char(bucket AT TIME ZONE 'UTC', 'HH24:MI') || ' ' || running_max || paused_max ||
				reserved_vcpus_max || reserved_memory_mb_max FROM team_stats_5m ORDER BY bucket`), "10:05 1234", "10:10 5678")
			same(t, rows(t, `SELECT to_char(hour AT TIME ZONE 'UTC', 'HH24:MI') || ' ' || running_max || paused_max ||
				reserved_vcpus_max || reserved_memory_mb_max FROM team_stats_hourly`), "10:00 5678")
		},
	}} {
		t.Run(step.name, func(t *testing.T) {
			if _, err := p.UpTo(ctx(t), step.version-1); err != nil {
				t.Fatal(err)
			}
			step.before(t)
			if _, err := p.UpTo(ctx(t), step.version); err != nil {
				t.Fatal(err)
			}
			step.after(t)
			if _, err := p.DownTo(ctx(t), step.version-1); err != nil {
				t.Fatalf("down: %v", err)
			}
			step.down(t)
			if _, err := p.UpTo(ctx(t), step.version); err != nil {
				t.Fatalf("up again: %v", err)
			}
			step.after(t)
		})
	}
}
