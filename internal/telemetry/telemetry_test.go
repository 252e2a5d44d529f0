package telemetry

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// scrape GETs url with token (none when empty).
func scrape(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestControlPlaneMetrics(t *testing.T) {
	var reads atomic.Int32
	fail := atomic.Bool{}
	cp := NewControlPlane(func(context.Context) ([]StateCount, error) {
		reads.Add(1)
		if fail.Load() {
			return nil, errors.New("database down")
		}
		return []StateCount{{Team: "team-a", State: "running", N: 3}, {Team: "team-b", State: "paused", N: 1}}, nil
	}, time.Hour)

	// An API with a parameterized route, a sandbox operation and the proxy.
	mux := http.NewServeMux()
	mux.Handle("GET /v1/sandboxes/{id}", cp.Route("GET /v1/sandboxes/{id}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "missing" {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})))
	mux.Handle("POST /v1/sandboxes/{id}/pause", cp.Route("POST /v1/sandboxes/{id}/pause", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})))
	api := httptest.NewServer(mux)
	defer api.Close()
	proxy := httptest.NewServer(cp.Proxy(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		_, _ = w.Write(append(b, b...))
	})))
	defer proxy.Close()
	for _, id := range []string{"sb-1", "sb-2", "missing"} {
		resp, err := http.Get(api.URL + "/v1/sandboxes/" + id)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	if resp, err := http.Post(api.URL+"/v1/sandboxes/sb-1/pause", "", nil); err == nil {
		resp.Body.Close()
	}
	if resp, err := http.Post(proxy.URL+"/x", "text/plain", strings.NewReader("12345")); err == nil {
		resp.Body.Close()
	}

	const token = "0123456789abcdef-scrape"
	metrics := httptest.NewServer(Handler(cp.Registry, token))
	defer metrics.Close()
	open := httptest.NewServer(Handler(cp.Registry, ""))
	defer open.Close()

	t.Run("without the token a protected scrape is refused", func(t *testing.T) {
		for _, tok := range []string{"", "wrong-token-0123456789", token + "x"} {
			if code, body := scrape(t, metrics.URL, tok); code != http.StatusUnauthorized || strings.Contains(body, "capsule_") {
				t.Errorf("token %q: %d %q", tok, code, body)
			}
		}
	})
	code, body := scrape(t, metrics.URL, token)
	if code != http.StatusOK {
		t.Fatalf("scrape with the token: %d", code)
	}
	t.Run("with the token every metric is there", func(t *testing.T) {
		for _, want := range []string{
			`capsule_api_requests_total{code="200",route="GET /v1/sandboxes/{id}"} 2`,
			`capsule_api_requests_total{code="404",route="GET /v1/sandboxes/{id}"} 1`,
			`capsule_api_request_duration_seconds_count{route="GET /v1/sandboxes/{id}"} 3`,
			`capsule_sandbox_operation_duration_seconds_count{op="pause",outcome="ok"} 1`,
			`capsule_sandboxes{state="running",team="team-a"} 3`,
			`capsule_sandboxes{state="paused",team="team-b"} 1`,
			`capsule_sandboxes_scrape_error 0`,
			`capsule_proxy_requests_total{class="2xx"} 1`,
			`capsule_proxy_bytes_total{direction="in"} 5`,
			`capsule_proxy_bytes_total{direction="out"} 10`,
			`go_goroutines`, `process_cpu_seconds_total`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("missing %s", want)
			}
		}
	})
	t.Run("routes are labelled by pattern, never by path", func(t *testing.T) {
		if strings.Contains(body, "sb-1") || strings.Contains(body, `route="/v1`) {
			t.Errorf("a raw path in the labels:\n%s", body)
		}
	})
	t.Run("the sandboxes table is read at most once per cache period", func(t *testing.T) {
		before := reads.Load()
		scrape(t, open.URL, "")
		scrape(t, open.URL, "")
		if got := reads.Load() - before; got != 0 {
			t.Errorf("%d reads within the cache period, want 0", got)
		}
	})
}

func TestStateCollectorReportsAFailedRead(t *testing.T) {
	cp := NewControlPlane(func(context.Context) ([]StateCount, error) { return nil, errors.New("down") }, time.Nanosecond)
	srv := httptest.NewServer(Handler(cp.Registry, ""))
	defer srv.Close()
	if _, body := scrape(t, srv.URL, ""); !strings.Contains(body, "capsule_sandboxes_scrape_error 1") {
		t.Errorf("a failed read is not reported:\n%s", body)
	}
}

func TestBuildQueueCollector(t *testing.T) {
	fail := atomic.Bool{}
	cp := NewControlPlane(nil, 0)
	cp.RegisterBuildQueue(func(context.Context) (int64, int64, error) {
		if fail.Load() {
			return 0, 0, errors.New("down")
		}
		return 3, 2, nil
	}, time.Nanosecond)
	cp.ObserveBuild("success", 90*time.Second)
	srv := httptest.NewServer(Handler(cp.Registry, ""))
	defer srv.Close()
	for _, tc := range []struct {
		name string
		fail bool
		want []string
	}{
		{"read", false, []string{`capsule_build_queue_depth{state="pending"} 3`, `capsule_build_queue_depth{state="running"} 2`,
			"capsule_build_queue_scrape_error 0", `capsule_build_duration_seconds_bucket{status="success",le="60"} 0`,
			`capsule_build_duration_seconds_bucket{status="success",le="120"} 1`}},
		// A failed read keeps the last figures and says so.
		{"failed read", true, []string{`capsule_build_queue_depth{state="pending"} 3`, "capsule_build_queue_scrape_error 1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fail.Store(tc.fail)
			_, body := scrape(t, srv.URL, "")
			for _, w := range tc.want {
				if !strings.Contains(body, w) {
					t.Errorf("no %q in:\n%s", w, body)
				}
			}
		})
	}
}
