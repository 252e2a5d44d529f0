package capsule

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// DefaultShell is what a terminal runs when PTYOptions.Cmd is empty: the
// user's login bash where there is one, else sh.
const DefaultShell = `command -v bash >/dev/null 2>&1 && exec bash -l || exec sh -l`

// PTYOptions configure a terminal session.
type PTYOptions struct {
	// Cols and Rows are the terminal's size (default 80×24).
	Cols, Rows int
	// Cmd is the shell command line to run (default DefaultShell).
	Cmd string
	// Env, Cwd, User and Timeout as for commands; the terminal's output
	// (stdout and stderr together, with the terminal's escapes) goes to
	// OnStdout.
	CommandOptions
	// Keep, when set (1 s to 1 h), keeps the terminal when its connection
	// ends (ctx, Close, a broken network) for that long: AttachPTY takes
	// it back, with the output it wrote meanwhile (its last 256 KiB).
	// Without Keep, the end of the connection kills the process.
	Keep time.Duration
}

// ErrDetached ends a kept terminal's session when another one attached to
// it (Wait's error).
var ErrDetached = errors.New("capsule: another session attached to the terminal")

// Terminal is a process on a pseudo-terminal in a sandbox: what is
// written to it is typed, and its output goes to PTYOptions.OnStdout.
type Terminal struct {
	*Process
	ctx context.Context
}

// StartPTY starts a terminal session in the running sandbox. Cancelling
// ctx ends it.
func (s *CommandService) StartPTY(ctx context.Context, sandboxID string, opts PTYOptions) (*Terminal, error) {
	cols, rows := opts.Cols, opts.Rows
	if cols == 0 {
		cols = 80
	}
	if rows == 0 {
		rows = 24
	}
	if cols < 1 || rows < 1 || cols > 65535 || rows > 65535 {
		return nil, fmt.Errorf("capsule: terminal size %dx%d: %w", cols, rows, ErrInvalid)
	}
	cmd := opts.Cmd
	if cmd == "" {
		cmd = DefaultShell
	}
	keep, err := keepSec(opts.Keep)
	if err != nil {
		return nil, err
	}
	p, err := s.start(ctx, sandboxID, wire.ExecStreamClientMessage{Cmd: &cmd, KeepSec: keep}, opts.CommandOptions, true,
		&wire.ExecStreamPTY{Cols: cols, Rows: rows})
	if err != nil {
		return nil, err
	}
	return &Terminal{Process: p, ctx: ctx}, nil
}

// AttachPTY takes back the kept terminal pid (started with
// PTYOptions.Keep) of a running sandbox, as Attach does.
func (s *CommandService) AttachPTY(ctx context.Context, sandboxID string, pid int, o CommandOptions) (*Terminal, error) {
	p, err := s.Attach(ctx, sandboxID, pid, o)
	if err != nil {
		return nil, err
	}
	return &Terminal{Process: p, ctx: ctx}, nil
}

// Write types b into the terminal.
func (t *Terminal) Write(b []byte) (int, error) {
	if err := t.SendStdin(t.ctx, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// Resize changes the terminal's size (the process gets SIGWINCH).
func (t *Terminal) Resize(ctx context.Context, cols, rows int) error {
	if cols < 1 || rows < 1 || cols > 65535 || rows > 65535 {
		return fmt.Errorf("capsule: terminal size %dx%d: %w", cols, rows, ErrInvalid)
	}
	return t.send(ctx, wire.ExecStreamClientMessage{Type: wire.Resize, Cols: &cols, Rows: &rows})
}
