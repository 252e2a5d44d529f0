package api

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// TestUIFallback: the dashboard gets only the GET and HEAD requests no
// route matches outside /v1; the API's routes, its JSON 404 and /docs
// keep precedence.
func TestUIFallback(t *testing.T) {
	e := newAPIWith(t, "", "", func(c *Config) {
		c.UI = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "dashboard") })
	})
	for _, tc := range []struct {
		method, path string
		code         int
		ui           bool
	}{
		{"GET", "/", 200, true},
		{"GET", "/capsules/abc", 200, true},
		{"HEAD", "/keys", 200, false},
		{"GET", "/healthz", 200, false},
		{"GET", "/openapi.yaml", 200, false},
		{"GET", "/v1/me", 401, false},
		{"GET", "/v1/no-such-route", 404, false},
		{"GET", "/v1", 404, false},
		{"POST", "/capsules", 404, false},
	} {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, e.srv.URL+tc.path, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.code || (string(body) == "dashboard") != tc.ui {
				t.Fatalf("%s %s: %d %.80q; want %d, from the dashboard: %v", tc.method, tc.path, resp.StatusCode, body, tc.code, tc.ui)
			}
			if !tc.ui && tc.code == 404 && !strings.Contains(string(body), `"code":404`) {
				t.Fatalf("unmatched API request: %s, want the JSON 404", body)
			}
		})
	}
}
