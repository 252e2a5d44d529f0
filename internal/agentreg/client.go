package agentreg

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/capsulehq/capsule/internal/hostapi"
)

var (
	// ErrNotRegistered: the agent has no credentials and was given no
	// registration token.
	ErrNotRegistered = errors.New("the host is not registered: start the agent with --register TOKEN (an administrator creates the host and its token)")
	// ErrHostDeleted: the control plane deleted the host (404). The
	// agent has destroyed its sandboxes and removed its credentials; it
	// must exit.
	ErrHostDeleted = errors.New("the control plane deleted this host")
	// ErrUnauthenticated: the refresh token was refused; the agent can
	// no longer authenticate and needs a new registration token.
	ErrUnauthenticated = errors.New("the control plane refused the host's credentials: a new registration token is needed")
	// ErrUnreachable: the call did not reach the control plane (a
	// network error or a 5xx answer).
	ErrUnreachable = errors.New("control plane unreachable")
)

// MaxLockedOutBackoff bounds the interval between the beats of an agent
// whose credentials were refused.
const MaxLockedOutBackoff = 5 * time.Minute

// callTimeout bounds one call to the control plane.
const callTimeout = 10 * time.Second

// Config configures a Client.
type Config struct {
	// ControlPlane is the control plane's base URL (https://…). Required.
	ControlPlane string
	// HTTPClient calls the control plane (default: one that trusts the
	// system's roots; see NewHTTPClient for a CA file).
	HTTPClient *http.Client
	// Dir holds the agent's files (DATA-DIR/agent). Required.
	Dir string
	// Host is the machine's sandboxes. Required.
	Host Host
	// Facts are what the agent says of itself when it registers.
	Facts Facts
	// Version is the agent's version, sent in every heartbeat.
	Version string
	// Clock is time (default the real one).
	Clock Clock
	// Log receives the logs (default slog.Default()).
	Log *slog.Logger

	// beforeStore, when set, runs after the control plane answered a
	// refresh and before the answer is stored; an error stops there (a
	// crash, in tests).
	beforeStore func() error
}

// Facts describe the machine at registration.
type Facts struct {
	Arch     string
	VCPUs    int32
	MemoryMB int64
	DiskMB   int64
	// Address is the HOST:PORT the agent listens on and claims.
	Address string
}

// Client is a host agent's side of the control plane's host API: its
// registration, credentials, heartbeats and server certificate.
type Client struct {
	cfg   Config
	base  *url.URL
	hc    *http.Client
	log   *slog.Logger
	clock Clock

	cert atomic.Pointer[serverCert] // served by TLSConfig
	ca   atomic.Pointer[caBundle]

	mu         sync.Mutex // serializes Register and Beat; guards below
	creds      *stored
	unsaved    bool              // creds are newer than the file
	pendingKey *ecdsa.PrivateKey // key of the CSR in flight
	interval   time.Duration
	missed     int  // heartbeats in a row that did not reach the control plane
	pausedOut  bool // the sandboxes were paused for this outage
	lockedOut  int  // beats in a row refused for credentials (0: none)
}

// Open returns a Client over cfg.Dir, loading the agent's files when it
// registered before.
func Open(cfg Config) (*Client, error) {
	if cfg.ControlPlane == "" || cfg.Dir == "" || cfg.Host == nil {
		return nil, errors.New("agentreg: ControlPlane, Dir and Host are required")
	}
	base, err := url.Parse(strings.TrimRight(cfg.ControlPlane, "/"))
	if err != nil || (base.Scheme != "https" && base.Scheme != "http") || base.Host == "" {
		return nil, fmt.Errorf("agentreg: control plane URL %q: want https://HOST[:PORT]", cfg.ControlPlane)
	}
	c := &Client{cfg: cfg, base: base, hc: cfg.HTTPClient, log: cfg.Log, clock: cfg.Clock, interval: hostapi.HeartbeatInterval}
	if c.hc == nil {
		c.hc = &http.Client{}
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	c.log = c.log.With("component", "agentreg")
	if base.Scheme == "http" {
		if ip := net.ParseIP(base.Hostname()); (ip == nil || !ip.IsLoopback()) && base.Hostname() != "localhost" {
			c.log.Warn("the control plane's URL is cleartext HTTP: the host's tokens cross the network readable; use https", "url", base.String())
		}
	}
	if c.clock == nil {
		c.clock = RealClock{}
	}
	if err := ensureDir(cfg.Dir); err != nil {
		return nil, fmt.Errorf("agentreg: %w", err)
	}
	l, err := load(cfg.Dir)
	switch {
	case errors.Is(err, errNoFiles):
	case err != nil:
		return nil, fmt.Errorf("agentreg: %w", err)
	default:
		c.creds = &l.creds
		c.cert.Store(l.cert)
		c.ca.Store(l.ca)
	}
	return c, nil
}

// Registered reports whether the agent holds credentials.
func (c *Client) Registered() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.creds != nil
}

// HostID is the host's ID ("" before registration).
func (c *Client) HostID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.creds == nil {
		return ""
	}
	return c.creds.HostID
}

// EnsureRegistered registers with token unless the agent already holds
// credentials, in which case a token is ignored (and logged): a restarted
// agent needs no new token. Without credentials and without a token it is
// ErrNotRegistered.
func (c *Client) EnsureRegistered(ctx context.Context, token string) error {
	if c.Registered() {
		if token != "" {
			c.log.InfoContext(ctx, "already registered: the registration token is ignored", "host", c.HostID(), "dir", c.cfg.Dir)
		}
		return nil
	}
	if token == "" {
		return ErrNotRegistered
	}
	return c.Register(ctx, token)
}

// Register registers the host with a one-time token: it generates the
// server key (which never leaves the host), sends the CSR and the facts,
// and stores what the control plane answers (CA and certificate first,
// the credentials last: they mark a complete registration).
func (c *Client) Register(ctx context.Context, token string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	key, csr, err := newKeyAndCSR(c.cfg.Facts.Address)
	if err != nil {
		return fmt.Errorf("agentreg: %w", err)
	}
	f := c.cfg.Facts
	req := hostapi.RegisterRequest{Token: token, Arch: f.Arch, VCPUs: f.VCPUs, MemoryMB: f.MemoryMB, DiskMB: f.DiskMB,
		Address: f.Address, Version: c.cfg.Version, CSR: csr}
	var resp hostapi.RegisterResponse
	status, err := c.post(ctx, hostapi.PathRegister, "", req, &resp)
	if err != nil {
		return fmt.Errorf("agentreg: register: %w", err)
	}
	switch status {
	case http.StatusCreated, http.StatusOK:
	case http.StatusConflict:
		return errors.New("agentreg: register: the registration token was already used")
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return fmt.Errorf("agentreg: register: the control plane refused the registration token (%d)", status)
	default:
		return fmt.Errorf("agentreg: register: the control plane answered %d", status)
	}
	if resp.HostID == "" || resp.AccessToken == "" || resp.RefreshToken == "" {
		return errors.New("agentreg: register: the answer holds no credentials")
	}
	ca, err := parseCA([]byte(resp.CA))
	if err != nil {
		return fmt.Errorf("agentreg: register: CA: %w", err)
	}
	now := c.clock.Now()
	sc, certPEM, err := newServerCert(resp.Certificate, key, ca, now)
	if err != nil {
		return fmt.Errorf("agentreg: register: %w", err)
	}
	creds := &stored{Credentials: resp.Credentials, Address: resp.Address, ControlPlane: c.base.String(), ReceivedAt: now}
	credsJSON, err := json.MarshalIndent(creds, "", "  ")
	if err != nil {
		return err
	}
	for _, w := range []struct {
		name string
		data []byte
	}{{CAFile, ca.pem}, {ServerCertFile, certPEM}, {CredentialsFile, credsJSON}} {
		if err := writeFileAtomic(c.cfg.Dir, w.name, w.data); err != nil {
			return fmt.Errorf("agentreg: register: store %s: %w", w.name, err)
		}
	}
	c.creds = creds
	c.ca.Store(ca)
	c.cert.Store(sc)
	c.lockedOut, c.missed, c.pausedOut = 0, 0, false
	if resp.Address != "" && resp.Address != f.Address {
		c.log.WarnContext(ctx, "the control plane dials another address than the one this agent claims: make sure it reaches this listener",
			"host", resp.HostID, "declared", resp.Address, "claimed", f.Address)
	}
	c.log.InfoContext(ctx, "registered", "host", resp.HostID, "address", resp.Address,
		"certificate_expires", sc.leaf.NotAfter, "dir", c.cfg.Dir)
	return nil
}

// newKeyAndCSR generates an ECDSA P-256 key and a PEM CSR for it.
func newKeyAndCSR(address string) (*ecdsa.PrivateKey, string, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, "", err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "capsule-agent " + address},
	}, key)
	if err != nil {
		return nil, "", err
	}
	return key, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), nil
}

// Run beats until ctx ends (nil) or the host is deleted (ErrHostDeleted,
// after its sandboxes were destroyed): the first beat at once, then every
// interval the control plane asks for (hostapi.HeartbeatInterval by
// default).
func (c *Client) Run(ctx context.Context) error {
	for {
		next, err := c.Beat(ctx)
		if errors.Is(err, ErrHostDeleted) {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.clock.After(next):
		}
	}
}

// Beat is one heartbeat with everything that hangs on it: a refresh of
// the access token when it nears its expiry or is refused, a new server
// certificate when the current one has less than a third of its lifetime
// left, the pause of every running sandbox after
// hostapi.MissedBeatsBeforePause beats that did not reach the control
// plane, and the destruction of every sandbox when the host was deleted.
// It returns when to beat next and what went wrong: nil, ErrUnreachable,
// ErrUnauthenticated, ErrHostDeleted (the agent must exit) or another
// error (an unexpected answer).
func (c *Client) Beat(ctx context.Context) (time.Duration, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.creds == nil {
		return c.interval, ErrNotRegistered
	}
	if c.unsaved {
		c.saveCreds(ctx)
	}
	if c.clock.Now().After(c.refreshAt()) {
		if err := c.refresh(ctx); err != nil {
			return c.failed(ctx, err)
		}
	}
	hb := c.report(ctx)
	var resp hostapi.HeartbeatResponse
	status, err := c.post(ctx, hostapi.PathHeartbeat, c.creds.AccessToken, hb, &resp)
	if err == nil && (status == http.StatusUnauthorized || status == http.StatusForbidden) {
		c.log.InfoContext(ctx, "heartbeat refused: refreshing the credentials", "host", c.creds.HostID, "status", status)
		if err := c.refresh(ctx); err != nil {
			return c.failed(ctx, err)
		}
		status, err = c.post(ctx, hostapi.PathHeartbeat, c.creds.AccessToken, hb, &resp)
		if err == nil && (status == http.StatusUnauthorized || status == http.StatusForbidden) {
			// Fresh credentials refused: the host may not beat (an
			// administrator's decision), which is no reason to pause.
			return c.failed(ctx, fmt.Errorf("heartbeat refused (%d) with fresh credentials", status))
		}
	}
	if err == nil {
		err = c.classify(ctx, status, hostapi.PathHeartbeat)
	}
	if err != nil {
		return c.failed(ctx, err)
	}
	c.succeeded(ctx)
	if resp.IntervalSeconds > 0 {
		c.interval = time.Duration(resp.IntervalSeconds) * time.Second
	}
	c.install(ctx, resp.Certificate, resp.CA)
	return c.interval, nil
}

// refreshAt is when the access token has a third of its life left (its
// life counted from when the agent received it).
func (c *Client) refreshAt() time.Time {
	exp, got := c.creds.AccessTokenExpiresAt, c.creds.ReceivedAt
	if exp.IsZero() {
		return time.Unix(1<<40, 0) // no expiry: refreshed on a 401 only
	}
	if got.IsZero() || got.After(exp) {
		got = exp.Add(-hostapi.AccessTokenTTL)
	}
	return got.Add(exp.Sub(got) * 2 / 3)
}

// classify turns a non-200 status into the error the agent acts on.
func (c *Client) classify(ctx context.Context, status int, path string) error {
	switch {
	case status == http.StatusOK || status == http.StatusCreated:
		return nil
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		return ErrUnauthenticated
	case status == errHostGone:
		return ErrHostDeleted
	case status >= 500:
		return fmt.Errorf("%w: %s answered %d", ErrUnreachable, path, status)
	}
	return fmt.Errorf("%s: unexpected answer %d", path, status)
}

// succeeded resets the outage and lock-out counters.
func (c *Client) succeeded(ctx context.Context) {
	if c.missed >= hostapi.MissedBeatsBeforePause || c.lockedOut > 0 {
		c.log.InfoContext(ctx, "the control plane accepts the heartbeats again", "host", c.creds.HostID,
			"missed_beats", c.missed, "paused_sandboxes", c.pausedOut)
	}
	c.missed, c.pausedOut, c.lockedOut = 0, false, 0
}

// failed acts on a failed beat and says when to beat next.
func (c *Client) failed(ctx context.Context, err error) (time.Duration, error) {
	switch {
	case errors.Is(err, ErrHostDeleted):
		return 0, c.deleted(ctx)
	case errors.Is(err, ErrUnreachable):
		c.missed++
		c.log.WarnContext(ctx, "heartbeat did not reach the control plane", "host", c.creds.HostID,
			"missed_beats", c.missed, "err", err)
		if c.missed >= hostapi.MissedBeatsBeforePause && !c.pausedOut {
			c.log.WarnContext(ctx, "the control plane is unreachable: pausing every running sandbox", "host", c.creds.HostID,
				"missed_beats", c.missed)
			if perr := c.cfg.Host.PauseAll(ctx); perr != nil {
				c.log.ErrorContext(ctx, "pause the sandboxes for the outage (retried at the next beat)", "host", c.creds.HostID, "err", perr)
			} else {
				c.pausedOut = true
			}
		}
		return c.interval, err
	case errors.Is(err, ErrUnauthenticated):
		if c.lockedOut == 0 {
			c.log.ErrorContext(ctx, "the control plane refused this host's refresh token: pausing every running sandbox; "+
				"a new registration token is needed (create one for the host, then restart the agent with --register TOKEN)",
				"host", c.creds.HostID)
			if perr := c.cfg.Host.PauseAll(ctx); perr != nil {
				c.log.ErrorContext(ctx, "pause the sandboxes", "host", c.creds.HostID, "err", perr)
			}
		} else {
			c.log.ErrorContext(ctx, "still unauthenticated: a new registration token is needed", "host", c.creds.HostID,
				"attempts", c.lockedOut+1)
		}
		c.lockedOut++
		next := c.interval
		for i := 1; i < c.lockedOut && next < MaxLockedOutBackoff; i++ {
			next *= 2
		}
		return min(next, MaxLockedOutBackoff), err
	}
	c.log.WarnContext(ctx, "heartbeat failed", "host", c.creds.HostID, "err", err)
	return c.interval, err
}

// deleted destroys every sandbox of a host the control plane deleted and
// removes the credentials, which can never work again.
func (c *Client) deleted(ctx context.Context) error {
	c.log.ErrorContext(ctx, "the control plane deleted this host: destroying every sandbox and exiting", "host", c.creds.HostID)
	errs := []error{ErrHostDeleted}
	if err := c.cfg.Host.DestroyAll(ctx); err != nil {
		errs = append(errs, err)
	}
	for _, name := range []string{CredentialsFile, ServerCertFile, CAFile} {
		if err := os.Remove(filepath.Join(c.cfg.Dir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	if err := syncDir(c.cfg.Dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// refresh exchanges the refresh token for new credentials, stores them
// durably and only then uses them.
func (c *Client) refresh(ctx context.Context) error {
	var creds hostapi.Credentials
	status, err := c.post(ctx, hostapi.PathRefresh, "", hostapi.RefreshRequest{RefreshToken: c.creds.RefreshToken}, &creds)
	if err != nil {
		return err
	}
	if err := c.classify(ctx, status, hostapi.PathRefresh); err != nil {
		return err
	}
	if creds.AccessToken == "" || creds.RefreshToken == "" {
		return errors.New("refresh: the answer holds no credentials")
	}
	if creds.HostID == "" {
		creds.HostID = c.creds.HostID
	}
	if c.cfg.beforeStore != nil {
		if err := c.cfg.beforeStore(); err != nil {
			return err
		}
	}
	next := *c.creds
	next.Credentials = creds
	next.ReceivedAt = c.clock.Now()
	c.creds = &next
	c.unsaved = true
	c.saveCreds(ctx)
	c.log.InfoContext(ctx, "credentials refreshed", "host", creds.HostID, "access_token_expires", creds.AccessTokenExpiresAt)
	return nil
}

// saveCreds stores the credentials. When that fails the new ones are used
// all the same (the stored refresh token is the old one, which the control
// plane accepts once more, see hostapi.Credentials) and the write is
// retried at the next beat.
func (c *Client) saveCreds(ctx context.Context) {
	b, err := json.MarshalIndent(c.creds, "", "  ")
	if err == nil {
		err = writeFileAtomic(c.cfg.Dir, CredentialsFile, b)
	}
	if err != nil {
		c.log.ErrorContext(ctx, "store the refreshed credentials (retried at the next beat)", "host", c.creds.HostID, "err", err)
		return
	}
	c.unsaved = false
}

// report is the heartbeat: the host's resources and, when the server
// certificate has less than a third of its lifetime left, a CSR.
func (c *Client) report(ctx context.Context) hostapi.Heartbeat {
	r := c.cfg.Host.Report()
	hb := hostapi.Heartbeat{Version: c.cfg.Version, Total: r.Total, Used: r.Used, MaxVCPUs: r.MaxVCPUs,
		Running: r.Running, Paused: r.Paused, Sandboxes: r.Sandboxes}
	if cur := c.cert.Load(); cur != nil && !c.clock.Now().Before(cur.renewAt()) {
		key, csr, err := newKeyAndCSR(c.cfg.Facts.Address)
		if err != nil {
			c.log.ErrorContext(ctx, "certificate renewal: new key", "host", c.creds.HostID, "err", err)
			return hb
		}
		if c.pendingKey == nil {
			c.log.InfoContext(ctx, "the server certificate nears its expiry: asking for a new one", "host", c.creds.HostID,
				"expires", cur.leaf.NotAfter)
		}
		c.pendingKey, hb.CSR = key, csr
	}
	return hb
}

// install takes a heartbeat answer's certificate and CA: stored durably,
// then served (TLSConfig reads them on every handshake).
func (c *Client) install(ctx context.Context, certPEM, caPEM string) {
	ca := c.ca.Load()
	if caPEM != "" {
		next, err := parseCA([]byte(caPEM))
		if err != nil {
			c.log.ErrorContext(ctx, "the control plane sent an unusable CA: keeping the current one", "host", c.creds.HostID, "err", err)
			return
		}
		ca = next
	}
	var sc *serverCert
	var full []byte
	if certPEM != "" {
		if c.pendingKey == nil {
			c.log.WarnContext(ctx, "the control plane sent a certificate that was not asked for: ignored", "host", c.creds.HostID)
		} else {
			var err error
			sc, full, err = newServerCert(certPEM, c.pendingKey, ca, c.clock.Now())
			if err != nil {
				c.log.ErrorContext(ctx, "the renewed certificate is unusable: keeping the current one", "host", c.creds.HostID, "err", err)
				return
			}
		}
	}
	if caPEM != "" {
		if err := writeFileAtomic(c.cfg.Dir, CAFile, ca.pem); err != nil {
			c.log.ErrorContext(ctx, "store the CA", "host", c.creds.HostID, "err", err)
			return
		}
		c.ca.Store(ca)
		c.log.InfoContext(ctx, "CA updated", "host", c.creds.HostID)
	}
	if sc != nil {
		if err := writeFileAtomic(c.cfg.Dir, ServerCertFile, full); err != nil {
			c.log.ErrorContext(ctx, "store the renewed certificate (asked again at the next beat)", "host", c.creds.HostID, "err", err)
			return
		}
		c.cert.Store(sc)
		c.pendingKey = nil
		c.log.InfoContext(ctx, "server certificate renewed", "host", c.creds.HostID, "serial", sc.leaf.SerialNumber.String(),
			"expires", sc.leaf.NotAfter)
	}
}

// errHostGone is the status that says the host was deleted, when it comes
// with the API's JSON error body (a 404 page of something else in
// between, a proxy or a wrong URL, must never destroy sandboxes).
const errHostGone = http.StatusNotFound

// maxAnswer bounds an answer's size.
const maxAnswer = 1 << 20

// apiError is the API's error body.
type apiError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
}

// post sends a JSON call and decodes a 2xx answer into out. It returns the
// status; an error wraps ErrUnreachable when the call did not reach the
// control plane. A 404 without the API's error body is reported as 502
// (something else answered).
func (c *Client) post(ctx context.Context, path, bearer string, in, out any) (int, error) {
	body, err := json.Marshal(in)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base.String()+path, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return 0, fmt.Errorf("%w: %s: %v", ErrUnreachable, path, err)
	}
	if resp.StatusCode/100 == 2 {
		if err := json.Unmarshal(raw, out); err != nil {
			return 0, fmt.Errorf("%s: answer: %w", path, err)
		}
		return resp.StatusCode, nil
	}
	var ae apiError
	jerr := json.Unmarshal(raw, &ae)
	if resp.StatusCode == http.StatusNotFound && (jerr != nil || ae.Code != http.StatusNotFound) {
		c.log.WarnContext(ctx, "a 404 without the API's error body: not the control plane's answer", "path", path)
		return http.StatusBadGateway, nil
	}
	if jerr == nil && ae.Message != "" {
		c.log.DebugContext(ctx, "control plane error", "path", path, "status", resp.StatusCode, "message", ae.Message)
	}
	return resp.StatusCode, nil
}
