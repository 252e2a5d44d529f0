package auth

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
)

// Password policy limits.
const (
	// MinPasswordChars is the least number of characters (Unicode code
	// points) of a new password.
	MinPasswordChars = 8
	// MaxPasswordBytes is the greatest length of a new password in bytes
	// of UTF-8.
	MaxPasswordBytes = 256
)

// Password policy errors. Their messages are written for end users and may
// be shown as they are.
var (
	ErrPasswordTooShort = fmt.Errorf("password must be at least %d characters long", MinPasswordChars)
	ErrPasswordTooLong  = fmt.Errorf("password must be at most %d bytes long", MaxPasswordBytes)
	ErrPasswordEncoding = errors.New("password must be valid UTF-8")
)

// ErrMalformedHash is returned (wrapped) when a stored password hash is not
// a well-formed argon2id PHC string this package can verify.
var ErrMalformedHash = errors.New("auth: malformed password hash")

// CheckPasswordPolicy reports whether password is acceptable as a new
// password: valid UTF-8, at least MinPasswordChars characters and at most
// MaxPasswordBytes bytes. It returns one of the ErrPassword* errors. Only
// new passwords (signup, change) are checked; login verifies whatever was
// typed so that a later policy change never locks anyone out.
func CheckPasswordPolicy(password string) error {
	if !utf8.ValidString(password) {
		return ErrPasswordEncoding
	}
	if len(password) > MaxPasswordBytes {
		return ErrPasswordTooLong
	}
	if utf8.RuneCountInString(password) < MinPasswordChars {
		return ErrPasswordTooShort
	}
	return nil
}

// Argon2Params are the argon2id cost parameters of a password hash. They are
// stored in every hash, so changing the defaults never invalidates old
// hashes; NeedsRehash tells when a hash is weaker than the current policy.
type Argon2Params struct {
	// Memory is the memory cost in KiB.
	Memory uint32
	// Time is the number of passes over the memory.
	Time uint32
	// Threads is the degree of parallelism (lanes).
	Threads uint8
	// SaltLen is the length in bytes of the random salt.
	SaltLen uint32
	// KeyLen is the length in bytes of the derived hash.
	KeyLen uint32
}

// DefaultArgon2Params follow RFC 9106 §4, second recommended option (for
// systems that cannot give 2 GiB to one hash): 64 MiB, 3 passes, 4 lanes,
// 128-bit salt, 256-bit tag.
var DefaultArgon2Params = Argon2Params{Memory: 64 * 1024, Time: 3, Threads: 4, SaltLen: 16, KeyLen: 32}

// Bounds on parameters accepted from a stored hash or from configuration.
// They stop a corrupted or hostile hash from making verification allocate
// gigabytes or run for minutes.
const (
	minArgonMemory = 8 * 1024       // 8 MiB
	maxArgonMemory = 1024 * 1024    // 1 GiB
	maxArgonTime   = 32             // passes
	minSaltLen     = 8              // bytes (RFC 9106 minimum)
	maxSaltLen     = 64             // bytes
	minKeyLen      = 16             // bytes
	maxKeyLen      = 64             // bytes
	phcPrefix      = "$argon2id$v=" // followed by the version
)

// Validate reports whether p is within the bounds this package accepts:
// memory 8 MiB–1 GiB (and at least 8 KiB per lane), 1–32 passes, at least
// one lane, salt 8–64 bytes, key 16–64 bytes.
func (p Argon2Params) Validate() error {
	switch {
	case p.Memory < minArgonMemory || p.Memory > maxArgonMemory:
		return fmt.Errorf("auth: argon2 memory %d KiB out of range [%d, %d]", p.Memory, minArgonMemory, maxArgonMemory)
	case p.Time < 1 || p.Time > maxArgonTime:
		return fmt.Errorf("auth: argon2 time %d out of range [1, %d]", p.Time, maxArgonTime)
	case p.Threads < 1:
		return errors.New("auth: argon2 threads must be at least 1")
	case p.Memory < 8*uint32(p.Threads):
		return errors.New("auth: argon2 memory must be at least 8 KiB per thread")
	case p.SaltLen < minSaltLen || p.SaltLen > maxSaltLen:
		return fmt.Errorf("auth: argon2 salt length %d out of range [%d, %d]", p.SaltLen, minSaltLen, maxSaltLen)
	case p.KeyLen < minKeyLen || p.KeyLen > maxKeyLen:
		return fmt.Errorf("auth: argon2 key length %d out of range [%d, %d]", p.KeyLen, minKeyLen, maxKeyLen)
	}
	return nil
}

// HashPassword hashes password with argon2id, a fresh random salt and the
// parameters p, and returns the self-describing PHC string
//
//	$argon2id$v=19$m=<KiB>,t=<passes>,p=<lanes>$<salt>$<hash>
//
// where salt and hash are unpadded standard base64. The password policy is
// not checked here; call CheckPasswordPolicy first for new passwords.
func HashPassword(password string, p Argon2Params) (string, error) {
	if err := p.Validate(); err != nil {
		return "", err
	}
	salt := randomBytes(int(p.SaltLen))
	key := argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, p.KeyLen)
	return encodePHC(p, salt, key), nil
}

// encodePHC formats a hash as a PHC string.
func encodePHC(p Argon2Params, salt, key []byte) string {
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.Memory, p.Time, p.Threads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// decodedHash is a parsed PHC string.
type decodedHash struct {
	params  Argon2Params
	version int
	salt    []byte
	key     []byte
}

// decodePHC parses an argon2id PHC string strictly: the algorithm must be
// argon2id, the version 19, the parameters in the order m, t, p, all
// numbers canonical decimal, salt and hash unpadded standard base64, and
// every value within the bounds of Argon2Params.Validate.
func decodePHC(encoded string) (decodedHash, error) {
	var d decodedHash
	bad := func(what string) (decodedHash, error) {
		return decodedHash{}, fmt.Errorf("%w: %s", ErrMalformedHash, what)
	}
	if !strings.HasPrefix(encoded, phcPrefix) {
		return bad("not an argon2id hash")
	}
	parts := strings.Split(encoded[len(phcPrefix):], "$")
	if len(parts) != 4 {
		return bad("wrong number of fields")
	}
	v, ok := parseDecimal(parts[0], 1<<31)
	if !ok || v != argon2.Version {
		return bad("unsupported version")
	}
	d.version = int(v)
	kv := strings.Split(parts[1], ",")
	if len(kv) != 3 {
		return bad("wrong parameters")
	}
	var nums [3]uint64
	for i, name := range []string{"m=", "t=", "p="} {
		s, found := strings.CutPrefix(kv[i], name)
		if !found {
			return bad("wrong parameters")
		}
		n, ok := parseDecimal(s, 1<<32-1)
		if !ok {
			return bad("wrong parameters")
		}
		nums[i] = n
	}
	if nums[2] > 255 {
		return bad("too many threads")
	}
	if !isBase64Alphabet(parts[2], '+', '/') || !isBase64Alphabet(parts[3], '+', '/') {
		return bad("salt or hash encoding")
	}
	var err error
	if d.salt, err = base64.RawStdEncoding.Strict().DecodeString(parts[2]); err != nil {
		return bad("salt encoding")
	}
	if d.key, err = base64.RawStdEncoding.Strict().DecodeString(parts[3]); err != nil {
		return bad("hash encoding")
	}
	d.params = Argon2Params{
		Memory:  uint32(nums[0]),
		Time:    uint32(nums[1]),
		Threads: uint8(nums[2]),
		SaltLen: uint32(len(d.salt)),
		KeyLen:  uint32(len(d.key)),
	}
	if err := d.params.Validate(); err != nil {
		return bad(err.Error())
	}
	return d, nil
}

// parseDecimal parses a canonical non-negative decimal number (no sign, no
// leading zeros) not greater than max.
func parseDecimal(s string, max uint64) (uint64, bool) {
	if s == "" || len(s) > 10 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > max {
		return 0, false
	}
	return n, true
}

// VerifyPassword reports whether password matches the PHC string encoded.
// The derived keys are compared in constant time. A malformed hash is an
// error wrapping ErrMalformedHash; a wrong password is (false, nil).
func VerifyPassword(password, encoded string) (bool, error) {
	d, err := decodePHC(encoded)
	if err != nil {
		return false, err
	}
	key := argon2.IDKey([]byte(password), d.salt, d.params.Time, d.params.Memory, d.params.Threads, d.params.KeyLen)
	return subtle.ConstantTimeCompare(key, d.key) == 1, nil
}

// NeedsRehash reports whether the hash encoded was made with parameters
// other than p (weaker or merely different) and should be replaced by a
// fresh HashPassword after the next successful login. A malformed hash
// needs a rehash too.
func NeedsRehash(encoded string, p Argon2Params) bool {
	d, err := decodePHC(encoded)
	if err != nil {
		return true
	}
	return d.params != p
}

// PasswordHasher hashes and verifies passwords with a bound on how many
// argon2id computations run at once, so that a burst of logins cannot
// allocate more than MaxConcurrent × Params.Memory. It also offers
// VerifyDummy to make logins of unknown accounts cost the same as real
// ones. A PasswordHasher is safe for concurrent use.
type PasswordHasher struct {
	params Argon2Params
	sem    chan struct{}
	dummy  string // a hash of a random, forgotten password
}

// NewPasswordHasher returns a hasher using params for new hashes that runs
// at most maxConcurrent hashes at a time (at least 1). It computes one hash
// up front (the target of VerifyDummy), so it takes as long as one Hash.
func NewPasswordHasher(params Argon2Params, maxConcurrent int) (*PasswordHasher, error) {
	if err := params.Validate(); err != nil {
		return nil, err
	}
	if maxConcurrent < 1 {
		return nil, errors.New("auth: maxConcurrent must be at least 1")
	}
	dummy, err := HashPassword(randomHex(32), params)
	if err != nil {
		return nil, err
	}
	return &PasswordHasher{params: params, sem: make(chan struct{}, maxConcurrent), dummy: dummy}, nil
}

// Params returns the parameters used for new hashes.
func (h *PasswordHasher) Params() Argon2Params { return h.params }

// acquire waits for a hashing slot or for ctx to end.
func (h *PasswordHasher) acquire(ctx context.Context) error {
	select {
	case h.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// release frees a hashing slot.
func (h *PasswordHasher) release() { <-h.sem }

// Hash waits for a free slot (or ctx's end) and returns HashPassword of
// password with the hasher's parameters.
func (h *PasswordHasher) Hash(ctx context.Context, password string) (string, error) {
	if err := h.acquire(ctx); err != nil {
		return "", err
	}
	defer h.release()
	return HashPassword(password, h.params)
}

// Verify waits for a free slot (or ctx's end) and checks password against
// encoded. needsRehash is true only when the password matched and the hash
// was made with other parameters than the hasher's, so the caller can
// store a fresh hash while it holds the plaintext.
func (h *PasswordHasher) Verify(ctx context.Context, password, encoded string) (match, needsRehash bool, err error) {
	if err := h.acquire(ctx); err != nil {
		return false, false, err
	}
	defer h.release()
	match, err = VerifyPassword(password, encoded)
	if err != nil || !match {
		return false, false, err
	}
	return true, NeedsRehash(encoded, h.params), nil
}

// VerifyDummy does the work of Verify against a hash that no password
// matches and always returns false (or ctx's error). Login handlers call it
// when the account does not exist or has no password, so that response
// time does not reveal which e-mail addresses are registered.
func (h *PasswordHasher) VerifyDummy(ctx context.Context, password string) (bool, error) {
	if err := h.acquire(ctx); err != nil {
		return false, err
	}
	defer h.release()
	_, _ = VerifyPassword(password, h.dummy)
	return false, nil
}
