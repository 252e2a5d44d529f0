package oauth

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) Now() time.Time          { return c.t }
func (c *fakeClock) Advance(d time.Duration) { c.t = c.t.Add(d) }

func newStates(t *testing.T, c *fakeClock, edit func(*StateConfig)) *StateManager {
	t.Helper()
	cfg := StateConfig{Secret: secret, Now: c.Now}
	if edit != nil {
		edit(&cfg)
	}
	m, err := NewStateManager(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// start runs Set and returns the state and the cookie it set.
func start(t *testing.T, m *StateManager, provider string) (string, *http.Cookie) {
	t.Helper()
	w := httptest.NewRecorder()
	state, err := m.Set(w, provider)
	if err != nil {
		t.Fatal(err)
	}
	cookies := w.Result().Cookies()
	if len(cookies) != 1 {
		t.Fatalf("Set set %d cookies", len(cookies))
	}
	return state, cookies[0]
}

// callback builds the provider's redirect back to us.
func callback(state string, cookies ...*http.Cookie) *http.Request {
	r := httptest.NewRequest("GET", "/v1/auth/oauth/github/callback?code=c&state="+state, nil)
	for _, c := range cookies {
		r.AddCookie(c)
	}
	return r
}

func TestStateCookieAttributes(t *testing.T) {
	c := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	m := newStates(t, c, nil)
	state, ck := start(t, m, "github")
	if len(state) != 43 || strings.ContainsAny(state, "+/=") {
		t.Fatalf("state %q is not 32 bytes of base64url", state)
	}
	if ck.Name != DefaultStateCookieName || ck.Path != DefaultStateCookiePath || !ck.HttpOnly || !ck.Secure ||
		ck.SameSite != http.SameSiteLaxMode || ck.MaxAge != 600 || ck.Domain != "" {
		t.Fatalf("cookie %+v", ck)
	}
	if !strings.HasPrefix(ck.Value, state+".") {
		t.Fatalf("cookie value %q does not carry the state", ck.Value)
	}
	if other, _ := start(t, m, "github"); other == state {
		t.Fatal("state repeated")
	}
	if _, err := m.Set(httptest.NewRecorder(), ""); err == nil {
		t.Fatal("empty provider accepted")
	}

	host := newStates(t, c, func(cfg *StateConfig) { cfg.CookiePath = "/" })
	if _, ck := start(t, host, "github"); ck.Name != "__Host-"+DefaultStateCookieName || ck.Path != "/" || host.CookieName() != ck.Name {
		t.Fatalf("root path cookie %+v", ck)
	}
	dev := newStates(t, c, func(cfg *StateConfig) { cfg.Insecure = true; cfg.CookiePath = "/"; cfg.CookieName = "st" })
	if _, ck := start(t, dev, "github"); ck.Secure || ck.Name != "st" {
		t.Fatalf("insecure cookie %+v", ck)
	}
}

func TestStateVerify(t *testing.T) {
	c := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	m := newStates(t, c, nil)
	otherSecret := newStates(t, c, func(cfg *StateConfig) { cfg.Secret = []byte("ffffffffffffffffffffffffffffffff") })

	tamper := func(ck *http.Cookie, f func(parts []string)) *http.Cookie {
		parts := strings.Split(ck.Value, ".")
		f(parts)
		cp := *ck
		cp.Value = strings.Join(parts, ".")
		return &cp
	}
	tests := []struct {
		name string
		req  func() *http.Request
		want error
	}{
		{"valid", func() *http.Request { s, ck := start(t, m, "github"); return callback(s, ck) }, nil},
		{"no cookie", func() *http.Request { s, _ := start(t, m, "github"); return callback(s) }, ErrStateMissing},
		{"no state parameter", func() *http.Request { _, ck := start(t, m, "github"); return callback("", ck) }, ErrStateMissing},
		{"wrong state parameter", func() *http.Request {
			_, ck := start(t, m, "github")
			other, _ := start(t, m, "github")
			return callback(other, ck)
		}, ErrStateMismatch},
		{"attacker's cookie, victim's state (login CSRF)", func() *http.Request {
			victim, _ := start(t, m, "github")
			_, attackerCookie := start(t, m, "github")
			return callback(victim, attackerCookie)
		}, ErrStateMismatch},
		{"forged cookie for a chosen state", func() *http.Request {
			_, ck := start(t, m, "github")
			forged := strings.Repeat("A", 43)
			return callback(forged, tamper(ck, func(p []string) { p[0] = forged }))
		}, ErrStateMismatch},
		{"extended expiry", func() *http.Request {
			s, ck := start(t, m, "github")
			return callback(s, tamper(ck, func(p []string) { p[1] = strconv.FormatInt(c.t.Add(time.Hour).Unix(), 10) }))
		}, ErrStateMismatch},
		{"flipped MAC", func() *http.Request {
			s, ck := start(t, m, "github")
			return callback(s, tamper(ck, func(p []string) { p[2] = "A" + p[2][1:] }))
		}, ErrStateMismatch},
		{"MAC removed", func() *http.Request {
			s, ck := start(t, m, "github")
			return callback(s, tamper(ck, func(p []string) { p[2] = "" }))
		}, ErrStateMismatch},
		{"garbage cookie", func() *http.Request {
			s, ck := start(t, m, "github")
			cp := *ck
			cp.Value = "garbage"
			return callback(s, &cp)
		}, ErrStateMismatch},
		{"issued for another provider", func() *http.Request { s, ck := start(t, m, "google"); return callback(s, ck) }, ErrStateMismatch},
		{"issued under another secret", func() *http.Request { s, ck := start(t, otherSecret, "github"); return callback(s, ck) }, ErrStateMismatch},
		{"two cookies (tossed)", func() *http.Request {
			s, ck := start(t, m, "github")
			_, planted := start(t, m, "github")
			return callback(s, ck, planted)
		}, ErrStateMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			r := tt.req()
			err := m.Verify(w, r, "github")
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("Verify = %v, want %v", err, tt.want)
			}
			if err != nil && !errors.Is(err, ErrState) {
				t.Fatalf("%v does not wrap ErrState", err)
			}
			// Whenever a cookie came in, it is deleted.
			if len(r.Cookies()) > 0 {
				del := w.Result().Cookies()
				if len(del) != 1 || del[0].MaxAge >= 0 || del[0].Name != m.CookieName() || del[0].Path != DefaultStateCookiePath {
					t.Fatalf("cookie not deleted: %+v", del)
				}
			}
		})
	}
}

func TestStateReplayAndExpiry(t *testing.T) {
	c := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	m := newStates(t, c, func(cfg *StateConfig) { cfg.TTL = 5 * time.Minute })

	s, ck := start(t, m, "github")
	if err := m.Verify(httptest.NewRecorder(), callback(s, ck), "github"); err != nil {
		t.Fatal(err)
	}
	// A replay of the same callback with the same cookie (e.g. the
	// browser's back button, or a captured request) fails.
	if err := m.Verify(httptest.NewRecorder(), callback(s, ck), "github"); !errors.Is(err, ErrStateReplayed) {
		t.Fatalf("replay: %v", err)
	}

	s2, ck2 := start(t, m, "github")
	c.Advance(5*time.Minute - time.Second)
	if err := m.Verify(httptest.NewRecorder(), callback(s2, ck2), "github"); err != nil {
		t.Fatalf("just before expiry: %v", err)
	}
	s3, ck3 := start(t, m, "github")
	c.Advance(5 * time.Minute)
	if err := m.Verify(httptest.NewRecorder(), callback(s3, ck3), "github"); !errors.Is(err, ErrStateExpired) {
		t.Fatalf("expired: %v", err)
	}
	// Expired records are forgotten (their cookies cannot pass anyway).
	m.markUsed("probe", c.t.Add(time.Minute), c.t)
	m.mu.Lock()
	n := m.usedList.Len()
	m.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d used states kept, want 1", n)
	}
}

func TestStateUsedBound(t *testing.T) {
	c := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	m := newStates(t, c, func(cfg *StateConfig) { cfg.MaxUsed = 3 })
	var first string
	var firstCookie *http.Cookie
	for i := range 5 {
		s, ck := start(t, m, "github")
		if i == 0 {
			first, firstCookie = s, ck
		}
		if err := m.Verify(httptest.NewRecorder(), callback(s, ck), "github"); err != nil {
			t.Fatal(err)
		}
	}
	if len(m.used) != 3 || m.usedList.Len() != 3 {
		t.Fatalf("%d used states kept, want 3", len(m.used))
	}
	// The oldest record was dropped: that is the documented trade-off.
	if err := m.Verify(httptest.NewRecorder(), callback(first, firstCookie), "github"); err != nil {
		t.Fatalf("evicted state: %v", err)
	}
}

func TestStateConfig(t *testing.T) {
	for name, cfg := range map[string]StateConfig{
		"no secret":       {},
		"short secret":    {Secret: []byte("short")},
		"relative path":   {Secret: secret, CookiePath: "v1/auth"},
		"tiny ttl":        {Secret: secret, TTL: time.Millisecond},
		"negative max":    {Secret: secret, MaxUsed: -1},
		"bad cookie name": {Secret: secret, CookieName: "a b"},
	} {
		if _, err := NewStateManager(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestStateData: data bound with SetWith comes back from VerifyWith, and
// cannot be changed, dropped or moved to another state.
func TestStateData(t *testing.T) {
	c := &fakeClock{t: time.Unix(1_750_000_000, 0)}
	m := newStates(t, c, nil)
	startWith := func(data string) (string, *http.Cookie) {
		w := httptest.NewRecorder()
		state, err := m.SetWith(w, "github", []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		return state, w.Result().Cookies()[0]
	}
	withValue := func(ck *http.Cookie, v string) *http.Cookie { cp := *ck; cp.Value = v; return &cp }

	s, ck := startWith(`{"r":"/x"}`)
	if data, err := m.VerifyWith(httptest.NewRecorder(), callback(s, ck), "github"); err != nil || string(data) != `{"r":"/x"}` {
		t.Fatalf("VerifyWith = %q, %v", data, err)
	}
	// No data: the plain three-part cookie, nil data.
	s, ck = start(t, m, "github")
	if strings.Count(ck.Value, ".") != 2 {
		t.Fatalf("cookie without data %q", ck.Value)
	}
	if data, err := m.VerifyWith(httptest.NewRecorder(), callback(s, ck), "github"); err != nil || data != nil {
		t.Fatalf("VerifyWith = %q, %v", data, err)
	}

	s, ck = startWith("link:alice")
	parts := strings.Split(ck.Value, ".")
	s2, ck2 := startWith("link:mallory")
	parts2 := strings.Split(ck2.Value, ".")
	for name, req := range map[string]*http.Request{
		"changed data":                callback(s, withValue(ck, strings.Join([]string{parts[0], parts[1], parts2[2], parts[3]}, "."))),
		"data moved to another state": callback(s, withValue(ck, strings.Join([]string{parts[0], parts[1], parts2[2], parts2[3]}, "."))),
		"data dropped":                callback(s, withValue(ck, strings.Join([]string{parts[0], parts[1], parts[3]}, "."))),
		"empty data":                  callback(s, withValue(ck, strings.Join([]string{parts[0], parts[1], "", parts[3]}, "."))),
		"other provider": func() *http.Request {
			return callback(s2, ck2)
		}(),
	} {
		provider := "github"
		if name == "other provider" {
			provider = "gitlab"
		}
		if _, err := m.VerifyWith(httptest.NewRecorder(), req, provider); !errors.Is(err, ErrStateMismatch) {
			t.Errorf("%s: %v, want ErrStateMismatch", name, err)
		}
	}
	if _, err := m.SetWith(httptest.NewRecorder(), "github", make([]byte, MaxStateData+1)); err == nil {
		t.Fatal("oversized data accepted")
	}
}
