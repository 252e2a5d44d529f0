package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/db/migrations"
	"github.com/capsulehq/capsule/internal/pgembed/pgtest"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

func TestMain(m *testing.M) {
	code := m.Run()
	pgtest.StopTestServer()
	os.Exit(code)
}

// ctx bounds every database call of a test.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// newStore opens a fresh migrated database.
func newStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(ctx(t), pgtest.StartForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func mustIs(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("err = %v, want %v", err, target)
	}
}

func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func TestMigrateFromScratchAndIdempotent(t *testing.T) {
	st, err := store.Open(ctx(t), pgtest.EmptyDatabaseForTest(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cur, latest, err := st.MigrationVersion(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if cur != 0 || latest < 1 {
		t.Fatalf("before: version %d, latest %d", cur, latest)
	}
	for i := range 2 {
		if err := st.Migrate(ctx(t)); err != nil {
			t.Fatalf("Migrate #%d: %v", i+1, err)
		}
		cur, latest, err = st.MigrationVersion(ctx(t))
		if err != nil || cur != latest {
			t.Fatalf("after #%d: version %d, latest %d, %v", i+1, cur, latest, err)
		}
	}
	var tables []string
	rows, _ := st.Pool().Query(ctx(t), "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
	tables, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"audit_logs", "build_archive_chunks", "build_archives", "build_layers", "build_logs", "build_steps", "builds",
		"goose_db_version", "host_refresh_tokens", "host_templates", "hosts", "internal_ca", "oauth_providers",
		"revoked_sessions", "river_job", "river_leader", "river_migration", "river_notification", "river_queue",
		"sandbox_logs", "sandbox_metrics", "sandbox_moves", "sandboxes", "team_api_keys", "team_invitations",
		"team_stats", "team_stats_rollup", "team_usage_daily", "teams", "template_tags", "templates", "usage_rollup_days",
		"users", "users_teams"}
	if strings.Join(tables, " ") != strings.Join(want, " ") {
		t.Errorf("tables = %v\nwant     %v", tables, want)
	}
	// Every primary key of an entity table is a UUID made by the database
	// (internal_ca is a single row: its key is the constant 1; revoked
	// sessions are keyed by their token's ID; the team stats and usage
	// tables are series keyed by team and time; a move is keyed by its
	// sandbox; a template's tags are keyed by team, name and tag, the
	// build layers by team and hash).
	var bad []string
	rows, _ = st.Pool().Query(ctx(t), `
		SELECT c.table_name || '.' || c.column_name || ' ' || c.data_type || ' ' || coalesce(c.column_default, '')
		FROM information_schema.table_constraints tc
		JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name)
		JOIN information_schema.columns c ON c.table_schema = k.table_schema AND c.table_name = k.table_name AND c.column_name = k.column_name
		WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = 'public'
		  AND c.table_name NOT IN ('goose_db_version', 'users_teams', 'sandbox_metrics', 'internal_ca', 'host_templates',
		                           'build_archive_chunks', 'build_steps', 'build_logs', 'revoked_sessions', 'sandbox_logs',
		                           'team_stats', 'team_stats_rollup', 'team_usage_daily', 'usage_rollup_days',
		                           'sandbox_moves', 'template_tags', 'build_layers')
		  AND c.table_name NOT LIKE 'river\_%'  -- River's own schema
		  AND NOT (c.data_type = 'uuid' AND c.column_default = 'gen_random_uuid()')`)
	bad, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(bad) > 0 {
		t.Errorf("primary keys that are not generated UUIDs: %v %v", bad, err)
	}
	team, err := st.Queries().GetTeam(ctx(t), store.PlatformTeamID)
	if err != nil {
		t.Fatalf("platform team: %v", err)
	}
	if team.Slug != "platform" || team.DeletedAt.Valid {
		t.Errorf("platform team = %+v", team)
	}
}

// Control planes starting together migrate once: they serialize on the
// advisory lock and the later ones find nothing to do.
func TestMigrateConcurrent(t *testing.T) {
	dsn := pgtest.EmptyDatabaseForTest(t)
	const n = 4
	stores := make([]*store.Store, n)
	var logMu sync.Mutex
	var logBuf bytes.Buffer
	log := slog.New(slog.NewTextHandler(lockedWriter{&logMu, &logBuf}, nil))
	for i := range stores {
		st, err := store.Open(ctx(t), dsn)
		if err != nil {
			t.Fatal(err)
		}
		defer st.Close()
		st.SetLogger(log)
		stores[i] = st
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, st := range stores {
		wg.Go(func() { errs[i] = st.Migrate(ctx(t)) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Migrate %d: %v", i, err)
		}
	}
	var applied int
	if err := stores[0].Pool().QueryRow(ctx(t), "SELECT count(*) FROM goose_db_version WHERE version_id > 0").Scan(&applied); err != nil {
		t.Fatal(err)
	}
	want := len(migrationFiles(t))
	if applied != want {
		t.Errorf("%d migrations recorded, want %d", applied, want)
	}
	if c := strings.Count(logBuf.String(), "migration applied"); c != want {
		t.Errorf("%d migrations applied, want each of the %d once:\n%s", c, want, logBuf.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func TestOpenErrors(t *testing.T) {
	if _, err := store.Open(ctx(t), "postgres://%zz"); err == nil {
		t.Error("Open of a malformed URL succeeded")
	}
	dir := t.TempDir()
	_, err := store.Open(ctx(t), "host="+dir+" user=x dbname=y connect_timeout=2")
	if err == nil || !strings.Contains(err.Error(), dir) {
		t.Errorf("Open of a missing server: %v", err)
	}
}

func TestClassify(t *testing.T) {
	plain := errors.New("plain")
	cases := []struct {
		name string
		in   error
		want error
	}{
		{"no rows", pgx.ErrNoRows, store.ErrNotFound},
		{"wrapped no rows", fmt.Errorf("x: %w", pgx.ErrNoRows), store.ErrNotFound},
		{"unique", &pgconn.PgError{Code: "23505"}, store.ErrConflict},
		{"exclusion", &pgconn.PgError{Code: "23P01"}, store.ErrConflict},
		{"foreign key", &pgconn.PgError{Code: "23503"}, store.ErrConflict},
		{"check", &pgconn.PgError{Code: "23514"}, store.ErrInvalid},
		{"not null", &pgconn.PgError{Code: "23502"}, store.ErrInvalid},
		{"bad text", &pgconn.PgError{Code: "22P02"}, store.ErrInvalid},
		{"other pg", &pgconn.PgError{Code: "42601"}, nil},
		{"plain", plain, nil},
		{"already", store.ErrConflict, store.ErrConflict},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := store.Classify(c.in)
			if !errors.Is(got, c.in) {
				t.Errorf("Classify lost the cause: %v", got)
			}
			for _, s := range []error{store.ErrNotFound, store.ErrConflict, store.ErrInvalid} {
				if errors.Is(got, s) != (s == c.want) {
					t.Errorf("errors.Is(%v, %v) = %v", got, s, !(s == c.want))
				}
			}
		})
	}
	if store.Classify(nil) != nil {
		t.Error("Classify(nil) != nil")
	}
	if !store.IsRetryable(fmt.Errorf("x: %w", &pgconn.PgError{Code: "40001"})) || store.IsRetryable(plain) {
		t.Error("IsRetryable")
	}
	if got := store.ConstraintName(fmt.Errorf("%w", &pgconn.PgError{Code: "23505", ConstraintName: "c"})); got != "c" {
		t.Errorf("ConstraintName = %q", got)
	}
}

func TestTx(t *testing.T) {
	st := newStore(t)
	q := st.Queries()
	// Commit.
	var id pgtype.UUID
	err := st.Tx(ctx(t), func(q *db.Queries) error {
		u, err := q.CreateUser(ctx(t), db.CreateUserParams{Email: "tx@example.com"})
		id = u.ID
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	must[db.User](t)(q.GetUser(ctx(t), id))

	// An error rolls back and comes back as is; queries in a transaction
	// are classified too.
	boom := errors.New("boom")
	err = st.Tx(ctx(t), func(q *db.Queries) error {
		if _, err := q.CreateUser(ctx(t), db.CreateUserParams{Email: "rolled@example.com"}); err != nil {
			return err
		}
		if _, err := q.CreateUser(ctx(t), db.CreateUserParams{Email: "TX@example.com"}); !errors.Is(err, store.ErrConflict) {
			t.Errorf("duplicate in a transaction: %v", err)
		}
		return boom
	})
	if err != boom {
		t.Fatalf("Tx error = %v, want boom itself", err)
	}
	_, err = q.GetUserByEmail(ctx(t), "rolled@example.com")
	mustIs(t, err, store.ErrNotFound)

	// A panic rolls back and goes on.
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the panic was swallowed")
			}
		}()
		_ = st.Tx(ctx(t), func(q *db.Queries) error {
			if _, err := q.CreateUser(ctx(t), db.CreateUserParams{Email: "panic@example.com"}); err != nil {
				return err
			}
			panic("x")
		})
	}()
	_, err = q.GetUserByEmail(ctx(t), "panic@example.com")
	mustIs(t, err, store.ErrNotFound)

	// Serializable, read-only.
	err = st.TxOptions(ctx(t), pgx.TxOptions{IsoLevel: pgx.Serializable, AccessMode: pgx.ReadOnly}, func(q *db.Queries) error {
		_, err := q.CreateUser(ctx(t), db.CreateUserParams{Email: "ro@example.com"})
		return err
	})
	if err == nil {
		t.Error("insert in a read-only transaction succeeded")
	}
	if err := st.Ping(ctx(t)); err != nil {
		t.Error(err)
	}
}

// migrationFiles lists the embedded migrations.
func migrationFiles(t *testing.T) []string {
	t.Helper()
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("embedded migrations: %v, %v", files, err)
	}
	return files
}

func TestStateErrorMessage(t *testing.T) {
	id := pgtype.UUID{Valid: true, Bytes: [16]byte{0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8}}
	err := error(&store.StateError{ID: id, State: "paused", Expected: []string{"running", "starting"}})
	want := "store: sandbox 12345678-9abc-def0-0102-030405060708 is paused, not running|starting"
	if err.Error() != want {
		t.Errorf("%q", err.Error())
	}
	mustIs(t, err, store.ErrConflict)
	var se *store.StateError
	if !errors.As(fmt.Errorf("x: %w", err), &se) || se.State != "paused" {
		t.Error("errors.As")
	}
}

func jsonRaw(s string) json.RawMessage { return json.RawMessage(s) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
