package e2bapi

import (
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
)

// TestRateLimitAndNoCapacity: what the E2B SDK reads as RateLimitError
// (and retries after Retry-After) and ServiceBusyError. A team past its
// request rate gets 429 with Retry-After in whole seconds, in E2B's error
// shape, while another team is served; a create that no host can take is
// 503.
func TestRateLimitAndNoCapacity(t *testing.T) {
	e := newEnv(t, "", "") // no host answers: nothing can be placed
	h, err := New(Config{Accounts: e.acc, Sandboxes: e.sbx, Domain: testDomain,
		TeamRateLimit: auth.RateLimit{Burst: 3, Interval: 10 * time.Second}})
	if err != nil {
		t.Fatal(err)
	}
	limited := httptest.NewServer(h)
	t.Cleanup(limited.Close)
	_, keyA := e.account(t, "busy-a@example.com")
	_, keyB := e.account(t, "busy-b@example.com")

	t.Run("no capacity: 503", func(t *testing.T) {
		r := e.do(t, "POST", "/v2/sandboxes", keyA, map[string]any{"templateID": "minimal"})
		r.expect(t, 503, nil)
		if r.header.Get("Retry-After") != "" {
			t.Fatalf("503 with Retry-After %q", r.header.Get("Retry-After"))
		}
	})
	t.Run("past the team's rate: 429 with Retry-After", func(t *testing.T) {
		e.srv.URL, limited.URL = limited.URL, e.srv.URL // e.do on the limited handler
		defer func() { e.srv.URL, limited.URL = limited.URL, e.srv.URL }()
		for range 3 { // the burst
			e.do(t, "GET", "/v2/sandboxes", keyA, nil).expect(t, 200, nil)
		}
		r := e.do(t, "GET", "/v2/sandboxes", keyA, nil)
		r.expect(t, 429, nil)
		secs, err := strconv.Atoi(r.header.Get("Retry-After"))
		if err != nil || secs < 1 || secs > 10 {
			t.Fatalf("Retry-After %q, want whole seconds within the bucket's interval", r.header.Get("Retry-After"))
		}
		// Another team has its own bucket; a request without a valid key
		// is not counted against anyone (401 first).
		e.do(t, "GET", "/v2/sandboxes", keyB, nil).expect(t, 200, nil)
		e.do(t, "GET", "/v2/sandboxes", "e2b_"+"00", nil).expect(t, 401, nil)
	})
}
