package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/capsulehq/capsule/internal/errdefs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// Sentinel errors, each of its errdefs class; test with errors.Is.
var (
	// ErrNotFound: the row does not exist (or is not visible to the team).
	ErrNotFound = errdefs.Sentinel("store: not found", errdefs.ErrNotFound)
	// ErrConflict: a unique, exclusion or foreign-key violation, or an
	// optimistic state transition from an unexpected state.
	ErrConflict = errdefs.Sentinel("store: conflict", errdefs.ErrConflict)
	// ErrInvalid: the data violates a check or not-null constraint or is
	// malformed for its column.
	ErrInvalid = errdefs.Sentinel("store: invalid", errdefs.ErrInvalid)
)

// Classify wraps err with the sentinel error its kind maps to (see the
// package doc), keeping err in the chain. Other errors, and nil, are returned
// unchanged. Queries run through a Store are already classified.
func Classify(err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, ErrNotFound) || errors.Is(err, ErrConflict) || errors.Is(err, ErrInvalid) {
		return err
	}
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	switch {
	case pgErr.Code == "23505", pgErr.Code == "23P01", pgErr.Code == "23503":
		// unique_violation, exclusion_violation, foreign_key_violation
		return fmt.Errorf("%w: %w", ErrConflict, err)
	case pgErr.Code == "23514", pgErr.Code == "23502", strings.HasPrefix(pgErr.Code, "22"):
		// check_violation, not_null_violation, data exceptions
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return err
}

// ConstraintName returns the name of the constraint err violated ("" if
// none), e.g. to tell a duplicate e-mail (users_email_key) from another
// conflict.
func ConstraintName(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.ConstraintName
	}
	return ""
}

// IsRetryable reports whether err is a serialization failure or a deadlock:
// the transaction may succeed if run again.
func IsRetryable(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01")
}

// StateError is a refused optimistic transition: the sandbox was in State,
// not in one of Expected. It wraps ErrConflict.
type StateError struct {
	ID       pgtype.UUID
	State    string
	Expected []string
}

func (e *StateError) Error() string {
	return fmt.Sprintf("store: sandbox %s is %s, not %s", uuidString(e.ID), e.State, strings.Join(e.Expected, "|"))
}

// Unwrap makes errors.Is(err, ErrConflict) true.
func (e *StateError) Unwrap() error { return ErrConflict }

func uuidString(u pgtype.UUID) string {
	if !u.Valid {
		return "<nil>"
	}
	b := u.Bytes
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// classifying runs queries and classifies their errors: the db.DBTX that
// every Queries of a Store uses.
type classifying struct {
	inner interface {
		Exec(context.Context, string, ...any) (pgconn.CommandTag, error)
		Query(context.Context, string, ...any) (pgx.Rows, error)
		QueryRow(context.Context, string, ...any) pgx.Row
	}
}

func (c classifying) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	tag, err := c.inner.Exec(ctx, sql, args...)
	return tag, Classify(err)
}

func (c classifying) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	rows, err := c.inner.Query(ctx, sql, args...)
	if err != nil {
		return rows, Classify(err)
	}
	return classifiedRows{rows}, nil
}

func (c classifying) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return classifiedRow{c.inner.QueryRow(ctx, sql, args...)}
}

type classifiedRow struct{ pgx.Row }

func (r classifiedRow) Scan(dest ...any) error { return Classify(r.Row.Scan(dest...)) }

type classifiedRows struct{ pgx.Rows }

func (r classifiedRows) Err() error             { return Classify(r.Rows.Err()) }
func (r classifiedRows) Scan(dest ...any) error { return Classify(r.Rows.Scan(dest...)) }
