package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Limits of exec.
const (
	// DefaultExecTimeoutSec and MaxExecTimeoutSec bound a synchronous
	// exec (Run).
	DefaultExecTimeoutSec = 60
	MaxExecTimeoutSec     = 3600
	// MaxStreamTimeoutSec bounds a streamed exec (StartExec), whose
	// timeout is optional: without one the process lives as long as the
	// stream.
	MaxStreamTimeoutSec = 24 * 3600
	// MaxExecOutput is what Run keeps of each of stdout and stderr; the
	// rest is read and dropped, and the result says it was truncated.
	MaxExecOutput = 8 << 20
	// MaxExecInputChunk is the most one SendInput carries.
	MaxExecInputChunk = 1 << 20

	maxCommandBytes = 256 << 10
	maxGuestPath    = 4096
	// agentGrace is how much longer than the control plane's own timer the
	// agent's timeout runs: the agent's only kills the process when the
	// control plane could not.
	agentGrace = 10 * time.Second
	// killTimeout bounds the SIGKILL sent when a caller goes away.
	killTimeout = 10 * time.Second
)

// userRe matches the guest user names exec and files accept.
var userRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,31}$`)

// ExecCommand is a process to start in a sandbox.
type ExecCommand struct {
	// Cmd is a command line run by /bin/sh -c; Argv is a program (looked
	// up in PATH) and its arguments. Exactly one of them is set.
	Cmd  string
	Argv []string
	// Env adds to the sandbox's environment.
	Env map[string]string
	// Cwd is an absolute guest path (empty: the user's home directory).
	Cwd string
	// User runs the process (empty: the sandbox's default user).
	User string
	// TimeoutSec: the process is killed when it is reached. Run: 0 means
	// DefaultExecTimeoutSec, at most MaxExecTimeoutSec. StartExec: 0
	// means none, at most MaxStreamTimeoutSec.
	TimeoutSec int32
}

func (c *ExecCommand) normalize(defTimeout, maxTimeout int32) error {
	switch {
	case c.Cmd != "" && len(c.Argv) > 0:
		return errorf(ErrInvalid, "give cmd or argv, not both")
	case c.Cmd == "" && len(c.Argv) == 0:
		return errorf(ErrInvalid, "cmd or argv is required")
	case len(c.Argv) > 0 && c.Argv[0] == "":
		return errorf(ErrInvalid, "argv[0]: the program is required")
	}
	n := len(c.Cmd)
	for _, a := range c.Argv {
		n += len(a)
	}
	if n > maxCommandBytes {
		return errorf(ErrInvalid, "the command is longer than %d bytes", maxCommandBytes)
	}
	if strings.ContainsRune(c.Cmd, 0) || strings.ContainsRune(strings.Join(c.Argv, ""), 0) {
		return errorf(ErrInvalid, "the command contains a NUL byte")
	}
	if len(c.Env) > maxEnvVars {
		return errorf(ErrInvalid, "env: at most %d variables", maxEnvVars)
	}
	for k, v := range c.Env {
		if !envNameRe.MatchString(k) {
			return errorf(ErrInvalid, "env: invalid name %q", k)
		}
		if strings.ContainsRune(v, 0) {
			return errorf(ErrInvalid, "env: the value of %s contains a NUL byte", k)
		}
	}
	if c.Cwd != "" {
		cwd, err := GuestPath(c.Cwd)
		if err != nil {
			return fmt.Errorf("cwd: %w", err)
		}
		c.Cwd = cwd
	}
	if err := validateUser(c.User); err != nil {
		return err
	}
	if c.TimeoutSec < 0 || c.TimeoutSec > maxTimeout {
		return errorf(ErrInvalid, "timeout_sec: 0 to %d", maxTimeout)
	}
	if c.TimeoutSec == 0 {
		c.TimeoutSec = defTimeout
	}
	return nil
}

func validateUser(u string) error {
	if u != "" && !userRe.MatchString(u) {
		return errorf(ErrInvalid, "user: invalid user name")
	}
	return nil
}

// GuestPath validates an absolute guest path and returns it cleaned.
func GuestPath(p string) (string, error) {
	switch {
	case p == "":
		return "", errorf(ErrInvalid, "path is required")
	case len(p) > maxGuestPath:
		return "", errorf(ErrInvalid, "path: longer than %d bytes", maxGuestPath)
	case strings.ContainsRune(p, 0):
		return "", errorf(ErrInvalid, "path: contains a NUL byte")
	case !path.IsAbs(p):
		return "", errorf(ErrInvalid, "path: must be absolute")
	case !utf8.ValidString(p):
		return "", errorf(ErrInvalid, "path: must be UTF-8")
	}
	return path.Clean(p), nil
}

// running returns a running sandbox of p's team and the client of its
// host agent: every exec and file operation goes through it. Another
// team's sandbox is ErrNotFound; one that is not running ErrConflict.
func (s *Sandboxes) running(ctx context.Context, p Principal, id SandboxID) (db.Sandbox, *agentclient.Client, error) {
	row, err := s.get(ctx, p, id)
	if err != nil {
		return db.Sandbox{}, nil, err
	}
	if row.State != store.SandboxRunning {
		return db.Sandbox{}, nil, errorf(ErrConflict, "the sandbox is %s, not running", row.State)
	}
	c, err := s.agentFor(ctx, row.HostID)
	if err != nil {
		return db.Sandbox{}, nil, err
	}
	// Exec and file calls are activity: the TTL starts again.
	if err := s.touch(ctx, row.ID); err != nil {
		s.log.WarnContext(ctx, "record activity", "sandbox", ID(row.ID), "err", err)
	}
	return row, c, nil
}

// CheckRunning reports, as running would, whether a sandbox of p's team
// runs: the exec stream asks before it upgrades the connection.
func (s *Sandboxes) CheckRunning(ctx context.Context, p Principal, id SandboxID) error {
	_, _, err := s.running(ctx, p, id)
	return err
}

// guestError classifies an agent failure of an exec or file operation:
// the agent's message about the caller's request (a missing file, an
// unknown user) is passed on.
func guestError(err error, op string) error {
	msg := agentMessage(err)
	switch {
	case errors.Is(err, agentclient.ErrNotFound):
		return &Error{Kind: ErrNotFound, Msg: orDefault(msg, "not found"), Err: err}
	case errors.Is(err, agentclient.ErrInvalid):
		return &Error{Kind: ErrInvalid, Msg: orDefault(msg, "invalid request"), Err: err}
	case errors.Is(err, agentclient.ErrAlreadyExists):
		return &Error{Kind: ErrConflict, Msg: orDefault(msg, "already exists"), Err: err}
	case errors.Is(err, agentclient.ErrPermissionDenied):
		return &Error{Kind: ErrForbidden, Msg: orDefault(msg, "permission denied"), Err: err}
	case errors.Is(err, agentclient.ErrConflict):
		return &Error{Kind: ErrConflict, Msg: "the sandbox is not running on its host", Err: err}
	case errors.Is(err, agentclient.ErrCapacity):
		return &Error{Kind: ErrUnavailable, Msg: orDefault(msg, "the sandbox has no room left"), Err: err}
	}
	return agentError(err, op)
}

// agentMessage is the message of the agent's Connect error (one line,
// bounded), or "".
func agentMessage(err error) string {
	var ce *connect.Error
	if !errors.As(err, &ce) {
		return ""
	}
	m := strings.ToValidUTF8(ce.Message(), "?")
	if i := strings.IndexByte(m, '\n'); i >= 0 {
		m = m[:i]
	}
	return truncate(m, 512)
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// ExecResult is the outcome of Run.
type ExecResult struct {
	Stdout, Stderr []byte
	// ExitCode is the exit status (-1 when a signal ended the process).
	ExitCode int32
	// Signal names the signal that ended the process ("SIGKILL"), if one
	// did.
	Signal string
	// TimedOut: the process was killed at its timeout.
	TimedOut bool
	// Truncated: stdout or stderr had more than MaxExecOutput bytes.
	Truncated bool
	// Error says why the process did not run normally, when envd knows.
	Error    string
	Duration time.Duration
}

// Run runs a command in a running sandbox of p's team to its end, with
// stdin (nil: none), and collects its output (MaxExecOutput of each
// stream). When ctx ends first the process is killed.
func (s *Sandboxes) Run(ctx context.Context, p Principal, id SandboxID, cmd ExecCommand, stdin []byte, withStdin bool) (ExecResult, error) {
	if err := cmd.normalize(DefaultExecTimeoutSec, MaxExecTimeoutSec); err != nil {
		return ExecResult{}, err
	}
	start := time.Now()
	pr, err := s.startExec(ctx, p, id, cmd, withStdin, nil)
	if err != nil {
		return ExecResult{}, err
	}
	defer pr.Close()
	if withStdin {
		go pr.feed(ctx, stdin)
	}
	var res ExecResult
	var out, errb capped
	for {
		ev, err := pr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return ExecResult{}, err
		}
		switch {
		case ev.Exit != nil:
			res.ExitCode, res.Signal, res.TimedOut, res.Error = ev.Exit.ExitCode, ev.Exit.Signal, ev.Exit.TimedOut, ev.Exit.Error
		case ev.Stdout != nil:
			out.write(ev.Stdout)
		case ev.Stderr != nil:
			errb.write(ev.Stderr)
		}
	}
	res.Stdout, res.Stderr = out.b.Bytes(), errb.b.Bytes()
	res.Truncated = out.over || errb.over
	res.Duration = time.Since(start)
	return res, nil
}

// capped keeps the first MaxExecOutput bytes written to it.
type capped struct {
	b    bytes.Buffer
	over bool
}

func (c *capped) write(p []byte) {
	if room := MaxExecOutput - c.b.Len(); len(p) > room {
		p, c.over = p[:room], true
	}
	c.b.Write(p)
}

// PTYSize is a terminal's size.
type PTYSize struct{ Cols, Rows uint32 }

// StartExec starts a command in a running sandbox of p's team and returns
// once it runs. stdin keeps its input open for SendInput; pty, when not
// nil, runs it on a terminal. The caller reads its events with Next and
// must Close it, which kills the process unless it has ended.
func (s *Sandboxes) StartExec(ctx context.Context, p Principal, id SandboxID, cmd ExecCommand, stdin bool, pty *PTYSize) (*Process, error) {
	if err := cmd.normalize(0, MaxStreamTimeoutSec); err != nil {
		return nil, err
	}
	if err := validPTY(pty); err != nil {
		return nil, err
	}
	return s.startExec(ctx, p, id, cmd, stdin, pty)
}

func validPTY(sz *PTYSize) error {
	if sz != nil && (sz.Cols == 0 || sz.Rows == 0 || sz.Cols > 65535 || sz.Rows > 65535) {
		return errorf(ErrInvalid, "pty: 1 to 65535 columns and rows")
	}
	return nil
}

func (s *Sandboxes) startExec(ctx context.Context, p Principal, id SandboxID, cmd ExecCommand, stdin bool, pty *PTYSize) (*Process, error) {
	_, c, err := s.running(ctx, p, id)
	if err != nil {
		return nil, err
	}
	req := &pb.ExecRequest{SandboxId: id.String(), Envs: cmd.Env, Cwd: cmd.Cwd, User: cmd.User, Stdin: stdin}
	if cmd.Cmd != "" {
		req.Cmd, req.Args = "/bin/sh", []string{"-c", cmd.Cmd}
	} else {
		req.Cmd, req.Args = cmd.Argv[0], cmd.Argv[1:]
	}
	if pty != nil {
		req.Pty = &pb.PtySize{Cols: pty.Cols, Rows: pty.Rows}
	}
	timeout := time.Duration(cmd.TimeoutSec) * time.Second
	if timeout > 0 {
		req.Timeout = durationpb.New(timeout + agentGrace)
	}
	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.Exec(sctx, connect.NewRequest(req))
	if err != nil {
		cancel()
		return nil, guestError(err, "exec")
	}
	pr := &Process{c: c, sandbox: id.String(), stream: stream, cancel: cancel, bg: context.WithoutCancel(ctx), log: s.log, pty: pty != nil}
	// The first event is the start, with the pid.
	for stream.Receive() {
		if st := stream.Msg().GetStarted(); st != nil {
			pr.PID = st.GetPid()
			break
		}
	}
	if pr.PID == 0 {
		err := stream.Err()
		_ = stream.Close()
		cancel()
		if err == nil {
			err = errors.New("the exec stream ended before the process started")
		}
		return nil, guestError(err, "exec")
	}
	if timeout > 0 {
		pr.timer = time.AfterFunc(timeout, func() {
			pr.timedOut.Store(true)
			pr.kill()
		})
	}
	s.log.DebugContext(ctx, "process started", "sandbox", pr.sandbox, "pid", pr.PID)
	return pr, nil
}

// Process is a process started by StartExec.
type Process struct {
	PID uint32

	c       *agentclient.Client
	sandbox string
	stream  *connect.ServerStreamForClient[pb.ExecResponse]
	cancel  context.CancelFunc
	// bg carries the values of the starting context, not its end: it
	// kills the process after its caller went away.
	bg       context.Context
	log      *slog.Logger
	pty      bool
	timer    *time.Timer
	timedOut atomic.Bool
	ended    atomic.Bool
	killOnce sync.Once
}

// ExecEvent is one event of a process: output on one of its streams, or
// its end.
type ExecEvent struct {
	Stdout, Stderr, PTY []byte
	Exit                *ExecExit
}

// ExecExit is how a process ended.
type ExecExit struct {
	ExitCode int32
	Signal   string
	TimedOut bool
	Error    string
}

// Next returns the process' next event; io.EOF after its end.
func (pr *Process) Next() (ExecEvent, error) {
	if pr.ended.Load() {
		return ExecEvent{}, io.EOF
	}
	for pr.stream.Receive() {
		switch ev := pr.stream.Msg().GetEvent().(type) {
		case *pb.ExecResponse_Output:
			switch d := ev.Output.GetData().(type) {
			case *pb.ExecOutput_Stdout:
				return ExecEvent{Stdout: nonNil(d.Stdout)}, nil
			case *pb.ExecOutput_Stderr:
				return ExecEvent{Stderr: nonNil(d.Stderr)}, nil
			case *pb.ExecOutput_Pty:
				return ExecEvent{PTY: nonNil(d.Pty)}, nil
			}
		case *pb.ExecResponse_Ended:
			pr.ended.Store(true)
			if pr.timer != nil {
				pr.timer.Stop()
			}
			e := ev.Ended
			x := &ExecExit{ExitCode: e.GetExitCode(), Error: e.GetError(), TimedOut: e.GetTimedOut() || pr.timedOut.Load()}
			if !e.GetExited() {
				x.Signal = signalName(e.GetStatus())
				if x.TimedOut && x.Signal == "" {
					x.Signal = "SIGKILL"
				}
			}
			return ExecEvent{Exit: x}, nil
		}
	}
	err := pr.stream.Err()
	if err == nil {
		err = errors.New("the exec stream ended before the process did")
	}
	return ExecEvent{}, guestError(err, "exec")
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// signalName turns envd's status of a killed process ("signal: killed")
// into the signal's name ("SIGKILL"); "" when it names none.
func signalName(status string) string {
	desc, ok := strings.CutPrefix(status, "signal: ")
	if !ok {
		return ""
	}
	desc = strings.TrimSuffix(desc, " (core dumped)")
	for sig := syscall.Signal(1); sig < 65; sig++ {
		if sig.String() == desc {
			return unix.SignalName(sig)
		}
	}
	return ""
}

// SendInput writes data to the process' stdin (or its terminal).
func (pr *Process) SendInput(ctx context.Context, data []byte) error {
	for len(data) > 0 {
		n := min(len(data), MaxExecInputChunk)
		if _, err := pr.c.SendExecInput(ctx, connect.NewRequest(&pb.SendExecInputRequest{
			SandboxId: pr.sandbox, Pid: pr.PID, Data: data[:n], Pty: pr.pty,
		})); err != nil {
			return guestError(err, "send input")
		}
		data = data[n:]
	}
	return nil
}

// CloseInput closes the process' stdin.
func (pr *Process) CloseInput(ctx context.Context) error {
	if _, err := pr.c.CloseExecInput(ctx, connect.NewRequest(&pb.CloseExecInputRequest{SandboxId: pr.sandbox, Pid: pr.PID})); err != nil {
		return guestError(err, "close input")
	}
	return nil
}

// signals are the signals Signal sends.
var signals = map[string]pb.Signal{"SIGTERM": pb.Signal_SIGNAL_SIGTERM, "SIGKILL": pb.Signal_SIGNAL_SIGKILL}

// Signal sends a signal, "SIGTERM" or "SIGKILL", to the process.
func (pr *Process) Signal(ctx context.Context, name string) error {
	sig, ok := signals[name]
	if !ok {
		return errorf(ErrInvalid, "signal: %q is not supported (SIGTERM or SIGKILL)", name)
	}
	if _, err := pr.c.SignalExec(ctx, connect.NewRequest(&pb.SignalExecRequest{SandboxId: pr.sandbox, Pid: pr.PID, Signal: sig})); err != nil {
		return guestError(err, "signal")
	}
	return nil
}

// Resize changes the size of the process' terminal.
func (pr *Process) Resize(ctx context.Context, sz PTYSize) error {
	if !pr.pty {
		return errorf(ErrInvalid, "resize: the process has no terminal")
	}
	if err := validPTY(&sz); err != nil {
		return err
	}
	if _, err := pr.c.ResizeExec(ctx, connect.NewRequest(&pb.ResizeExecRequest{
		SandboxId: pr.sandbox, Pid: pr.PID, Size: &pb.PtySize{Cols: sz.Cols, Rows: sz.Rows},
	})); err != nil {
		return guestError(err, "resize")
	}
	return nil
}

// feed writes stdin and closes it; a process that exits without reading
// it all is not an error.
func (pr *Process) feed(ctx context.Context, data []byte) {
	if err := pr.SendInput(ctx, data); err != nil {
		if !pr.ended.Load() && ctx.Err() == nil {
			pr.log.WarnContext(ctx, "exec stdin", "sandbox", pr.sandbox, "pid", pr.PID, "err", err)
		}
		return
	}
	if err := pr.CloseInput(ctx); err != nil && !pr.ended.Load() && ctx.Err() == nil {
		pr.log.WarnContext(ctx, "exec close stdin", "sandbox", pr.sandbox, "pid", pr.PID, "err", err)
	}
}

// kill sends SIGKILL once, whatever became of the caller's context.
func (pr *Process) kill() {
	pr.killOnce.Do(func() {
		ctx, cancel := context.WithTimeout(pr.bg, killTimeout)
		defer cancel()
		_, err := pr.c.SignalExec(ctx, connect.NewRequest(&pb.SignalExecRequest{SandboxId: pr.sandbox, Pid: pr.PID, Signal: pb.Signal_SIGNAL_SIGKILL}))
		if err != nil && !errors.Is(err, agentclient.ErrNotFound) && !pr.ended.Load() {
			pr.log.WarnContext(ctx, "kill a process", "sandbox", pr.sandbox, "pid", pr.PID, "err", err)
		}
	})
}

// Close ends the process' stream; a process that has not ended is killed.
func (pr *Process) Close() {
	if pr.timer != nil {
		pr.timer.Stop()
	}
	if !pr.ended.Load() {
		pr.kill()
	}
	pr.cancel()
	_ = pr.stream.Close()
}
