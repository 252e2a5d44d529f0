package wireid

import "encoding/hex"

// Kind is the kind of entity an ID names; its prefix is the wire form's.
// The kinds are the types below (KindSandbox, KindTeam…); the unexported
// method keeps the set closed.
type Kind interface{ prefix() string }

// The kinds of ID.
type (
	KindSandbox    struct{}
	KindTeam       struct{}
	KindUser       struct{}
	KindTemplate   struct{}
	KindHost       struct{}
	KindAPIKey     struct{}
	KindInvitation struct{}
)

func (KindSandbox) prefix() string    { return Sandbox }
func (KindTeam) prefix() string       { return Team }
func (KindUser) prefix() string       { return User }
func (KindTemplate) prefix() string   { return Template }
func (KindHost) prefix() string       { return Host }
func (KindAPIKey) prefix() string     { return APIKey }
func (KindInvitation) prefix() string { return Invitation }

// ID is the UUID of an entity of kind K; the zero ID is absent (a NULL
// in the database). It is a comparable value (a map key), and two kinds'
// IDs are distinct types, so a team's ID cannot be passed for a sandbox's.
//
// Why a 16-byte array with a validity flag rather than a bare [16]byte:
// the all-zero UUID is a real ID (the platform team's), so "absent" cannot
// be spelt as zero bytes.
type ID[K Kind] struct {
	b     [16]byte
	valid bool
}

// The service's IDs.
type (
	SandboxID    = ID[KindSandbox]
	TeamID       = ID[KindTeam]
	UserID       = ID[KindUser]
	TemplateID   = ID[KindTemplate]
	HostID       = ID[KindHost]
	APIKeyID     = ID[KindAPIKey]
	InvitationID = ID[KindInvitation]
)

// FromUUID returns the ID of kind K with the UUID's bytes b; an absent ID
// unless valid.
func FromUUID[K Kind](b [16]byte, valid bool) ID[K] {
	if !valid {
		return ID[K]{}
	}
	return ID[K]{b: b, valid: true}
}

// UUID returns the ID's bytes and whether it is present.
func (id ID[K]) UUID() ([16]byte, bool) { return id.b, id.valid }

// IsZero reports whether the ID is absent.
func (id ID[K]) IsZero() bool { return !id.valid }

// String returns the wire form ("" for an absent ID).
func (id ID[K]) String() string {
	if !id.valid {
		return ""
	}
	var k K
	return k.prefix() + hex.EncodeToString(id.b[:])
}

// ParseID parses the wire form of an ID of kind K (as Parse does).
func ParseID[K Kind](s string) (ID[K], error) {
	var k K
	u, err := Parse(k.prefix(), s)
	if err != nil {
		return ID[K]{}, err
	}
	return ID[K]{b: u.Bytes, valid: true}, nil
}

// ParseSandboxID parses a sandbox's wire ID.
func ParseSandboxID(s string) (SandboxID, error) { return ParseID[KindSandbox](s) }

// ParseTeamID parses a team's wire ID.
func ParseTeamID(s string) (TeamID, error) { return ParseID[KindTeam](s) }

// ParseUserID parses a user's wire ID.
func ParseUserID(s string) (UserID, error) { return ParseID[KindUser](s) }

// ParseTemplateID parses a template's wire ID.
func ParseTemplateID(s string) (TemplateID, error) { return ParseID[KindTemplate](s) }

// ParseHostID parses a host's wire ID.
func ParseHostID(s string) (HostID, error) { return ParseID[KindHost](s) }

// ParseAPIKeyID parses an API key's wire ID.
func ParseAPIKeyID(s string) (APIKeyID, error) { return ParseID[KindAPIKey](s) }

// ParseInvitationID parses an invitation's wire ID.
func ParseInvitationID(s string) (InvitationID, error) { return ParseID[KindInvitation](s) }
