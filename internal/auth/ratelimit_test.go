package auth

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"
)

func newLimiter(t *testing.T, c *fakeClock, burst int, interval time.Duration, maxKeys int) *Limiter {
	t.Helper()
	l, err := NewLimiter(LimiterConfig{Limit: RateLimit{Burst: burst, Interval: interval}, MaxKeys: maxKeys, Now: c.Now})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestLimiterBurstAndRefill(t *testing.T) {
	c := newClock()
	l := newLimiter(t, c, 3, 10*time.Second, 0)
	type step struct {
		advance time.Duration
		allowed bool
		retry   time.Duration
	}
	steps := []step{
		{0, true, 0}, {0, true, 0}, {0, true, 0}, // the burst
		{0, false, 10 * time.Second},              // empty: next token in 10 s
		{4 * time.Second, false, 6 * time.Second}, // denials cost nothing
		{6 * time.Second, true, 0},                // one token refilled
		{0, false, 10 * time.Second},
		{25 * time.Second, true, 0}, // 2.5 tokens back: two usable
		{0, true, 0},
		{0, false, 5 * time.Second}, // half a token left
		{time.Hour, true, 0},        // refill caps at the burst
		{0, true, 0}, {0, true, 0},
		{0, false, 10 * time.Second},
	}
	for i, s := range steps {
		c.Advance(s.advance)
		ok, retry := l.Allow("ip:1.2.3.4")
		if ok != s.allowed || retry != s.retry {
			t.Fatalf("step %d: Allow = %v, %v; want %v, %v", i, ok, retry, s.allowed, s.retry)
		}
	}
	// Keys are independent.
	if ok, _ := l.Allow("ip:5.6.7.8"); !ok {
		t.Fatal("other key limited")
	}
	// Reset refills.
	l.Reset("ip:1.2.3.4")
	if ok, _ := l.Allow("ip:1.2.3.4"); !ok {
		t.Fatal("Reset did not refill")
	}
}

func TestLimiterBurstOne(t *testing.T) {
	c := newClock()
	l := newLimiter(t, c, 1, time.Minute, 0)
	if ok, _ := l.Allow("k"); !ok {
		t.Fatal("first denied")
	}
	if ok, retry := l.Allow("k"); ok || retry != time.Minute {
		t.Fatalf("second: %v %v", ok, retry)
	}
	c.Advance(time.Minute - time.Nanosecond)
	if ok, retry := l.Allow("k"); ok || retry != time.Nanosecond {
		t.Fatalf("just before refill: %v %v", ok, retry)
	}
	c.Advance(time.Nanosecond)
	if ok, _ := l.Allow("k"); !ok {
		t.Fatal("refilled token denied")
	}
}

func TestLimiterEvictsIdleKeys(t *testing.T) {
	c := newClock()
	l := newLimiter(t, c, 2, time.Second, 0)
	for i := range 1000 {
		l.Allow(fmt.Sprint("k", i))
	}
	if l.Len() != 1000 {
		t.Fatalf("Len = %d", l.Len())
	}
	c.Advance(1999 * time.Millisecond) // not yet full again
	l.Allow("k0")
	if l.Len() != 1000 {
		t.Fatalf("evicted too early: Len = %d", l.Len())
	}
	c.Advance(time.Millisecond) // full: k1..k999 are forgotten, k0 was just used
	l.Allow("x")
	if l.Len() != 2 {
		t.Fatalf("idle keys kept: Len = %d", l.Len())
	}
}

func TestLimiterMaxKeys(t *testing.T) {
	c := newClock()
	l := newLimiter(t, c, 1, time.Hour, 3)
	for _, k := range []string{"a", "b", "c"} {
		l.Allow(k)
	}
	l.Allow("a") // a is now the most recently used; b the least
	l.Allow("d") // evicts b
	if l.Len() != 3 {
		t.Fatalf("Len = %d, want the bound 3", l.Len())
	}
	if ok, _ := l.Allow("a"); ok {
		t.Fatal("a was forgotten instead of the least recently used key")
	}
	if ok, _ := l.Allow("b"); !ok {
		t.Fatal("b was not evicted")
	}
}

func TestLimiterConfig(t *testing.T) {
	for _, cfg := range []LimiterConfig{
		{},
		{Limit: RateLimit{Burst: 0, Interval: time.Second}},
		{Limit: RateLimit{Burst: 1, Interval: 0}},
		{Limit: RateLimit{Burst: 1, Interval: time.Second}, MaxKeys: -1},
	} {
		if _, err := NewLimiter(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
	for _, r := range []RateLimit{LoginLimitPerIP, LoginLimitPerEmail, SignupLimitPerIP} {
		if err := r.Validate(); err != nil {
			t.Error(err)
		}
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int{
		0: 1, time.Nanosecond: 1, 999 * time.Millisecond: 1, time.Second: 1,
		time.Second + time.Nanosecond: 2, 6 * time.Second: 6, 90 * time.Second: 90, -time.Second: 1,
	} {
		if got := RetryAfterSeconds(d); got != want {
			t.Errorf("RetryAfterSeconds(%v) = %d, want %d", d, got, want)
		}
	}
}

func TestMiddleware(t *testing.T) {
	c := newClock()
	l := newLimiter(t, c, 2, 30*time.Second, 0)
	calls := 0
	h := l.Middleware(IPKeyFunc(nil))(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls++
		w.WriteHeader(http.StatusNoContent)
	}))
	do := func(remote string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("POST", "/v1/auth/login", nil)
		r.RemoteAddr = remote
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	for range 2 {
		if w := do("203.0.113.7:1234"); w.Code != http.StatusNoContent {
			t.Fatalf("status %d", w.Code)
		}
	}
	c.Advance(5500 * time.Millisecond)
	w := do("203.0.113.7:5555") // same IP, other port
	if w.Code != http.StatusTooManyRequests || calls != 2 {
		t.Fatalf("status %d after %d calls", w.Code, calls)
	}
	if got := w.Header().Get("Retry-After"); got != "25" { // 24.5 s rounded up
		t.Fatalf("Retry-After = %q", got)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q", ct)
	}
	var body map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &body); err != nil {
		t.Fatal(err)
	}
	if body["code"] != float64(429) || body["message"] != "too many requests, retry in 25 seconds" || len(body) != 2 {
		t.Fatalf("body %v", body)
	}
	if w := do("198.51.100.1:1"); w.Code != http.StatusNoContent {
		t.Fatalf("other client limited: %d", w.Code)
	}
	// A key function may exempt requests.
	exempt := l.Middleware(func(*http.Request) (string, bool) { return "", false })(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	for range 10 {
		w := httptest.NewRecorder()
		exempt.ServeHTTP(w, httptest.NewRequest("GET", "/", nil))
		if w.Code != http.StatusOK {
			t.Fatal("exempt request limited")
		}
	}
}

func TestClientIP(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	tests := []struct {
		name    string
		remote  string
		xff     []string
		trusted []netip.Prefix
		want    string
	}{
		{"direct", "203.0.113.7:443", nil, nil, "203.0.113.7"},
		{"xff ignored without trust", "203.0.113.7:443", []string{"1.1.1.1"}, nil, "203.0.113.7"},
		{"xff ignored from untrusted peer", "203.0.113.7:443", []string{"1.1.1.1"}, trusted, "203.0.113.7"},
		{"through a trusted proxy", "10.0.0.2:80", []string{"198.51.100.9"}, trusted, "198.51.100.9"},
		{"client-forged entries left of the real one", "10.0.0.2:80", []string{"6.6.6.6, 198.51.100.9"}, trusted, "198.51.100.9"},
		{"two trusted proxies", "10.0.0.2:80", []string{"198.51.100.9, 10.1.1.1"}, trusted, "198.51.100.9"},
		{"several headers", "10.0.0.2:80", []string{"6.6.6.6", "198.51.100.9"}, trusted, "198.51.100.9"},
		{"garbage from a proxy", "10.0.0.2:80", []string{"nonsense"}, trusted, "10.0.0.2"},
		{"only trusted", "10.0.0.2:80", []string{"10.0.0.3"}, trusted, "10.0.0.3"},
		{"no xff from trusted", "10.0.0.2:80", nil, trusted, "10.0.0.2"},
		{"ipv6 loopback proxy", "[::1]:80", []string{"2001:db8::1"}, trusted, "2001:db8::1"},
		{"mapped ipv4", "[::ffff:203.0.113.7]:443", nil, nil, "203.0.113.7"},
		{"bare address", "203.0.113.7", nil, nil, "203.0.113.7"},
		{"unparseable", "pipe", nil, nil, "invalid IP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := ClientIP(r, tt.trusted).String(); got != tt.want {
				t.Fatalf("ClientIP = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestIPKeyAndEmailKey(t *testing.T) {
	for in, want := range map[string]string{
		"203.0.113.7":          "ip:203.0.113.7",
		"::ffff:203.0.113.7":   "ip:203.0.113.7",
		"2001:db8:1:2:3:4:5:6": "ip:2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "ip:2001:db8:1:2::/64",
		"fe80::1%eth0":         "ip:fe80::/64",
		"2001:db8:1:3::1":      "ip:2001:db8:1:3::/64",
	} {
		if got := IPKey(netip.MustParseAddr(in)); got != want {
			t.Errorf("IPKey(%s) = %s, want %s", in, got, want)
		}
	}
	if IPKey(netip.Addr{}) != "ip:unknown" {
		t.Error("zero address")
	}
	if EmailKey("  Alice@Example.COM ") != "email:alice@example.com" {
		t.Error("EmailKey")
	}
}
