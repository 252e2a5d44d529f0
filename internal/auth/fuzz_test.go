package auth

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// FuzzSessionVerify: the only string that verifies is the issued token
// itself, byte for byte (canonical encoding, MAC over everything).
func FuzzSessionVerify(f *testing.F) {
	c := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	m, err := NewSessionManager(SessionConfig{Secret: secretA, Now: c.Now})
	if err != nil {
		f.Fatal(err)
	}
	// A fixed token: the fuzzing workers run this setup again, and must
	// agree on the token with the coordinator.
	key, err := DeriveKey(secretA, PurposeSessionJWT, 32)
	if err != nil {
		f.Fatal(err)
	}
	now := c.t.Unix()
	token := craft(jwtHeader{Alg: "HS256", Kid: keyID(key), Typ: "JWT"}, sessionPayload{
		registeredClaims: registeredClaims{Issuer: DefaultIssuer, Subject: "usr-1", Audience: DefaultSessionAudience, IssuedAt: now, ExpiresAt: now + 60, ID: "j"},
		Role:             "member",
	}, key)
	if _, err := m.Verify(token); err != nil {
		f.Fatal(err)
	}
	f.Add(token)
	f.Add(token + "=")
	f.Add(strings.Replace(token, ".", ".\n", 1))
	f.Add("e30.e30.")
	f.Fuzz(func(t *testing.T, s string) {
		if _, err := m.Verify(s); err == nil && s != token {
			t.Fatalf("accepted %q, which is not the issued token", s)
		}
	})
}

// FuzzDecodePHC: parsing never panics, and whatever parses re-encodes to
// the same string (one spelling per hash).
func FuzzDecodePHC(f *testing.F) {
	h, _ := HashPassword("pw", cheapParams)
	f.Add(h)
	f.Add("$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$r8aHA5ipzgCBZ+GG4nmVxw6T30JorwMePu+jz30BBMc")
	f.Add("$argon2id$v=19$m=8192,t=1,p=1$$")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := decodePHC(s)
		if err != nil {
			return
		}
		if again := encodePHC(d.params, d.salt, d.key); again != s {
			t.Fatalf("%q parsed but re-encodes as %q", s, again)
		}
	})
}

// FuzzFieldDecrypt: only the exact ciphertext (with its associated data)
// opens.
func FuzzFieldDecrypt(f *testing.F) {
	c, err := NewFieldCipher("fuzz", secretA)
	if err != nil {
		f.Fatal(err)
	}
	// A fixed ciphertext (all-zero nonce), identical in every worker.
	ct := append([]byte{fieldVersion1}, c.current.id[:]...)
	nonce := make([]byte, fieldNonceLen)
	ct = c.current.aead.Seal(append(ct, nonce...), nonce, []byte("secret value"), fieldAD(ct[:fieldHeaderLen], []byte("row-1")))
	if p, err := c.Decrypt(ct, []byte("row-1")); err != nil || string(p) != "secret value" {
		f.Fatal("fixed ciphertext does not open", err)
	}
	f.Add(ct, []byte("row-1"))
	f.Add(ct[:20], []byte("row-1"))
	f.Add([]byte{1, 2, 3}, []byte(nil))
	f.Fuzz(func(t *testing.T, data, ad []byte) {
		plain, err := c.Decrypt(data, ad)
		if err != nil {
			return
		}
		if !bytes.Equal(data, ct) || string(ad) != "row-1" || string(plain) != "secret value" {
			t.Fatalf("opened a value that was never sealed: %x / %q", data, ad)
		}
	})
}

// FuzzValidateAPIKey: whatever validates has the documented form.
func FuzzValidateAPIKey(f *testing.F) {
	f.Add(GenerateAPIKey().Plaintext)
	f.Add("e2b_" + strings.Repeat("a", 32))
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateAPIKey(s) != nil {
			return
		}
		if !e2bPythonSDKKey.MatchString(s) || len(s) < 36 || len(s) > 44 {
			t.Fatalf("accepted %q", s)
		}
	})
}
