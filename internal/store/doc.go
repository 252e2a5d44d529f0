// Package store is Capsule's access to PostgreSQL: a pgx connection pool, the
// embedded goose migrations (db/migrations), transactions, and the sqlc
// queries generated from db/queries into package db.
//
// Errors of every query run through a Store are classified: errors.Is(err,
// ErrNotFound) for no row, ErrConflict for a unique (or exclusion, or foreign
// key) violation and for a failed optimistic state transition, ErrInvalid for
// a check, not-null or data error. The PostgreSQL error stays in the chain
// (errors.As(err, &pgErr) with *pgconn.PgError; ConstraintName tells which
// constraint).
//
// IDs are UUIDs (pgtype.UUID) everywhere; the prefixed wire forms are the
// API's business. PlatformTeamID (all zeros) owns public templates and the
// platform's hosts; its row is created by the initial migration.
//
// Typical use:
//
//	st, err := store.Open(ctx, dsn)
//	if err != nil { … }
//	defer st.Close()
//	if err := st.Migrate(ctx); err != nil { … }
//	sb, err := st.Queries().GetSandbox(ctx, db.GetSandboxParams{ID: id, TeamID: team})
//	if errors.Is(err, store.ErrNotFound) { … 404 … }
//	err = st.Tx(ctx, func(q *db.Queries) error {
//		if _, err := q.LockTeam(ctx, team); err != nil { return err }
//		// check quotas, insert …
//		return nil
//	})
package store
