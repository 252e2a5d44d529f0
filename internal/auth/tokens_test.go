package auth

import (
	"bytes"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
)

var lowerHex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

func TestEnvdAccessToken(t *testing.T) {
	// Known answer computed independently:
	//   printf i1a2b3c4d5e6f7g8h9j0k | openssl dgst -sha256 -hmac 0123456789abcdef0123456789abcdef
	const id = "i1a2b3c4d5e6f7g8h9j0k"
	const want = "58e9f2cde75904e9fa8d0523b5c20a0b87fc685aa51ae1ad537f1a70e1c64562"
	got := EnvdAccessToken(secretA, id)
	if got != want {
		t.Fatalf("EnvdAccessToken = %s, want %s", got, want)
	}
	if EnvdAccessToken(secretA, id) != got {
		t.Fatal("not deterministic (must survive pause/resume)")
	}
	if EnvdAccessToken(secretB, id) == got || EnvdAccessToken(secretA, id+"x") == got {
		t.Fatal("token does not depend on secret and ID")
	}
	tests := []struct {
		id, token string
		ok        bool
	}{
		{id, want, true},
		{id, strings.ToUpper(want), false},
		{id, want[:63], false},
		{id, want + "0", false},
		{id, "", false},
		{"iother", want, false},
	}
	for _, tt := range tests {
		if VerifyEnvdAccessToken(secretA, tt.id, tt.token) != tt.ok {
			t.Errorf("VerifyEnvdAccessToken(%q, %q) != %v", tt.id, tt.token, tt.ok)
		}
	}
}

func TestTrafficAccessToken(t *testing.T) {
	const id = "i1a2b3c4d5e6f7g8h9j0k"
	tok, err := TrafficAccessToken(secretA, id)
	if err != nil {
		t.Fatal(err)
	}
	if !lowerHex64.MatchString(tok) {
		t.Fatalf("format %q", tok)
	}
	if tok == EnvdAccessToken(secretA, id) {
		t.Fatal("traffic token equals envd token")
	}
	again, _ := TrafficAccessToken(secretA, id)
	other, _ := TrafficAccessToken(secretA, "iother")
	if again != tok || other == tok {
		t.Fatal("traffic token not deterministic per sandbox")
	}
	if !VerifyTrafficAccessToken(secretA, id, tok) || VerifyTrafficAccessToken(secretA, "iother", tok) ||
		VerifyTrafficAccessToken(secretB, id, tok) || VerifyTrafficAccessToken(secretA, id, EnvdAccessToken(secretA, id)) {
		t.Fatal("VerifyTrafficAccessToken")
	}
	if _, err := TrafficAccessToken([]byte("short"), id); !errors.Is(err, ErrSecretTooShort) {
		t.Fatalf("short secret: %v", err)
	}
	if VerifyTrafficAccessToken([]byte("short"), id, tok) {
		t.Fatal("verified with an unusable secret")
	}
}

func TestHostOpaqueTokens(t *testing.T) {
	c := newClock()
	h, err := NewHostTokens(HostTokenConfig{Secret: secretA, RegistrationTTL: time.Hour, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	reg := h.NewRegistrationToken()
	ref := h.NewRefreshToken()
	if !regexp.MustCompile(`^chreg_[0-9a-f]{64}$`).MatchString(reg.Plaintext) ||
		!regexp.MustCompile(`^chref_[0-9a-f]{64}$`).MatchString(ref.Plaintext) {
		t.Fatalf("formats %q %q", reg.Plaintext, ref.Plaintext)
	}
	if !reg.ExpiresAt.Equal(c.t.Add(time.Hour)) || !ref.ExpiresAt.Equal(c.t.Add(DefaultHostRefreshTTL)) {
		t.Fatalf("expiry %v %v", reg.ExpiresAt, ref.ExpiresAt)
	}
	if !bytes.Equal(reg.Hash, HashToken(reg.Plaintext)) || !TokenMatchesHash(ref.Plaintext, ref.Hash) || TokenMatchesHash(reg.Plaintext, ref.Hash) {
		t.Fatal("hashes")
	}
	if reg.Expired(c.t) || !reg.Expired(c.t.Add(time.Hour)) {
		t.Fatal("Expired")
	}
	if h.NewRefreshToken().Plaintext == ref.Plaintext {
		t.Fatal("refresh tokens repeat")
	}

	if ValidateHostRegistrationToken(reg.Plaintext) != nil || ValidateHostRefreshToken(ref.Plaintext) != nil {
		t.Fatal("valid tokens refused")
	}
	for _, bad := range []string{
		ref.Plaintext, // wrong kind
		"", "chreg_", reg.Plaintext[:len(reg.Plaintext)-1], reg.Plaintext + "0",
		strings.ToUpper(reg.Plaintext), "chreg_" + strings.Repeat("g", 64),
	} {
		if err := ValidateHostRegistrationToken(bad); !errors.Is(err, ErrMalformedToken) {
			t.Errorf("ValidateHostRegistrationToken(%q) = %v", bad, err)
		}
	}
	if err := ValidateHostRefreshToken(reg.Plaintext); !errors.Is(err, ErrMalformedToken) {
		t.Error("registration token accepted as refresh token")
	}
}

func TestHostTokensConfig(t *testing.T) {
	for name, cfg := range map[string]HostTokenConfig{
		"short secret":     {Secret: []byte("x")},
		"negative refresh": {Secret: secretA, RefreshTTL: -1},
		"negative reg":     {Secret: secretA, RegistrationTTL: -1},
		"negative access":  {Secret: secretA, AccessTTL: -1},
	} {
		if _, err := NewHostTokens(cfg); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	// Rotation works for host tokens as for sessions.
	c := newClock()
	old, _ := NewHostTokens(HostTokenConfig{Secret: secretA, Now: c.Now})
	tok, _, _ := old.IssueAccessToken("host-9")
	rotated, _ := NewHostTokens(HostTokenConfig{Secret: secretB, PreviousSecrets: [][]byte{secretA}, Now: c.Now})
	if _, err := rotated.VerifyAccessToken(tok); err != nil {
		t.Fatal(err)
	}
}
