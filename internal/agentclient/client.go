package agentclient

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"time"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/agentapi"
	"github.com/capsulehq/capsule/internal/logctx"
)

// MaxMessageBytes bounds one RPC message either way, as the agent does.
const MaxMessageBytes = 8 << 20

// Endpoint is where a host agent listens and how to authenticate to it.
type Endpoint struct {
	// URL is the agent's base URL: http://host:7070 (h2c) or https://….
	URL string
	// Token is sent as "Authorization: Bearer <Token>". It may be empty
	// only for an https:// endpoint whose TLS presents a client
	// certificate: an agent in mutual TLS (agent.Config.ClientCertAuth)
	// authenticates the control plane by that certificate alone, and no
	// Authorization header is sent.
	Token string
	// TLS configures https:// endpoints (nil: the system's roots).
	TLS *tls.Config
}

func (e Endpoint) validate() error {
	u, err := url.Parse(e.URL)
	if err != nil {
		return fmt.Errorf("agent URL: %w", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("agent URL %q: want http://HOST:PORT or https://HOST:PORT", e.URL)
	}
	if e.Token == "" && (u.Scheme != "https" || !hasClientCert(e.TLS)) {
		return errors.New("agent endpoint: a token is required (or https with a client certificate)")
	}
	return nil
}

// hasClientCert reports whether c presents a client certificate.
func hasClientCert(c *tls.Config) bool {
	return c != nil && (len(c.Certificates) > 0 || c.GetClientCertificate != nil)
}

// setToken sets the Authorization header of a call (none without a token:
// mutual TLS).
func setToken(h http.Header, token string) {
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
}

// Client is the client of one host agent.
type Client struct {
	hostagentv1connect.HostAgentClient
	url       string
	transport *http.Transport
}

// New returns a client of the agent at ep. Close releases its connections.
func New(ep Endpoint, opts ...connect.ClientOption) (*Client, error) {
	if err := ep.validate(); err != nil {
		return nil, err
	}
	tr := newTransport(ep.TLS)
	opts = append([]connect.ClientOption{
		connect.WithInterceptors(&clientInterceptor{token: ep.Token}),
		connect.WithReadMaxBytes(MaxMessageBytes),
		connect.WithSendMaxBytes(MaxMessageBytes),
	}, opts...)
	return &Client{
		HostAgentClient: hostagentv1connect.NewHostAgentClient(&http.Client{Transport: tr}, ep.URL, opts...),
		url:             ep.URL,
		transport:       tr,
	}, nil
}

// URL is the agent's base URL.
func (c *Client) URL() string { return c.url }

// Close closes the client's idle connections; streams in progress finish.
func (c *Client) Close() { c.transport.CloseIdleConnections() }

// newTransport speaks HTTP/2 only: in cleartext with prior knowledge to
// http:// agents, over TLS to https:// ones.
func newTransport(tlsCfg *tls.Config) *http.Transport {
	p := new(http.Protocols)
	p.SetHTTP2(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Transport{
		Protocols:           p,
		TLSClientConfig:     tlsCfg,
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout: 10 * time.Second,
		IdleConnTimeout:     2 * time.Minute,
		HTTP2: &http.HTTP2Config{
			// Notice a dead agent on an idle connection.
			SendPingTimeout: 30 * time.Second,
			PingTimeout:     15 * time.Second,
		},
	}
}

// clientInterceptor adds the bearer token and the context's request ID
// (logctx, in agentapi.RequestIDHeader) to every call and classifies every
// error (see Classify).
type clientInterceptor struct {
	token string
}

func (i *clientInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		setToken(req.Header(), i.token)
		if id := logctx.RequestID(ctx); id != "" {
			req.Header().Set(agentapi.RequestIDHeader, id)
		}
		res, err := next(ctx, req)
		return res, Classify(err)
	}
}

func (i *clientInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		setToken(conn.RequestHeader(), i.token)
		if id := logctx.RequestID(ctx); id != "" {
			conn.RequestHeader().Set(agentapi.RequestIDHeader, id)
		}
		return &classifyingConn{conn}
	}
}

func (i *clientInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// classifyingConn classifies a stream's errors; io.EOF, which ends
// streams, passes as it is.
type classifyingConn struct {
	connect.StreamingClientConn
}

func (c *classifyingConn) Send(msg any) error { return Classify(c.StreamingClientConn.Send(msg)) }

func (c *classifyingConn) Receive(msg any) error {
	return Classify(c.StreamingClientConn.Receive(msg))
}

func (c *classifyingConn) CloseRequest() error {
	return Classify(c.StreamingClientConn.CloseRequest())
}
