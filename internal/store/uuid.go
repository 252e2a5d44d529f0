package store

import (
	"crypto/rand"

	"github.com/jackc/pgx/v5/pgtype"
)

// NewUUID is a random (version 4) UUID for a new row's primary key, made
// here rather than by the database so that a caller knows the ID before
// the insert (its rollback, its files and its log lines name it).
func NewUUID() pgtype.UUID {
	u := pgtype.UUID{Valid: true}
	_, _ = rand.Read(u.Bytes[:]) // crypto/rand.Read never fails (Go 1.24)
	u.Bytes[6] = u.Bytes[6]&0x0f | 0x40
	u.Bytes[8] = u.Bytes[8]&0x3f | 0x80
	return u
}
