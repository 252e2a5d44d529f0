package auth

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func newFieldCipher(t *testing.T, purpose string, secret []byte, previous ...[]byte) *FieldCipher {
	t.Helper()
	c, err := NewFieldCipher(purpose, secret, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFieldCipherRoundTrip(t *testing.T) {
	c := newFieldCipher(t, "sandbox-env", secretA)
	ad := []byte("sandbox:sb-1:env")
	for _, plain := range [][]byte{nil, []byte("x"), []byte("API_TOKEN=s3cr3t"), bytes.Repeat([]byte{0, 255}, 5000)} {
		ct := c.Encrypt(plain, ad)
		if len(ct) != fieldMinLen+len(plain) || ct[0] != 1 {
			t.Fatalf("layout: len %d for %d bytes", len(ct), len(plain))
		}
		if len(plain) > 4 && bytes.Contains(ct, plain) {
			t.Fatal("plaintext visible in ciphertext")
		}
		got, err := c.Decrypt(ct, ad)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("Decrypt = %q, %v", got, err)
		}
		if c.NeedsReencryption(ct) {
			t.Fatal("fresh value needs re-encryption")
		}
	}
	a, b := c.Encrypt([]byte("same"), ad), c.Encrypt([]byte("same"), ad)
	if bytes.Equal(a, b) {
		t.Fatal("encryption is deterministic: nonce reused")
	}
}

func TestFieldCipherTamperDetection(t *testing.T) {
	c := newFieldCipher(t, "sandbox-env", secretA)
	ad := []byte("sandbox:sb-1:env")
	ct := c.Encrypt([]byte("API_TOKEN=s3cr3t"), ad)

	// Every single bit flip anywhere is detected.
	for i := range ct {
		for bit := range 8 {
			bad := bytes.Clone(ct)
			bad[i] ^= 1 << bit
			if _, err := c.Decrypt(bad, ad); !errors.Is(err, ErrFieldCiphertext) {
				t.Fatalf("flip of byte %d bit %d not detected: %v", i, bit, err)
			}
		}
	}
	tests := []struct {
		name string
		ct   []byte
		ad   []byte
		want error
	}{
		{"wrong associated data (row swap)", ct, []byte("sandbox:sb-2:env"), ErrFieldTampered},
		{"missing associated data", ct, nil, ErrFieldTampered},
		{"truncated tag", ct[:len(ct)-1], ad, ErrFieldTampered},
		{"appended byte", append(bytes.Clone(ct), 0), ad, ErrFieldTampered},
		{"too short", ct[:fieldMinLen-1], ad, ErrFieldMalformed},
		{"empty", nil, ad, ErrFieldMalformed},
		{"version 2", append([]byte{2}, ct[1:]...), ad, ErrFieldVersion},
		{"unknown key id", append([]byte{1, 0, 0, 0, 0}, ct[5:]...), ad, ErrFieldKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := c.Decrypt(tt.ct, tt.ad); !errors.Is(err, tt.want) || !errors.Is(err, ErrFieldCiphertext) {
				t.Fatalf("Decrypt = %v, want %v", err, tt.want)
			}
		})
	}
	// A different purpose or secret cannot read the value.
	if _, err := newFieldCipher(t, "oauth-client-secret", secretA).Decrypt(ct, ad); !errors.Is(err, ErrFieldKey) {
		t.Fatalf("other purpose: %v", err)
	}
	if _, err := newFieldCipher(t, "sandbox-env", secretB).Decrypt(ct, ad); !errors.Is(err, ErrFieldKey) {
		t.Fatalf("other secret: %v", err)
	}
}

func TestFieldCipherRotation(t *testing.T) {
	old := newFieldCipher(t, "sandbox-env", secretA)
	ct := old.Encrypt([]byte("v"), nil)
	rotated := newFieldCipher(t, "sandbox-env", secretB, secretA)
	if got, err := rotated.Decrypt(ct, nil); err != nil || string(got) != "v" {
		t.Fatalf("previous secret: %q, %v", got, err)
	}
	if !rotated.NeedsReencryption(ct) || old.NeedsReencryption(ct) {
		t.Fatal("NeedsReencryption after rotation")
	}
	fresh := rotated.Encrypt([]byte("v"), nil)
	if rotated.NeedsReencryption(fresh) {
		t.Fatal("fresh value needs re-encryption")
	}
	if _, err := old.Decrypt(fresh, nil); !errors.Is(err, ErrFieldKey) {
		t.Fatalf("old cipher read a new value: %v", err)
	}
	if !rotated.NeedsReencryption([]byte{1, 2}) {
		t.Fatal("garbage needs re-encryption")
	}
	// The same secret listed twice is harmless.
	if _, err := NewFieldCipher("p", secretA, secretA); err != nil {
		t.Fatal(err)
	}
}

func TestFieldCipherStrings(t *testing.T) {
	c := newFieldCipher(t, "oauth-client-secret", secretA)
	s := c.EncryptString("gh-client-secret", "oauth:github")
	if !strings.HasPrefix(s, "enc1:") || strings.Contains(s, "gh-client-secret") {
		t.Fatalf("text form %q", s)
	}
	got, err := c.DecryptString(s, "oauth:github")
	if err != nil || got != "gh-client-secret" {
		t.Fatalf("DecryptString = %q, %v", got, err)
	}
	if c.NeedsReencryptionString(s) || !c.NeedsReencryptionString("plain") {
		t.Fatal("NeedsReencryptionString")
	}
	body := strings.TrimPrefix(s, "enc1:")
	for name, tt := range map[string]struct {
		s    string
		want error
	}{
		"no prefix":       {body, ErrFieldVersion},
		"plaintext":       {"gh-client-secret", ErrFieldVersion},
		"bad base64":      {"enc1:" + body + "!", ErrFieldMalformed},
		"padded":          {"enc1:" + body + "=", ErrFieldMalformed},
		"newline":         {"enc1:" + body[:5] + "\n" + body[5:], ErrFieldMalformed},
		"wrong binding":   {s, ErrFieldTampered},
		"flipped char":    {"enc1:" + body[:20] + string(body[20]^1) + body[21:], ErrFieldCiphertext},
		"truncated value": {s[:len(s)-4], ErrFieldCiphertext},
	} {
		ad := "oauth:github"
		if name == "wrong binding" {
			ad = "oauth:google"
		}
		if _, err := c.DecryptString(tt.s, ad); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", name, err, tt.want)
		}
	}
}

func TestFieldCipherConfig(t *testing.T) {
	if _, err := NewFieldCipher("", secretA); err == nil {
		t.Error("empty purpose accepted")
	}
	if _, err := NewFieldCipher("p", []byte("short")); !errors.Is(err, ErrSecretTooShort) {
		t.Errorf("short secret: %v", err)
	}
	if _, err := NewFieldCipher("p", secretA, []byte("short")); !errors.Is(err, ErrSecretTooShort) {
		t.Errorf("short previous secret: %v", err)
	}
}
