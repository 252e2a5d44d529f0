// Package migrations holds Capsule's database schema as goose migrations
// (NNNNN_name.sql, embedded in the binary) and applies them.
//
// The schema starts from one consolidated migration, 00001_init.sql. A change
// to the schema is a new file with the next number, never an edit of an
// applied one. sqlc reads the same files (sqlc.yaml) to type the queries in
// db/queries.
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"log/slog"

	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/riverqueue/river/riverdriver/riverdatabasesql"
	"github.com/riverqueue/river/rivermigrate"
)

// advisoryLock is a session-level advisory lock that a waiter blocks on
// (goose's own polls every 5 s): the second of two control planes starting
// together proceeds as soon as the first has migrated. ctx bounds the wait.
type advisoryLock struct{ id int64 }

var _ lock.SessionLocker = advisoryLock{}

func (l advisoryLock) SessionLock(ctx context.Context, conn *sql.Conn) error {
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", l.id); err != nil {
		return fmt.Errorf("migrations: take advisory lock: %w", err)
	}
	return nil
}

func (l advisoryLock) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	var ok bool
	if err := conn.QueryRowContext(ctx, "SELECT pg_advisory_unlock($1)", l.id).Scan(&ok); err != nil {
		return fmt.Errorf("migrations: release advisory lock: %w", err)
	}
	if !ok {
		return errors.New("migrations: the advisory lock was not held")
	}
	return nil
}

// FS holds the migration files.
//
//go:embed *.sql
var FS embed.FS

// LockID is the PostgreSQL advisory lock that serializes concurrent
// migrations (e.g. several control planes starting at once).
const LockID int64 = 0x63617073756c65 // "capsule"

// TableName is goose's version table.
const TableName = "goose_db_version"

// Up applies every pending migration, holding the advisory lock LockID so
// that concurrent callers apply each migration once, then River's (the job
// queue's tables, river_*: see UpRiver). It is idempotent: with nothing
// pending it changes nothing. log may be nil.
func Up(ctx context.Context, db *sql.DB, log *slog.Logger) ([]*goose.MigrationResult, error) {
	p, err := provider(db, log)
	if err != nil {
		return nil, err
	}
	res, err := p.Up(ctx)
	if err != nil {
		var partial *goose.PartialError
		if errors.As(err, &partial) {
			return partial.Applied, fmt.Errorf("migrations: %w", err)
		}
		return nil, fmt.Errorf("migrations: %w", err)
	}
	if err := UpRiver(ctx, db, log); err != nil {
		return res, err
	}
	return res, nil
}

// RiverLockID serializes River's migrations between processes.
const RiverLockID = LockID + 1

// UpRiver applies River's pending migrations (its own, versioned in its
// river_migration table: an upgrade of River brings its migrations with
// it), holding the session advisory lock RiverLockID so that concurrent
// callers apply each once.
func UpRiver(ctx context.Context, db *sql.DB, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := rivermigrate.New(riverdatabasesql.New(db), &rivermigrate.Config{Logger: log})
	if err != nil {
		return fmt.Errorf("migrations: river: %w", err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("migrations: river: %w", err)
	}
	defer conn.Close()
	lock := advisoryLock{RiverLockID}
	if err := lock.SessionLock(ctx, conn); err != nil {
		return err
	}
	defer lock.SessionUnlock(context.WithoutCancel(ctx), conn) //nolint:errcheck // the session ends with conn anyway
	res, err := m.Migrate(ctx, rivermigrate.DirectionUp, nil)
	if err != nil {
		return fmt.Errorf("migrations: river: %w", err)
	}
	for _, v := range res.Versions {
		log.Info("migrations: river migration applied", "version", v.Version, "name", v.Name, "duration", v.Duration)
	}
	return nil
}

// Version returns the version of the last applied migration (0: none) and
// that of the newest embedded one.
func Version(ctx context.Context, db *sql.DB) (current, latest int64, err error) {
	p, err := provider(db, nil)
	if err != nil {
		return 0, 0, err
	}
	if current, err = p.GetDBVersion(ctx); err != nil {
		return 0, 0, fmt.Errorf("migrations: %w", err)
	}
	sources := p.ListSources()
	if len(sources) > 0 {
		latest = sources[len(sources)-1].Version
	}
	return current, latest, nil
}

func provider(db *sql.DB, log *slog.Logger) (*goose.Provider, error) {
	opts := []goose.ProviderOption{
		goose.WithSessionLocker(advisoryLock{LockID}),
		goose.WithDisableGlobalRegistry(true),
	}
	if log != nil {
		opts = append(opts, goose.WithSlog(log))
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, FS, opts...)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return p, nil
}
