// Package wireid converts database UUIDs to and from their wire forms.
//
// On the wire an entity's ID is its kind's prefix followed by the UUID's 32
// lowercase hex digits without dashes ("usr-0f1e…", "team-…", "key-…"):
// DNS-label safe and unambiguous about what it names. Sandboxes are the
// exception: their wire ID is the bare 32 hex digits, the [a-z0-9] form
// that E2B's SDKs, the E2B facade and the host agent (hostagent.v1
// sandbox_id) all accept, so one sandbox has one ID everywhere.
//
// The typed IDs (SandboxID, TeamID, UserID…: ID[K] of a Kind) are what the
// service speaks in its API; their String is the wire form. They live here,
// not in the store, so that the API, the E2B facade, the proxy and the
// service share them without importing the store; the service converts them
// to database UUIDs only where it calls the store.
package wireid

import (
	"encoding/hex"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgtype"
)

// Prefixes of the wire forms.
const (
	User   = "usr-"
	Team   = "team-"
	APIKey = "key-"
	// Invitation is a team invitation's ID.
	Invitation = "inv-"
	// Template is a template's (snapshot's) ID; also the name the host
	// agent knows the template by, so two teams' names never collide there.
	Template = "tpl-"
	// Build is a template build's ID.
	Build = "bld-"
	// Host is a host's ID (also the subject of its access JWT).
	Host = "host-"
	// Sandbox has no prefix (see the package doc).
	Sandbox = ""
)

// ErrMalformed: the string is not a wire ID of the expected kind.
var ErrMalformed = errors.New("malformed ID")

// Format returns the wire form of id with prefix ("" for an invalid id).
func Format(prefix string, id pgtype.UUID) string {
	if !id.Valid {
		return ""
	}
	return prefix + hex.EncodeToString(id.Bytes[:])
}

// Parse returns the UUID of the wire ID s, which must carry prefix and
// exactly 32 lowercase hex digits.
func Parse(prefix, s string) (pgtype.UUID, error) {
	digits, ok := strings.CutPrefix(s, prefix)
	if !ok || len(digits) != 32 || strings.ToLower(digits) != digits {
		return pgtype.UUID{}, ErrMalformed
	}
	var u pgtype.UUID
	if _, err := hex.Decode(u.Bytes[:], []byte(digits)); err != nil {
		return pgtype.UUID{}, ErrMalformed
	}
	u.Valid = true
	return u, nil
}
