package auth

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"net/http"
	"strings"
)

// API key format. Keys look like E2B's, so the unmodified E2B SDKs accept
// them (the Python SDK checks ^e2b_[0-9a-f]+$): "e2b_" followed by
// lowercase hex digits. Capsule issues APIKeyHexLen digits and accepts
// APIKeyMinHexLen to APIKeyHexLen.
const (
	APIKeyPrefix    = "e2b_"
	APIKeyHexLen    = 40
	APIKeyMinHexLen = 32
	// APIKeyDisplayLen is how many hex digits after the prefix
	// APIKeyDisplayPrefix keeps.
	APIKeyDisplayLen = 8
	// APIKeyHeader is the request header carrying the key. Header names
	// are case-insensitive; the SDK sends "X-API-KEY".
	APIKeyHeader = "X-API-Key"
)

// API key errors. Both mean 401 at the HTTP layer.
var (
	ErrNoAPIKey        = errors.New("missing API key")
	ErrMalformedAPIKey = errors.New("malformed API key")
)

// APIKey is a freshly generated key. Plaintext is shown to its owner once
// and never stored; Hash is what the database keeps and looks keys up by;
// DisplayPrefix may be stored and shown in key lists.
type APIKey struct {
	Plaintext     string
	Hash          []byte
	DisplayPrefix string
}

// GenerateAPIKey returns a new random key: "e2b_" + 40 lowercase hex digits
// (160 bits from crypto/rand), with its hash and display prefix.
func GenerateAPIKey() APIKey {
	key := APIKeyPrefix + randomHex(APIKeyHexLen/2)
	return APIKey{Plaintext: key, Hash: HashAPIKey(key), DisplayPrefix: APIKeyDisplayPrefix(key)}
}

// ValidateAPIKey reports whether key has the API key format: "e2b_" then
// 32 to 40 lowercase hex digits, nothing else. It returns
// ErrMalformedAPIKey otherwise. Checking the format before the database
// lookup turns garbage into a cheap 401.
func ValidateAPIKey(key string) error {
	digits, ok := strings.CutPrefix(key, APIKeyPrefix)
	if !ok || len(digits) < APIKeyMinHexLen || len(digits) > APIKeyHexLen || !isLowerHex(digits) {
		return ErrMalformedAPIKey
	}
	return nil
}

// isLowerHex reports whether s consists of 0-9 and a-f only.
func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// HashAPIKey returns the SHA-256 digest of key, the value stored at rest
// and used to look the key up. A fast hash is enough: keys carry 128–160
// random bits, so there is nothing to brute-force.
func HashAPIKey(key string) []byte {
	return HashToken(key)
}

// APIKeyMatches reports in constant time whether key hashes to hash.
func APIKeyMatches(key string, hash []byte) bool {
	return TokenMatchesHash(key, hash)
}

// APIKeyDisplayPrefix returns "e2b_" and the first 8 hex digits of key
// (e.g. "e2b_1a2b3c4d"), enough for a person to tell keys apart and
// useless for guessing one. It returns "" for a key shorter than that.
func APIKeyDisplayPrefix(key string) string {
	n := len(APIKeyPrefix) + APIKeyDisplayLen
	if len(key) < n || !strings.HasPrefix(key, APIKeyPrefix) {
		return ""
	}
	return key[:n]
}

// APIKeyFromHeader returns the API key of a request's X-API-Key header,
// whatever the case of the header name (it also works on a header map that
// was built by hand with non-canonical names). Surrounding blanks are
// trimmed. It returns ErrNoAPIKey when there is no such header or it is
// empty, and ErrMalformedAPIKey when the header is repeated or its value
// fails ValidateAPIKey.
func APIKeyFromHeader(h http.Header) (string, error) {
	var values []string
	for name, v := range h {
		if strings.EqualFold(name, APIKeyHeader) {
			values = append(values, v...)
		}
	}
	switch {
	case len(values) == 0:
		return "", ErrNoAPIKey
	case len(values) > 1:
		return "", ErrMalformedAPIKey
	}
	key := strings.TrimSpace(values[0])
	if key == "" {
		return "", ErrNoAPIKey
	}
	if err := ValidateAPIKey(key); err != nil {
		return "", err
	}
	return key, nil
}

// HashToken returns the SHA-256 digest of a random secret token (API key,
// host registration token, refresh token): the form in which such tokens
// are stored and looked up.
func HashToken(token string) []byte {
	sum := sha256.Sum256([]byte(token))
	return sum[:]
}

// TokenMatchesHash reports in constant time whether token hashes to hash.
func TokenMatchesHash(token string, hash []byte) bool {
	return subtle.ConstantTimeCompare(HashToken(token), hash) == 1
}
