package service

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store/db"
)

// SnapshotFilter filters ListSnapshotPage.
type SnapshotFilter struct {
	// SandboxID: snapshots of that sandbox (zero: any).
	SandboxID SandboxID
	// Name: the snapshot of that name ("": any).
	Name string
	// Cursor continues a previous listing ("" from the start).
	Cursor string
	// Limit is the page size (0: 50; at most 200).
	Limit int
}

// ListSnapshotPage lists p's team's own snapshots of sandboxes (not
// public templates, nor those its template builds made) newest first, a
// page at a time; next is the cursor of the next page ("" after the
// last). Snapshots made at the same time keep one order (by ID) across
// pages.
func (s *Sandboxes) ListSnapshotPage(ctx context.Context, p Principal, f SnapshotFilter) (items []Snapshot, next string, err error) {
	if f.Limit < 0 || f.Limit > maxPageSize {
		return nil, "", errorf(ErrInvalid, "limit: 1 to %d", maxPageSize)
	}
	if f.Limit == 0 {
		f.Limit = defaultPageSize
	}
	params := db.ListSnapshotPageParams{TeamID: pgUUID(p.TeamID), PageSize: int32(f.Limit) + 1}
	if !f.SandboxID.IsZero() {
		params.SourceSandboxID = pgUUID(f.SandboxID)
	}
	if f.Name != "" {
		params.Name = pgtype.Text{String: f.Name, Valid: true}
	}
	if f.Cursor != "" {
		if params.AfterCreatedAt, params.AfterID, err = decodeSnapshotCursor(f.Cursor); err != nil {
			return nil, "", err
		}
	}
	rows, err := s.st.Queries().ListSnapshotPage(ctx, params)
	if err != nil {
		return nil, "", fmt.Errorf("list snapshots: %w", err)
	}
	if len(rows) > f.Limit {
		rows = rows[:f.Limit]
		last := rows[len(rows)-1]
		next = encodeSnapshotCursor(last.CreatedAt, last.ID)
	}
	items = make([]Snapshot, len(rows))
	for i, r := range rows {
		items[i] = snapshotOf(r)
	}
	return items, next, nil
}

// TeamSlug returns the slug of p's team (the namespace of E2B's template
// names, "<slug>/<name>").
func (s *Sandboxes) TeamSlug(ctx context.Context, p Principal) (string, error) {
	t, err := s.st.Queries().GetTeam(ctx, pgUUID(p.TeamID))
	if err != nil {
		return "", notFound(err, "team")
	}
	return t.Slug, nil
}

// A snapshot listing's cursor: base64url of "<unix µs>.<template UUID in
// hex>".
func encodeSnapshotCursor(t time.Time, id pgtype.UUID) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(t.UnixMicro(), 10) + "." + hex.EncodeToString(id.Bytes[:])))
}

func decodeSnapshotCursor(c string) (pgtype.Timestamptz, pgtype.UUID, error) {
	bad := errorf(ErrInvalid, "cursor: malformed")
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	ts, idHex, ok := strings.Cut(string(b), ".")
	if !ok {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	us, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	raw, err := hex.DecodeString(idHex)
	if err != nil || len(raw) != 16 {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	id := pgtype.UUID{Valid: true}
	copy(id.Bytes[:], raw)
	return pgtype.Timestamptz{Time: time.UnixMicro(us), Valid: true}, id, nil
}
