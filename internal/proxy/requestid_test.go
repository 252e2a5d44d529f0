package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"

	"github.com/capsulehq/capsule/internal/agentapi"
	"github.com/capsulehq/capsule/internal/logctx"
)

// oneSandbox routes the sandbox "sbx1" (public ports) to an agent.
type oneSandbox struct {
	nilResolver
	agentURL string
}

func (r oneSandbox) Resolve(_ context.Context, id string) (Route, error) {
	if id != "sbx1" {
		return Route{}, ErrNotFound
	}
	return Route{SandboxID: id, AgentURL: r.agentURL, AgentToken: "agent-token", Public: true}, nil
}

// TestProxyRequestID: the proxy takes the client's well-formed
// X-Request-Id or makes one, sends it to the agent in
// agentapi.RequestIDHeader (whatever the client put there) and echoes it,
// unless the sandbox's server answers with its own X-Request-Id.
func TestProxyRequestID(t *testing.T) {
	var mu sync.Mutex
	var atAgent []string
	agentSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		atAgent = append(atAgent, r.Header.Get(agentapi.RequestIDHeader))
		mu.Unlock()
		if r.URL.Path == "/own" {
			w.Header().Set("X-Request-Id", "guest-chose-this")
		}
		_, _ = w.Write([]byte("ok"))
	}))
	t.Cleanup(agentSrv.Close)
	h, err := New(Config{Domain: "capsule.test", Resolver: oneSandbox{agentURL: agentSrv.URL}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, host, path string
		header           map[string]string
		wantEcho         string // "" → a fresh ID
		wantAgent        bool   // the request reached the agent
	}{
		{"the client's ID", "8080-sbx1.capsule.test", "/", map[string]string{"X-Request-Id": "client-1"}, "client-1", true},
		{"none sent: a fresh ID", "8080-sbx1.capsule.test", "/", nil, "", true},
		{"malformed: a fresh ID", "8080-sbx1.capsule.test", "/", map[string]string{"X-Request-Id": "a b"}, "", true},
		{"the client cannot set the agent's header", "8080-sbx1.capsule.test", "/",
			map[string]string{"X-Request-Id": "client-2", agentapi.RequestIDHeader: "forged"}, "client-2", true},
		{"the sandbox's own X-Request-Id wins", "8080-sbx1.capsule.test", "/own",
			map[string]string{"X-Request-Id": "client-3"}, "guest-chose-this", true},
		{"an unknown sandbox: the error carries it", "8080-nope.capsule.test", "/",
			map[string]string{"X-Request-Id": "client-4"}, "client-4", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			before := len(atAgent)
			mu.Unlock()
			r := httptest.NewRequest("GET", "http://"+tc.host+tc.path, nil)
			for k, v := range tc.header {
				r.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			echo := rec.Header().Values("X-Request-Id")
			if len(echo) != 1 {
				t.Fatalf("response X-Request-Id %q (status %d): want exactly one", echo, rec.Code)
			}
			mu.Lock()
			got := slices.Clone(atAgent[before:])
			mu.Unlock()
			if !tc.wantAgent {
				if len(got) != 0 {
					t.Fatalf("the agent was reached: %q", got)
				}
			} else if len(got) != 1 {
				t.Fatalf("the agent got %d requests, want 1", len(got))
			}
			switch {
			case tc.wantEcho != "" && echo[0] != tc.wantEcho:
				t.Errorf("response X-Request-Id %q, want %q", echo[0], tc.wantEcho)
			case tc.wantEcho == "" && (!logctx.ValidID(echo[0]) || echo[0] == tc.header["X-Request-Id"]):
				t.Errorf("response X-Request-Id %q, want a fresh ID", echo[0])
			}
			if tc.wantAgent {
				want := echo[0]
				if tc.path == "/own" {
					want = tc.header["X-Request-Id"]
				}
				if got[0] != want {
					t.Errorf("the agent got request ID %q, want %q", got[0], want)
				}
			}
		})
	}
}
