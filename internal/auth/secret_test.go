package auth

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

func TestDeriveKey(t *testing.T) {
	k1, err := DeriveKey(secretA, "a", 32)
	if err != nil {
		t.Fatal(err)
	}
	k1again, _ := DeriveKey(secretA, "a", 32)
	k2, _ := DeriveKey(secretA, "b", 32)
	k3, _ := DeriveKey(secretB, "a", 32)
	if !bytes.Equal(k1, k1again) || bytes.Equal(k1, k2) || bytes.Equal(k1, k3) || bytes.Equal(k1, secretA) {
		t.Fatal("derivation is not deterministic and purpose/secret specific")
	}
	k64, _ := DeriveKey(secretA, "a", 64)
	if len(k64) != 64 || !bytes.Equal(k64[:32], k1) { // HKDF output is a prefix stream
		t.Fatal("length")
	}
	// Pinned, so that a change of salt or info (which would invalidate
	// every session and encrypted field) cannot go unnoticed.
	if got := hex.EncodeToString(k1); got != pinnedDerivedKey {
		t.Fatalf("DeriveKey(secretA, a) = %s; the derivation changed", got)
	}
	for name, f := range map[string]func() error{
		"short secret": func() error { _, err := DeriveKey([]byte("short"), "a", 32); return err },
		"no purpose":   func() error { _, err := DeriveKey(secretA, "", 32); return err },
		"too short":    func() error { _, err := DeriveKey(secretA, "a", 8); return err },
		"too long":     func() error { _, err := DeriveKey(secretA, "a", 65); return err },
	} {
		if f() == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if !errors.Is(ValidateSecret(make([]byte, 31)), ErrSecretTooShort) || ValidateSecret(make([]byte, 32)) != nil {
		t.Fatal("ValidateSecret")
	}
}

func TestKeyID(t *testing.T) {
	a, again := keyID(secretA), keyID(bytes.Clone(secretA))
	if len(a) != 16 || a == keyID(secretB) || a != again {
		t.Fatal("keyID")
	}
}

func TestIsBase64Alphabet(t *testing.T) {
	for s, want := range map[string]bool{"": true, "AZaz09-_": true, "a+b": false, "a\nb": false, "a=": false, "a b": false} {
		if isBase64Alphabet(s, '-', '_') != want {
			t.Errorf("isBase64Alphabet(%q) != %v", s, want)
		}
	}
}

// pinnedDerivedKey is HKDF-SHA256(salt "capsule/hkdf/v1", IKM secretA,
// info "capsule/a", 32 bytes), computed independently with Python's hmac
// module (RFC 5869 by hand).
const pinnedDerivedKey = "1337969d1930b19490091188b67f12d0264a6cc66a4cb7652b0bb3e9be6ed68e"
