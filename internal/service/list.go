package service

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

func (s *Sandboxes) get(ctx context.Context, p Principal, id SandboxID) (db.Sandbox, error) {
	row, err := s.st.Queries().GetSandbox(ctx, db.GetSandboxParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID)})
	if err != nil {
		return db.Sandbox{}, notFound(err, "sandbox")
	}
	return row, nil
}

// Get returns a sandbox of p's team, a running one with its envd address
// (from the record: no agent round trip).
func (s *Sandboxes) Get(ctx context.Context, p Principal, id SandboxID) (Sandbox, error) {
	row, err := s.get(ctx, p, id)
	if err != nil {
		return Sandbox{}, err
	}
	return s.view(row, nil), nil
}

// ListFilter filters List.
type ListFilter struct {
	// States: any of them (empty: any state).
	States []string
	// Metadata: the sandbox's metadata contains all of these.
	Metadata map[string]string
	// StartedAfter: created (started) at or after it (zero: any time).
	StartedAfter time.Time
	// Template: created from the template of that name ("": any).
	Template string
	// Ascending lists oldest first (else newest first), by creation time
	// and then ID, so that sandboxes started at the same time keep one
	// order across pages.
	Ascending bool
	// Cursor continues a previous listing ("" from the start) in the same
	// order (a cursor of the other order is ErrInvalid).
	Cursor string
	// Limit is the page size (0: 50; at most 200).
	Limit int
}

var validStates = map[string]bool{
	store.SandboxStarting: true, store.SandboxRunning: true, store.SandboxPausing: true, store.SandboxPaused: true,
	store.SandboxResuming: true, store.SandboxStopped: true, store.SandboxMissing: true, store.SandboxError: true,
}

// List lists p's team's sandboxes newest first (f.Ascending: oldest
// first), a page at a time; next is the cursor of the next page ("" after
// the last).
func (s *Sandboxes) List(ctx context.Context, p Principal, f ListFilter) (items []Sandbox, next string, err error) {
	for _, st := range f.States {
		if !validStates[st] {
			return nil, "", errorf(ErrInvalid, "state: unknown state %q", st)
		}
	}
	if err := validateMetadata(f.Metadata); err != nil {
		return nil, "", err
	}
	if f.Limit < 0 || f.Limit > maxPageSize {
		return nil, "", errorf(ErrInvalid, "limit: 1 to %d", maxPageSize)
	}
	if f.Limit == 0 {
		f.Limit = defaultPageSize
	}
	params := db.ListSandboxesParams{TeamID: pgUUID(p.TeamID), States: f.States, PageSize: int32(f.Limit) + 1}
	if params.States == nil {
		params.States = []string{}
	}
	if len(f.Metadata) > 0 {
		if params.Metadata, err = json.Marshal(f.Metadata); err != nil {
			return nil, "", fmt.Errorf("metadata: %w", err)
		}
	}
	if !f.StartedAfter.IsZero() {
		params.StartedAfter = pgtype.Timestamptz{Time: f.StartedAfter, Valid: true}
	}
	if f.Template != "" {
		params.Template = pgtype.Text{String: f.Template, Valid: true}
	}
	if f.Cursor != "" {
		if params.AfterCreatedAt, params.AfterID, err = decodeListCursor(f.Cursor, f.Ascending); err != nil {
			return nil, "", err
		}
	}
	var rows []db.Sandbox
	if f.Ascending {
		rows, err = s.st.Queries().ListSandboxesAsc(ctx, db.ListSandboxesAscParams(params))
	} else {
		rows, err = s.st.Queries().ListSandboxes(ctx, params)
	}
	if err != nil {
		return nil, "", fmt.Errorf("list sandboxes: %w", err)
	}
	if len(rows) > f.Limit {
		rows = rows[:f.Limit]
		last := rows[len(rows)-1]
		next = encodeListCursor(last.CreatedAt, last.ID, f.Ascending)
	}
	items = make([]Sandbox, len(rows))
	for i, r := range rows {
		items[i] = s.view(r, nil)
	}
	return items, next, nil
}

func encodeCursor(t time.Time, id pgtype.UUID) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(t.UnixMicro(), 10) + "." + ID(id)))
}

func decodeCursor(c string) (pgtype.Timestamptz, pgtype.UUID, error) {
	bad := errorf(ErrInvalid, "cursor: malformed")
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	ts, idStr, ok := strings.Cut(string(b), ".")
	if !ok {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	us, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	id, err := wireid.Parse(wireid.Sandbox, idStr)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	return pgtype.Timestamptz{Time: time.UnixMicro(us), Valid: true}, id, nil
}

// A listing's cursor: base64url of "<unix µs>.<sandbox wire ID>", with
// ".asc" appended for an oldest-first listing.
func encodeListCursor(t time.Time, id pgtype.UUID, asc bool) string {
	c := strconv.FormatInt(t.UnixMicro(), 10) + "." + ID(id)
	if asc {
		c += ".asc"
	}
	return base64.RawURLEncoding.EncodeToString([]byte(c))
}

func decodeListCursor(c string, asc bool) (pgtype.Timestamptz, pgtype.UUID, error) {
	bad := errorf(ErrInvalid, "cursor: malformed")
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	parts := strings.Split(string(b), ".")
	switch {
	case len(parts) == 3 && parts[2] == "asc" && asc, len(parts) == 2 && !asc:
	case len(parts) == 2 || len(parts) == 3 && parts[2] == "asc":
		return pgtype.Timestamptz{}, pgtype.UUID{}, errorf(ErrInvalid, "cursor: it continues a listing in the other order")
	default:
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	us, err := strconv.ParseInt(parts[0], 10, 64)
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	id, err := wireid.Parse(wireid.Sandbox, parts[1])
	if err != nil {
		return pgtype.Timestamptz{}, pgtype.UUID{}, bad
	}
	return pgtype.Timestamptz{Time: time.UnixMicro(us), Valid: true}, id, nil
}
