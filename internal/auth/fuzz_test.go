package auth

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"net/netip"
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

// FuzzClientIP: the client address of a request is the peer's unless the
// peer is a trusted proxy; then it comes from X-Forwarded-For, and only
// from the part right of the first hop that is not a trusted proxy (what
// a client wrote itself is never believed).
func FuzzClientIP(f *testing.F) {
	for _, s := range [][2]string{
		{"203.0.113.7:4000", "1.2.3.4"}, {"10.0.0.1:80", "198.51.100.2, 10.0.0.9"}, {"10.0.0.1:80", "6.6.6.6, 198.51.100.2"},
		{"10.0.0.1:80", "garbage, 10.0.0.2"}, {"10.0.0.1:80", ""}, {"[::ffff:10.0.0.1]:80", "::ffff:198.51.100.2"},
		{"10.0.0.1", "10.0.0.2,10.0.0.3"}, {"not an address", "1.2.3.4"}, {"10.0.0.1:80", "fe80::1%eth0"},
	} {
		f.Add(s[0], s[1])
	}
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}
	f.Fuzz(func(t *testing.T, remote, xff string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = remote
		r.Header.Set("X-Forwarded-For", xff)
		got := ClientIP(r, trusted)
		peer := parseRemoteAddr(remote)
		if !peer.IsValid() || !inPrefixes(peer, trusted) {
			if got != peer {
				t.Fatalf("ClientIP(peer %q, XFF %q) = %v, want the untrusted peer %v", remote, xff, got, peer)
			}
			return
		}
		if !got.IsValid() {
			t.Fatalf("ClientIP(peer %q, XFF %q) is unknown behind a trusted proxy", remote, xff)
		}
		if got == peer {
			return
		}
		// got is a hop of XFF, and every hop right of it is a trusted
		// proxy.
		hops := strings.Split(xff, ",")
		for i := len(hops) - 1; i >= 0; i-- {
			a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
			if err != nil {
				t.Fatalf("ClientIP(peer %q, XFF %q) = %v, read past a malformed hop", remote, xff, got)
			}
			if a.Unmap() == got {
				return
			}
			if !inPrefixes(a.Unmap(), trusted) {
				t.Fatalf("ClientIP(peer %q, XFF %q) = %v, left of the untrusted hop %v", remote, xff, got, a)
			}
		}
		t.Fatalf("ClientIP(peer %q, XFF %q) = %v, which is in neither", remote, xff, got)
	})
}

// FuzzBearerToken: a token is taken from exactly one Authorization header
// of the Bearer scheme, non-empty and trimmed.
func FuzzBearerToken(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer  abc ", "Basic abc", "Bearer", "Bearer ", " Bearer x y", ""} {
		f.Add(s, false)
	}
	f.Add("Bearer abc", true)
	f.Fuzz(func(t *testing.T, v string, twice bool) {
		h := http.Header{"Authorization": {v}}
		if twice {
			h["Authorization"] = append(h["Authorization"], v)
		}
		tok, ok := BearerToken(h)
		if !ok {
			return
		}
		if twice || tok == "" || tok != strings.TrimSpace(tok) || !strings.HasSuffix(strings.TrimSpace(v), tok) ||
			!strings.EqualFold(strings.TrimSpace(v)[:6], "bearer") {
			t.Fatalf("BearerToken(%q, twice %v) = %q", v, twice, tok)
		}
	})
}

// FuzzHostTokens: host registration and refresh tokens validate only in
// their documented form (prefix and lower-case hex), never each other's.
func FuzzHostTokens(f *testing.F) {
	f.Add(HostRegistrationTokenPrefix + strings.Repeat("ab", opaqueTokenBytes))
	f.Add(HostRefreshTokenPrefix + strings.Repeat("0f", opaqueTokenBytes))
	f.Add(HostRefreshTokenPrefix + strings.Repeat("0F", opaqueTokenBytes))
	f.Add(HostRegistrationTokenPrefix)
	f.Fuzz(func(t *testing.T, s string) {
		reg, ref := ValidateHostRegistrationToken(s) == nil, ValidateHostRefreshToken(s) == nil
		if reg && ref {
			t.Fatalf("%q validates as both kinds", s)
		}
		for _, c := range []struct {
			ok     bool
			prefix string
		}{{reg, HostRegistrationTokenPrefix}, {ref, HostRefreshTokenPrefix}} {
			if !c.ok {
				continue
			}
			digits, found := strings.CutPrefix(s, c.prefix)
			if !found || len(digits) != 2*opaqueTokenBytes || strings.Trim(digits, "0123456789abcdef") != "" {
				t.Fatalf("%q validated", s)
			}
		}
	})
}
