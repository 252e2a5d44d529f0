package api

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/agent"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/logctx"
)

// lockedBuffer is the log that two servers' loggers share.
type lockedBuffer struct{ hosttest.SyncBuffer }

// lines returns the JSON log lines logged so far whose "side" is side.
func (b *lockedBuffer) lines(t *testing.T, side string) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if m["side"] == side {
			out = append(out, m)
		}
	}
	return out
}

// loggingAgent is a host agent's RPC server whose every call is logged
// (with the call's context) and fails, behind the agent's own request-ID
// handling (agent.CarryRequestID) over h2c: the control plane's side is
// the real one, the agent's stops at its edge.
func loggingAgent(t *testing.T, log *slog.Logger) string {
	t.Helper()
	logCalls := connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			log.InfoContext(ctx, "agent call", "procedure", req.Spec().Procedure)
			return nil, connect.NewError(connect.CodeInternal, errors.New("no sandboxes here"))
		}
	})
	path, h := hostagentv1connect.NewHostAgentHandler(hostagentv1connect.UnimplementedHostAgentHandler{}, connect.WithInterceptors(logCalls))
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := httptest.NewUnstartedServer(agent.CarryRequestID(mux))
	srv.Config.Protocols = agent.Protocols()
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestRequestIDFollowsTheRequest: a request's X-Request-Id (or the one the
// API made up for it) is echoed in the response and is the request_id of
// the API's log lines of the request and of the agent's lines of the calls
// it made.
func TestRequestIDFollowsTheRequest(t *testing.T) {
	logs := &lockedBuffer{}
	base := slog.New(logctx.NewHandler(slog.NewJSONHandler(logs, nil)))
	agentURL := loggingAgent(t, base.With("side", "agent"))
	e := newAPIWith(t, agentURL, "agent-token-0123456789abcdef", func(c *Config) { c.Log = base.With("side", "api") })
	_, key, team := e.account(t, "rid@example.com")

	for _, tc := range []struct {
		name, sent string
		want       string // "" → a fresh ID
	}{
		{"the client's ID", "client-req-7", "client-req-7"},
		{"none sent: a fresh ID", "", ""},
		{"malformed: a fresh ID", "bad id;drop", ""},
		{"too long: a fresh ID", strings.Repeat("r", logctx.MaxIDLen+1), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apiBefore, agentBefore := len(logs.lines(t, "api")), len(logs.lines(t, "agent"))
			req, _ := http.NewRequest("POST", e.srv.URL+"/v1/sandboxes", strings.NewReader(`{}`))
			req.Header.Set("X-API-Key", key)
			if tc.sent != "" {
				req.Header.Set("X-Request-Id", tc.sent)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			id := resp.Header.Get("X-Request-Id")
			switch {
			case tc.want != "" && id != tc.want:
				t.Fatalf("response X-Request-Id %q, want %q", id, tc.want)
			case tc.want == "" && (!logctx.ValidID(id) || id == tc.sent):
				t.Fatalf("response X-Request-Id %q, want a fresh ID", id)
			}
			apiLines, agentLines := logs.lines(t, "api")[apiBefore:], logs.lines(t, "agent")[agentBefore:]
			if len(apiLines) == 0 || len(agentLines) == 0 {
				t.Fatalf("want log lines of the request on both sides; api %v, agent %v", apiLines, agentLines)
			}
			for _, l := range append(apiLines, agentLines...) {
				if l["request_id"] != id {
					t.Errorf("log line with request_id %v, want %q: %v", l["request_id"], id, l)
				}
			}
			for _, l := range apiLines {
				if l["team"] != team {
					t.Errorf("API log line with team %v, want %q: %v", l["team"], team, l)
				}
			}
		})
	}
}
