package auth

import (
	"crypto/hmac"
	"encoding/hex"
	"errors"
	"strings"
	"time"
)

// EnvdAccessToken returns the envd access token of a sandbox: the lowercase
// hex HMAC-SHA256 of sandboxID keyed with secret (64 hex digits), as E2B
// computes it. It is deterministic, so it stays the same across pause and
// resume and never needs storing. Pass the server secret (which must pass
// ValidateSecret); the token grants full control of the sandbox's envd, so
// it is only ever given to the sandbox's owner.
func EnvdAccessToken(secret []byte, sandboxID string) string {
	return hmacHex(secret, sandboxID)
}

// VerifyEnvdAccessToken reports in constant time whether token is the envd
// access token of sandboxID.
func VerifyEnvdAccessToken(secret []byte, sandboxID, token string) bool {
	return hmac.Equal([]byte(token), []byte(EnvdAccessToken(secret, sandboxID)))
}

// TrafficAccessToken returns the traffic access token of a sandbox (the
// value of the e2b-traffic-access-token header that the proxy demands for
// user ports of a sandbox created with allowPublicTraffic=false): 64
// lowercase hex digits of HMAC-SHA256 of sandboxID under a key derived from
// secret for PurposeTrafficToken. Being keyed differently, it reveals
// nothing about the envd token, which grants much more. It fails only when
// secret is shorter than MinSecretLen.
func TrafficAccessToken(secret []byte, sandboxID string) (string, error) {
	key, err := DeriveKey(secret, PurposeTrafficToken, 32)
	if err != nil {
		return "", err
	}
	return hmacHex(key, sandboxID), nil
}

// VerifyTrafficAccessToken reports in constant time whether token is the
// traffic access token of sandboxID. It is false when secret is unusable.
func VerifyTrafficAccessToken(secret []byte, sandboxID, token string) bool {
	want, err := TrafficAccessToken(secret, sandboxID)
	if err != nil {
		return false
	}
	return hmac.Equal([]byte(token), []byte(want))
}

// hmacHex returns the lowercase hex HMAC-SHA256 of msg under key.
func hmacHex(key []byte, msg string) string {
	return hex.EncodeToString(mac(key, msg))
}

// Prefixes of the opaque host tokens. They make a leaked token easy to
// recognize (secret scanners, logs) and keep the two kinds apart.
const (
	HostRegistrationTokenPrefix = "chreg_"
	HostRefreshTokenPrefix      = "chref_"
	// InvitationTokenPrefix starts a team invitation's one-time token.
	InvitationTokenPrefix = "cinv_"
	// opaqueTokenBytes is the entropy of every opaque token.
	opaqueTokenBytes = 32
)

// ErrMalformedToken is returned when an opaque token does not have the
// format of its kind.
var ErrMalformedToken = errors.New("malformed token")

// OpaqueToken is a freshly generated one-time or refresh token. Plaintext
// goes to its holder once and is never stored; Hash (SHA-256) and
// ExpiresAt are what the database keeps.
type OpaqueToken struct {
	Plaintext string
	Hash      []byte
	ExpiresAt time.Time
}

// Expired reports whether the token has expired at now.
func (t OpaqueToken) Expired(now time.Time) bool { return !now.Before(t.ExpiresAt) }

// newOpaqueToken returns prefix + 64 lowercase hex digits (256 random bits)
// expiring at expires.
func newOpaqueToken(prefix string, expires time.Time) OpaqueToken {
	plain := prefix + randomHex(opaqueTokenBytes)
	return OpaqueToken{Plaintext: plain, Hash: HashToken(plain), ExpiresAt: expires}
}

// validateOpaqueToken checks that token is prefix + 64 lowercase hex digits.
func validateOpaqueToken(prefix, token string) error {
	digits, ok := strings.CutPrefix(token, prefix)
	if !ok || len(digits) != 2*opaqueTokenBytes || !isLowerHex(digits) {
		return ErrMalformedToken
	}
	return nil
}

// ValidateHostRegistrationToken reports whether token has the format of a
// host registration token, so garbage is refused before a lookup.
func ValidateHostRegistrationToken(token string) error {
	return validateOpaqueToken(HostRegistrationTokenPrefix, token)
}

// ValidateHostRefreshToken reports whether token has the format of a host
// refresh token.
func ValidateHostRefreshToken(token string) error {
	return validateOpaqueToken(HostRefreshTokenPrefix, token)
}

// NewInvitationToken returns a one-time team invitation token ("cinv_" +
// 64 hex digits) expiring at expires. The database keeps its Hash only and
// must redeem it atomically (a row lock or a conditional UPDATE).
func NewInvitationToken(expires time.Time) OpaqueToken {
	return newOpaqueToken(InvitationTokenPrefix, expires)
}

// ValidateInvitationToken reports whether token has the format of an
// invitation token, so garbage is refused before a lookup.
func ValidateInvitationToken(token string) error {
	return validateOpaqueToken(InvitationTokenPrefix, token)
}

// Defaults of HostTokenConfig, after the seeds: a 7-day access JWT and a
// 60-day refresh token.
const (
	DefaultHostAudience        = "capsule/host"
	DefaultHostAccessTTL       = 7 * 24 * time.Hour
	DefaultHostRefreshTTL      = 60 * 24 * time.Hour
	DefaultHostRegistrationTTL = 24 * time.Hour
)

// HostTokenConfig configures HostTokens.
type HostTokenConfig struct {
	// Secret is the current signing secret (at least MinSecretLen bytes);
	// the HS256 key is derived from it for PurposeHostJWT, so host tokens
	// and session tokens are never interchangeable even with one secret.
	Secret []byte
	// PreviousSecrets are accepted for verification only.
	PreviousSecrets [][]byte
	// Issuer is the "iss" claim; DefaultIssuer when empty.
	Issuer string
	// Audience is the "aud" claim; DefaultHostAudience when empty.
	Audience string
	// AccessTTL is the lifetime of a host JWT; DefaultHostAccessTTL when 0.
	AccessTTL time.Duration
	// RefreshTTL is the lifetime of a refresh token;
	// DefaultHostRefreshTTL when zero.
	RefreshTTL time.Duration
	// RegistrationTTL is the lifetime of a registration token;
	// DefaultHostRegistrationTTL when zero.
	RegistrationTTL time.Duration
	// Leeway is the clock skew tolerated on exp, iat and nbf;
	// DefaultLeeway when zero, at most MaxLeeway, none when negative.
	Leeway time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// HostClaims are the verified contents of a host access JWT.
type HostClaims struct {
	// HostID is the host's wire ID ("host-…"); the token's "sub".
	HostID string
	// IssuedAt is the "iat" claim.
	IssuedAt time.Time
	// ExpiresAt is the "exp" claim.
	ExpiresAt time.Time
	// ID is the "jti" claim.
	ID string
}

// HostTokens issues the credentials of host agents: one-time registration
// tokens, access JWTs, and refresh tokens. It stores nothing. The storage
// layer must (1) consume a registration token atomically (an UPDATE …
// WHERE hash = $1 AND used_at IS NULL AND expires_at > now()), and (2)
// rotate refresh tokens by inserting the new one before revoking the old,
// so that a crash between the two never locks a host out. It is safe for
// concurrent use.
type HostTokens struct {
	s               *hs256Signer
	refreshTTL      time.Duration
	registrationTTL time.Duration
}

// NewHostTokens checks cfg, fills its defaults and derives the keys.
func NewHostTokens(cfg HostTokenConfig) (*HostTokens, error) {
	s, err := newHS256Signer(tokenConfig{
		purpose:  PurposeHostJWT,
		secret:   cfg.Secret,
		previous: cfg.PreviousSecrets,
		iss:      orDefault(cfg.Issuer, DefaultIssuer),
		aud:      orDefault(cfg.Audience, DefaultHostAudience),
		ttl:      orDefaultDuration(cfg.AccessTTL, DefaultHostAccessTTL),
		leeway:   leewayOrDefault(cfg.Leeway),
		now:      cfg.Now,
	})
	if err != nil {
		return nil, err
	}
	t := &HostTokens{
		s:               s,
		refreshTTL:      orDefaultDuration(cfg.RefreshTTL, DefaultHostRefreshTTL),
		registrationTTL: orDefaultDuration(cfg.RegistrationTTL, DefaultHostRegistrationTTL),
	}
	if t.refreshTTL < 0 || t.registrationTTL < 0 {
		return nil, errors.New("auth: host token lifetimes must be positive")
	}
	return t, nil
}

// NewRegistrationToken returns a one-time host registration token
// ("chreg_" + 64 hex digits) expiring after the registration TTL.
func (t *HostTokens) NewRegistrationToken() OpaqueToken {
	return newOpaqueToken(HostRegistrationTokenPrefix, t.s.now().Add(t.registrationTTL))
}

// NewRefreshToken returns a host refresh token ("chref_" + 64 hex digits)
// expiring after the refresh TTL.
func (t *HostTokens) NewRefreshToken() OpaqueToken {
	return newOpaqueToken(HostRefreshTokenPrefix, t.s.now().Add(t.refreshTTL))
}

// hostPayload is the JSON payload of a host access token.
type hostPayload struct {
	registeredClaims
}

// IssueAccessToken returns a signed access JWT for hostID and its claims.
func (t *HostTokens) IssueAccessToken(hostID string) (string, HostClaims, error) {
	if hostID == "" {
		return "", HostClaims{}, ErrTokenClaims
	}
	p := hostPayload{registeredClaims: t.s.newClaims(hostID)}
	token, err := t.s.sign(p)
	if err != nil {
		return "", HostClaims{}, err
	}
	return token, p.claims(), nil
}

// VerifyAccessToken checks a host access JWT and returns its claims. Every
// failure wraps ErrInvalidToken. A session token never passes (other key,
// other audience).
func (t *HostTokens) VerifyAccessToken(token string) (HostClaims, error) {
	var p hostPayload
	if err := t.s.verify(token, &p); err != nil {
		return HostClaims{}, err
	}
	return p.claims(), nil
}

// claims converts the wire payload into HostClaims.
func (p *hostPayload) claims() HostClaims {
	return HostClaims{
		HostID:    p.Subject,
		IssuedAt:  time.Unix(p.IssuedAt, 0).UTC(),
		ExpiresAt: time.Unix(p.ExpiresAt, 0).UTC(),
		ID:        p.ID,
	}
}
