package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/service"
)

// execCommandJSON is the command of a synchronous exec and of a stream's
// start message.
type execCommandJSON struct {
	Cmd        string            `json:"cmd"`
	Argv       []string          `json:"argv"`
	Env        map[string]string `json:"env"`
	Cwd        string            `json:"cwd"`
	User       string            `json:"user"`
	TimeoutSec int32             `json:"timeout_sec"`
}

func (c execCommandJSON) command() service.ExecCommand {
	return service.ExecCommand{Cmd: c.Cmd, Argv: c.Argv, Env: c.Env, Cwd: c.Cwd, User: c.User, TimeoutSec: c.TimeoutSec}
}

type execJSON struct {
	execCommandJSON
	// Stdin, when present, is the process' whole input (else it has
	// none).
	Stdin *string `json:"stdin"`
}

type execResultJSON struct {
	// Stdout and Stderr are UTF-8 strings (invalid bytes become U+FFFD:
	// use the stream for binary output).
	Stdout     string `json:"stdout"`
	Stderr     string `json:"stderr"`
	ExitCode   int32  `json:"exit_code"`
	Signal     string `json:"signal,omitempty"`
	TimedOut   bool   `json:"timed_out"`
	DurationMS int64  `json:"duration_ms"`
	Truncated  bool   `json:"truncated"`
	Error      string `json:"error,omitempty"`
}

// execSync: POST /v1/sandboxes/{id}/exec runs a command to its end. The
// client going away kills the process.
func (s *Server) execSync(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, ok := s.pathSandbox(w, r)
	if !ok {
		return
	}
	var req execJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	var stdin []byte
	if req.Stdin != nil {
		stdin = []byte(*req.Stdin)
	}
	res, err := s.cfg.Sandboxes.Run(r.Context(), p, id, req.command(), stdin, req.Stdin != nil)
	if err != nil && r.Context().Err() != nil {
		return // the client went away; the process was killed
	}
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, execResultJSON{
		Stdout: string(res.Stdout), Stderr: string(res.Stderr), ExitCode: res.ExitCode, Signal: res.Signal,
		TimedOut: res.TimedOut, DurationMS: res.Duration.Milliseconds(), Truncated: res.Truncated, Error: res.Error,
	})
}

// The exec stream's WebSocket settings.
const (
	// wsProtocol is the subprotocol a browser offers with its token (see
	// wsAuthed).
	wsProtocol = "capsule.exec.v1"
	// wsTokenPrefix marks the subprotocol entry that carries a token.
	wsTokenPrefix = "capsule.token."
	// wsReadLimit bounds a client message (a stdin message of 1 MiB in
	// base64 and some JSON).
	wsReadLimit = 2 << 20
	// wsStartTimeout is how long the server waits for the start message.
	wsStartTimeout = 30 * time.Second
	// wsWriteTimeout: a client that does not take a message for that long
	// is gone (the process is killed).
	wsWriteTimeout = time.Minute
	// wsPingEvery and wsPingTimeout detect a vanished client.
	wsPingEvery   = 30 * time.Second
	wsPingTimeout = 20 * time.Second
)

type wsPTY struct {
	Cols uint32 `json:"cols"`
	Rows uint32 `json:"rows"`
}

// wsClientMessage is any client message; Type says which fields count.
type wsClientMessage struct {
	Type string `json:"type"`
	execCommandJSON
	PTY *wsPTY `json:"pty"`
	// Stdin false starts the process with its input closed (default
	// open).
	Stdin *bool `json:"stdin"`
	// Data is base64 in JSON.
	Data   []byte `json:"data"`
	Signal string `json:"signal"`
	Cols   uint32 `json:"cols"`
	Rows   uint32 `json:"rows"`
	// KeepSec keeps a terminal that long after the connection ends, for
	// an attach (?pid=).
	KeepSec int32 `json:"keep_sec"`
}

// wsServerMessage is any server message.
type wsServerMessage struct {
	Type     string `json:"type"`
	PID      uint32 `json:"pid,omitempty"`
	Data     []byte `json:"data,omitempty"`
	ExitCode *int32 `json:"exit_code,omitempty"`
	Signal   string `json:"signal,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	Error    string `json:"error,omitempty"`
	Code     int    `json:"code,omitempty"`
	Message  string `json:"message,omitempty"`
}

// wsAuthed is authed for the exec stream: a client that cannot set
// headers (a browser) may offer its API key or session token as the
// subprotocol "capsule.token.<token>" beside "capsule.exec.v1", which the
// server selects. The token entry is only read when no credential header
// is present, and never echoed.
func (s *Server) wsAuthed(h handler) http.HandlerFunc {
	authed := s.authed(h)
	return func(w http.ResponseWriter, r *http.Request) {
		if tok := wsProtocolToken(r); tok != "" {
			r = r.Clone(r.Context())
			if strings.HasPrefix(tok, auth.APIKeyPrefix) {
				r.Header.Set(auth.APIKeyHeader, tok)
			} else {
				r.Header.Set("Authorization", "Bearer "+tok)
			}
		}
		authed(w, r)
	}
}

// wsProtocolToken is the token a browser offered as the subprotocol
// "capsule.token.<token>", when the request has no credential header ("").
func wsProtocolToken(r *http.Request) string {
	if r.Header.Get(auth.APIKeyHeader) != "" || r.Header.Get("Authorization") != "" {
		return ""
	}
	for _, v := range r.Header.Values("Sec-WebSocket-Protocol") {
		for proto := range strings.SplitSeq(v, ",") {
			if tok, ok := strings.CutPrefix(strings.TrimSpace(proto), wsTokenPrefix); ok && tok != "" {
				return tok
			}
		}
	}
	return ""
}

// execStream: GET /v1/sandboxes/{id}/exec/stream, the WebSocket exec (see
// the package documentation for its protocol). With ?pid= it attaches to a
// kept terminal instead of starting a process.
func (s *Server) execStream(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, ok := s.pathSandbox(w, r)
	if !ok {
		return
	}
	// Refuse with an HTTP status while one can still be sent.
	var attach *service.TerminalConn
	if v := r.URL.Query().Get("pid"); v != "" {
		pid, err := strconv.ParseUint(v, 10, 32)
		if err != nil || pid == 0 {
			s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "pid: a process id (a positive integer)"})
			return
		}
		if attach, err = s.cfg.Sandboxes.AttachTerminal(r.Context(), p, id, uint32(pid)); err != nil {
			s.writeError(w, r, err)
			return
		}
	} else if err := s.cfg.Sandboxes.CheckRunning(r.Context(), p, id); err != nil {
		s.writeError(w, r, err)
		return
	}
	conn, err := websocket.Accept(w, r, &websocket.AcceptOptions{Subprotocols: []string{wsProtocol}})
	if err != nil {
		if attach != nil {
			attach.Detach()
		}
		return // Accept answered
	}
	defer conn.CloseNow()
	conn.SetReadLimit(wsReadLimit)
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	ws := &wsSession{s: s, r: r, conn: conn}
	var pr execProcess
	if attach != nil {
		pr = attach
		defer attach.Detach()
		if err := ws.send(ctx, wsServerMessage{Type: "attached", PID: attach.PID}); err != nil {
			return
		}
	} else {
		start, err := ws.readStart(ctx)
		if err != nil {
			ws.fail(ctx, err)
			return
		}
		var pty *service.PTYSize
		if start.PTY != nil {
			pty = &service.PTYSize{Cols: start.PTY.Cols, Rows: start.PTY.Rows}
		}
		stdin := start.Stdin == nil || *start.Stdin
		var pid uint32
		switch {
		case start.KeepSec != 0:
			tc, err := s.cfg.Sandboxes.StartTerminal(ctx, p, id, start.command(), stdin, pty, time.Duration(start.KeepSec)*time.Second)
			if err != nil {
				ws.fail(ctx, err)
				return
			}
			// Detach leaves the terminal for the next attach.
			defer tc.Detach()
			pr, pid = tc, tc.PID
		default:
			proc, err := s.cfg.Sandboxes.StartExec(ctx, p, id, start.command(), stdin, pty)
			if err != nil {
				ws.fail(ctx, err)
				return
			}
			// Close kills the process unless it ended; cancel first so that
			// the reader stops.
			defer proc.Close()
			pr, pid = streamedProcess{proc}, proc.PID
		}
		if err := ws.send(ctx, wsServerMessage{Type: "started", PID: pid}); err != nil {
			return
		}
	}

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); defer cancel(); ws.readLoop(ctx, pr) }()
	go func() { defer wg.Done(); ws.pingLoop(ctx, cancel) }()
	defer wg.Wait()
	defer cancel()

	// Output goes to the client one message at a time: a slow client
	// slows the process' output down to its pace (nothing buffers), and
	// one that takes nothing for wsWriteTimeout is dropped. (A kept
	// terminal's output is read into its scrollback: a slow client skips
	// what falls out of it.)
	for {
		ev, err := pr.Next(ctx)
		if errors.Is(err, service.ErrTakenOver) {
			_ = ws.send(ctx, wsServerMessage{Type: "detached", Message: "another connection attached to the terminal"})
			_ = conn.Close(websocket.StatusNormalClosure, "")
			return
		}
		if err != nil {
			if ctx.Err() == nil {
				ws.fail(ctx, err)
			}
			return
		}
		var msg wsServerMessage
		switch {
		case ev.Exit != nil:
			code := ev.Exit.ExitCode
			msg = wsServerMessage{Type: "exit", ExitCode: &code, Signal: ev.Exit.Signal, TimedOut: ev.Exit.TimedOut, Error: ev.Exit.Error}
		case ev.Stdout != nil:
			msg = wsServerMessage{Type: "stdout", Data: ev.Stdout}
		case ev.Stderr != nil:
			msg = wsServerMessage{Type: "stderr", Data: ev.Stderr}
		case ev.PTY != nil:
			msg = wsServerMessage{Type: "pty", Data: ev.PTY}
		}
		if err := ws.send(ctx, msg); err != nil {
			return
		}
		if ev.Exit != nil {
			_ = conn.Close(websocket.StatusNormalClosure, "")
			return
		}
	}
}

// execProcess is what the stream reads and drives: a process it started,
// or a kept terminal.
type execProcess interface {
	Next(ctx context.Context) (service.ExecEvent, error)
	SendInput(ctx context.Context, data []byte) error
	CloseInput(ctx context.Context) error
	Signal(ctx context.Context, name string) error
	Resize(ctx context.Context, sz service.PTYSize) error
}

// streamedProcess is a process whose stream ends with the connection's
// context (its Next needs none).
type streamedProcess struct{ *service.Process }

func (p streamedProcess) Next(context.Context) (service.ExecEvent, error) { return p.Process.Next() }

type wsSession struct {
	s    *Server
	r    *http.Request
	conn *websocket.Conn
}

func (ws *wsSession) send(ctx context.Context, m wsServerMessage) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, wsWriteTimeout)
	defer cancel()
	return ws.conn.Write(wctx, websocket.MessageText, b)
}

// errWSGone: the WebSocket connection ended without a close handshake.
var errWSGone = errors.New("websocket connection gone")

func (ws *wsSession) read(ctx context.Context) (wsClientMessage, error) {
	var m wsClientMessage
	typ, b, err := ws.conn.Read(ctx)
	if err != nil {
		var ce websocket.CloseError
		if errors.As(err, &ce) || errors.Is(err, context.DeadlineExceeded) {
			return m, err
		}
		// The connection is gone (or the library closed it over a
		// protocol violation): nobody is left to tell.
		return m, fmt.Errorf("%w: %w", errWSGone, err)
	}
	if typ != websocket.MessageText {
		return m, &service.Error{Kind: service.ErrInvalid, Msg: "messages are JSON text"}
	}
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return m, &service.Error{Kind: service.ErrInvalid, Msg: "invalid JSON message: " + jsonProblem(err)}
	}
	return m, nil
}

func (ws *wsSession) readStart(ctx context.Context) (wsClientMessage, error) {
	sctx, cancel := context.WithTimeout(ctx, wsStartTimeout)
	defer cancel()
	m, err := ws.read(sctx)
	if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
		return m, &service.Error{Kind: service.ErrInvalid, Msg: "no start message in time"}
	}
	if err != nil {
		return m, err
	}
	if m.Type != "start" {
		return m, &service.Error{Kind: service.ErrInvalid, Msg: `the first message must be {"type":"start",…}`}
	}
	return m, nil
}

// readLoop forwards the client's messages to the process until the
// connection ends. A bad message is answered with an error message; the
// stream goes on.
func (ws *wsSession) readLoop(ctx context.Context, pr execProcess) {
	for {
		m, err := ws.read(ctx)
		var se *service.Error
		if errors.As(err, &se) {
			ws.report(ctx, err)
			continue
		}
		if err != nil {
			return // closed, or gone
		}
		switch m.Type {
		case "stdin":
			err = pr.SendInput(ctx, m.Data)
		case "close_stdin":
			err = pr.CloseInput(ctx)
		case "signal":
			err = pr.Signal(ctx, m.Signal)
		case "resize":
			err = pr.Resize(ctx, service.PTYSize{Cols: m.Cols, Rows: m.Rows})
		default:
			err = &service.Error{Kind: service.ErrInvalid, Msg: "unknown message type " + jsonQuote(m.Type)}
		}
		if err != nil && ctx.Err() == nil {
			ws.report(ctx, err)
		}
	}
}

func (ws *wsSession) pingLoop(ctx context.Context, cancel context.CancelFunc) {
	t := time.NewTicker(wsPingEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			pctx, pcancel := context.WithTimeout(ctx, wsPingTimeout)
			err := ws.conn.Ping(pctx)
			pcancel()
			if err != nil {
				cancel()
				return
			}
		}
	}
}

// report sends an error message: the HTTP status the error would have,
// and its public message; it returns the status.
func (ws *wsSession) report(ctx context.Context, err error) int {
	code, msg := Problem(ws.s.log, ws.r, err)
	_ = ws.send(ctx, wsServerMessage{Type: "error", Code: code, Message: msg})
	return code
}

// fail reports err and closes the connection.
func (ws *wsSession) fail(ctx context.Context, err error) {
	var ce websocket.CloseError
	if errors.As(err, &ce) || errors.Is(err, errWSGone) || ctx.Err() != nil {
		return
	}
	status := websocket.StatusInternalError
	if ws.report(ctx, err) < 500 {
		status = websocket.StatusPolicyViolation
	}
	_ = ws.conn.Close(status, "")
}

func jsonQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
