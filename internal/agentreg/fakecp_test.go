package agentreg_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/agentreg"
	"github.com/capsulehq/capsule/internal/hostapi"
)

// The fake control plane below implements the hostapi contract over an
// httptest TLS server. It exists only to inject what the real one cannot
// produce on demand (a 401 on a valid token, a deleted host, an outage, a
// crash between an answer and its storage); the end-to-end path with the
// real control plane belongs to the cluster test of issue 11.

// failure is an injected answer: a status, or -1 for a connection cut
// before any answer (the control plane unreachable).
type failure int

const cut failure = -1

// refreshToken is the fake's state of one refresh token.
type refreshToken struct {
	// superseded: a refresh answered with successor, which nothing has
	// used yet (the token is accepted once more); revoked: done.
	superseded, revoked bool
	successor           string
}

type fakeCP struct {
	t     testing.TB
	ca    *testCA
	clock *fakeClock
	srv   *httptest.Server

	mu        sync.Mutex
	regTokens map[string]bool // token → unused
	hostID    string
	address   string // the declared address
	access    map[string]time.Time
	accessRT  map[string]string // access token → the refresh token issued with it
	refresh   map[string]*refreshToken
	deleted   bool
	down      bool
	// faults are injected answers per path, consumed in order.
	faults   map[string][]failure
	certLife time.Duration
	// interval is answered to heartbeats (0: none).
	interval int
	// answerCert: whether a heartbeat's CSR is answered.
	answerCert bool
	// caAnswer, when set, is sent as the CA in the next heartbeat answer.
	caAnswer string

	registers, refreshes int
	beats                []hostapi.Heartbeat
	beatTokens           []string
}

func newFakeCP(t testing.TB, ca *testCA, clock *fakeClock) *fakeCP {
	f := &fakeCP{t: t, ca: ca, clock: clock, regTokens: map[string]bool{"reg-token-1": true}, hostID: "host-0123",
		address: "127.0.0.1:7443", access: map[string]time.Time{}, accessRT: map[string]string{},
		refresh: map[string]*refreshToken{}, faults: map[string][]failure{}, certLife: 90 * 24 * time.Hour, answerCert: true}
	f.srv = httptest.NewTLSServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeCP) inject(path string, fs ...failure) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults[path] = append(f.faults[path], fs...)
}

func (f *fakeCP) set(fn func(f *fakeCP)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func (f *fakeCP) get(fn func(f *fakeCP)) { f.set(fn) }

func newToken(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

func writeErr(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"code": status, "message": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// issue makes new credentials (f.mu held).
func (f *fakeCP) issue() hostapi.Credentials {
	now := f.clock.Now()
	c := hostapi.Credentials{HostID: f.hostID, AccessToken: newToken("at-"), AccessTokenExpiresAt: now.Add(hostapi.AccessTokenTTL),
		RefreshToken: newToken("rt-"), RefreshTokenExpiresAt: now.Add(hostapi.RefreshTokenTTL)}
	f.access[c.AccessToken] = c.AccessTokenExpiresAt
	f.accessRT[c.AccessToken] = c.RefreshToken
	f.refresh[c.RefreshToken] = &refreshToken{}
	return c
}

// used records that rt's credentials were used: its predecessors are
// revoked for good.
func (f *fakeCP) used(rt string) {
	for _, s := range f.refresh {
		if s.superseded && s.successor == rt {
			s.superseded, s.revoked = false, true
		}
	}
}

// revokeFamily revokes every token (a replayed refresh token).
func (f *fakeCP) revokeFamily() {
	for _, s := range f.refresh {
		s.revoked = true
	}
	f.access = map[string]time.Time{}
}

func (f *fakeCP) serve(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		cutConn(w)
		return
	}
	if q := f.faults[r.URL.Path]; len(q) > 0 {
		f.faults[r.URL.Path] = q[1:]
		if q[0] == cut {
			cutConn(w)
		} else {
			writeErr(w, int(q[0]), "injected")
		}
		return
	}
	if f.deleted {
		writeErr(w, http.StatusNotFound, "host not found")
		return
	}
	switch r.URL.Path {
	case hostapi.PathRegister:
		var req hostapi.RegisterRequest
		if json.NewDecoder(r.Body).Decode(&req) != nil {
			writeErr(w, 400, "bad body")
			return
		}
		unused, known := f.regTokens[req.Token]
		if !known {
			writeErr(w, 401, "unknown token")
			return
		}
		if !unused {
			writeErr(w, 409, "token used")
			return
		}
		now := f.clock.Now()
		cert, err := f.ca.signCSR(req.CSR, now.Add(-time.Minute), now.Add(f.certLife))
		if err != nil {
			writeErr(w, 400, err.Error())
			return
		}
		f.regTokens[req.Token] = false
		f.registers++
		writeJSON(w, 201, hostapi.RegisterResponse{Credentials: f.issue(), Address: f.address, Certificate: cert, CA: f.ca.pem})
	case hostapi.PathRefresh:
		var req hostapi.RefreshRequest
		if json.NewDecoder(r.Body).Decode(&req) != nil {
			writeErr(w, 400, "bad body")
			return
		}
		s, ok := f.refresh[req.RefreshToken]
		switch {
		case !ok:
			writeErr(w, 401, "unknown refresh token")
			return
		case s.revoked:
			f.revokeFamily()
			writeErr(w, 401, "refresh token reused: family revoked")
			return
		}
		f.used(req.RefreshToken)
		c := f.issue()
		if s.successor != "" {
			f.refresh[s.successor].revoked = true // the lost answer's token
		}
		s.superseded, s.successor = true, c.RefreshToken
		f.refreshes++
		writeJSON(w, 200, c)
	case hostapi.PathHeartbeat:
		tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		exp, ok := f.access[tok]
		if !ok || !f.clock.Now().Before(exp) {
			writeErr(w, 401, "bad access token")
			return
		}
		f.used(f.accessRT[tok])
		var hb hostapi.Heartbeat
		if json.NewDecoder(r.Body).Decode(&hb) != nil {
			writeErr(w, 400, "bad body")
			return
		}
		f.beats = append(f.beats, hb)
		f.beatTokens = append(f.beatTokens, tok)
		resp := hostapi.HeartbeatResponse{Status: "online", IntervalSeconds: f.interval, CA: f.caAnswer}
		f.caAnswer = ""
		if hb.CSR != "" && f.answerCert {
			now := f.clock.Now()
			cert, err := f.ca.signCSR(hb.CSR, now.Add(-time.Minute), now.Add(f.certLife))
			if err != nil {
				writeErr(w, 400, err.Error())
				return
			}
			resp.Certificate = cert
		}
		writeJSON(w, 200, resp)
	default:
		writeErr(w, 404, "no route")
	}
}

// cutConn closes the connection without an answer.
func cutConn(w http.ResponseWriter) {
	conn, _, err := http.NewResponseController(w).Hijack()
	if err == nil {
		_ = conn.Close()
	}
}

// fakeHost records what the client asks of the sandboxes.
type fakeHost struct {
	mu                sync.Mutex
	pauses, destroyed int
	report            agentreg.Report
}

func (h *fakeHost) Report() agentreg.Report {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.report
}

func (h *fakeHost) PauseAll(context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pauses++
	h.report.Paused += h.report.Running
	h.report.Running = 0
	return nil
}

func (h *fakeHost) DestroyAll(context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.destroyed++
	h.report.Running, h.report.Paused, h.report.Sandboxes = 0, 0, 0
	return nil
}

func (h *fakeHost) counts() (pauses, destroyed int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.pauses, h.destroyed
}

// fakeClock is a settable clock; After fires when Advance passes it.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
	// asked receives every duration After is called with.
	asked chan time.Duration
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Now().Truncate(time.Second), asked: make(chan time.Duration, 64)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, fakeWaiter{at: c.now.Add(d), ch: ch})
	c.mu.Unlock()
	c.asked <- d
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}
