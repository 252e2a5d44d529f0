package vmmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"connectrpc.com/connect"

	"github.com/capsulehq/capsule/gen/envd/process"
	"github.com/capsulehq/capsule/gen/envd/process/processconnect"
)

// envdClient talks to the envd of one machine, with no token (a guest
// whose envd got no POST /init serves as root without one).
type envdClient struct {
	base string
	http *http.Client
	proc processconnect.ProcessClient
}

func newEnvdClient(base string) *envdClient {
	// No keep-alive: a pooled connection to a machine that was since
	// snapshotted and killed would hang until the transport gives up.
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	base = strings.TrimRight(base, "/")
	return &envdClient{base: base, http: hc, proc: processconnect.NewProcessClient(hc, base)}
}

// health reports whether GET /health succeeds.
func (c *envdClient) health(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET /health: %s", resp.Status)
	}
	return nil
}

// waitHealth polls /health until it answers or ctx ends; done (the
// machine's Done channel) aborts early.
func (c *envdClient) waitHealth(ctx context.Context, done <-chan struct{}) error {
	var last error
	for {
		if last = c.health(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("envd at %s never became healthy: %w (last: %w)", c.base, ctx.Err(), last)
		case <-done:
			return errors.New("the machine exited while waiting for envd")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// result is a finished process.
type result struct {
	Pid            uint32
	Stdout, Stderr string
	ExitCode       int32
}

// run runs sh -c script and waits for it to end.
func (c *envdClient) run(ctx context.Context, script string) (result, error) {
	stream, err := c.proc.Start(ctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}},
	}))
	if err != nil {
		return result{}, fmt.Errorf("start %q: %w", script, err)
	}
	defer stream.Close()
	var r result
	var out, errOut bytes.Buffer
	for stream.Receive() {
		ev := stream.Msg().GetEvent()
		switch {
		case ev.GetStart() != nil:
			r.Pid = ev.GetStart().GetPid()
		case ev.GetData() != nil:
			out.Write(ev.GetData().GetStdout())
			errOut.Write(ev.GetData().GetStderr())
		case ev.GetEnd() != nil:
			r.Stdout, r.Stderr, r.ExitCode = out.String(), errOut.String(), ev.GetEnd().GetExitCode()
			return r, nil
		}
	}
	if err := stream.Err(); err != nil {
		return r, fmt.Errorf("run %q: %w", script, err)
	}
	return r, fmt.Errorf("run %q: stream ended without an end event", script)
}

// mustRun runs script and wants exit code 0; it returns stdout.
func (c *envdClient) mustRun(ctx context.Context, script string) (string, error) {
	r, err := c.run(ctx, script)
	if err != nil {
		return "", err
	}
	if r.ExitCode != 0 {
		return "", fmt.Errorf("%q exited with %d: %s", script, r.ExitCode, r.Stderr)
	}
	return r.Stdout, nil
}

// startBackground starts sh -c script, returns its pid once started and
// lets it run on (envd keeps a process whose stream the client left).
func (c *envdClient) startBackground(ctx context.Context, script string) (uint32, error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.proc.Start(sctx, connect.NewRequest(&process.StartRequest{
		Process: &process.ProcessConfig{Cmd: "/bin/sh", Args: []string{"-c", script}},
	}))
	if err != nil {
		return 0, fmt.Errorf("start %q: %w", script, err)
	}
	defer stream.Close()
	for stream.Receive() {
		if s := stream.Msg().GetEvent().GetStart(); s != nil {
			return s.GetPid(), nil
		}
	}
	return 0, fmt.Errorf("start %q: no start event: %w", script, stream.Err())
}

// pids lists the processes envd manages.
func (c *envdClient) pids(ctx context.Context) (map[uint32]bool, error) {
	resp, err := c.proc.List(ctx, connect.NewRequest(&process.ListRequest{}))
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	out := map[uint32]bool{}
	for _, p := range resp.Msg.GetProcesses() {
		out[p.GetPid()] = true
	}
	return out, nil
}

// writeFile uploads data to path (POST /files, octet-stream).
func (c *envdClient) writeFile(ctx context.Context, path string, data []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/files?path="+url.QueryEscape(path), bytes.NewReader(data))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("upload %s: %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("upload %s: %s: %s", path, resp.Status, b)
	}
	return nil
}

// errNotFound is a file that does not exist in the guest.
var errNotFound = errors.New("file not found")

// readFile downloads path (GET /files).
func (c *envdClient) readFile(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+"/files?path="+url.QueryEscape(path), nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", path, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("download %s: %w", path, errNotFound)
	case resp.StatusCode/100 != 2:
		return nil, fmt.Errorf("download %s: %s: %s", path, resp.Status, b)
	}
	return b, nil
}

// RunInGuest runs sh -c script through the envd at envdURL and returns its
// standard output; a non-zero exit is an error. For drivers' own tests and
// benchmarks.
func RunInGuest(ctx context.Context, envdURL, script string) (string, error) {
	return newEnvdClient(envdURL).mustRun(ctx, script)
}
