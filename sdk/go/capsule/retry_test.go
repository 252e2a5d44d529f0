package capsule

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// faultServer answers the statuses of script in turn (then 201 with a
// sandbox) and records the bodies it received. It stands in for the
// platform only to produce 429s and 503s on demand; the real stack is
// exercised in sdk_test.go.
type faultServer struct {
	mu     sync.Mutex
	script []fault
	bodies []string
}

type fault struct {
	status     int
	retryAfter string
}

func (f *faultServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.bodies = append(f.bodies, string(b))
	var next fault
	if len(f.script) > 0 {
		next, f.script = f.script[0], f.script[1:]
	}
	f.mu.Unlock()
	w.Header().Set("X-Request-Id", "req-1")
	if next.status != 0 {
		if next.retryAfter != "" {
			w.Header().Set("Retry-After", next.retryAfter)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(next.status)
		_, _ = io.WriteString(w, `{"code":`+strconv.Itoa(next.status)+`,"message":"refused"}`)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)
	_, _ = io.WriteString(w, `{"id":"sb-1","template":"base","state":"running","vcpus":1,"memory_mb":256,"timeout_sec":0,
		"allow_internet_access":true,"allow_public_traffic":false,"auto_pause":true,"auto_resume":false,"metadata":{},
		"created_at":"2026-12-07T00:00:00Z"}`)
}

// TestRetries: which refusals are retried, how long the client waits, and
// that a retried request carries the same body.
func TestRetries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		script   []fault
		ctxLimit time.Duration
		wantErr  error
		wantSent int
		// wantWaits are the waits the client slept, when exact (Retry-After);
		// nil: only their count (len == wantSent-1) is checked.
		wantWaits []time.Duration
	}{
		{name: "503 twice then success", script: []fault{{503, ""}, {503, ""}}, wantSent: 3},
		{name: "503 with Retry-After waits that long", script: []fault{{503, "2"}}, wantSent: 2,
			wantWaits: []time.Duration{2 * time.Second}},
		{name: "429 with Retry-After is a rate limit: retried", script: []fault{{429, "1"}, {429, "3"}}, wantSent: 3,
			wantWaits: []time.Duration{time.Second, 3 * time.Second}},
		{name: "429 without Retry-After is a quota: not retried", script: []fault{{429, ""}}, wantErr: ErrQuota, wantSent: 1},
		{name: "503 past the retry limit", script: []fault{{503, ""}, {503, ""}, {503, ""}, {503, ""}}, wantErr: ErrUnavailable, wantSent: 4},
		{name: "Retry-After past the cap is not waited for", script: []fault{{503, "3600"}}, wantErr: ErrUnavailable, wantSent: 1},
		{name: "a wait past the deadline is not started", script: []fault{{503, "30"}}, ctxLimit: 5 * time.Second,
			wantErr: ErrUnavailable, wantSent: 1},
		{name: "other refusals are not retried", script: []fault{{409, ""}}, wantErr: ErrConflict, wantSent: 1},
		{name: "500 is not retried", script: []fault{{500, ""}}, wantSent: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := &faultServer{script: append([]fault(nil), tc.script...)}
			srv := httptest.NewServer(fs)
			defer srv.Close()
			c, err := New(srv.URL, WithAPIKey("e2b_0123"))
			if err != nil {
				t.Fatal(err)
			}
			var waits []time.Duration
			c.http.Transport.(*retryTransport).sleep = func(ctx context.Context, d time.Duration) error {
				waits = append(waits, d)
				return ctx.Err()
			}
			ctx := context.Background()
			if tc.ctxLimit > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, tc.ctxLimit)
				defer cancel()
			}
			sb, err := c.Sandboxes.Create(ctx, CreateOptions{Template: "base", Metadata: map[string]string{"k": "v"}})
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			case tc.wantErr == nil && len(tc.script) > 0 && tc.script[len(tc.script)-1].status == 500:
				var ae *APIError
				if !errors.As(err, &ae) || ae.Status != 500 || ae.RequestID != "req-1" || ae.Message != "refused" {
					t.Fatalf("err = %#v, want the 500", err)
				}
			case tc.wantErr == nil && (err != nil || sb.ID != "sb-1"):
				t.Fatalf("create = %+v, %v", sb, err)
			}
			if len(fs.bodies) != tc.wantSent {
				t.Fatalf("sent %d requests, want %d", len(fs.bodies), tc.wantSent)
			}
			for i, b := range fs.bodies {
				if b != fs.bodies[0] || !strings.Contains(b, `"template":"base"`) {
					t.Fatalf("request %d body %q, first %q", i, b, fs.bodies[0])
				}
			}
			if len(waits) != max(tc.wantSent-1, 0) {
				t.Fatalf("waited %v, want %d waits", waits, tc.wantSent-1)
			}
			if tc.wantWaits != nil {
				for i, w := range tc.wantWaits {
					if waits[i] != w {
						t.Fatalf("waits %v, want %v", waits, tc.wantWaits)
					}
				}
			}
			for _, w := range waits {
				if w <= 0 || w > DefaultRetryPolicy.MaxRetryAfter {
					t.Fatalf("wait %v out of bounds", w)
				}
			}
		})
	}
}

// TestRetryWaitEndsWithContext: a cancelled context ends the wait between
// two attempts at once (the real sleep).
func TestRetryWaitEndsWithContext(t *testing.T) {
	fs := &faultServer{script: []fault{{503, "30"}, {503, "30"}}}
	srv := httptest.NewServer(fs)
	defer srv.Close()
	c, err := New(srv.URL, WithAPIKey("e2b_0123"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			fs.mu.Lock()
			n := len(fs.bodies)
			fs.mu.Unlock()
			if n > 0 {
				cancel()
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	start := time.Now()
	_, err = c.Sandboxes.Get(ctx, "sb-1")
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the cancelled wait took %v", d)
	}
}

// TestErrorClasses: every refusal status maps to its class, and the
// platform's message and request ID are kept.
func TestErrorClasses(t *testing.T) {
	for status, class := range map[int]error{
		400: ErrInvalid, 401: ErrUnauthorized, 403: ErrForbidden, 404: ErrNotFound, 409: ErrConflict, 413: ErrInvalid,
		429: ErrQuota, 503: ErrUnavailable, 507: ErrInsufficientStorage,
	} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			srv := httptest.NewServer(&faultServer{script: []fault{{status, ""}}})
			defer srv.Close()
			c, err := New(srv.URL, WithAPIKey("e2b_0123"), WithRetry(RetryPolicy{}))
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Sandboxes.Create(context.Background(), CreateOptions{})
			var ae *APIError
			if !errors.Is(err, class) || !errors.As(err, &ae) || ae.Status != status || ae.Message != "refused" || ae.RequestID != "req-1" {
				t.Fatalf("err = %v, want class %v with the message and request ID", err, class)
			}
			for _, other := range []error{ErrInvalid, ErrUnauthorized, ErrForbidden, ErrNotFound, ErrConflict, ErrQuota, ErrUnavailable, ErrInsufficientStorage} {
				if other != class && errors.Is(err, other) {
					t.Fatalf("%d is also %v", status, other)
				}
			}
		})
	}
}

// TestNewRefusesBadConfig: a client needs a URL and a key.
func TestNewRefusesBadConfig(t *testing.T) {
	for _, tc := range []struct{ name, url, key string }{
		{"no key", "http://localhost:8080", ""},
		{"no scheme", "localhost:8080", "e2b_x"},
		{"ftp", "ftp://localhost", "e2b_x"},
		{"no host", "http://", "e2b_x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.url, WithAPIKey(tc.key)); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// TestRetryAfterParsing: seconds and HTTP dates.
func TestRetryAfterParsing(t *testing.T) {
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		v    string
		want time.Duration
	}{
		{"", 0}, {"3", 3 * time.Second}, {"-1", 0}, {"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Minute).Format(http.TimeFormat), 0},
	} {
		h := http.Header{}
		h.Set("Retry-After", tc.v)
		if got := retryAfter(h, now); got != tc.want {
			t.Errorf("Retry-After %q = %v, want %v", tc.v, got, tc.want)
		}
	}
}
