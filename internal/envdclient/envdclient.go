// Package envdclient is the host side's client of the envd inside a guest:
// wait for it to answer, hand it its per-sandbox settings (POST /init), and
// run commands and move files for the platform's own API and tests.
package envdclient

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/gen/envd/filesystem/filesystemconnect"
	pb "github.com/capsulehq/capsule/gen/envd/process"
	"github.com/capsulehq/capsule/gen/envd/process/processconnect"
	"github.com/capsulehq/capsule/internal/envdapi"
)

// Client talks to one envd.
type Client struct {
	base  string
	token string
	hc    *http.Client
	proc  processconnect.ProcessClient
	fs    filesystemconnect.FilesystemClient
}

// New returns a client for the envd at base (e.g. http://10.11.0.2:49983).
// token is the access token set with Init, or empty.
func New(base, token string) *Client {
	hc := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}}
	c := &Client{base: base, token: token, hc: hc}
	c.proc = processconnect.NewProcessClient(hc, base, connect.WithInterceptors(tokenInterceptor(token)))
	c.fs = filesystemconnect.NewFilesystemClient(hc, base, connect.WithInterceptors(tokenInterceptor(token)))
	return c
}

// WithToken returns a client of the same envd with another access token
// that shares c's connections (closing either closes both's idle ones):
// a restored sandbox's /init, sent with the token its envd still holds,
// reuses the connection of the health check before it.
func (c *Client) WithToken(token string) *Client {
	o := &Client{base: c.base, token: token, hc: c.hc}
	o.proc = processconnect.NewProcessClient(c.hc, c.base, connect.WithInterceptors(tokenInterceptor(token)))
	o.fs = filesystemconnect.NewFilesystemClient(c.hc, c.base, connect.WithInterceptors(tokenInterceptor(token)))
	return o
}

// Base is the URL of the envd.
func (c *Client) Base() string { return c.base }

// Close releases idle connections.
func (c *Client) Close() { c.hc.CloseIdleConnections() }

// Healthy reports whether GET /health answers 204.
func (c *Client) Healthy(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/health", nil)
	if err != nil {
		return false
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusNoContent
}

// WaitHealthy polls /health until it answers or ctx ends. abort, when not
// nil, stops the wait early (the VM died).
func (c *Client) WaitHealthy(ctx context.Context, abort <-chan struct{}) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if c.Healthy(ctx) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("envd at %s did not answer: %w", c.base, ctx.Err())
		case <-abort:
			return errors.New("the machine exited before envd answered")
		case <-t.C:
		}
	}
}

// Init sends POST /init, retrying until it is accepted or ctx ends. A
// request's Timestamp (the guest's clock is set to it) moves on with the
// time spent retrying: each attempt carries the time it is sent, not the
// first attempt's, which would set the guest's clock behind by the
// retries.
func (c *Client) Init(ctx context.Context, req envdapi.InitRequest) error {
	start := time.Now()
	stamped := req.Timestamp
	for wait := initRetryMin; ; wait = min(2*wait, initRetryMax) {
		if stamped != nil {
			ts := stamped.Add(time.Since(start))
			req.Timestamp = &ts
		}
		body, err := json.Marshal(req)
		if err != nil {
			return err
		}
		err = c.initOnce(ctx, body)
		var refused *refusedError
		if err == nil || errors.As(err, &refused) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("envd init: %w (last error: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

// Init's pauses between attempts: short at first (a restored guest's
// network answers within milliseconds), longer while it does not.
const (
	initRetryMin = 5 * time.Millisecond
	initRetryMax = 50 * time.Millisecond
)

func (c *Client) initOnce(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/init", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if c.token != "" {
		req.Header.Set("X-Access-Token", c.token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		err := fmt.Errorf("envd init: HTTP %d: %s", resp.StatusCode, b)
		if resp.StatusCode >= 400 && resp.StatusCode < 500 {
			return &refusedError{err}
		}
		return err
	}
	return nil
}

// refusedError is an answer that retrying does not change (4xx).
type refusedError struct{ error }

func (e *refusedError) Unwrap() error { return e.error }

// Result is the outcome of Run.
type Result struct {
	Stdout, Stderr []byte
	ExitCode       int
	Status         string
}

// Command is what Run executes.
type Command struct {
	Cmd  string
	Args []string
	Envs map[string]string
	Cwd  string
	User string // empty: envd's default user
}

// Run executes a command to completion and collects its output.
func (c *Client) Run(ctx context.Context, cmd Command) (*Result, error) {
	cfg := &pb.ProcessConfig{Cmd: cmd.Cmd, Args: cmd.Args, Envs: cmd.Envs}
	if cmd.Cwd != "" {
		cfg.Cwd = &cmd.Cwd
	}
	no := false
	req := connect.NewRequest(&pb.StartRequest{Process: cfg, Stdin: &no})
	if cmd.User != "" {
		req.Header().Set("Authorization", basicAuth(cmd.User))
	}
	s, err := c.proc.Start(ctx, req)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	res := &Result{}
	var out, errb bytes.Buffer
	var ended bool
	for s.Receive() {
		ev := s.Msg().GetEvent()
		if d := ev.GetData(); d != nil {
			out.Write(d.GetStdout())
			errb.Write(d.GetStderr())
		}
		if e := ev.GetEnd(); e != nil {
			res.ExitCode, res.Status, ended = int(e.GetExitCode()), e.GetStatus(), true
		}
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	if !ended {
		return nil, errors.New("process stream ended without an end event")
	}
	res.Stdout, res.Stderr = out.Bytes(), errb.Bytes()
	return res, nil
}

// Shell runs a /bin/sh script.
func (c *Client) Shell(ctx context.Context, script string) (*Result, error) {
	return c.Run(ctx, Command{Cmd: "/bin/sh", Args: []string{"-c", script}})
}

// WriteFile uploads data to path as the default user (see Upload).
func (c *Client) WriteFile(ctx context.Context, path string, data io.Reader) error {
	_, err := c.Upload(ctx, path, "", data)
	return err
}

// ReadFile downloads path as the default user (see Download).
func (c *Client) ReadFile(ctx context.Context, path string) ([]byte, error) {
	r, err := c.Download(ctx, path, "")
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func (c *Client) auth(r *http.Request) {
	if c.token != "" {
		r.Header.Set("X-Access-Token", c.token)
	}
}

func basicAuth(user string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"))
}

func tokenInterceptor(token string) connect.Interceptor {
	return headerInterceptor{token: token}
}

// headerInterceptor adds X-Access-Token to every RPC.
type headerInterceptor struct{ token string }

func (h headerInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		if h.token != "" {
			req.Header().Set("X-Access-Token", h.token)
		}
		return next(ctx, req)
	}
}

func (h headerInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if h.token != "" {
			conn.RequestHeader().Set("X-Access-Token", h.token)
		}
		return conn
	}
}

func (h headerInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// Metrics samples the guest's resource use (GET /metrics).
func (c *Client) Metrics(ctx context.Context) (*envdapi.Metrics, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	c.auth(req)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, statusError("metrics", "", resp)
	}
	var m envdapi.Metrics
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&m); err != nil {
		return nil, fmt.Errorf("envd metrics: %w", err)
	}
	return &m, nil
}
