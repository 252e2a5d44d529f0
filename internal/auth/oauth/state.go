package oauth

import (
	"container/list"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
)

// State verification errors; all wrap ErrState, which means "start the
// login again" (400 or a redirect to the login page).
var (
	ErrState         = errors.New("oauth: invalid login state")
	ErrStateMissing  = fmt.Errorf("%w: no state cookie or parameter", ErrState)
	ErrStateMismatch = fmt.Errorf("%w: state does not match", ErrState)
	ErrStateExpired  = fmt.Errorf("%w: expired", ErrState)
	ErrStateReplayed = fmt.Errorf("%w: already used", ErrState)
)

// Defaults of StateConfig.
const (
	DefaultStateCookieName = "capsule_oauth_state"
	DefaultStateCookiePath = "/v1/auth/oauth/"
	DefaultStateTTL        = 10 * time.Minute
	DefaultStateMaxUsed    = 100_000
)

// stateBytes is the entropy of a state value.
const stateBytes = 32

// StateConfig configures a StateManager.
type StateConfig struct {
	// Secret is the server secret (at least auth.MinSecretLen bytes); the
	// MAC key is derived from it for auth.PurposeOAuthState.
	Secret []byte
	// CookieName is the cookie's name; DefaultStateCookieName when empty.
	// With CookiePath "/" and a Secure cookie the name gets the "__Host-"
	// prefix, which browsers refuse to accept from sibling subdomains.
	CookieName string
	// CookiePath scopes the cookie to the OAuth routes;
	// DefaultStateCookiePath when empty.
	CookiePath string
	// TTL is how long a login may take; DefaultStateTTL when zero.
	TTL time.Duration
	// Insecure drops the Secure attribute, for plain-HTTP development
	// setups only (browsers already accept Secure cookies from
	// http://localhost).
	Insecure bool
	// MaxUsed bounds the memory of used states kept to refuse replays;
	// DefaultStateMaxUsed when zero.
	MaxUsed int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// StateManager protects the OAuth redirect flow against login CSRF (RFC
// 6749 §10.12): Set puts a random state in a signed, short-lived,
// HttpOnly, SameSite=Lax cookie and returns it for the authorization URL;
// Verify, on the callback, demands that the query's state equals the
// cookie's, that the cookie's HMAC-SHA256 is right and unexpired, and that
// the state was not used before; then it deletes the cookie. It is safe
// for concurrent use. The record of used states is per process: behind
// several replicas, replay protection relies on the deleted cookie and the
// short TTL.
type StateManager struct {
	key      []byte
	name     string
	path     string
	ttl      time.Duration
	secure   bool
	maxUsed  int
	now      func() time.Time
	mu       sync.Mutex
	used     map[string]*list.Element // state → element of order
	usedList *list.List               // of usedState, oldest first
}

// usedState is one consumed state and when its cookie expires.
type usedState struct {
	state   string
	expires time.Time
}

// NewStateManager checks cfg, fills its defaults and derives the key.
func NewStateManager(cfg StateConfig) (*StateManager, error) {
	key, err := auth.DeriveKey(cfg.Secret, auth.PurposeOAuthState, 32)
	if err != nil {
		return nil, fmt.Errorf("oauth: state secret: %w", err)
	}
	m := &StateManager{
		key:      key,
		name:     cfg.CookieName,
		path:     cfg.CookiePath,
		ttl:      cfg.TTL,
		secure:   !cfg.Insecure,
		maxUsed:  cfg.MaxUsed,
		now:      cfg.Now,
		used:     map[string]*list.Element{},
		usedList: list.New(),
	}
	if m.name == "" {
		m.name = DefaultStateCookieName
	}
	if m.path == "" {
		m.path = DefaultStateCookiePath
	}
	if !strings.HasPrefix(m.path, "/") {
		return nil, errors.New("oauth: state cookie path must start with /")
	}
	if m.path == "/" && m.secure && !strings.HasPrefix(m.name, "__Host-") {
		m.name = "__Host-" + m.name
	}
	if m.ttl == 0 {
		m.ttl = DefaultStateTTL
	}
	if m.ttl < time.Second {
		return nil, errors.New("oauth: state TTL must be at least a second")
	}
	if m.maxUsed == 0 {
		m.maxUsed = DefaultStateMaxUsed
	}
	if m.maxUsed < 0 {
		return nil, errors.New("oauth: MaxUsed must not be negative")
	}
	if m.now == nil {
		m.now = time.Now
	}
	if (&http.Cookie{Name: m.name, Value: "x"}).Valid() != nil {
		return nil, fmt.Errorf("oauth: invalid cookie name %q", m.name)
	}
	return m, nil
}

// CookieName returns the name of the state cookie (with the "__Host-"
// prefix when it applies).
func (m *StateManager) CookieName() string { return m.name }

// MaxStateData bounds the data SetWith binds to a state.
const MaxStateData = 1024

// Set starts a login with provider: it creates a random state (256 bits,
// base64url), sets the state cookie on w, and returns the state to pass to
// Provider.AuthCodeURL.
func (m *StateManager) Set(w http.ResponseWriter, provider string) (string, error) {
	return m.SetWith(w, provider, nil)
}

// SetWith is Set with data bound to the state: the data (at most
// MaxStateData bytes; where to go after the login, who started a linking
// flow) travels in the cookie under the same MAC, so it cannot be changed
// or moved to another state, and VerifyWith returns it. It is signed, not
// encrypted: the browser can read it.
func (m *StateManager) SetWith(w http.ResponseWriter, provider string, data []byte) (string, error) {
	if provider == "" {
		return "", errors.New("oauth: empty provider name")
	}
	if len(data) > MaxStateData {
		return "", fmt.Errorf("oauth: state data over %d bytes", MaxStateData)
	}
	b := make([]byte, stateBytes)
	_, _ = rand.Read(b) // crypto/rand never fails
	state := base64.RawURLEncoding.EncodeToString(b)
	expires := m.now().Add(m.ttl)
	exp := strconv.FormatInt(expires.Unix(), 10)
	value := state + "." + exp + "."
	if len(data) > 0 {
		d := base64.RawURLEncoding.EncodeToString(data)
		value += d + "." + base64.RawURLEncoding.EncodeToString(m.macData(provider, state, exp, d))
	} else {
		value += base64.RawURLEncoding.EncodeToString(m.mac(provider, state, exp))
	}
	http.SetCookie(w, &http.Cookie{
		Name:     m.name,
		Value:    value,
		Path:     m.path,
		Expires:  expires,
		MaxAge:   int(m.ttl / time.Second),
		Secure:   m.secure,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
	return state, nil
}

// Verify checks the callback request r of a login with provider: exactly
// one state cookie, a correct MAC over (provider, state, expiry[, data]),
// not expired, the query parameter "state" equal to the cookie's state
// (constant-time comparisons throughout), and the state not used before.
// It always deletes the cookie when one was sent, so a state is good for
// one try. Errors wrap ErrState.
func (m *StateManager) Verify(w http.ResponseWriter, r *http.Request, provider string) error {
	_, err := m.VerifyWith(w, r, provider)
	return err
}

// VerifyWith is Verify that also returns the data SetWith bound to the
// state (nil when none).
func (m *StateManager) VerifyWith(w http.ResponseWriter, r *http.Request, provider string) ([]byte, error) {
	var values []string
	for _, c := range r.Cookies() {
		if c.Name == m.name {
			values = append(values, c.Value)
		}
	}
	if len(values) > 0 {
		m.clear(w)
	}
	query := r.URL.Query().Get("state")
	switch {
	case len(values) == 0 || query == "":
		return nil, ErrStateMissing
	case len(values) > 1:
		// Two cookies of our name: one was planted (cookie tossing from a
		// sibling domain); trust neither.
		return nil, ErrStateMismatch
	}
	state, exp, data, ok := m.parse(values[0], provider)
	if !ok {
		return nil, ErrStateMismatch
	}
	if subtle.ConstantTimeCompare([]byte(query), []byte(state)) != 1 {
		return nil, ErrStateMismatch
	}
	now := m.now()
	if !now.Before(exp) {
		return nil, ErrStateExpired
	}
	if !m.markUsed(state, exp, now) {
		return nil, ErrStateReplayed
	}
	return data, nil
}

// parse checks a cookie value "state.expiry.mac" or
// "state.expiry.data.mac" and returns its state, expiry and data when the
// MAC is right.
func (m *StateManager) parse(value, provider string) (string, time.Time, []byte, bool) {
	parts := strings.Split(value, ".")
	if (len(parts) != 3 && len(parts) != 4) || len(parts[0]) != base64.RawURLEncoding.EncodedLen(stateBytes) {
		return "", time.Time{}, nil, false
	}
	sig, err := decodeCanonical(parts[len(parts)-1])
	if err != nil {
		return "", time.Time{}, nil, false
	}
	var data []byte
	if len(parts) == 4 {
		if parts[2] == "" || !hmac.Equal(sig, m.macData(provider, parts[0], parts[1], parts[2])) {
			return "", time.Time{}, nil, false
		}
		if data, err = decodeCanonical(parts[2]); err != nil {
			return "", time.Time{}, nil, false
		}
	} else if !hmac.Equal(sig, m.mac(provider, parts[0], parts[1])) {
		return "", time.Time{}, nil, false
	}
	secs, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil {
		return "", time.Time{}, nil, false
	}
	return parts[0], time.Unix(secs, 0), data, true
}

// decodeCanonical decodes unpadded base64url and refuses every spelling
// but the one EncodeToString gives: the decoder alone skips CR and LF and
// the Strict form only checks trailing bits, so "sig" and "si\rg" would
// both verify.
func decodeCanonical(s string) ([]byte, error) {
	b, err := base64.RawURLEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, err
	}
	if base64.RawURLEncoding.EncodeToString(b) != s {
		return nil, errors.New("oauth: non-canonical base64url")
	}
	return b, nil
}

// mac returns HMAC-SHA256 over a domain-separated encoding of the signed
// fields. The provider name cannot contain NUL, and neither can the
// base64url state nor the decimal expiry, so the encoding is unambiguous.
func (m *StateManager) mac(provider, state, exp string) []byte {
	h := hmac.New(sha256.New, m.key)
	h.Write([]byte("capsule-oauth-state-v1\x00" + provider + "\x00" + state + "\x00" + exp))
	return h.Sum(nil)
}

// macData is mac with the base64url data, under its own domain label.
func (m *StateManager) macData(provider, state, exp, data string) []byte {
	h := hmac.New(sha256.New, m.key)
	h.Write([]byte("capsule-oauth-state-data-v1\x00" + provider + "\x00" + state + "\x00" + exp + "\x00" + data))
	return h.Sum(nil)
}

// clear deletes the state cookie.
func (m *StateManager) clear(w http.ResponseWriter) {
	http.SetCookie(w, &http.Cookie{
		Name:     m.name,
		Value:    "",
		Path:     m.path,
		MaxAge:   -1,
		Expires:  time.Unix(1, 0),
		Secure:   m.secure,
		HttpOnly: true,
		SameSite: http.SameSiteLaxMode,
	})
}

// markUsed records state as consumed until exp; it returns false when it
// already was. Expired records are dropped first; beyond MaxUsed the
// oldest record is dropped (its cookie has been deleted anyway).
func (m *StateManager) markUsed(state string, exp, now time.Time) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for e := m.usedList.Front(); e != nil; e = m.usedList.Front() {
		if now.Before(e.Value.(usedState).expires) {
			break
		}
		delete(m.used, e.Value.(usedState).state)
		m.usedList.Remove(e)
	}
	if _, dup := m.used[state]; dup {
		return false
	}
	for m.usedList.Len() >= m.maxUsed {
		e := m.usedList.Front()
		delete(m.used, e.Value.(usedState).state)
		m.usedList.Remove(e)
	}
	m.used[state] = m.usedList.PushBack(usedState{state: state, expires: exp})
	return true
}
