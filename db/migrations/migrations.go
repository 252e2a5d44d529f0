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
)

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
// that concurrent callers apply each migration once. It is idempotent: with
// nothing pending it changes nothing. log may be nil.
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
	return res, nil
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
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(LockID))
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	opts := []goose.ProviderOption{
		goose.WithSessionLocker(locker),
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
