package auth

import (
	"time"
)

// Defaults of SessionConfig.
const (
	DefaultIssuer          = "capsule"
	DefaultSessionAudience = "capsule/session"
	DefaultSessionTTL      = 24 * time.Hour
	DefaultLeeway          = 30 * time.Second
)

// SessionUser is who a session token speaks for. Role and IsAdmin are
// hints for the user interface only: every authorization decision must be
// made from the database, never from these fields.
type SessionUser struct {
	// UserID is the user's wire ID ("usr-…"); the token's "sub".
	UserID string
	// TeamID is the wire ID ("team-…") of the active team, or "" when the
	// user has none.
	TeamID string
	// Role is the user's role in TeamID when the token was issued (hint).
	Role string
	// Name is the display name.
	Name string
	// Email is the login e-mail address.
	Email string
	// IsAdmin says the user was a platform admin when the token was
	// issued (hint).
	IsAdmin bool
}

// SessionClaims are the verified contents of a session token.
type SessionClaims struct {
	SessionUser
	// IssuedAt is the "iat" claim (UTC, whole seconds).
	IssuedAt time.Time
	// ExpiresAt is the "exp" claim (UTC, whole seconds).
	ExpiresAt time.Time
	// ID is the "jti" claim: 128 random bits in hex, unique per token, for
	// logs and a future revocation list.
	ID string
}

// sessionPayload is the JSON payload of a session token.
type sessionPayload struct {
	registeredClaims
	TeamID  string `json:"team_id"`
	Role    string `json:"role"`
	Name    string `json:"name"`
	Email   string `json:"email"`
	IsAdmin bool   `json:"is_admin"`
}

// SessionConfig configures a SessionManager.
type SessionConfig struct {
	// Secret is the current signing secret (at least MinSecretLen bytes).
	// The HS256 key is derived from it with DeriveKey(PurposeSessionJWT),
	// so the same server secret may be shared with other purposes.
	Secret []byte
	// PreviousSecrets are accepted for verification only, so that tokens
	// issued before a secret rotation stay valid until they expire.
	PreviousSecrets [][]byte
	// Issuer is the "iss" claim; DefaultIssuer when empty.
	Issuer string
	// Audience is the "aud" claim; DefaultSessionAudience when empty.
	Audience string
	// TTL is the lifetime of a token; DefaultSessionTTL when zero.
	TTL time.Duration
	// Leeway is the clock skew tolerated on exp, iat and nbf;
	// DefaultLeeway when zero, at most MaxLeeway. Negative means none.
	Leeway time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// SessionManager issues and verifies user session JWTs (HS256). It is safe
// for concurrent use.
type SessionManager struct {
	s *hs256Signer
}

// NewSessionManager checks cfg, fills its defaults and derives the keys.
func NewSessionManager(cfg SessionConfig) (*SessionManager, error) {
	s, err := newHS256Signer(tokenConfig{
		purpose:  PurposeSessionJWT,
		secret:   cfg.Secret,
		previous: cfg.PreviousSecrets,
		iss:      orDefault(cfg.Issuer, DefaultIssuer),
		aud:      orDefault(cfg.Audience, DefaultSessionAudience),
		ttl:      orDefaultDuration(cfg.TTL, DefaultSessionTTL),
		leeway:   leewayOrDefault(cfg.Leeway),
		now:      cfg.Now,
	})
	if err != nil {
		return nil, err
	}
	return &SessionManager{s: s}, nil
}

// Issue returns a signed session token for u, valid from now for the
// configured TTL, and the claims it carries. u.UserID must not be empty.
func (m *SessionManager) Issue(u SessionUser) (string, SessionClaims, error) {
	if u.UserID == "" {
		return "", SessionClaims{}, ErrTokenClaims
	}
	p := sessionPayload{
		registeredClaims: m.s.newClaims(u.UserID),
		TeamID:           u.TeamID,
		Role:             u.Role,
		Name:             u.Name,
		Email:            u.Email,
		IsAdmin:          u.IsAdmin,
	}
	token, err := m.s.sign(p)
	if err != nil {
		return "", SessionClaims{}, err
	}
	return token, p.claims(), nil
}

// Verify checks token (algorithm, key, signature, expiry with leeway,
// issuer, audience) and returns its claims. Every failure wraps
// ErrInvalidToken.
func (m *SessionManager) Verify(token string) (SessionClaims, error) {
	var p sessionPayload
	if err := m.s.verify(token, &p); err != nil {
		return SessionClaims{}, err
	}
	return p.claims(), nil
}

// claims converts the wire payload into SessionClaims.
func (p *sessionPayload) claims() SessionClaims {
	return SessionClaims{
		SessionUser: SessionUser{
			UserID:  p.Subject,
			TeamID:  p.TeamID,
			Role:    p.Role,
			Name:    p.Name,
			Email:   p.Email,
			IsAdmin: p.IsAdmin,
		},
		IssuedAt:  time.Unix(p.IssuedAt, 0).UTC(),
		ExpiresAt: time.Unix(p.ExpiresAt, 0).UTC(),
		ID:        p.ID,
	}
}

// orDefault returns s, or def when s is empty.
func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// orDefaultDuration returns d, or def when d is zero.
func orDefaultDuration(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// leewayOrDefault maps the Leeway configuration convention (zero =
// default, negative = none) to a duration.
func leewayOrDefault(d time.Duration) time.Duration {
	switch {
	case d == 0:
		return DefaultLeeway
	case d < 0:
		return 0
	}
	return d
}
