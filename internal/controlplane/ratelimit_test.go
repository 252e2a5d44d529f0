package controlplane

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/service"
)

// TestTeamRateLimitSharedByBothAPIs floods a team's sandbox lifecycle
// requests through both APIs of one control plane: the E2B API and the
// /v1 routes that create sandboxes or change their lifecycle take their
// tokens from one bucket per team, so once it is empty every such route of
// either API answers 429 with Retry-After (E2B's error shape, which the
// SDKs wait for), while another team is served and the team's reads are
// not limited.
func TestTeamRateLimitSharedByBothAPIs(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t)
	const burst = 6
	cfg.E2BTeamRateLimit = auth.RateLimit{Burst: burst, Interval: time.Minute}
	cp, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cp.Close()
	srv := httptest.NewServer(cp.APIHandler())
	defer srv.Close()
	key := func(email string) string {
		acc, err := cp.Accounts.Signup(ctx, service.Signup{Email: email, Password: "correct horse battery"})
		if err != nil {
			t.Fatal(err)
		}
		k, err := cp.Accounts.CreateAPIKey(ctx, acc.Principal(), "flood")
		if err != nil {
			t.Fatal(err)
		}
		return k.Plaintext
	}
	keyA, keyB := key("flood-a@example.com"), key("flood-b@example.com")
	do := func(t *testing.T, method, path, key, body string) (int, http.Header, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-API-Key", key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, string(b)
	}
	// Unknown sandboxes: the handlers answer 404 without an agent call,
	// after the limiter took its token.
	const unknown = "0123456789abcdef0123456789abcdef"
	// The flood: the team's whole burst, alternating the two APIs.
	flood := []struct{ method, path, body string }{
		{"DELETE", "/v1/sandboxes/" + unknown, ""},
		{"DELETE", "/sandboxes/" + unknown, ""},
		{"POST", "/v1/sandboxes/" + unknown + "/pause", ""},
		{"POST", "/sandboxes/" + unknown + "/pause", ""},
		{"POST", "/v1/sandboxes/" + unknown + "/timeout", `{"timeout_sec":60}`},
		{"POST", "/sandboxes/" + unknown + "/timeout", `{"timeout":60}`},
	}
	if len(flood) != burst {
		t.Fatal("the flood must be the burst")
	}
	t.Run("within the burst both APIs serve the team", func(t *testing.T) {
		for _, r := range flood {
			if code, _, body := do(t, r.method, r.path, keyA, r.body); code != http.StatusNotFound {
				t.Fatalf("%s %s = %d %.200s, want 404 (served)", r.method, r.path, code, body)
			}
		}
	})
	// Every limited route of either API now answers 429.
	for _, r := range []struct{ name, method, path, body string }{
		{"v1 create", "POST", "/v1/sandboxes", `{"template":"minimal"}`},
		{"v1 destroy", "DELETE", "/v1/sandboxes/" + unknown, ""},
		{"v1 pause", "POST", "/v1/sandboxes/" + unknown + "/pause", ""},
		{"v1 resume", "POST", "/v1/sandboxes/" + unknown + "/resume", ""},
		{"v1 fork", "POST", "/v1/sandboxes/" + unknown + "/fork", `{}`},
		{"v1 timeout", "POST", "/v1/sandboxes/" + unknown + "/timeout", `{"timeout_sec":60}`},
		{"v1 network", "PUT", "/v1/sandboxes/" + unknown + "/network", `{"allow_out":[],"deny_out":[]}`},
		{"v1 snapshot", "POST", "/v1/snapshots", `{"sandbox_id":"` + unknown + `","name":"s"}`},
		{"v1 snapshot delete", "DELETE", "/v1/snapshots/s", ""},
		{"E2B create", "POST", "/v2/sandboxes", `{"templateID":"minimal"}`},
		{"E2B list", "GET", "/v2/sandboxes", ""},
	} {
		t.Run("past the burst: "+r.name+" is 429 with Retry-After", func(t *testing.T) {
			code, h, body := do(t, r.method, r.path, keyA, r.body)
			if code != http.StatusTooManyRequests {
				t.Fatalf("%s %s = %d %.200s, want 429", r.method, r.path, code, body)
			}
			if secs, err := strconv.Atoi(h.Get("Retry-After")); err != nil || secs < 1 || secs > 60 {
				t.Fatalf("Retry-After %q, want whole seconds within the bucket's interval", h.Get("Retry-After"))
			}
			if !strings.Contains(body, `"code":429`) {
				t.Fatalf("body %.200s, want the error shape with code 429", body)
			}
		})
	}
	t.Run("the team's reads on /v1 are not limited", func(t *testing.T) {
		if code, _, body := do(t, "GET", "/v1/sandboxes", keyA, ""); code != http.StatusOK {
			t.Fatalf("GET /v1/sandboxes = %d %.200s", code, body)
		}
	})
	t.Run("another team is unaffected on both APIs", func(t *testing.T) {
		for _, r := range flood[:2] {
			if code, _, body := do(t, r.method, r.path, keyB, r.body); code != http.StatusNotFound {
				t.Fatalf("%s %s for another team = %d %.200s, want 404 (served)", r.method, r.path, code, body)
			}
		}
	})
}
