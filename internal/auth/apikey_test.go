package auth

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// e2bPythonSDKKey is the check of the E2B Python SDK (spec §2).
var e2bPythonSDKKey = regexp.MustCompile(`^e2b_[0-9a-f]+$`)

func TestGenerateAPIKey(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		k := GenerateAPIKey()
		if len(k.Plaintext) != 44 || !e2bPythonSDKKey.MatchString(k.Plaintext) {
			t.Fatalf("key %q has the wrong format", k.Plaintext)
		}
		if err := ValidateAPIKey(k.Plaintext); err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256([]byte(k.Plaintext))
		if !bytes.Equal(k.Hash, sum[:]) || !bytes.Equal(HashAPIKey(k.Plaintext), sum[:]) {
			t.Fatal("hash is not SHA-256 of the key")
		}
		if k.DisplayPrefix != k.Plaintext[:12] || !strings.HasPrefix(k.DisplayPrefix, "e2b_") {
			t.Fatalf("display prefix %q of %q", k.DisplayPrefix, k.Plaintext)
		}
		if !APIKeyMatches(k.Plaintext, k.Hash) {
			t.Fatal("key does not match its hash")
		}
		if seen[k.Plaintext] {
			t.Fatal("repeated key")
		}
		seen[k.Plaintext] = true
	}
}

func TestValidateAPIKey(t *testing.T) {
	hex40 := strings.Repeat("0123456789", 4)
	tests := []struct {
		key string
		ok  bool
	}{
		{"e2b_" + hex40, true},
		{"e2b_" + hex40[:32], true},                            // E2B's shortest
		{"e2b_" + hex40[:36], true},                            //
		{"e2b_abcdefabcdefabcdefabcdefabcdefabcdefabcd", true}, // a-f
		{"e2b_" + hex40[:31], false},                           // too short
		{"e2b_" + hex40 + "0", false},                          // too long
		{"E2B_" + hex40, false},                                // prefix case
		{"e2b-" + hex40, false},                                // separator
		{"e2b_" + strings.ToUpper("abcdefabcdefabcdefabcdefabcdefabcdefabcd"), false}, // upper-case hex
		{"e2b_" + hex40[:39] + "g", false},                                            // not hex
		{"e2b_" + hex40[:39] + " ", false},                                            // blank
		{" e2b_" + hex40, false},                                                      // leading blank (the header helper trims)
		{hex40, false},                                                                // no prefix
		{"", false},
		{"e2b_", false},
		{"e2b_" + hex40[:38] + "\u00e9", false}, // non-ASCII
	}
	for _, tt := range tests {
		err := ValidateAPIKey(tt.key)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrMalformedAPIKey)) {
			t.Errorf("ValidateAPIKey(%q) = %v, want ok=%v", tt.key, err, tt.ok)
		}
	}
}

func TestAPIKeyFromHeader(t *testing.T) {
	key := GenerateAPIKey().Plaintext
	tests := []struct {
		name   string
		header http.Header
		want   string
		err    error
	}{
		{"canonical", http.Header{"X-Api-Key": {key}}, key, nil},
		{"SDK spelling by hand", http.Header{"X-API-KEY": {key}}, key, nil},
		{"lower case by hand", http.Header{"x-api-key": {key}}, key, nil},
		{"blanks", http.Header{"X-Api-Key": {"  " + key + "\t"}}, key, nil},
		{"absent", http.Header{"Authorization": {"Bearer " + key}}, "", ErrNoAPIKey},
		{"empty", http.Header{"X-Api-Key": {""}}, "", ErrNoAPIKey},
		{"blank", http.Header{"X-Api-Key": {"   "}}, "", ErrNoAPIKey},
		{"repeated", http.Header{"X-Api-Key": {key, key}}, "", ErrMalformedAPIKey},
		{"repeated in two spellings", http.Header{"X-Api-Key": {key}, "x-api-key": {key}}, "", ErrMalformedAPIKey},
		{"malformed", http.Header{"X-Api-Key": {"sk-123"}}, "", ErrMalformedAPIKey},
		{"upper-case key", http.Header{"X-Api-Key": {strings.ToUpper(key)}}, "", ErrMalformedAPIKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := APIKeyFromHeader(tt.header)
			if got != tt.want || !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
				t.Fatalf("APIKeyFromHeader = %q, %v; want %q, %v", got, err, tt.want, tt.err)
			}
		})
	}
	// A real request: net/http canonicalizes what the client sent.
	r, _ := http.NewRequest("GET", "http://x/", nil)
	r.Header.Set("x-api-key", key)
	if got, err := APIKeyFromHeader(r.Header); got != key || err != nil {
		t.Fatalf("request header: %q, %v", got, err)
	}
}

func TestAPIKeyMatchesAndPrefix(t *testing.T) {
	k := GenerateAPIKey()
	if APIKeyMatches(k.Plaintext+"0", k.Hash) || APIKeyMatches(k.Plaintext, nil) || APIKeyMatches(k.Plaintext, k.Hash[:31]) {
		t.Fatal("matched a wrong key or hash")
	}
	other := GenerateAPIKey()
	if APIKeyMatches(other.Plaintext, k.Hash) {
		t.Fatal("matched another key's hash")
	}
	for in, want := range map[string]string{
		"e2b_1a2b3c4d5e6f": "e2b_1a2b3c4d",
		"e2b_1a2b3c4d":     "e2b_1a2b3c4d",
		"e2b_1a2b3c4":      "",
		"abc_1a2b3c4d5e6f": "",
		"":                 "",
	} {
		if got := APIKeyDisplayPrefix(in); got != want {
			t.Errorf("APIKeyDisplayPrefix(%q) = %q, want %q", in, got, want)
		}
	}
}
