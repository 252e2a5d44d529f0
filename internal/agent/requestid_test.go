package agent

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/agentapi"
	"github.com/capsulehq/capsule/internal/agentproxy"
	"github.com/capsulehq/capsule/internal/logctx"
)

// TestRequestIDReachesTheAgent: the control plane's request ID (the
// context of an agentclient call) is the context's on the agent, and the
// agent's log lines of that call carry it; a call without one, or with a
// malformed one, gets a fresh ID.
func TestRequestIDReachesTheAgent(t *testing.T) {
	boom := errors.New("boom") // an internal error: logged by the agent
	for _, tc := range []struct {
		name string
		call func(t *testing.T, url string) error
		want string // "" → a fresh, well-formed ID
	}{
		{"unary call carries the ID", func(t *testing.T, url string) error {
			ctx := logctx.WithRequestID(context.Background(), "cp-req-1")
			_, err := client(t, url, testToken).GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "a"}))
			return err
		}, "cp-req-1"},
		{"streaming call carries the ID", func(t *testing.T, url string) error {
			ctx := logctx.WithRequestID(context.Background(), "cp-req-2")
			st, err := client(t, url, testToken).Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: "a", Cmd: "true"}))
			if err != nil {
				return err
			}
			for st.Receive() {
			}
			return st.Err()
		}, "cp-req-2"},
		{"no ID in the context: a fresh one", func(t *testing.T, url string) error {
			_, err := client(t, url, testToken).GetSandbox(context.Background(), connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "a"}))
			return err
		}, ""},
		{"malformed ID: a fresh one", func(t *testing.T, url string) error {
			req, _ := http.NewRequest(http.MethodPost, url+hostagentv1connect.HostAgentGetSandboxProcedure, strings.NewReader(`{"sandboxId":"a"}`))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Authorization", "Bearer "+testToken)
			req.Header.Set(agentapi.RequestIDHeader, `evil" level=ERROR`)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return err
			}
			resp.Body.Close()
			return errors.New(resp.Status)
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &stub{err: boom}
			url, logs := stubServer(t, s)
			if err := tc.call(t, url); err == nil {
				t.Fatal("the call succeeded; want the stub's internal error")
			}
			var failed string
			for _, l := range strings.Split(logs.String(), "\n") {
				if strings.Contains(l, `msg="call failed"`) {
					failed = l
				}
			}
			if failed == "" {
				t.Fatalf("the agent logged no failed call:\n%s", logs)
			}
			_, after, ok := strings.Cut(failed, "request_id=")
			got, _, _ := strings.Cut(after, " ")
			switch {
			case !ok:
				t.Errorf("the agent's line has no request_id: %s", failed)
			case tc.want != "" && got != tc.want:
				t.Errorf("the agent logged request_id=%s, want %s: %s", got, tc.want, failed)
			case tc.want == "" && (!logctx.ValidID(got) || strings.Contains(got, "evil")):
				t.Errorf("want a fresh request ID, the agent logged %q", got)
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if len(s.requestIDs) > 0 && s.requestIDs[0] != got {
				t.Errorf("the handler's context has request ID %q, the log line %q", s.requestIDs[0], got)
			}
		})
	}
}

// TestProxyStripsTheControlPlaneHeaders: what the control plane adds for
// the agent (routing, token, request ID) never reaches the guest; the
// client's own X-Request-Id does.
func TestProxyStripsTheControlPlaneHeaders(t *testing.T) {
	a := &Agent{log: slog.New(slog.DiscardHandler)}
	rp := a.newReverseProxy()
	u, _ := url.Parse("http://guest.invalid:8080")
	in := httptest.NewRequest("GET", "http://8080-sbx1.capsule.test/", nil)
	for _, h := range []string{agentproxy.SandboxHeader, agentproxy.PortHeader, agentproxy.TokenHeader, agentapi.RequestIDHeader} {
		in.Header.Set(h, "control-plane")
	}
	in.Header.Set("X-Request-Id", "client-1")
	in = in.WithContext(context.WithValue(in.Context(), proxyTargetKey{}, &proxyTarget{sandboxID: "sbx1", port: 8080, url: u}))
	out := in.Clone(in.Context())
	rp.Rewrite(&httputil.ProxyRequest{In: in, Out: out})
	for _, h := range []string{agentproxy.SandboxHeader, agentproxy.PortHeader, agentproxy.TokenHeader, agentapi.RequestIDHeader} {
		if v := out.Header.Get(h); v != "" {
			t.Errorf("the guest would get %s: %q", h, v)
		}
	}
	if v := out.Header.Get("X-Request-Id"); v != "client-1" {
		t.Errorf("the guest gets X-Request-Id %q, want the client's %q", v, "client-1")
	}
}
