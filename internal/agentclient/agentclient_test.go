package agentclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
)

func TestClassify(t *testing.T) {
	cerr := func(code connect.Code) error { return connect.NewError(code, errors.New("x")) }
	noSpace := connect.NewError(connect.CodeResourceExhausted, errors.New("insufficient storage"))
	noSpace.Meta().Set(ErrorClassHeader, ClassNoSpace)
	for _, tc := range []struct {
		err  error
		kind error
	}{
		{cerr(connect.CodeNotFound), ErrNotFound},
		{cerr(connect.CodeAlreadyExists), ErrAlreadyExists},
		{cerr(connect.CodeFailedPrecondition), ErrConflict},
		{cerr(connect.CodeAborted), ErrConflict},
		{cerr(connect.CodeInvalidArgument), ErrInvalid},
		{cerr(connect.CodeOutOfRange), ErrInvalid},
		{cerr(connect.CodeResourceExhausted), ErrCapacity},
		{noSpace, ErrNoSpace},
		{cerr(connect.CodePermissionDenied), ErrPermissionDenied},
		{cerr(connect.CodeUnauthenticated), ErrUnauthenticated},
		{cerr(connect.CodeUnavailable), ErrUnavailable},
		{cerr(connect.CodeUnimplemented), errors.ErrUnsupported},
		{cerr(connect.CodeCanceled), context.Canceled},
		{cerr(connect.CodeDeadlineExceeded), context.DeadlineExceeded},
		{cerr(connect.CodeInternal), ErrInternal},
		{cerr(connect.CodeUnknown), ErrInternal},
		{cerr(connect.CodeDataLoss), ErrInternal},
		{fmt.Errorf("wrapped: %w", cerr(connect.CodeNotFound)), ErrNotFound},
		{errors.New("not a connect error"), ErrInternal},
	} {
		got := Classify(tc.err)
		if !errors.Is(got, tc.kind) {
			t.Errorf("Classify(%v) = %v, not %v", tc.err, got, tc.kind)
		}
		var ce *connect.Error
		if !errors.As(got, &ce) {
			t.Errorf("Classify(%v) hides the Connect error", tc.err)
		}
		if again := Classify(got); again != got {
			t.Errorf("Classify is not idempotent on %v", got)
		}
	}
	for _, err := range []error{nil, io.EOF} {
		if got := Classify(err); got != err {
			t.Errorf("Classify(%v) = %v", err, got)
		}
	}
	// A class never matches another class.
	if errors.Is(Classify(cerr(connect.CodeNotFound)), ErrConflict) {
		t.Error("NotFound is a conflict")
	}
}

// hostInfo answers GetHostInfo with its hostname and checks the token.
type hostInfo struct {
	hostagentv1connect.UnimplementedHostAgentHandler
	name  string
	token string
}

func (h *hostInfo) GetHostInfo(_ context.Context, req *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	if req.Header().Get("Authorization") != "Bearer "+h.token {
		return nil, connect.NewError(connect.CodeUnauthenticated, nil)
	}
	return connect.NewResponse(&pb.GetHostInfoResponse{Hostname: h.name}), nil
}

func fakeAgent(t *testing.T, name, token string) string {
	t.Helper()
	path, h := hostagentv1connect.NewHostAgentHandler(&hostInfo{name: name, token: token})
	mux := http.NewServeMux()
	mux.Handle(path, h)
	srv := httptest.NewUnstartedServer(mux)
	p := new(http.Protocols)
	p.SetUnencryptedHTTP2(true)
	srv.Config.Protocols = p // h2c only: an HTTP/1 client would fail
	srv.Start()
	t.Cleanup(srv.Close)
	return srv.URL
}

func hostname(t *testing.T, c *Client) string {
	t.Helper()
	res, err := c.GetHostInfo(context.Background(), connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		t.Fatalf("GetHostInfo: %v", err)
	}
	return res.Msg.Hostname
}

func TestPool(t *testing.T) {
	ctx := context.Background()
	hosts := map[string]Endpoint{
		"host-a": {URL: fakeAgent(t, "a", "token-a"), Token: "token-a"},
		"host-b": {URL: fakeAgent(t, "b", "token-b"), Token: "token-b"},
	}
	var resolves atomic.Int32
	p := NewPool(Options{Resolve: func(_ context.Context, id string) (Endpoint, error) {
		resolves.Add(1)
		ep, ok := hosts[id]
		if !ok {
			return Endpoint{}, fmt.Errorf("%w: %s", ErrUnknownHost, id)
		}
		return ep, nil
	}})
	defer p.Close()

	// Lazy creation, once per host even under concurrent first use.
	var wg sync.WaitGroup
	clients := make([]*Client, 8)
	for i := range clients {
		wg.Go(func() {
			c, err := p.Get(ctx, "host-a")
			if err != nil {
				t.Error(err)
				return
			}
			clients[i] = c
		})
	}
	wg.Wait()
	for _, c := range clients {
		if c != clients[0] {
			t.Fatal("concurrent Gets returned different clients")
		}
	}
	if hostname(t, clients[0]) != "a" {
		t.Fatal("wrong host")
	}
	b, err := p.Get(ctx, "host-b")
	if err != nil || hostname(t, b) != "b" {
		t.Fatalf("host-b: %v", err)
	}
	if _, err := p.Get(ctx, "host-x"); !errors.Is(err, ErrUnknownHost) {
		t.Fatalf("unknown host: %v", err)
	}
	if got := p.Hosts(); len(got) != 2 || got[0] != "host-a" || got[1] != "host-b" {
		t.Fatalf("Hosts() = %v", got)
	}

	// Eviction makes the next Get resolve again (a new token, say).
	before := resolves.Load()
	p.Evict("host-a")
	hosts["host-a"] = Endpoint{URL: hosts["host-a"].URL, Token: "stale"}
	a2, err := p.Get(ctx, "host-a")
	if err != nil || resolves.Load() != before+1 || a2 == clients[0] {
		t.Fatalf("after Evict: %v, %d resolves", err, resolves.Load()-before)
	}
	if _, err := a2.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{})); !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("stale token: %v", err)
	}

	// Set registers a host without the resolver and replaces its client.
	if err := p.Set("host-a", Endpoint{URL: hosts["host-a"].URL, Token: "token-a"}); err != nil {
		t.Fatal(err)
	}
	a3, err := p.Get(ctx, "host-a")
	if err != nil || a3 == a2 || hostname(t, a3) != "a" {
		t.Fatalf("after Set: %v", err)
	}
	if err := p.Set("host-c", Endpoint{URL: "ftp://x", Token: "t"}); err == nil {
		t.Fatal("a bad URL was accepted")
	}
	if err := p.Set("host-c", Endpoint{URL: "http://127.0.0.1:1"}); err == nil {
		t.Fatal("an endpoint without a token was accepted")
	}

	// An agent that does not answer is unavailable.
	if err := p.Set("host-down", Endpoint{URL: "http://127.0.0.1:1", Token: "t"}); err != nil {
		t.Fatal(err)
	}
	down, err := p.Get(ctx, "host-down")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := down.GetHostInfo(ctx, connect.NewRequest(&pb.GetHostInfoRequest{})); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("unreachable agent: %v", err)
	}

	p.Close()
	if _, err := p.Get(ctx, "host-b"); err == nil {
		t.Fatal("Get after Close succeeded")
	}
}

// TestPoolEndpoint: the pool answers a host's endpoint as Set registered
// it, else as the resolver finds it; an unknown host is ErrUnknownHost.
func TestPoolEndpoint(t *testing.T) {
	ctx := context.Background()
	set := Endpoint{URL: "http://127.0.0.1:1", Token: "set"}
	resolved := Endpoint{URL: "http://127.0.0.1:2", Token: "resolved"}
	withResolver := NewPool(Options{Resolve: func(_ context.Context, id string) (Endpoint, error) {
		if id == "far" {
			return resolved, nil
		}
		return Endpoint{}, fmt.Errorf("%w: %s", ErrUnknownHost, id)
	}})
	defer withResolver.Close()
	static := NewPool(Options{})
	defer static.Close()
	for _, p := range []*Pool{withResolver, static} {
		if err := p.Set("local", set); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		pool    *Pool
		host    string
		want    Endpoint
		unknown bool
	}{
		{"set", withResolver, "local", set, false},
		{"resolved", withResolver, "far", resolved, false},
		{"unknown to the resolver", withResolver, "nowhere", Endpoint{}, true},
		{"set, no resolver", static, "local", set, false},
		{"no resolver", static, "far", Endpoint{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.pool.Endpoint(ctx, tc.host)
			if tc.unknown {
				if !errors.Is(err, ErrUnknownHost) {
					t.Fatalf("Endpoint(%q) = %+v, %v; want ErrUnknownHost", tc.host, got, err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Endpoint(%q) = %+v, %v; want %+v", tc.host, got, err, tc.want)
			}
		})
	}
	static.Evict("local")
	if _, err := static.Endpoint(ctx, "local"); !errors.Is(err, ErrUnknownHost) {
		t.Fatalf("after Evict: %v, want ErrUnknownHost", err)
	}
}

// TestEndpointToken: a bearer token is required unless the endpoint is
// https with a client certificate (mutual TLS), and a client without a
// token sends no Authorization header.
func TestEndpointToken(t *testing.T) {
	withCert := &tls.Config{GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		return &tls.Certificate{}, nil
	}}
	for _, tc := range []struct {
		name string
		ep   Endpoint
		ok   bool
	}{
		{"http with a token", Endpoint{URL: "http://127.0.0.1:1", Token: "t"}, true},
		{"http without a token", Endpoint{URL: "http://127.0.0.1:1"}, false},
		{"https without a token or TLS", Endpoint{URL: "https://127.0.0.1:1"}, false},
		{"https without a client certificate", Endpoint{URL: "https://127.0.0.1:1", TLS: &tls.Config{}}, false},
		{"http with a client certificate", Endpoint{URL: "http://127.0.0.1:1", TLS: withCert}, false},
		{"https with a client certificate", Endpoint{URL: "https://127.0.0.1:1", TLS: withCert}, true},
		{"https with certificates", Endpoint{URL: "https://127.0.0.1:1", TLS: &tls.Config{Certificates: []tls.Certificate{{}}}}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.ep.validate(); (err == nil) != tc.ok {
				t.Fatalf("validate: %v, want ok=%v", err, tc.ok)
			}
		})
	}
	t.Run("no token, no header", func(t *testing.T) {
		h := http.Header{}
		setToken(h, "")
		if _, ok := h["Authorization"]; ok {
			t.Fatalf("Authorization set without a token: %v", h)
		}
		setToken(h, "t")
		if h.Get("Authorization") != "Bearer t" {
			t.Fatalf("Authorization = %q", h.Get("Authorization"))
		}
	})
}
