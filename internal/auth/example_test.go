package auth_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"

	"github.com/capsulehq/capsule/internal/auth"
)

// The login handler's use of the building blocks: rate limits per address
// and per account, password verification that costs the same for unknown
// accounts, opportunistic rehashing, and a session token.
func Example_login() {
	secret := []byte("an example server secret of >= 32 bytes")
	hasher, _ := auth.NewPasswordHasher(auth.Argon2Params{Memory: 8 * 1024, Time: 1, Threads: 1, SaltLen: 16, KeyLen: 32}, 4)
	sessions, _ := auth.NewSessionManager(auth.SessionConfig{Secret: secret})
	perIP, _ := auth.NewLimiter(auth.LimiterConfig{Limit: auth.LoginLimitPerIP})
	perEmail, _ := auth.NewLimiter(auth.LimiterConfig{Limit: auth.LoginLimitPerEmail})

	// At signup.
	if err := auth.CheckPasswordPolicy("hunter2"); err != nil {
		fmt.Println("signup refused:", err)
	}
	stored, _ := hasher.Hash(context.Background(), "correct horse battery staple")

	login := perIP.Middleware(auth.IPKeyFunc(nil))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		email, password := r.FormValue("email"), r.FormValue("password")
		if ok, wait := perEmail.Allow(auth.EmailKey(email)); !ok {
			auth.WriteTooManyRequests(w, wait)
			return
		}
		if email != "alice@example.com" { // no such account
			_, _ = hasher.VerifyDummy(r.Context(), password)
			http.Error(w, "wrong e-mail or password", http.StatusUnauthorized)
			return
		}
		ok, rehash, err := hasher.Verify(r.Context(), password, stored)
		if err != nil || !ok {
			http.Error(w, "wrong e-mail or password", http.StatusUnauthorized)
			return
		}
		_ = rehash // true: store hasher.Hash(password) now
		token, _, _ := sessions.Issue(auth.SessionUser{UserID: "usr-1", TeamID: "team-1", Role: "owner", Email: email})
		_, _ = fmt.Fprint(w, token)
	}))

	try := func(password string) {
		r := httptest.NewRequest("POST", "/v1/auth/login?email=alice@example.com&password="+password, nil)
		w := httptest.NewRecorder()
		login.ServeHTTP(w, r)
		if ra := w.Header().Get("Retry-After"); ra != "" {
			fmt.Println(w.Code, "Retry-After:", ra)
			return
		}
		fmt.Println(w.Code)
	}
	try("correct%20horse%20battery%20staple")
	for range 5 {
		try("guess")
	}
	// Output:
	// signup refused: password must be at least 8 characters long
	// 200
	// 401
	// 401
	// 401
	// 401
	// 429 Retry-After: 60
}

// An API request: the key from X-API-Key, looked up by its hash.
func ExampleAPIKeyFromHeader() {
	issued := auth.GenerateAPIKey() // show issued.Plaintext once; store issued.Hash
	r := httptest.NewRequest("GET", "/sandboxes", nil)
	r.Header.Set("X-API-KEY", issued.Plaintext)
	key, err := auth.APIKeyFromHeader(r.Header)
	fmt.Println(err, auth.APIKeyMatches(key, issued.Hash), len(issued.DisplayPrefix))
	// Output: <nil> true 12
}

// Keys of the envd and traffic tokens of one sandbox.
func ExampleEnvdAccessToken() {
	secret := []byte("0123456789abcdef0123456789abcdef")
	fmt.Println(auth.EnvdAccessToken(secret, "i1a2b3c4d5e6f7g8h9j0k"))
	// Output: 58e9f2cde75904e9fa8d0523b5c20a0b87fc685aa51ae1ad537f1a70e1c64562
}

// Encrypting a sandbox's environment variable bound to its row.
func ExampleFieldCipher() {
	secret := []byte("0123456789abcdef0123456789abcdef")
	c, _ := auth.NewFieldCipher("sandbox-env", secret)
	sealed := c.EncryptString("s3cr3t", "sandbox:sb-1:env:TOKEN")
	plain, err := c.DecryptString(sealed, "sandbox:sb-1:env:TOKEN")
	_, moved := c.DecryptString(sealed, "sandbox:sb-2:env:TOKEN")
	fmt.Println(plain, err, moved)
	// Output: s3cr3t <nil> auth: cannot decrypt field: authentication failed
}
