package auth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

// cheapParams keeps the tests fast; production uses DefaultArgon2Params.
var cheapParams = Argon2Params{Memory: 8 * 1024, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}

func TestCheckPasswordPolicy(t *testing.T) {
	tests := []struct {
		name     string
		password string
		want     error
	}{
		{"empty", "", ErrPasswordTooShort},
		{"seven", "1234567", ErrPasswordTooShort},
		{"eight", "12345678", nil},
		{"eight multibyte chars", "äöüßéèêë", nil},
		{"seven multibyte chars is short even at 14 bytes", "äöüßéèê", ErrPasswordTooShort},
		{"256 bytes", strings.Repeat("a", 256), nil},
		{"257 bytes", strings.Repeat("a", 257), ErrPasswordTooLong},
		{"129 two-byte chars = 258 bytes", strings.Repeat("é", 129), ErrPasswordTooLong},
		{"invalid utf-8", "abcdefgh\xff", ErrPasswordEncoding},
		{"spaces count", "        ", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := CheckPasswordPolicy(tt.password); !errors.Is(err, tt.want) {
				t.Fatalf("CheckPasswordPolicy = %v, want %v", err, tt.want)
			}
		})
	}
	if !strings.Contains(ErrPasswordTooShort.Error(), "at least 8 characters") {
		t.Errorf("unclear message %q", ErrPasswordTooShort)
	}
}

func TestHashAndVerifyPassword(t *testing.T) {
	h, err := HashPassword("correct horse", cheapParams)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(h, "$argon2id$v=19$m=8192,t=1,p=1$") {
		t.Fatalf("unexpected format %q", h)
	}
	h2, _ := HashPassword("correct horse", cheapParams)
	if h == h2 {
		t.Fatal("two hashes of one password are equal: salt not random")
	}
	for _, tt := range []struct {
		pw   string
		want bool
	}{
		{"correct horse", true},
		{"correct horsE", false},
		{"correct horse ", false},
		{"", false},
	} {
		got, err := VerifyPassword(tt.pw, h)
		if err != nil || got != tt.want {
			t.Errorf("VerifyPassword(%q) = %v, %v; want %v", tt.pw, got, err, tt.want)
		}
	}
}

// TestVerifyReferenceVectors checks PHC interoperability with hashes made
// by the reference argon2 command-line tool (Debian package argon2).
func TestVerifyReferenceVectors(t *testing.T) {
	vectors := []struct{ pw, hash string }{
		{"correct horse battery staple", "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$ISO7kkvFzh19GM8qB7patN3C3Y9HHsjlVTfEZ9T600Y"},
		{"password", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHRzYWx0$r8aHA5ipzgCBZ+GG4nmVxw6T30JorwMePu+jz30BBMc"},
	}
	for _, v := range vectors {
		ok, err := VerifyPassword(v.pw, v.hash)
		if err != nil || !ok {
			t.Errorf("reference hash for %q: %v, %v", v.pw, ok, err)
		}
		if ok, _ := VerifyPassword(v.pw+"x", v.hash); ok {
			t.Errorf("wrong password matched %q", v.hash)
		}
	}
	// The second vector uses exactly the default parameters (with an
	// 12-byte salt, so it still needs a rehash to the 16-byte default).
	if !NeedsRehash(vectors[1].hash, DefaultArgon2Params) {
		t.Error("12-byte salt should need a rehash")
	}
}

func TestVerifyPasswordMalformed(t *testing.T) {
	good, _ := HashPassword("pw", cheapParams)
	parts := strings.Split(good, "$") // "", argon2id, v=19, params, salt, hash
	salt, key := parts[4], parts[5]
	tests := map[string]string{
		"empty":            "",
		"bcrypt":           "$2a$10$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234",
		"argon2i":          "$argon2i$v=19$m=8192,t=1,p=1$" + salt + "$" + key,
		"argon2d":          "$argon2d$v=19$m=8192,t=1,p=1$" + salt + "$" + key,
		"old version":      "$argon2id$v=16$m=8192,t=1,p=1$" + salt + "$" + key,
		"no version":       "$argon2id$m=8192,t=1,p=1$" + salt + "$" + key,
		"param order":      "$argon2id$v=19$t=1,m=8192,p=1$" + salt + "$" + key,
		"missing param":    "$argon2id$v=19$m=8192,t=1$" + salt + "$" + key,
		"extra param":      "$argon2id$v=19$m=8192,t=1,p=1,k=2$" + salt + "$" + key,
		"leading zero":     "$argon2id$v=19$m=08192,t=1,p=1$" + salt + "$" + key,
		"sign":             "$argon2id$v=19$m=+8192,t=1,p=1$" + salt + "$" + key,
		"huge memory":      "$argon2id$v=19$m=4194304,t=1,p=1$" + salt + "$" + key,
		"tiny memory":      "$argon2id$v=19$m=64,t=1,p=1$" + salt + "$" + key,
		"huge time":        "$argon2id$v=19$m=8192,t=1000,p=1$" + salt + "$" + key,
		"zero time":        "$argon2id$v=19$m=8192,t=0,p=1$" + salt + "$" + key,
		"zero threads":     "$argon2id$v=19$m=8192,t=1,p=0$" + salt + "$" + key,
		"256 threads":      "$argon2id$v=19$m=8192,t=1,p=256$" + salt + "$" + key,
		"overflow":         "$argon2id$v=19$m=99999999999,t=1,p=1$" + salt + "$" + key,
		"padded salt":      "$argon2id$v=19$m=8192,t=1,p=1$" + salt + "==$" + key,
		"url salt":         "$argon2id$v=19$m=8192,t=1,p=1$" + strings.NewReplacer("+", "-", "/", "_").Replace(salt) + "-_$" + key,
		"short salt":       "$argon2id$v=19$m=8192,t=1,p=1$c2FsdA$" + key,
		"short key":        "$argon2id$v=19$m=8192,t=1,p=1$" + salt + "$c2FsdA",
		"empty key":        "$argon2id$v=19$m=8192,t=1,p=1$" + salt + "$",
		"extra field":      good + "$x",
		"trailing newline": good + "\n",
	}
	for name, h := range tests {
		t.Run(name, func(t *testing.T) {
			ok, err := VerifyPassword("pw", h)
			if ok || !errors.Is(err, ErrMalformedHash) {
				t.Fatalf("VerifyPassword(%q) = %v, %v; want ErrMalformedHash", h, ok, err)
			}
			if !NeedsRehash(h, cheapParams) {
				t.Fatal("a malformed hash must need a rehash")
			}
		})
	}
}

func TestNeedsRehash(t *testing.T) {
	h, _ := HashPassword("pw", cheapParams)
	if NeedsRehash(h, cheapParams) {
		t.Fatal("same params need no rehash")
	}
	for name, p := range map[string]Argon2Params{
		"memory":  {Memory: 16 * 1024, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32},
		"time":    {Memory: 8 * 1024, Time: 2, Threads: 1, SaltLen: 16, KeyLen: 32},
		"threads": {Memory: 8 * 1024, Time: 1, Threads: 2, SaltLen: 16, KeyLen: 32},
		"salt":    {Memory: 8 * 1024, Time: 1, Threads: 1, SaltLen: 32, KeyLen: 32},
		"key":     {Memory: 8 * 1024, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 64},
	} {
		if !NeedsRehash(h, p) {
			t.Errorf("%s changed: NeedsRehash = false", name)
		}
	}
}

func TestArgon2ParamsValidate(t *testing.T) {
	if err := DefaultArgon2Params.Validate(); err != nil {
		t.Fatal(err)
	}
	bad := []Argon2Params{
		{},
		{Memory: 1024, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32},
		{Memory: 8192, Time: 0, Threads: 1, SaltLen: 16, KeyLen: 32},
		{Memory: 8192, Time: 1, Threads: 0, SaltLen: 16, KeyLen: 32},
		{Memory: 8192, Time: 1, Threads: 1, SaltLen: 4, KeyLen: 32},
		{Memory: 8192, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 8},
		{Memory: 8192, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 128},
	}
	for _, p := range bad {
		if p.Validate() == nil {
			t.Errorf("%+v accepted", p)
		}
		if _, err := HashPassword("pw", p); err == nil {
			t.Errorf("HashPassword accepted %+v", p)
		}
	}
}

func TestPasswordHasher(t *testing.T) {
	ctx := context.Background()
	if _, err := NewPasswordHasher(cheapParams, 0); err == nil {
		t.Fatal("maxConcurrent 0 accepted")
	}
	old := Argon2Params{Memory: 8 * 1024, Time: 2, Threads: 1, SaltLen: 16, KeyLen: 32}
	h, err := NewPasswordHasher(cheapParams, 1)
	if err != nil {
		t.Fatal(err)
	}
	if h.Params() != cheapParams {
		t.Fatal("Params")
	}
	enc, err := h.Hash(ctx, "hunter22")
	if err != nil {
		t.Fatal(err)
	}
	oldEnc, _ := HashPassword("hunter22", old)
	tests := []struct {
		name, pw, enc    string
		match, rehash    bool
		wantErrMalformed bool
	}{
		{"current", "hunter22", enc, true, false, false},
		{"wrong", "hunter23", enc, false, false, false},
		{"old params", "hunter22", oldEnc, true, true, false},
		{"old params wrong", "nope", oldEnc, false, false, false},
		{"malformed", "hunter22", "$argon2id$", false, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			match, rehash, err := h.Verify(ctx, tt.pw, tt.enc)
			if match != tt.match || rehash != tt.rehash || errors.Is(err, ErrMalformedHash) != tt.wantErrMalformed {
				t.Fatalf("Verify = %v, %v, %v", match, rehash, err)
			}
		})
	}
	if ok, err := h.VerifyDummy(ctx, "anything"); ok || err != nil {
		t.Fatalf("VerifyDummy = %v, %v", ok, err)
	}
}

func TestPasswordHasherRespectsContext(t *testing.T) {
	h, _ := NewPasswordHasher(cheapParams, 1)
	h.sem <- struct{}{} // occupy the only slot
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := h.Hash(ctx, "pw"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Hash = %v", err)
	}
	if _, _, err := h.Verify(ctx, "pw", h.dummy); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Verify = %v", err)
	}
	if _, err := h.VerifyDummy(ctx, "pw"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("VerifyDummy = %v", err)
	}
	<-h.sem
	if _, err := h.Hash(context.Background(), "pw"); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkHashPasswordDefault(b *testing.B) {
	for b.Loop() {
		if _, err := HashPassword("correct horse battery staple", DefaultArgon2Params); err != nil {
			b.Fatal(err)
		}
	}
}
