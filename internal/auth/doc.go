// Package auth holds the reusable, storage-free building blocks of
// Capsule's authentication: password hashing, session and host JWTs, API
// keys, per-sandbox tokens derived from the server secret, field
// encryption for secrets at rest, and rate limiting. HTTP handlers and the
// database wiring live elsewhere; nothing here touches a database, and
// every function that depends on time takes an injectable clock.
//
// # Pieces
//
// Passwords (password.go). argon2id (RFC 9106) via golang.org/x/crypto,
// stored as a self-describing PHC string "$argon2id$v=19$m=…,t=…,p=…$salt$hash"
// with a per-hash 128-bit salt, so parameters can be raised later:
// NeedsRehash (and PasswordHasher.Verify's needsRehash) tells when a hash
// should be replaced after a successful login. Hashes are compared in
// constant time. Parsing is strict and bounds every parameter, so a
// corrupted row cannot make a login allocate gigabytes. PasswordHasher
// caps concurrent hashes (memory = slots × 64 MiB with the defaults) and
// offers VerifyDummy so that logins for unknown e-mail addresses cost the
// same time as real ones. CheckPasswordPolicy applies to new passwords
// only: 8 characters minimum, 256 bytes maximum, valid UTF-8.
//
// Sessions (session.go, jwt.go). HS256 JWTs with the claims sub (user wire
// ID), team_id, role, name, email, is_admin, iss, aud, iat, exp and jti.
// The role and is_admin claims are hints for the UI: every authorization
// decision is made from the database. The signing key is derived from the
// configured secret (≥ 32 bytes) with HKDF for the purpose "jwt/session";
// the header carries a kid (a truncated hash of the derived key) so that a
// verifier holding the current and previous secrets picks the right key
// after a rotation. Verification refuses anything but alg "HS256" (so
// "none", HS512 and RS256 are all refused, and there is no way for a token
// to choose its own key type), unknown header fields (crit, jku, …),
// non-canonical base64, a bad signature (checked in constant time before
// the payload is even decoded), expiry (with a small leeway, 30 s by
// default), a future iat or nbf, and a wrong issuer or audience. All
// failures wrap ErrInvalidToken.
//
// The JWT code is a small HS256-only implementation on the standard
// library rather than github.com/golang-jwt/jwt/v5. Capsule only ever
// verifies its own tokens with one algorithm; a hand-written verifier of
// about a hundred lines has no algorithm agility to misconfigure (the
// classic alg-confusion bugs come from key functions that accept what the
// header asks for), verifies the MAC before any claim parsing, takes the
// clock as a plain func, and adds no dependency. The tests pin the negative cases
// that a library would otherwise be trusted for.
//
// API keys (apikey.go). "e2b_" + 40 lowercase hex digits (160 bits from
// crypto/rand), the format the unmodified E2B SDKs accept; keys of 32–40
// digits are accepted, as E2B issues. Only the SHA-256 digest is stored
// (the key has full entropy, so a slow hash would add nothing) and the
// plaintext is shown once. APIKeyDisplayPrefix ("e2b_" + 8 hex digits)
// identifies a key in lists. APIKeyFromHeader reads X-API-Key under any
// capitalization and refuses repeated headers.
//
// Derived and opaque tokens (tokens.go). EnvdAccessToken is the lowercase
// hex HMAC-SHA256(server secret, sandbox ID), as E2B computes it: stable
// across pause/resume and never stored. TrafficAccessToken uses an
// HKDF-derived key instead, so the weaker token reveals nothing about the
// stronger one. HostTokens issues the credentials of host agents: one-time
// registration tokens ("chreg_" + 256 random bits), access JWTs (7 days,
// key purpose "jwt/host", audience "capsule/host", so never interchangeable
// with session tokens) and refresh tokens ("chref_" + 256 random bits,
// 60 days). Opaque tokens are stored as SHA-256 digests only; single use
// and rotation (insert the new refresh token before revoking the old) are
// the storage layer's job and are spelled out on HostTokens.
//
// Field encryption (fieldcrypt.go). FieldCipher seals secrets kept in
// database columns (sandbox environment variables, OAuth client secrets)
// with AES-256-GCM under a key derived by HKDF from the server secret for
// one purpose. The versioned format is version byte, 4-byte key ID,
// 96-bit random nonce, ciphertext and tag; the header and a caller-chosen
// associated data string (e.g. "sandbox:sb-…:env") are authenticated, so a
// value copied into another row, or altered in any bit, fails to decrypt.
// Previous secrets stay readable after a rotation, and NeedsReencryption
// finds the values to rewrite.
//
// Rate limiting (ratelimit.go). Limiter is an in-memory keyed token
// bucket (GCRA form: one timestamp per key) with an injectable clock,
// amortized O(1) eviction of keys whose bucket has refilled, and a hard
// bound on keys (least recently used is forgotten first). Middleware
// answers 429 with Retry-After (whole seconds, rounded up) and the API's
// error shape {"code":429,"message":"…"}. ClientIP believes
// X-Forwarded-For only from configured proxies (capsule serve
// -trusted-proxies), reading it right to left up to the first address that
// is not a trusted proxy: entries left of it were written by the client.
// The RFC 7239 Forwarded header is ignored on purpose: a proxy appends to
// one of the two headers and passes the other through as the client sent
// it, so believing both would let a client choose its own address; every
// common proxy writes X-Forwarded-For. IPKey groups IPv6 clients by /64.
// Suggested limits: LoginLimitPerIP, LoginLimitPerEmail, SignupLimitPerIP,
// UserSearchLimitPerUser.
//
// The token bucket is not golang.org/x/time/rate: rate.Limiter is one
// bucket, and what the limiter needs around its buckets is the map of keys,
// the bound on them, the eviction of refilled ones and the Retry-After
// computation, all of which would stay here. Its bucket arithmetic, which
// the library would replace, is a few lines of GCRA over one timestamp per
// key (a rate.Limiter per key would hold a mutex and four fields for each
// of up to DefaultMaxKeys keys). The tests pin the refill, burst and
// eviction behaviour with an injected clock.
//
// # Secrets and key separation
//
// One server secret (≥ 32 bytes, MinSecretLen) can feed everything: each
// use derives its own key with DeriveKey (HKDF-SHA256, fixed salt
// "capsule/hkdf/v1", info "capsule/<purpose>"), so compromise or misuse of
// one derived value does not carry over to the others. The one exception
// is EnvdAccessToken, which keys HMAC with the raw secret to match E2B; no
// other construction here uses the raw secret as an HMAC key. Rotation: a
// new secret becomes current and the old one is listed as previous until
// every token signed (or field encrypted) with it has expired (or been
// re-encrypted).
//
// # Threat model
//
//   - Database leak: passwords are argon2id; API keys, registration and
//     refresh tokens and team invitations are stored only as SHA-256 digests of 160–256-bit
//     random values; secret fields are encrypted with a key that is not in
//     the database. An attacker with the dump alone can use none of them.
//   - Database write access without the server secret: encrypted fields
//     cannot be forged or moved between rows (AEAD with associated data).
//   - Token forgery: HS256 with a ≥ 256-bit derived key; algorithm fixed;
//     the kid only selects among configured keys. Session tokens cannot be
//     used as host tokens or the reverse (different keys and audiences).
//     Stolen session JWTs stay valid until exp (24 h by default): keep the
//     TTL short; jti allows a revocation list later.
//   - Privilege escalation through claims: role and is_admin are hints;
//     handlers must re-check membership and admin status in the database.
//   - Timing: secret comparisons use crypto/subtle or hmac.Equal; lookups
//     by SHA-256 digest leak nothing useful; VerifyDummy hides whether an
//     account exists.
//   - Online guessing and resource exhaustion: per-IP and per-e-mail rate
//     limits, a concurrency cap on argon2id, bounded parameters in stored
//     hashes, a size cap on JWTs. The limiter is per process: with several
//     control-plane replicas each enforces its own budget.
//   - Out of scope: TLS (the deployment's reverse proxy), the one-time
//     consumption of registration tokens (an atomic UPDATE in the store),
//     and CSRF of the cookie-less JSON API (bearer tokens are not sent
//     automatically by browsers). The OAuth state cookie is in package
//     oauth, which documents its own threats.
package auth
