package auth

import (
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
)

// MinSecretLen is the shortest server secret (in bytes) that any function
// of this package accepts as key material: 256 bits.
const MinSecretLen = 32

// ErrSecretTooShort is returned when a configured secret has fewer than
// MinSecretLen bytes.
var ErrSecretTooShort = fmt.Errorf("auth: secret must be at least %d bytes", MinSecretLen)

// hkdfSalt is the fixed, public HKDF salt of every key this package derives
// from a server secret. RFC 5869 §3.1 allows a constant salt; it makes the
// derivation specific to Capsule.
var hkdfSalt = []byte("capsule/hkdf/v1")

// Purpose labels passed to DeriveKey by this package. Each label yields an
// independent key, so a value computed for one purpose is useless for any
// other (a session JWT cannot be replayed as a host JWT, a traffic token
// reveals nothing about an envd token, and so on).
const (
	PurposeSessionJWT   = "jwt/session"
	PurposeHostJWT      = "jwt/host"
	PurposeTrafficToken = "sandbox/traffic-access-token"
	PurposeOAuthState   = "oauth/state"
)

// ValidateSecret reports whether secret is usable as key material: it must
// be at least MinSecretLen bytes long. Configuration loading should call it
// once so that a weak secret is refused at startup, not at first use.
func ValidateSecret(secret []byte) error {
	if len(secret) < MinSecretLen {
		return ErrSecretTooShort
	}
	return nil
}

// DeriveKey derives a length-byte key for purpose from secret with
// HKDF-SHA256 (fixed salt, info = "capsule/" + purpose). The same secret and
// purpose always give the same key; different purposes give independent
// keys. secret must pass ValidateSecret, purpose must be non-empty and
// length must be between 16 and 64.
func DeriveKey(secret []byte, purpose string, length int) ([]byte, error) {
	if err := ValidateSecret(secret); err != nil {
		return nil, err
	}
	if purpose == "" {
		return nil, errors.New("auth: empty key purpose")
	}
	if length < 16 || length > 64 {
		return nil, fmt.Errorf("auth: derived key length %d out of range [16, 64]", length)
	}
	return hkdf.Key(sha256.New, secret, hkdfSalt, "capsule/"+purpose, length)
}

// keyID returns a short, non-secret identifier of key: the first 8 bytes of
// SHA-256("capsule/kid" || key) in hex. It lets a verifier pick the right key
// among current and previous ones without trying them all, and reveals
// nothing usable about the key.
func keyID(key []byte) string {
	return hex.EncodeToString(keyTag(key))
}

// keyTag returns the 8 raw bytes behind keyID.
func keyTag(key []byte) []byte {
	h := sha256.New()
	h.Write([]byte("capsule/kid\x00"))
	h.Write(key)
	return h.Sum(nil)[:8]
}

// randomBytes returns n bytes from crypto/rand. crypto/rand.Read never
// fails since Go 1.24 (it aborts the program if the OS source breaks), so
// no error is returned.
func randomBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

// randomHex returns n random bytes as 2n lowercase hex digits.
func randomHex(n int) string {
	return hex.EncodeToString(randomBytes(n))
}

// isBase64Alphabet reports whether s consists only of letters, digits and
// the two extra characters c62 and c63 of a base64 alphabet. The decoders
// of encoding/base64 silently skip '\r' and '\n'; checking the alphabet
// first keeps every encoded value to one spelling.
func isBase64Alphabet(s string, c62, c63 byte) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < 'A' || c > 'Z') && (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != c62 && c != c63 {
			return false
		}
	}
	return true
}
