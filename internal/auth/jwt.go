package auth

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
)

// JWT verification errors. Every one of them wraps ErrInvalidToken, so an
// HTTP layer needs only errors.Is(err, ErrInvalidToken) to answer 401; the
// finer errors are for logs and tests.
var (
	ErrInvalidToken     = errors.New("invalid token")
	ErrTokenMalformed   = fmt.Errorf("%w: malformed", ErrInvalidToken)
	ErrTokenAlgorithm   = fmt.Errorf("%w: unsupported algorithm", ErrInvalidToken)
	ErrTokenUnknownKey  = fmt.Errorf("%w: unknown signing key", ErrInvalidToken)
	ErrTokenSignature   = fmt.Errorf("%w: bad signature", ErrInvalidToken)
	ErrTokenExpired     = fmt.Errorf("%w: expired", ErrInvalidToken)
	ErrTokenNotYetValid = fmt.Errorf("%w: not valid yet", ErrInvalidToken)
	ErrTokenClaims      = fmt.Errorf("%w: wrong claims", ErrInvalidToken)
)

// MaxTokenLen is the longest JWT Verify looks at; longer input is refused
// before any decoding.
const MaxTokenLen = 8 << 10

// MaxLeeway is the greatest clock-skew allowance a token configuration may
// ask for.
const MaxLeeway = 5 * time.Minute

// jwtHeader is the JOSE header of every token this package issues. Its
// fields marshal in declaration order, so tokens are byte-for-byte
// reproducible for a given key and payload.
type jwtHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ,omitempty"`
}

// registeredClaims are the RFC 7519 claims shared by session and host
// tokens, as they travel (NumericDate = integer Unix seconds).
type registeredClaims struct {
	Issuer    string `json:"iss"`
	Subject   string `json:"sub"`
	Audience  string `json:"aud"`
	IssuedAt  int64  `json:"iat"`
	ExpiresAt int64  `json:"exp"`
	NotBefore int64  `json:"nbf,omitempty"`
	ID        string `json:"jti"`
}

// registered gives access to the registered claims of a payload type.
type registered interface{ reg() *registeredClaims }

// reg implements registered.
func (r *registeredClaims) reg() *registeredClaims { return r }

// b64 is the unpadded base64url encoding of JWS compact serialization; its
// Strict form refuses non-canonical trailing bits, so every token has one
// spelling.
var b64 = base64.RawURLEncoding.Strict()

// hs256Signer signs and verifies HS256 JWTs for one purpose, with one
// current key and any number of previous (verify-only) keys, each named
// by its key ID (the "kid" header).
type hs256Signer struct {
	current keyEntry
	keys    map[string][]byte
	iss     string
	aud     string
	ttl     time.Duration
	leeway  time.Duration
	now     func() time.Time
}

// keyEntry is one signing key and its ID.
type keyEntry struct {
	id  string
	key []byte
}

// tokenConfig is what newHS256Signer needs; SessionConfig and
// HostTokenConfig are translated into it.
type tokenConfig struct {
	purpose  string
	secret   []byte
	previous [][]byte
	iss, aud string
	ttl      time.Duration
	leeway   time.Duration
	now      func() time.Time
}

// newHS256Signer derives the keys of purpose from the secrets and checks
// the configuration.
func newHS256Signer(c tokenConfig) (*hs256Signer, error) {
	if c.iss == "" || c.aud == "" {
		return nil, errors.New("auth: token issuer and audience must be set")
	}
	if c.ttl <= 0 {
		return nil, errors.New("auth: token lifetime must be positive")
	}
	if c.leeway < 0 || c.leeway > MaxLeeway {
		return nil, fmt.Errorf("auth: token leeway must be within [0, %s]", MaxLeeway)
	}
	s := &hs256Signer{keys: map[string][]byte{}, iss: c.iss, aud: c.aud, ttl: c.ttl, leeway: c.leeway, now: c.now}
	if s.now == nil {
		s.now = time.Now
	}
	for i, secret := range append([][]byte{c.secret}, c.previous...) {
		key, err := DeriveKey(secret, c.purpose, 32)
		if err != nil {
			if i == 0 {
				return nil, fmt.Errorf("auth: token secret: %w", err)
			}
			return nil, fmt.Errorf("auth: previous token secret %d: %w", i, err)
		}
		e := keyEntry{id: keyID(key), key: key}
		if i == 0 {
			s.current = e
		}
		s.keys[e.id] = e.key
	}
	return s, nil
}

// mac returns HMAC-SHA256(key, signingInput).
func mac(key []byte, signingInput string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(signingInput))
	return m.Sum(nil)
}

// newClaims fills the registered claims of a token issued now for subject.
func (s *hs256Signer) newClaims(subject string) registeredClaims {
	now := s.now()
	return registeredClaims{
		Issuer:    s.iss,
		Subject:   subject,
		Audience:  s.aud,
		IssuedAt:  now.Unix(),
		ExpiresAt: now.Add(s.ttl).Unix(),
		ID:        randomHex(16),
	}
}

// sign serializes payload and returns the compact JWS signed with the
// current key.
func (s *hs256Signer) sign(payload any) (string, error) {
	h, err := json.Marshal(jwtHeader{Alg: "HS256", Kid: s.current.id, Typ: "JWT"})
	if err != nil {
		return "", err
	}
	p, err := json.Marshal(payload)
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(p)
	return input + "." + b64.EncodeToString(mac(s.current.key, input)), nil
}

// verify checks token and decodes its payload into claims. The order is
// deliberate: size and shape, then the header (algorithm must be exactly
// HS256, key ID must name a configured key, no other header fields), then
// the signature in constant time, and only then is the payload decoded
// and its claims (exp, iat, nbf, iss, aud, sub, jti) checked.
func (s *hs256Signer) verify(token string, claims registered) error {
	if len(token) > MaxTokenLen {
		return ErrTokenMalformed
	}
	hPart, rest, ok1 := strings.Cut(token, ".")
	pPart, sPart, ok2 := strings.Cut(rest, ".")
	if !ok1 || !ok2 || !isBase64Alphabet(hPart, '-', '_') || !isBase64Alphabet(pPart, '-', '_') || !isBase64Alphabet(sPart, '-', '_') {
		return ErrTokenMalformed
	}
	hJSON, err := b64.DecodeString(hPart)
	if err != nil {
		return ErrTokenMalformed
	}
	var h jwtHeader
	if err := decodeStrict(hJSON, &h); err != nil {
		return ErrTokenMalformed
	}
	if h.Alg != "HS256" {
		return ErrTokenAlgorithm
	}
	if h.Typ != "" && h.Typ != "JWT" {
		return ErrTokenMalformed
	}
	key, ok := s.keys[h.Kid]
	if !ok {
		return ErrTokenUnknownKey
	}
	sig, err := b64.DecodeString(sPart)
	if err != nil || len(sig) != sha256.Size {
		return ErrTokenSignature
	}
	if !hmac.Equal(sig, mac(key, token[:len(hPart)+1+len(pPart)])) {
		return ErrTokenSignature
	}
	pJSON, err := b64.DecodeString(pPart)
	if err != nil {
		return ErrTokenMalformed
	}
	if err := json.Unmarshal(pJSON, claims); err != nil {
		return ErrTokenMalformed
	}
	return s.checkClaims(claims.reg())
}

// checkClaims validates the registered claims at the current time.
func (s *hs256Signer) checkClaims(r *registeredClaims) error {
	now := s.now()
	if r.ExpiresAt == 0 || r.IssuedAt == 0 {
		return ErrTokenClaims
	}
	if !now.Before(time.Unix(r.ExpiresAt, 0).Add(s.leeway)) {
		return ErrTokenExpired
	}
	if now.Add(s.leeway).Before(time.Unix(r.IssuedAt, 0)) {
		return ErrTokenNotYetValid
	}
	if r.NotBefore != 0 && now.Add(s.leeway).Before(time.Unix(r.NotBefore, 0)) {
		return ErrTokenNotYetValid
	}
	if r.Issuer != s.iss || r.Audience != s.aud || r.Subject == "" || r.ID == "" {
		return ErrTokenClaims
	}
	return nil
}

// decodeStrict decodes one JSON object into v, refusing unknown fields and
// trailing data.
func decodeStrict(data []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("trailing data")
	}
	return nil
}

// BearerToken returns the token of an "Authorization: Bearer <token>"
// header (scheme case-insensitive, surrounding blanks trimmed). ok is false
// when the header is absent, repeated, of another scheme or empty.
func BearerToken(h http.Header) (token string, ok bool) {
	values := h.Values("Authorization")
	if len(values) != 1 {
		return "", false
	}
	scheme, token, found := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !found || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}
