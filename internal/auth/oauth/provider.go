package oauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"sync"
)

// Profile is what a provider tells about the user who signed in.
type Profile struct {
	// ProviderUserID is the provider's stable, immutable ID of the user
	// (GitHub: the numeric user ID in decimal, not the login, which can be
	// renamed). Accounts are linked by (provider, ProviderUserID).
	ProviderUserID string
	// Email is the user's e-mail address at the provider.
	Email string
	// EmailVerified says the provider verified that the user controls
	// Email. Only a verified address may be used to link the login to an
	// existing account with that address.
	EmailVerified bool
	// Name is the display name; it may be empty.
	Name string
	// Login is the provider's user name (GitHub login); it may change.
	Login string
}

// Provider is one OAuth 2.0 identity provider.
type Provider interface {
	// AuthCodeURL returns the provider's authorization URL to which the
	// browser is redirected, carrying state (from StateManager.Set).
	AuthCodeURL(state string) string
	// Exchange trades the authorization code of the callback for the
	// user's profile. Errors wrap ErrInvalidCode, ErrNoVerifiedEmail or
	// ErrProvider.
	Exchange(ctx context.Context, code string) (Profile, error)
}

// Errors of the OAuth flow. ErrAccessDenied, ErrInvalidCode and
// ErrNoVerifiedEmail are the user's doing (a 4xx or a redirect to the
// login page with a message); ErrProvider is an upstream or configuration
// failure (502), whose details belong in the log, not in the response.
var (
	ErrAccessDenied    = errors.New("oauth: the user denied access")
	ErrInvalidCode     = errors.New("oauth: invalid or expired authorization code")
	ErrNoVerifiedEmail = errors.New("oauth: the account has no verified e-mail address")
	ErrProvider        = errors.New("oauth: provider error")
	ErrUnknownProvider = errors.New("oauth: unknown provider")
)

// providerName is the form of a registered name: it appears in URL paths
// (/v1/auth/oauth/{name}) and in the state cookie's MAC.
var providerName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)

// ValidProviderName reports whether name can be registered: 1–32
// characters of a-z, 0-9 and '-', not starting with '-'.
func ValidProviderName(name string) bool { return providerName.MatchString(name) }

// Registry maps provider names ("github", later "google", …) to providers,
// so handlers serve /v1/auth/oauth/{name} generically and adding a
// provider means adding one implementation. It is safe for concurrent use.
type Registry struct {
	mu        sync.RWMutex
	providers map[string]Provider
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{providers: map[string]Provider{}}
}

// Register adds p under name. It fails when name is not a valid provider
// name (ValidProviderName), p is nil, or name is already registered.
func (r *Registry) Register(name string, p Provider) error {
	if !ValidProviderName(name) {
		return fmt.Errorf("oauth: invalid provider name %q", name)
	}
	if p == nil {
		return fmt.Errorf("oauth: nil provider %q", name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.providers[name]; dup {
		return fmt.Errorf("oauth: provider %q registered twice", name)
	}
	r.providers[name] = p
	return nil
}

// Lookup returns the provider registered under name.
func (r *Registry) Lookup(name string) (Provider, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	p, ok := r.providers[name]
	return p, ok
}

// Get is Lookup with an error wrapping ErrUnknownProvider for a missing
// name (a 404 at the HTTP layer).
func (r *Registry) Get(name string) (Provider, error) {
	if p, ok := r.Lookup(name); ok {
		return p, nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnknownProvider, name)
}

// Names returns the registered names, sorted (for a login page's list of
// buttons).
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.providers))
	for n := range r.providers {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// ParseCallback reads the query of the provider's redirect back to the
// callback URL (RFC 6749 §4.1.2). On success it returns the code and the
// state (which StateManager.Verify checks). When the user refused, it
// returns an error wrapping ErrAccessDenied; another "error" parameter, or
// a missing code, is an error wrapping ErrInvalidCode.
func ParseCallback(r *http.Request) (code, state string, err error) {
	q := r.URL.Query()
	state = q.Get("state")
	if e := q.Get("error"); e != "" {
		if e == "access_denied" {
			return "", state, ErrAccessDenied
		}
		return "", state, fmt.Errorf("%w: provider returned %q", ErrInvalidCode, e)
	}
	code = q.Get("code")
	if code == "" {
		return "", state, fmt.Errorf("%w: no code in the callback", ErrInvalidCode)
	}
	return code, state, nil
}
