package capsule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// execProtocol is the exec stream's WebSocket subprotocol.
const execProtocol = "capsule.exec.v1"

// Signal is a signal Process.Signal sends.
type Signal string

// The signals a process can be sent.
const (
	SIGTERM Signal = "SIGTERM"
	SIGKILL Signal = "SIGKILL"
)

// CommandOptions are what a command runs with; zero values take the
// sandbox's defaults.
type CommandOptions struct {
	// Env is added to the sandbox's environment.
	Env map[string]string
	// Cwd is an absolute guest path (default: the user's home).
	Cwd string
	// User is a guest user name (default: the sandbox's user).
	User string
	// Timeout kills the process after that long (0: no limit but the
	// context's).
	Timeout time.Duration
	// OnStdout and OnStderr receive the output as it comes, in order; a
	// slow callback slows the process down (nothing is dropped). They must
	// not keep the slice.
	OnStdout func([]byte)
	OnStderr func([]byte)
}

// RunOptions configure Run.
type RunOptions struct {
	CommandOptions
	// Stdin, when not nil, is the process' whole input; else its input is
	// closed at once.
	Stdin []byte
}

// StartOptions configure Start.
type StartOptions struct {
	CommandOptions
	// Stdin keeps the process' input open for SendStdin (else it is
	// closed at once).
	Stdin bool
	// Keep, when set (1 s to 1 h), keeps the process when its connection
	// ends (ctx, Close, a broken network) for that long: Attach takes it
	// back, with the output it wrote meanwhile (the last 256 KiB, stdout
	// and stderr apart). Without Keep, the end of the connection kills
	// the process.
	Keep time.Duration
}

// keepSec is the start message's keep_sec for keep (nil: not kept).
func keepSec(keep time.Duration) (*int, error) {
	if keep == 0 {
		return nil, nil
	}
	if keep < time.Second || keep > time.Hour {
		return nil, fmt.Errorf("capsule: process kept %v: 1 s to 1 h: %w", keep, ErrInvalid)
	}
	s := seconds(keep)
	return &s, nil
}

// CommandResult is how a process ended.
type CommandResult struct {
	// ExitCode is the exit status; -1 when a signal ended the process.
	ExitCode int `json:"exit_code"`
	// Signal is the signal that ended it ("" when it exited).
	Signal string `json:"signal,omitempty"`
	// TimedOut: it was killed at its Timeout.
	TimedOut bool `json:"timed_out,omitempty"`
	// Error says why it did not run normally, when known.
	Error string `json:"error,omitempty"`
	// Stdout and Stderr are the whole output (Run only).
	Stdout []byte `json:"stdout,omitempty"`
	Stderr []byte `json:"stderr,omitempty"`
}

// CommandService runs processes in sandboxes (Client.Commands).
type CommandService struct{ c *Client }

// Run runs the shell command line cmd (`/bin/sh -c cmd`) in the running
// sandbox and waits for its end. A non-zero exit is not an error: read
// ExitCode. Cancelling ctx kills the process.
func (s *CommandService) Run(ctx context.Context, sandboxID, cmd string, opts RunOptions) (CommandResult, error) {
	var stdout, stderr bytes.Buffer
	co := opts.CommandOptions
	co.OnStdout = tee(&stdout, opts.OnStdout)
	co.OnStderr = tee(&stderr, opts.OnStderr)
	p, err := s.start(ctx, sandboxID, wire.ExecStreamClientMessage{Cmd: &cmd}, co, opts.Stdin != nil, nil)
	if err != nil {
		return CommandResult{}, err
	}
	defer p.close()
	if opts.Stdin != nil {
		if len(opts.Stdin) > 0 {
			if err := p.SendStdin(ctx, opts.Stdin); err != nil {
				return CommandResult{}, err
			}
		}
		if err := p.CloseStdin(ctx); err != nil {
			return CommandResult{}, err
		}
	}
	res, err := p.Wait(ctx)
	res.Stdout, res.Stderr = stdout.Bytes(), stderr.Bytes()
	return res, err
}

func tee(buf *bytes.Buffer, fn func([]byte)) func([]byte) {
	return func(b []byte) {
		buf.Write(b)
		if fn != nil {
			fn(b)
		}
	}
}

// Start starts the shell command line cmd in the running sandbox and
// returns once it runs. Its output goes to the callbacks; Wait returns its
// end. Cancelling ctx kills it.
func (s *CommandService) Start(ctx context.Context, sandboxID, cmd string, opts StartOptions) (*Process, error) {
	keep, err := keepSec(opts.Keep)
	if err != nil {
		return nil, err
	}
	return s.start(ctx, sandboxID, wire.ExecStreamClientMessage{Cmd: &cmd, KeepSec: keep}, opts.CommandOptions, opts.Stdin, nil)
}

// StartArgv is Start with a program and its arguments instead of a shell
// command line (the program is looked up in PATH).
func (s *CommandService) StartArgv(ctx context.Context, sandboxID string, argv []string, opts StartOptions) (*Process, error) {
	if len(argv) == 0 {
		return nil, fmt.Errorf("capsule: an empty argv: %w", ErrInvalid)
	}
	keep, err := keepSec(opts.Keep)
	if err != nil {
		return nil, err
	}
	return s.start(ctx, sandboxID, wire.ExecStreamClientMessage{Argv: &argv, KeepSec: keep}, opts.CommandOptions, opts.Stdin, nil)
}

// Attach takes back the kept process pid (started with StartOptions.Keep
// or PTYOptions.Keep) of a running sandbox: its output since it started
// (the last 256 KiB) goes to o's callbacks first, then what it writes;
// Wait returns its end. A connection attached before ends with
// ErrDetached. A process that ended, was not kept, or is not in this
// sandbox is ErrNotFound. The process is kept again for its keep time
// when this connection ends.
func (s *CommandService) Attach(ctx context.Context, sandboxID string, pid int, o CommandOptions) (*Process, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("capsule: pid %d: %w", pid, ErrInvalid)
	}
	conn, err := s.c.dial(ctx, sandboxID, url.Values{"pid": {strconv.Itoa(pid)}})
	if err != nil {
		return nil, err
	}
	return newProcess(ctx, conn, nil, wire.ExecStreamServerMessageTypeAttached, o)
}

// newProcess runs the opening of an exec stream: start (nil: none, an
// attach) is sent, then the first answer must be want (started or
// attached), which gives the PID; the output then goes to o's callbacks.
// The stream is closed on failure.
func newProcess(ctx context.Context, conn *websocket.Conn, start *wire.ExecStreamClientMessage, want wire.ExecStreamServerMessageType,
	o CommandOptions) (*Process, error) {
	pctx, cancel := context.WithCancel(ctx)
	p := &Process{conn: conn, cancel: cancel, done: make(chan struct{})}
	if start != nil {
		if err := p.send(pctx, *start); err != nil {
			p.close()
			return nil, err
		}
	}
	var first wire.ExecStreamServerMessage
	if err := readMessage(pctx, conn, &first); err != nil {
		p.close()
		return nil, err
	}
	switch first.Type {
	case want:
		p.PID = deref(first.Pid)
	case wire.ExecStreamServerMessageTypeError:
		p.close()
		return nil, &APIError{Status: deref(first.Code), Message: deref(first.Message)}
	default:
		p.close()
		return nil, fmt.Errorf("capsule: exec stream: %q before %s", first.Type, want)
	}
	go p.readLoop(pctx, o)
	return p, nil
}

// Process is a process started by Start or a terminal session's shell.
type Process struct {
	// PID is the process' ID in the guest.
	PID int

	conn   *websocket.Conn
	cancel context.CancelFunc
	wmu    sync.Mutex // one writer at a time
	done   chan struct{}
	// res is the end once exited; err why the stream ended otherwise.
	res    CommandResult
	exited bool
	err    error
}

// dial opens the exec stream of sandboxID (with query, when not empty).
func (c *Client) dial(ctx context.Context, sandboxID string, query url.Values) (*websocket.Conn, error) {
	u := *c.base
	switch u.Scheme {
	case "https":
		u.Scheme = "wss"
	default:
		u.Scheme = "ws"
	}
	u.Path += "/v1/sandboxes/" + url.PathEscape(sandboxID) + "/exec/stream"
	u.RawQuery = query.Encode()
	h := http.Header{}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://x/", nil)
	_ = c.authorize(ctx, req)
	for k, v := range req.Header {
		h[k] = v
	}
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: h,
		Subprotocols: []string{execProtocol}})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols && resp.Body != nil {
			return nil, errorFrom(resp)
		}
		return nil, fmt.Errorf("capsule: exec stream: %w", err)
	}
	// Output chunks are at most a few hundred KiB in base64.
	conn.SetReadLimit(8 << 20)
	return conn, nil
}

// start opens a stream, sends the start message and waits for "started".
func (s *CommandService) start(ctx context.Context, sandboxID string, m wire.ExecStreamClientMessage, o CommandOptions,
	stdin bool, pty *wire.ExecStreamPTY) (*Process, error) {
	conn, err := s.c.dial(ctx, sandboxID, nil)
	if err != nil {
		return nil, err
	}
	m.Type = wire.Start
	m.Stdin = &stdin
	m.Pty = pty
	if len(o.Env) > 0 {
		m.Env = &o.Env
	}
	m.Cwd, m.User = ptrOrNil(o.Cwd), ptrOrNil(o.User)
	if o.Timeout > 0 {
		secs := seconds(o.Timeout)
		m.TimeoutSec = &secs
	}
	return newProcess(ctx, conn, &m, wire.ExecStreamServerMessageTypeStarted, o)
}

func readMessage(ctx context.Context, conn *websocket.Conn, m *wire.ExecStreamServerMessage) error {
	typ, data, err := conn.Read(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("capsule: exec stream: %w", err)
	}
	if typ != websocket.MessageText {
		return errors.New("capsule: exec stream: a binary message")
	}
	if err := json.Unmarshal(data, m); err != nil {
		return fmt.Errorf("capsule: exec stream: %w", err)
	}
	return nil
}

func (p *Process) readLoop(ctx context.Context, o CommandOptions) {
	defer close(p.done)
	defer p.cancel()
	var lastErr error
	for {
		var m wire.ExecStreamServerMessage
		if err := readMessage(ctx, p.conn, &m); err != nil {
			if lastErr != nil {
				err = lastErr
			}
			p.err = err
			return
		}
		switch m.Type {
		case wire.ExecStreamServerMessageTypeStdout, wire.ExecStreamServerMessageTypePty:
			if o.OnStdout != nil && m.Data != nil {
				o.OnStdout(*m.Data)
			}
		case wire.ExecStreamServerMessageTypeStderr:
			if o.OnStderr != nil && m.Data != nil {
				o.OnStderr(*m.Data)
			}
		case wire.ExecStreamServerMessageTypeExit:
			p.exited = true
			p.res = CommandResult{ExitCode: deref(m.ExitCode), Signal: deref(m.Signal), TimedOut: deref(m.TimedOut), Error: deref(m.Error)}
			_ = p.conn.Close(websocket.StatusNormalClosure, "")
			return
		case wire.ExecStreamServerMessageTypeError:
			// A refused message (stdin after close, a bad signal…), or
			// the failure that ends the stream.
			lastErr = &APIError{Status: deref(m.Code), Message: deref(m.Message)}
		case wire.ExecStreamServerMessageTypeDetached:
			// A kept terminal another connection attached to.
			lastErr = ErrDetached
		}
	}
}

func (p *Process) send(ctx context.Context, m wire.ExecStreamClientMessage) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	p.wmu.Lock()
	defer p.wmu.Unlock()
	if err := p.conn.Write(ctx, websocket.MessageText, b); err != nil {
		return fmt.Errorf("capsule: exec stream: %w", err)
	}
	return nil
}

// maxStdinChunk keeps each stdin message well under the server's 2 MiB
// message limit once in base64.
const maxStdinChunk = 512 << 10

// SendStdin writes data to the process' input (started with Stdin).
func (p *Process) SendStdin(ctx context.Context, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), maxStdinChunk)
		chunk := data[:n]
		if err := p.send(ctx, wire.ExecStreamClientMessage{Type: wire.Stdin, Data: &chunk}); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// CloseStdin closes the process' input (it reads end of file).
func (p *Process) CloseStdin(ctx context.Context) error {
	return p.send(ctx, wire.ExecStreamClientMessage{Type: wire.CloseStdin})
}

// Signal sends sig to the process.
func (p *Process) Signal(ctx context.Context, sig Signal) error {
	s := wire.ExecStreamClientMessageSignal(sig)
	return p.send(ctx, wire.ExecStreamClientMessage{Type: wire.Signal, Signal: &s})
}

// Kill sends SIGKILL.
func (p *Process) Kill(ctx context.Context) error { return p.Signal(ctx, SIGKILL) }

// Wait waits for the process' end (or ctx's, which leaves it running
// until its own context ends).
func (p *Process) Wait(ctx context.Context) (CommandResult, error) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return CommandResult{}, ctx.Err()
	}
	if !p.exited {
		return CommandResult{}, p.err
	}
	return p.res, nil
}

// Done is closed when the process has ended (or its stream broke).
func (p *Process) Done() <-chan struct{} { return p.done }

// close ends the stream: a process still running is killed.
func (p *Process) close() {
	p.cancel()
	_ = p.conn.CloseNow()
}

// Close ends the stream; a process still running is killed.
func (p *Process) Close() error {
	p.close()
	<-p.done
	return nil
}
