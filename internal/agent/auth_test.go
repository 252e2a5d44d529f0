package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/logctx"
	"github.com/capsulehq/capsule/internal/sandbox"
)

const testToken = "0123456789abcdef-test-token"

func TestStaticToken(t *testing.T) {
	if _, err := NewStaticToken("short"); err == nil {
		t.Fatal("a short secret was accepted")
	}
	v, err := NewStaticToken(testToken)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		token string
		ok    bool
	}{
		{testToken, true},
		{testToken + "x", false},
		{testToken[:len(testToken)-1], false},
		{strings.ToUpper(testToken), false},
		{"", false},
	} {
		if err := v.Verify(context.Background(), tc.token); (err == nil) != tc.ok {
			t.Errorf("Verify(%q) = %v, want ok=%v", tc.token, err, tc.ok)
		}
	}
}

func TestBearerToken(t *testing.T) {
	for _, tc := range []struct {
		header, token string
		ok            bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER  abc ", "abc", true},
		{"Bearer ", "", false},
		{"Bearer", "", false},
		{"Basic abc", "", false},
		{"abc", "", false},
		{"", "", false},
	} {
		h := http.Header{}
		if tc.header != "" {
			h.Set("Authorization", tc.header)
		}
		token, ok := bearerToken(h)
		if token != tc.token || ok != tc.ok {
			t.Errorf("bearerToken(%q) = %q, %v; want %q, %v", tc.header, token, ok, tc.token, tc.ok)
		}
	}
}

// stub answers GetSandbox, Exec and WriteFile with a configured error
// through the agent's error mapping; other RPCs are unimplemented.
type stub struct {
	hostagentv1connect.UnimplementedHostAgentHandler
	a   *Agent
	err error

	mu         sync.Mutex
	protos     []string // of the HTTP requests served
	requestIDs []string // the request IDs of GetSandbox's contexts
}

func (s *stub) GetSandbox(ctx context.Context, req *connect.Request[pb.GetSandboxRequest]) (*connect.Response[pb.GetSandboxResponse], error) {
	s.mu.Lock()
	s.requestIDs = append(s.requestIDs, logctx.RequestID(ctx))
	s.mu.Unlock()
	if s.err != nil {
		return nil, s.a.failState(ctx, s.err)
	}
	return connect.NewResponse(&pb.GetSandboxResponse{Sandbox: &pb.Sandbox{Id: req.Msg.SandboxId}}), nil
}

func (s *stub) Exec(ctx context.Context, _ *connect.Request[pb.ExecRequest], stream *connect.ServerStream[pb.ExecResponse]) error {
	if err := stream.Send(&pb.ExecResponse{Event: &pb.ExecResponse_Started{Started: &pb.ExecStarted{Pid: 7}}}); err != nil {
		return err
	}
	return s.a.failState(ctx, s.err)
}

func (s *stub) WriteFile(ctx context.Context, stream *connect.ClientStream[pb.WriteFileRequest]) (*connect.Response[pb.WriteFileResponse], error) {
	var n uint64
	for stream.Receive() {
		n += uint64(len(stream.Msg().GetChunk()))
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	if s.err != nil {
		return nil, s.a.failState(ctx, s.err)
	}
	return connect.NewResponse(&pb.WriteFileResponse{BytesWritten: n}), nil
}

// stubServer serves a stub behind the agent's interceptor and ServeHTTP
// over h2c, as New does, and returns the agent's URL and its log (through
// logctx's handler, as the binaries' is).
func stubServer(t *testing.T, s *stub) (url string, logs *bytes.Buffer) {
	t.Helper()
	logs = &bytes.Buffer{}
	log := slog.New(logctx.NewHandler(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	v, err := NewStaticToken(testToken)
	if err != nil {
		t.Fatal(err)
	}
	path, h := hostagentv1connect.NewHostAgentHandler(s, connect.WithInterceptors(&authInterceptor{v: v, log: log}))
	mux := http.NewServeMux()
	mux.Handle(path, h)
	s.a = &Agent{log: log, mux: mux}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		s.protos = append(s.protos, r.Proto)
		s.mu.Unlock()
		s.a.ServeHTTP(w, r)
	}))
	srv.Config.Protocols = Protocols()
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL, logs
}

func client(t *testing.T, url, token string) *agentclient.Client {
	t.Helper()
	c, err := agentclient.New(agentclient.Endpoint{URL: url, Token: token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func TestAuthRefusesEveryKindOfCall(t *testing.T) {
	s := &stub{}
	url, logs := stubServer(t, s)
	ctx := context.Background()
	for _, token := range []string{"wrong-token-0123456789", testToken + "0"} {
		c := client(t, url, token)
		if _, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "a"})); !errors.Is(err, agentclient.ErrUnauthenticated) {
			t.Errorf("unary with token %q: %v", token, err)
		} else if msg := connect.CodeOf(err).String(); err.Error() != msg {
			t.Errorf("the refusal has details: %q", err.Error())
		}
		st, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: "a", Cmd: "true"}))
		if err == nil {
			for st.Receive() {
				t.Error("a stream message reached an unauthenticated caller")
			}
			err = st.Err()
		}
		if !errors.Is(err, agentclient.ErrUnauthenticated) {
			t.Errorf("server stream with token %q: %v", token, err)
		}
		ws := c.WriteFile(ctx)
		_ = ws.Send(&pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Header{Header: &pb.WriteFileHeader{SandboxId: "a", Path: "/x"}}})
		if _, err := ws.CloseAndReceive(); !errors.Is(err, agentclient.ErrUnauthenticated) {
			t.Errorf("client stream with token %q: %v", token, err)
		}
	}
	if strings.Contains(logs.String(), "wrong-token") {
		t.Error("a token was logged")
	}

	// Missing or malformed Authorization headers, with a raw Connect call.
	for _, h := range []string{"", "Bearer", "Basic " + testToken, testToken} {
		req, _ := http.NewRequest(http.MethodPost, url+hostagentv1connect.HostAgentGetSandboxProcedure, strings.NewReader(`{"sandboxId":"a"}`))
		req.Header.Set("Content-Type", "application/json")
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || strings.TrimSpace(string(body)) != `{"code":"unauthenticated"}` {
			t.Errorf("Authorization %q: HTTP %d %s", h, resp.StatusCode, body)
		}
	}

	// The right token passes, on every kind of call (h2c for the client
	// stream).
	c := client(t, url, testToken)
	if res, err := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "a"})); err != nil || res.Msg.Sandbox.GetId() != "a" {
		t.Fatalf("GetSandbox: %v", err)
	}
	ws := c.WriteFile(ctx)
	for range 3 {
		if err := ws.Send(&pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Chunk{Chunk: make([]byte, 1000)}}); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := ws.CloseAndReceive(); err != nil || res.Msg.BytesWritten != 3000 {
		t.Fatalf("WriteFile: %v %v", res, err)
	}
	if _, err := c.ListSandboxes(ctx, connect.NewRequest(&pb.ListSandboxesRequest{})); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("an unimplemented RPC: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.protos[len(s.protos)-3:] {
		if p != "HTTP/2.0" {
			t.Fatalf("the client spoke %s, not h2c", p)
		}
	}
}

// TestErrorsRoundTrip maps errors of the manager and envd to Connect codes
// on the agent and back to classes on the client.
func TestErrorsRoundTrip(t *testing.T) {
	s := &stub{}
	url, logs := stubServer(t, s)
	c := client(t, url, testToken)
	ctx := context.Background()
	secret := "/var/lib/capsule/secret-detail"
	for _, tc := range []struct {
		name string
		err  error
		kind error
		code connect.Code
	}{
		{"not found", sandboxErr(sandbox.ErrNotFound), agentclient.ErrNotFound, connect.CodeNotFound},
		{"conflict", sandboxErr(sandbox.ErrConflict), agentclient.ErrConflict, connect.CodeFailedPrecondition},
		{"invalid", sandboxErr(sandbox.ErrInvalid), agentclient.ErrInvalid, connect.CodeInvalidArgument},
		{"capacity", sandboxErr(sandbox.ErrCapacity), agentclient.ErrCapacity, connect.CodeResourceExhausted},
		{"internal", errors.New("qemu died: " + secret), agentclient.ErrInternal, connect.CodeInternal},
		{"envd internal", connect.NewError(connect.CodeUnavailable, errors.New(secret)), agentclient.ErrInternal, connect.CodeInternal},
		{"envd invalid", connect.NewError(connect.CodeInvalidArgument, errors.New("bad cwd")), agentclient.ErrInvalid, connect.CodeInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s.err = tc.err
			_, uerr := c.GetSandbox(ctx, connect.NewRequest(&pb.GetSandboxRequest{SandboxId: "a"}))
			if !errors.Is(uerr, tc.kind) || connect.CodeOf(uerr) != tc.code {
				t.Fatalf("unary: %v (code %v), want %v", uerr, connect.CodeOf(uerr), tc.kind)
			}
			st, err := c.Exec(ctx, connect.NewRequest(&pb.ExecRequest{SandboxId: "a", Cmd: "true"}))
			if err != nil {
				t.Fatal(err)
			}
			var got []uint32
			for st.Receive() {
				got = append(got, st.Msg().GetStarted().GetPid())
			}
			if !errors.Is(st.Err(), tc.kind) || len(got) != 1 || got[0] != 7 {
				t.Fatalf("stream: %v after %v, want %v", st.Err(), got, tc.kind)
			}
			if tc.code == connect.CodeInternal {
				if strings.Contains(uerr.Error(), secret) || strings.Contains(st.Err().Error(), secret) {
					t.Fatalf("internal details leaked: %v", uerr)
				}
				if !strings.Contains(logs.String(), secret) || !strings.Contains(logs.String(), "error_id=") {
					t.Fatal("the details and error id are not in the log")
				}
			}
		})
	}
}

func sandboxErr(class error) error {
	return errors.Join(errors.New("sandbox abc"), class)
}
