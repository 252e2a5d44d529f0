package auth

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"
)

var (
	secretA = []byte("0123456789abcdef0123456789abcdef") // 32 bytes
	secretB = []byte("fedcba9876543210fedcba9876543210")
	secretC = []byte("a completely different secret of 40 bytes")
)

// fakeClock is a settable clock for the tests.
type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newClock() *fakeClock { return &fakeClock{t: time.Unix(1_750_000_000, 0)} }

func newSessions(t *testing.T, c *fakeClock, secret []byte, previous ...[]byte) *SessionManager {
	t.Helper()
	m, err := NewSessionManager(SessionConfig{Secret: secret, PreviousSecrets: previous, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var alice = SessionUser{UserID: "usr-1", TeamID: "team-2", Role: "owner", Name: "Alice", Email: "alice@example.com", IsAdmin: true}

func TestSessionRoundTrip(t *testing.T) {
	c := newClock()
	m := newSessions(t, c, secretA)
	token, issued, err := m.Issue(alice)
	if err != nil {
		t.Fatal(err)
	}
	if issued.SessionUser != alice || !issued.IssuedAt.Equal(c.t) || !issued.ExpiresAt.Equal(c.t.Add(DefaultSessionTTL)) || len(issued.ID) != 32 {
		t.Fatalf("issued claims %+v", issued)
	}
	got, err := m.Verify(token)
	if err != nil {
		t.Fatal(err)
	}
	if got != issued {
		t.Fatalf("verified %+v, issued %+v", got, issued)
	}

	// The wire form: header and claim names are part of the contract with
	// the dashboard, which decodes the payload.
	parts := strings.Split(token, ".")
	var hdr, payload map[string]any
	decodePart(t, parts[0], &hdr)
	decodePart(t, parts[1], &payload)
	if hdr["alg"] != "HS256" || hdr["typ"] != "JWT" || hdr["kid"] == "" || len(hdr) != 3 {
		t.Fatalf("header %v", hdr)
	}
	for _, k := range []string{"sub", "team_id", "role", "name", "email", "is_admin", "iat", "exp", "jti", "iss", "aud"} {
		if _, ok := payload[k]; !ok {
			t.Errorf("claim %q missing from %v", k, payload)
		}
	}
	if payload["sub"] != "usr-1" || payload["iss"] != DefaultIssuer || payload["aud"] != DefaultSessionAudience || payload["is_admin"] != true {
		t.Fatalf("payload %v", payload)
	}

	_, second, _ := m.Issue(alice)
	if second.ID == issued.ID {
		t.Fatal("jti repeated")
	}
	if _, _, err := m.Issue(SessionUser{}); err == nil {
		t.Fatal("token without subject issued")
	}
}

func decodePart(t *testing.T, part string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(part)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// craft builds a token from raw parts, signed with HMAC-SHA256 under key
// (nil key: empty signature).
func craft(header, payload any, key []byte) string {
	enc := func(v any) string {
		var b []byte
		switch v := v.(type) {
		case string:
			b = []byte(v)
		default:
			b, _ = json.Marshal(v)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(header) + "." + enc(payload)
	if key == nil {
		return input + "."
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(mac(key, input))
}

func sessionKey(t *testing.T, secret []byte) ([]byte, string) {
	t.Helper()
	k, err := DeriveKey(secret, PurposeSessionJWT, 32)
	if err != nil {
		t.Fatal(err)
	}
	return k, keyID(k)
}

func TestSessionVerifyRejects(t *testing.T) {
	c := newClock()
	m := newSessions(t, c, secretA)
	key, kid := sessionKey(t, secretA)
	now := c.t.Unix()
	good, _, _ := m.Issue(alice)
	parts := strings.Split(good, ".")

	claims := func(edit func(map[string]any)) map[string]any {
		p := map[string]any{"iss": DefaultIssuer, "aud": DefaultSessionAudience, "sub": "usr-1", "iat": now, "exp": now + 3600, "jti": "j1", "team_id": "team-2", "role": "member"}
		if edit != nil {
			edit(p)
		}
		return p
	}
	hdr := map[string]any{"alg": "HS256", "typ": "JWT", "kid": kid}
	withHdr := func(edit func(map[string]any)) map[string]any {
		h := map[string]any{}
		for k, v := range hdr {
			h[k] = v
		}
		edit(h)
		return h
	}
	hs512 := func() string {
		h := withHdr(func(h map[string]any) { h["alg"] = "HS512" })
		enc := func(v any) string { b, _ := json.Marshal(v); return base64.RawURLEncoding.EncodeToString(b) }
		input := enc(h) + "." + enc(claims(nil))
		m := hmac.New(sha512.New, key)
		m.Write([]byte(input))
		return input + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}()
	otherKey, otherKid := sessionKey(t, secretC)
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}

	tests := []struct {
		name  string
		token string
		want  error
	}{
		{"control", craft(hdr, claims(nil), key), nil},
		{"empty", "", ErrTokenMalformed},
		{"garbage", "not a token", ErrTokenMalformed},
		{"two parts", parts[0] + "." + parts[1], ErrTokenMalformed},
		{"four parts", good + ".x", ErrTokenMalformed},
		{"padding", parts[0] + "=." + parts[1] + "." + parts[2], ErrTokenMalformed},
		{"newline in signature", parts[0] + "." + parts[1] + "." + parts[2][:10] + "\n" + parts[2][10:], ErrTokenMalformed},
		{"std alphabet", parts[0] + "." + parts[1] + "." + strings.NewReplacer("-", "+", "_", "/").Replace(parts[2]) + "+", ErrTokenMalformed},
		{"too long", good + strings.Repeat("A", MaxTokenLen), ErrTokenMalformed},
		{"header not json", craft("{", claims(nil), key), ErrTokenMalformed},
		{"header trailing data", craft(`{"alg":"HS256","kid":"`+kid+`"}{}`, claims(nil), key), ErrTokenMalformed},
		{"alg none", craft(withHdr(func(h map[string]any) { h["alg"] = "none" }), claims(nil), nil), ErrTokenAlgorithm},
		{"alg none signed", craft(withHdr(func(h map[string]any) { h["alg"] = "none" }), claims(nil), key), ErrTokenAlgorithm},
		{"alg None", craft(withHdr(func(h map[string]any) { h["alg"] = "None" }), claims(nil), nil), ErrTokenAlgorithm},
		{"alg hs256 lowercase", craft(withHdr(func(h map[string]any) { h["alg"] = "hs256" }), claims(nil), key), ErrTokenAlgorithm},
		{"alg HS512", hs512, ErrTokenAlgorithm},
		{"alg RS256", craft(withHdr(func(h map[string]any) { h["alg"] = "RS256" }), claims(nil), key), ErrTokenAlgorithm},
		{"alg missing", craft(map[string]any{"typ": "JWT", "kid": kid}, claims(nil), key), ErrTokenAlgorithm},
		{"typ other", craft(withHdr(func(h map[string]any) { h["typ"] = "at+jwt" }), claims(nil), key), ErrTokenMalformed},
		{"crit header", craft(withHdr(func(h map[string]any) { h["crit"] = []string{"exp"} }), claims(nil), key), ErrTokenMalformed},
		{"jku header", craft(withHdr(func(h map[string]any) { h["jku"] = "https://evil/" }), claims(nil), key), ErrTokenMalformed},
		{"kid missing", craft(map[string]any{"alg": "HS256", "typ": "JWT"}, claims(nil), key), ErrTokenUnknownKey},
		{"kid unknown", craft(withHdr(func(h map[string]any) { h["kid"] = "0000000000000000" }), claims(nil), key), ErrTokenUnknownKey},
		{"wrong key, its own kid", craft(withHdr(func(h map[string]any) { h["kid"] = otherKid }), claims(nil), otherKey), ErrTokenUnknownKey},
		{"wrong key, our kid", craft(hdr, claims(nil), otherKey), ErrTokenSignature},
		{"raw secret as key", craft(hdr, claims(nil), secretA), ErrTokenSignature},
		{"empty signature", craft(hdr, claims(nil), nil), ErrTokenSignature},
		{"truncated signature", good[:len(good)-2], ErrTokenSignature},
		{"tampered signature", flip(good, len(good)-5), ErrTokenSignature},
		{"tampered payload", parts[0] + "." + flip(parts[1], 20) + "." + parts[2], ErrTokenSignature},
		{"elevated payload", parts[0] + "." + base64.RawURLEncoding.EncodeToString(mustJSON(claims(func(p map[string]any) { p["is_admin"] = true }))) + "." + parts[2], ErrTokenSignature},
		{"tampered header", flip(parts[0], 3) + "." + parts[1] + "." + parts[2], ErrTokenMalformed},
		{"payload not json", craft(hdr, "{", key), ErrTokenMalformed},
		{"exp as string", craft(hdr, claims(func(p map[string]any) { p["exp"] = "tomorrow" }), key), ErrTokenMalformed},
		{"expired", craft(hdr, claims(func(p map[string]any) { p["exp"] = now - 31 }), key), ErrTokenExpired},
		{"expired within leeway", craft(hdr, claims(func(p map[string]any) { p["exp"] = now - 29 }), key), nil},
		{"exp missing", craft(hdr, claims(func(p map[string]any) { delete(p, "exp") }), key), ErrTokenClaims},
		{"iat missing", craft(hdr, claims(func(p map[string]any) { delete(p, "iat") }), key), ErrTokenClaims},
		{"iat in future", craft(hdr, claims(func(p map[string]any) { p["iat"] = now + 60 }), key), ErrTokenNotYetValid},
		{"iat in future within leeway", craft(hdr, claims(func(p map[string]any) { p["iat"] = now + 20 }), key), nil},
		{"nbf in future", craft(hdr, claims(func(p map[string]any) { p["nbf"] = now + 600 }), key), ErrTokenNotYetValid},
		{"wrong issuer", craft(hdr, claims(func(p map[string]any) { p["iss"] = "someone-else" }), key), ErrTokenClaims},
		{"issuer missing", craft(hdr, claims(func(p map[string]any) { delete(p, "iss") }), key), ErrTokenClaims},
		{"wrong audience", craft(hdr, claims(func(p map[string]any) { p["aud"] = DefaultHostAudience }), key), ErrTokenClaims},
		{"audience array", craft(hdr, claims(func(p map[string]any) { p["aud"] = []string{DefaultSessionAudience} }), key), ErrTokenMalformed},
		{"subject missing", craft(hdr, claims(func(p map[string]any) { delete(p, "sub") }), key), ErrTokenClaims},
		{"jti missing", craft(hdr, claims(func(p map[string]any) { delete(p, "jti") }), key), ErrTokenClaims},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Verify(tt.token)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify = %v, want success", err)
				}
				return
			}
			if !errors.Is(err, tt.want) || !errors.Is(err, ErrInvalidToken) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
		})
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func TestSessionExpiry(t *testing.T) {
	c := newClock()
	m, err := NewSessionManager(SessionConfig{Secret: secretA, TTL: time.Hour, Leeway: 10 * time.Second, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	token, _, _ := m.Issue(alice)
	c.Advance(time.Hour)
	if _, err := m.Verify(token); err != nil {
		t.Fatalf("at exp, within leeway: %v", err)
	}
	c.Advance(9 * time.Second)
	if _, err := m.Verify(token); err != nil {
		t.Fatalf("at exp+9s: %v", err)
	}
	c.Advance(time.Second)
	if _, err := m.Verify(token); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("at exp+leeway: %v", err)
	}

	// No leeway at all.
	c = newClock()
	strict, _ := NewSessionManager(SessionConfig{Secret: secretA, TTL: time.Hour, Leeway: -1, Now: c.Now})
	token, _, _ = strict.Issue(alice)
	c.Advance(time.Hour - time.Second)
	if _, err := strict.Verify(token); err != nil {
		t.Fatal(err)
	}
	c.Advance(time.Second)
	if _, err := strict.Verify(token); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("at exp without leeway: %v", err)
	}
}

func TestSessionKeyRotation(t *testing.T) {
	c := newClock()
	oldM := newSessions(t, c, secretA)
	oldToken, _, _ := oldM.Issue(alice)

	rotated := newSessions(t, c, secretB, secretA)
	if _, err := rotated.Verify(oldToken); err != nil {
		t.Fatalf("token of the previous key refused: %v", err)
	}
	newToken, _, _ := rotated.Issue(alice)
	if _, err := rotated.Verify(newToken); err != nil {
		t.Fatal(err)
	}
	if _, err := oldM.Verify(newToken); !errors.Is(err, ErrTokenUnknownKey) {
		t.Fatalf("old manager accepted a token of the new key: %v", err)
	}
	// New tokens carry the new key's ID.
	var h1, h2 map[string]any
	decodePart(t, strings.Split(oldToken, ".")[0], &h1)
	decodePart(t, strings.Split(newToken, ".")[0], &h2)
	if h1["kid"] == h2["kid"] {
		t.Fatal("rotation kept the kid")
	}
	// Once the previous secret is dropped, its tokens stop working.
	dropped := newSessions(t, c, secretB)
	if _, err := dropped.Verify(oldToken); !errors.Is(err, ErrTokenUnknownKey) {
		t.Fatalf("dropped key still accepted: %v", err)
	}
}

func TestSessionConfigErrors(t *testing.T) {
	for name, cfg := range map[string]SessionConfig{
		"no secret":             {},
		"short secret":          {Secret: []byte("too short")},
		"short previous secret": {Secret: secretA, PreviousSecrets: [][]byte{[]byte("short")}},
		"negative ttl":          {Secret: secretA, TTL: -time.Hour},
		"huge leeway":           {Secret: secretA, Leeway: time.Hour},
	} {
		if _, err := NewSessionManager(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := NewSessionManager(SessionConfig{Secret: []byte("short")}); !errors.Is(err, ErrSecretTooShort) {
		t.Errorf("short secret: %v", err)
	}
}

func TestSessionCustomIssuerAudience(t *testing.T) {
	c := newClock()
	a, _ := NewSessionManager(SessionConfig{Secret: secretA, Issuer: "capsule-eu", Now: c.Now})
	b, _ := NewSessionManager(SessionConfig{Secret: secretA, Issuer: "capsule-us", Now: c.Now})
	token, _, _ := a.Issue(alice)
	if _, err := b.Verify(token); !errors.Is(err, ErrTokenClaims) {
		t.Fatalf("issuer not checked: %v", err)
	}
	d, _ := NewSessionManager(SessionConfig{Secret: secretA, Issuer: "capsule-eu", Audience: "other", Now: c.Now})
	if _, err := d.Verify(token); !errors.Is(err, ErrTokenClaims) {
		t.Fatalf("audience not checked: %v", err)
	}
}

func TestHostAndSessionTokensDoNotMix(t *testing.T) {
	c := newClock()
	sessions := newSessions(t, c, secretA)
	hosts, err := NewHostTokens(HostTokenConfig{Secret: secretA, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	hostToken, hc, err := hosts.IssueAccessToken("host-1")
	if err != nil {
		t.Fatal(err)
	}
	if hc.HostID != "host-1" || !hc.ExpiresAt.Equal(c.t.Add(DefaultHostAccessTTL)) {
		t.Fatalf("host claims %+v", hc)
	}
	got, err := hosts.VerifyAccessToken(hostToken)
	if err != nil || got != hc {
		t.Fatalf("VerifyAccessToken = %+v, %v", got, err)
	}
	if _, err := sessions.Verify(hostToken); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("session manager accepted a host token: %v", err)
	}
	userToken, _, _ := sessions.Issue(alice)
	if _, err := hosts.VerifyAccessToken(userToken); !errors.Is(err, ErrInvalidToken) {
		t.Fatalf("host tokens accepted a session token: %v", err)
	}
	// Even a host token signed with the session key is refused (audience).
	key, kid := sessionKey(t, secretA)
	forged := craft(map[string]any{"alg": "HS256", "kid": kid}, map[string]any{"iss": DefaultIssuer, "aud": DefaultHostAudience, "sub": "host-1", "iat": c.t.Unix(), "exp": c.t.Unix() + 60, "jti": "x"}, key)
	if _, err := sessions.Verify(forged); !errors.Is(err, ErrTokenClaims) {
		t.Fatalf("audience confusion: %v", err)
	}
	if _, err := hosts.VerifyAccessToken(forged); !errors.Is(err, ErrTokenUnknownKey) {
		t.Fatalf("key confusion: %v", err)
	}
	if _, _, err := hosts.IssueAccessToken(""); err == nil {
		t.Fatal("empty host ID accepted")
	}
	c.Advance(DefaultHostAccessTTL + DefaultLeeway)
	if _, err := hosts.VerifyAccessToken(hostToken); !errors.Is(err, ErrTokenExpired) {
		t.Fatalf("expired host token: %v", err)
	}
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		values []string
		want   string
		ok     bool
	}{
		{nil, "", false},
		{[]string{"Bearer abc.def.ghi"}, "abc.def.ghi", true},
		{[]string{"bearer abc"}, "abc", true},
		{[]string{"BEARER   abc  "}, "abc", true},
		{[]string{"Basic dXNlcjpwYXNz"}, "", false},
		{[]string{"Bearer"}, "", false},
		{[]string{"Bearer "}, "", false},
		{[]string{"Bearer a", "Bearer b"}, "", false},
	}
	for _, tt := range tests {
		h := http.Header{}
		for _, v := range tt.values {
			h.Add("Authorization", v)
		}
		got, ok := BearerToken(h)
		if got != tt.want || ok != tt.ok {
			t.Errorf("BearerToken(%q) = %q, %v", tt.values, got, ok)
		}
	}
}

// TestHS256KnownAnswer pins the MAC: RFC 4231 test case 2 through mac().
func TestHS256KnownAnswer(t *testing.T) {
	got := mac([]byte("Jefe"), "what do ya want for nothing?")
	want := hmac.New(sha256.New, []byte("Jefe"))
	want.Write([]byte("what do ya want for nothing?"))
	if !hmac.Equal(got, want.Sum(nil)) || hmacHex([]byte("Jefe"), "what do ya want for nothing?") != "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" {
		t.Fatal("HMAC-SHA256 known answer mismatch")
	}
}
