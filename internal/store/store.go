package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/capsulehq/capsule/db/migrations"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Store is a pool of connections to Capsule's database. Safe for concurrent
// use.
type Store struct {
	pool *pgxpool.Pool
	q    *db.Queries
	log  *slog.Logger
}

// Open connects to the database at dsn (a postgres:// URL or key=value
// string; pgxpool settings such as pool_max_conns may be part of it) and
// checks that it answers.
func Open(ctx context.Context, dsn string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("store: parse database URL: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("store: connect to %s/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Database, err)
	}
	return New(pool), nil
}

// New makes a Store of an existing pool (which Close then closes).
func New(pool *pgxpool.Pool) *Store {
	return &Store{pool: pool, q: db.New(classifying{pool}), log: slog.Default().With("component", "store")}
}

// SetLogger sets where Migrate logs (default slog.Default()).
func (s *Store) SetLogger(l *slog.Logger) { s.log = l.With("component", "store") }

// Close closes every connection.
func (s *Store) Close() { s.pool.Close() }

// Pool returns the underlying pool, for what sqlc cannot express (COPY,
// LISTEN, batches). Errors from it are not classified.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Queries returns the queries, run on the pool, each in its own implicit
// transaction.
func (s *Store) Queries() *db.Queries { return s.q }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("store: ping: %w", err)
	}
	return nil
}

// Migrate applies the pending migrations. It is idempotent and safe when
// several processes start at once: they serialize on an advisory lock and the
// later ones find nothing to do.
func (s *Store) Migrate(ctx context.Context) error {
	sqlDB := stdlib.OpenDBFromPool(s.pool)
	defer sqlDB.Close()
	res, err := migrations.Up(ctx, sqlDB, nil)
	for _, r := range res {
		s.log.Info("store: migration applied", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	return nil
}

// MigrationVersion returns the version of the last applied migration and of
// the newest one this binary has.
func (s *Store) MigrationVersion(ctx context.Context) (current, latest int64, err error) {
	sqlDB := stdlib.OpenDBFromPool(s.pool)
	defer sqlDB.Close()
	return migrations.Version(ctx, sqlDB)
}

// Tx runs fn in a transaction (read committed): committed if fn returns nil,
// rolled back otherwise (and if fn panics). fn's error is returned as is.
func (s *Store) Tx(ctx context.Context, fn func(q *db.Queries) error) error {
	return s.TxOptions(ctx, pgx.TxOptions{}, fn)
}

// TxOptions is Tx with the given isolation level and access mode.
func (s *Store) TxOptions(ctx context.Context, opts pgx.TxOptions, fn func(q *db.Queries) error) (err error) {
	tx, err := s.pool.BeginTx(ctx, opts)
	if err != nil {
		return fmt.Errorf("store: begin: %w", Classify(err))
	}
	defer func() {
		if p := recover(); p != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
			panic(p)
		}
		if err != nil {
			// A rollback on a broken connection fails too; err says why.
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if err = fn(db.New(classifying{tx})); err != nil {
		return err
	}
	if err = tx.Commit(ctx); err != nil {
		return fmt.Errorf("store: commit: %w", Classify(err))
	}
	return nil
}

// TransitionSandbox moves sandbox id from one of the states from to state to
// (db.UpdateSandboxState), and when that is refused tells why: ErrNotFound
// if the sandbox does not exist, a *StateError (ErrConflict) with its
// current state if it is in another state. q may be nil (the pool) or a
// transaction's queries.
func (s *Store) TransitionSandbox(ctx context.Context, q *db.Queries, id pgtype.UUID, from []string, to, reason string) (db.Sandbox, error) {
	if q == nil {
		q = s.q
	}
	sb, err := q.UpdateSandboxState(ctx, db.UpdateSandboxStateParams{
		ID: id, ExpectedStates: from, NewState: to, Reason: reason,
	})
	if err == nil || !errors.Is(err, ErrNotFound) {
		return sb, err
	}
	cur, gerr := q.GetSandboxByID(ctx, id)
	if gerr != nil {
		return db.Sandbox{}, gerr
	}
	return db.Sandbox{}, &StateError{ID: id, State: cur.State, Expected: from}
}
