package envd_test

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/envd"
	"github.com/capsulehq/capsule/internal/envdapi"
)

// TestInitEntropyBound: /init takes entropy up to MaxInitEntropyBytes and
// refuses more with a 400 that changes nothing (the token stays unset).
// Outside a guest (Config.Guest false) nothing is fed to the kernel; the
// reseed itself is checked in real guests (internal/service's fork test).
func TestInitEntropyBound(t *testing.T) {
	srv := envd.New(envd.Config{})
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(func() {
		ts.Close()
		srv.Close()
	})
	post := func(t *testing.T, body string) int {
		t.Helper()
		resp, err := http.Post(ts.URL+"/init", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.ReadAll(resp.Body)
		return resp.StatusCode
	}
	seed := func(n int) string { return base64.StdEncoding.EncodeToString(make([]byte, n)) }
	for _, tc := range []struct {
		name string
		body string
		want int
	}{
		{"too much entropy", `{"accessToken":"t1","entropy":"` + seed(envdapi.MaxInitEntropyBytes+1) + `"}`, 400},
		{"entropy that is not base64", `{"accessToken":"t1","entropy":"not base64!"}`, 400},
		{"the most entropy, and a hostname", `{"accessToken":"t1","hostname":"fork-1","entropy":"` + seed(envdapi.MaxInitEntropyBytes) + `"}`, 204},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Each /init comes without a token: had a refused one set
			// its token, the next would be 401.
			if got := post(t, tc.body); got != tc.want {
				t.Fatalf("POST /init = %d, want %d", got, tc.want)
			}
		})
	}
	// The accepted /init set the token: a tokenless one is now refused.
	if got := post(t, `{}`); got != 401 {
		t.Fatalf("tokenless /init after the token was set = %d, want 401", got)
	}
}
