package builds

import (
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/wireid"
)

// Conversions between the service's typed IDs and the store's UUIDs (the
// builds tables are this package's own).
func pg[K wireid.Kind](id wireid.ID[K]) pgtype.UUID {
	b, ok := id.UUID()
	return pgtype.UUID{Bytes: b, Valid: ok}
}

func idOf[K wireid.Kind](u pgtype.UUID) wireid.ID[K] { return wireid.FromUUID[K](u.Bytes, u.Valid) }
