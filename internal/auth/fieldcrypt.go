package auth

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// Field ciphertext format, version 1 (all of it is authenticated):
//
//	offset 0   1 byte   version (0x01)
//	offset 1   4 bytes  key ID: first 4 bytes of the derived key's keyTag
//	offset 5  12 bytes  random GCM nonce
//	offset 17 n+16      AES-256-GCM ciphertext and tag
//
// The additional data of the AEAD is the 5-byte header followed by the
// caller's associated data, so neither the header nor the binding to a
// database row can be changed without detection.
const (
	fieldVersion1   = 0x01
	fieldHeaderLen  = 1 + 4
	fieldNonceLen   = 12
	fieldTagLen     = 16
	fieldMinLen     = fieldHeaderLen + fieldNonceLen + fieldTagLen
	fieldTextPrefix = "enc1:"
)

// Field decryption errors. ErrFieldCiphertext is wrapped by all of them.
var (
	ErrFieldCiphertext = errors.New("auth: cannot decrypt field")
	ErrFieldVersion    = fmt.Errorf("%w: unsupported format version", ErrFieldCiphertext)
	ErrFieldKey        = fmt.Errorf("%w: unknown key", ErrFieldCiphertext)
	ErrFieldMalformed  = fmt.Errorf("%w: malformed", ErrFieldCiphertext)
	ErrFieldTampered   = fmt.Errorf("%w: authentication failed", ErrFieldCiphertext)
)

// FieldCipher encrypts small secrets stored in database columns (sandbox
// environment variables, OAuth client secrets, …) with AES-256-GCM under a
// key derived from the server secret for one purpose. Previous secrets
// keep old values readable after a rotation; NeedsReencryption finds the
// values to rewrite. It is safe for concurrent use.
//
// Nonces are random (96 bits), which is safe up to about 2^32 encryptions
// per key: far more than the number of secrets a control plane stores.
type FieldCipher struct {
	current fieldKey
	keys    map[[4]byte]cipher.AEAD
}

// fieldKey is one AEAD and its key ID.
type fieldKey struct {
	id   [4]byte
	aead cipher.AEAD
}

// NewFieldCipher derives the AES-256 key of purpose (e.g. "sandbox-env",
// "oauth-client-secret"; each purpose has its own key) from secret, and
// from each of the previous secrets for decryption only. Every secret must
// pass ValidateSecret.
func NewFieldCipher(purpose string, secret []byte, previous ...[]byte) (*FieldCipher, error) {
	if purpose == "" {
		return nil, errors.New("auth: field cipher purpose must be set")
	}
	c := &FieldCipher{keys: map[[4]byte]cipher.AEAD{}}
	for i, s := range append([][]byte{secret}, previous...) {
		key, err := DeriveKey(s, "field/"+purpose, 32)
		if err != nil {
			return nil, fmt.Errorf("auth: field cipher secret %d: %w", i, err)
		}
		block, err := aes.NewCipher(key)
		if err != nil {
			return nil, err
		}
		aead, err := cipher.NewGCM(block)
		if err != nil {
			return nil, err
		}
		var id [4]byte
		copy(id[:], keyTag(key))
		if _, dup := c.keys[id]; dup {
			continue // the same secret twice (or a 1-in-2^32 tag collision: keep the first)
		}
		if i == 0 {
			c.current = fieldKey{id: id, aead: aead}
		}
		c.keys[id] = aead
	}
	return c, nil
}

// Encrypt seals plaintext, bound to associatedData (e.g. the row's ID and
// column: "sandbox:sb-…:env"), and returns the version-1 binary form. The
// same associatedData must be given to Decrypt.
func (c *FieldCipher) Encrypt(plaintext, associatedData []byte) []byte {
	out := make([]byte, fieldHeaderLen, fieldMinLen+len(plaintext))
	out[0] = fieldVersion1
	copy(out[1:fieldHeaderLen], c.current.id[:])
	nonce := randomBytes(fieldNonceLen)
	out = append(out, nonce...)
	return c.current.aead.Seal(out, nonce, plaintext, fieldAD(out[:fieldHeaderLen], associatedData))
}

// Decrypt opens a value produced by Encrypt under the current or a previous
// secret. Any change to the value or to associatedData makes it fail with
// an error wrapping ErrFieldCiphertext.
func (c *FieldCipher) Decrypt(ciphertext, associatedData []byte) ([]byte, error) {
	if len(ciphertext) < 1 {
		return nil, ErrFieldMalformed
	}
	if ciphertext[0] != fieldVersion1 {
		return nil, ErrFieldVersion
	}
	if len(ciphertext) < fieldMinLen {
		return nil, ErrFieldMalformed
	}
	aead, ok := c.keys[[4]byte(ciphertext[1:fieldHeaderLen])]
	if !ok {
		return nil, ErrFieldKey
	}
	nonce := ciphertext[fieldHeaderLen : fieldHeaderLen+fieldNonceLen]
	plain, err := aead.Open(nil, nonce, ciphertext[fieldHeaderLen+fieldNonceLen:], fieldAD(ciphertext[:fieldHeaderLen], associatedData))
	if err != nil {
		return nil, ErrFieldTampered
	}
	return plain, nil
}

// NeedsReencryption reports whether ciphertext was not made with the
// current secret (or cannot be read at all), so it should be decrypted and
// encrypted again after a rotation.
func (c *FieldCipher) NeedsReencryption(ciphertext []byte) bool {
	if len(ciphertext) < fieldMinLen || ciphertext[0] != fieldVersion1 {
		return true
	}
	return [4]byte(ciphertext[1:fieldHeaderLen]) != c.current.id
}

// EncryptString is Encrypt for text columns: it returns "enc1:" followed by
// the unpadded base64url form of the binary value.
func (c *FieldCipher) EncryptString(plaintext, associatedData string) string {
	return fieldTextPrefix + base64.RawURLEncoding.EncodeToString(c.Encrypt([]byte(plaintext), []byte(associatedData)))
}

// DecryptString opens a value produced by EncryptString.
func (c *FieldCipher) DecryptString(ciphertext, associatedData string) (string, error) {
	raw, err := decodeFieldText(ciphertext)
	if err != nil {
		return "", err
	}
	plain, err := c.Decrypt(raw, []byte(associatedData))
	return string(plain), err
}

// NeedsReencryptionString is NeedsReencryption for EncryptString's form.
func (c *FieldCipher) NeedsReencryptionString(ciphertext string) bool {
	raw, err := decodeFieldText(ciphertext)
	return err != nil || c.NeedsReencryption(raw)
}

// decodeFieldText strips the text prefix and decodes the base64url body.
func decodeFieldText(s string) ([]byte, error) {
	body, ok := strings.CutPrefix(s, fieldTextPrefix)
	if !ok {
		return nil, ErrFieldVersion
	}
	if !isBase64Alphabet(body, '-', '_') {
		return nil, ErrFieldMalformed
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(body)
	if err != nil {
		return nil, ErrFieldMalformed
	}
	return raw, nil
}

// fieldAD returns the AEAD additional data: header || associatedData.
func fieldAD(header, associatedData []byte) []byte {
	ad := make([]byte, 0, len(header)+len(associatedData))
	ad = append(ad, header...)
	return append(ad, associatedData...)
}
