package e2bapi

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/logctx"
	"github.com/capsulehq/capsule/internal/service"
)

// TestRequestIDEchoed: every answer of the facade, refusals too, carries
// the request's X-Request-Id: the client's when well-formed, else a fresh
// one. (The ID's way to the log lines and the agent is the native API's
// test, TestRequestIDFollowsTheRequest: both take it with logctx.FromHTTP.)
func TestRequestIDEchoed(t *testing.T) {
	h, err := New(Config{Accounts: &service.Accounts{}, Sandboxes: &service.Sandboxes{}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, path, sent, want string // want "": a fresh ID
		status                 int
	}{
		{"health, the client's ID", "/health", "e2b-sdk-1", "e2b-sdk-1", 200},
		{"health, none sent", "/health", "", "", 200},
		{"refused, the client's ID", "/sandboxes", "e2b-sdk-2", "e2b-sdk-2", 401},
		{"refused, malformed ID", "/sandboxes", "x\ty", "", 401},
		{"refused, too long", "/sandboxes", strings.Repeat("z", logctx.MaxIDLen+1), "", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", tc.path, nil)
			if tc.sent != "" {
				r.Header.Set("X-Request-Id", tc.sent)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			got := rec.Header().Get("X-Request-Id")
			switch {
			case rec.Code != tc.status:
				t.Errorf("status %d, want %d", rec.Code, tc.status)
			case tc.want != "" && got != tc.want:
				t.Errorf("X-Request-Id %q, want %q", got, tc.want)
			case tc.want == "" && (!logctx.ValidID(got) || got == tc.sent):
				t.Errorf("X-Request-Id %q, want a fresh ID", got)
			}
		})
	}
}
