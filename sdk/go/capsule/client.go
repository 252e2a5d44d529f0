package capsule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// Environment variables NewFromEnv reads.
const (
	EnvAPIURL = "CAPSULE_API_URL"
	EnvAPIKey = "CAPSULE_API_KEY"
)

// DefaultAPIURL is where a client made by NewFromEnv goes without
// CAPSULE_API_URL: a `capsule serve` on this machine.
const DefaultAPIURL = "http://localhost:8080"

// apiKeyPrefix starts every team API key (E2B's format).
const apiKeyPrefix = "e2b_"

// Client is a client of one Capsule platform. It is safe for concurrent
// use.
type Client struct {
	// Sandboxes creates and manages sandboxes.
	Sandboxes *SandboxService
	// Commands runs processes in sandboxes.
	Commands *CommandService
	// Files reads and writes files in sandboxes.
	Files *FileService
	// Snapshots manages snapshot templates.
	Snapshots *SnapshotService
	// Templates lists templates and builds them from recipes.
	Templates *TemplateService
	// Hosts manages the machines sandboxes run on (BYOC teams, admins).
	Hosts *HostService
	// Keys manages the team's API keys (needs a session token, or an API
	// key of the team).
	Keys *KeyService
	// Teams manages the user's teams, members, invitations and reads the
	// team's audit log (needs a session token).
	Teams *TeamService
	// Admin administers the platform (needs a platform admin's session
	// token).
	Admin *AdminService

	base  *url.URL
	token string
	http  *http.Client
	wire  *wire.Client
	agent string
}

// Option configures a Client.
type Option func(*clientOptions)

type clientOptions struct {
	apiKey     string
	httpClient *http.Client
	retry      RetryPolicy
	userAgent  string
}

// WithAPIKey authenticates with a team API key (`e2b_…`, sent as
// X-API-Key) or a session token (a JWT from a login, sent as a bearer
// token).
func WithAPIKey(key string) Option { return func(o *clientOptions) { o.apiKey = key } }

// WithHTTPClient sends the requests through hc (its Transport is wrapped
// by the retry policy; its Timeout, if any, applies to every call,
// including streamed ones: prefer contexts).
func WithHTTPClient(hc *http.Client) Option { return func(o *clientOptions) { o.httpClient = hc } }

// WithRetry replaces DefaultRetryPolicy (RetryPolicy{} never retries).
func WithRetry(p RetryPolicy) Option { return func(o *clientOptions) { o.retry = p } }

// WithUserAgent adds a product to the User-Agent header.
func WithUserAgent(ua string) Option { return func(o *clientOptions) { o.userAgent = ua } }

// New returns a client of the platform whose API is at apiURL
// (http://host:8080, https://capsule.example.com).
func New(apiURL string, opts ...Option) (*Client, error) {
	o := clientOptions{retry: DefaultRetryPolicy}
	for _, opt := range opts {
		opt(&o)
	}
	u, err := url.Parse(strings.TrimRight(apiURL, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("capsule: API URL %q: want http(s)://host[:port]", apiURL)
	}
	if o.apiKey == "" {
		return nil, errors.New("capsule: an API key is required (WithAPIKey, or " + EnvAPIKey + " with NewFromEnv)")
	}
	hc := &http.Client{}
	if o.httpClient != nil {
		*hc = *o.httpClient
	}
	next := hc.Transport
	if next == nil {
		next = http.DefaultTransport
	}
	hc.Transport = &retryTransport{next: next, policy: o.retry, sleep: sleepCtx}
	c := &Client{base: u, token: o.apiKey, http: hc, agent: strings.TrimSpace("capsule-go-sdk " + o.userAgent)}
	c.wire, err = wire.NewClient(u.String(), wire.WithHTTPClient(hc), wire.WithRequestEditorFn(c.authorize))
	if err != nil {
		return nil, fmt.Errorf("capsule: %w", err)
	}
	c.Sandboxes = &SandboxService{c: c}
	c.Commands = &CommandService{c: c}
	c.Files = &FileService{c: c}
	c.Snapshots = &SnapshotService{c: c}
	c.Templates = &TemplateService{c: c}
	c.Hosts = &HostService{c: c}
	c.Keys = &KeyService{c: c}
	c.Teams = &TeamService{c: c}
	c.Admin = &AdminService{c: c}
	return c, nil
}

// NewFromEnv returns a client of CAPSULE_API_URL (default DefaultAPIURL)
// with the key CAPSULE_API_KEY; opts come after, so they win.
func NewFromEnv(opts ...Option) (*Client, error) {
	apiURL := os.Getenv(EnvAPIURL)
	if apiURL == "" {
		apiURL = DefaultAPIURL
	}
	return New(apiURL, append([]Option{WithAPIKey(os.Getenv(EnvAPIKey))}, opts...)...)
}

// URL returns the platform's API URL.
func (c *Client) URL() string { return c.base.String() }

// authorize sets the credentials and the User-Agent on a request.
func (c *Client) authorize(_ context.Context, req *http.Request) error {
	if strings.HasPrefix(c.token, apiKeyPrefix) {
		req.Header.Set("X-API-Key", c.token)
	} else {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	req.Header.Set("User-Agent", c.agent)
	return nil
}

// decode turns resp into out when its status is want, else into the
// platform's error. out may be nil (the body is discarded).
func decode(resp *http.Response, err error, want int, out any) error {
	if err != nil {
		return fmt.Errorf("capsule: %w", err)
	}
	if resp.StatusCode != want {
		return errorFrom(resp)
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("capsule: decoding the answer: %w", err)
	}
	return nil
}

// deref returns *p, or the zero value when p is nil.
func deref[T any](p *T) T {
	if p == nil {
		var z T
		return z
	}
	return *p
}

// ptr returns a pointer to v, or nil for the zero value.
func ptrOrNil[T comparable](v T) *T {
	var z T
	if v == z {
		return nil
	}
	return &v
}

// seconds converts a duration to whole seconds, rounding up a fraction.
func seconds(d time.Duration) int {
	return int((d + time.Second - 1) / time.Second)
}
