package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// shellQuote quotes args for /bin/sh so that they reach the program as
// they are.
func shellQuote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./=:,@%+", r))
		}) < 0 {
			q[i] = a
			continue
		}
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

func (a *app) execCmd() *cobra.Command {
	var (
		env         []string
		cwd, user   string
		timeout     time.Duration
		interactive bool
	)
	cmd := &cobra.Command{
		Use:   "exec SANDBOX -- COMMAND [ARG...]",
		Short: "Run a command in a sandbox; its output streams and its exit code is capsule's",
		Long: `exec runs COMMAND in the running sandbox, streaming its stdout and stderr as they
come. One argument is a shell command line (run by /bin/sh -c); several are a program
and its arguments, quoted for the shell. With -i, capsule's stdin is the command's;
Ctrl-C sends SIGTERM to the command, a second one SIGKILL.`,
		Example: `  capsule sandbox exec SANDBOX -- 'echo $HOME; ls -la'
  capsule sandbox exec SANDBOX -- python3 -c 'print(6*7)'
  tar czf - src | capsule sandbox exec -i SANDBOX -- tar xzf - -C /home/user`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			vars, err := keyValues("env", env)
			if err != nil {
				return err
			}
			line := args[1]
			if len(args) > 2 {
				line = shellQuote(args[1:])
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var outMu sync.Mutex
			write := func(w io.Writer) func([]byte) {
				return func(b []byte) { outMu.Lock(); _, _ = w.Write(b); outMu.Unlock() }
			}
			p, err := c.Commands.Start(ctx, args[0], line, capsule.StartOptions{Stdin: interactive,
				CommandOptions: capsule.CommandOptions{Env: vars, Cwd: cwd, User: user, Timeout: timeout,
					OnStdout: write(a.stdio.Out), OnStderr: write(a.stdio.Err)}})
			if err != nil {
				return err
			}
			defer p.Close()
			stopSignals := a.forwardInterrupts(ctx, p)
			defer stopSignals()
			if interactive {
				go func() {
					buf := make([]byte, 256<<10)
					for {
						n, err := a.stdio.In.Read(buf)
						if n > 0 && p.SendStdin(ctx, buf[:n]) != nil {
							return
						}
						if err != nil {
							_ = p.CloseStdin(ctx)
							return
						}
					}
				}()
			}
			res, err := p.Wait(ctx)
			if err != nil {
				return err
			}
			if a.json {
				if err := a.printJSON(res); err != nil {
					return err
				}
			}
			if res.TimedOut {
				fmt.Fprintf(a.stdio.Err, "capsule: the command timed out after %s\n", timeout)
			}
			return exitStatus(res)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&cwd, "cwd", "w", "", "working directory (default: the user's home)")
	f.StringVarP(&user, "user", "u", "", "guest user (default: the sandbox's)")
	f.DurationVar(&timeout, "timeout", 0, "kill the command after this long (e.g. 5m)")
	f.BoolVarP(&interactive, "interactive", "i", false, "send capsule's stdin to the command")
	return cmd
}

// forwardInterrupts turns Ctrl-C (SIGINT) and SIGTERM into SIGTERM for the
// process, and a second one into SIGKILL. The returned func stops it.
func (a *app) forwardInterrupts(ctx context.Context, p *capsule.Process) func() {
	ch := make(chan os.Signal, 2)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		n := 0
		for {
			select {
			case <-done:
				return
			case <-ch:
				n++
				sig := capsule.SIGTERM
				if n > 1 {
					sig = capsule.SIGKILL
				}
				_ = p.Signal(ctx, sig)
			}
		}
	}()
	return func() { signal.Stop(ch); close(done) }
}

func (a *app) shellCmd() *cobra.Command {
	var (
		cwd, user string
		env       []string
	)
	cmd := &cobra.Command{
		Use:   "shell SANDBOX [COMMAND]",
		Short: "Open an interactive terminal in a sandbox",
		Long: `shell opens a terminal in the running sandbox (a login shell unless COMMAND is
given): the local terminal is put in raw mode, its size follows the window's
(SIGWINCH), Ctrl-C goes to the sandbox, and the shell's exit code is capsule's.`,
		Example: "  capsule sandbox shell SANDBOX\n  capsule sandbox shell SANDBOX htop",
		Args:    cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			vars, err := keyValues("env", env)
			if err != nil {
				return err
			}
			in, ok := a.stdio.In.(*os.File)
			if !ok || !term.IsTerminal(int(in.Fd())) {
				return errors.New("shell needs a terminal: use `capsule sandbox exec` in scripts")
			}
			cols, rows, err := term.GetSize(int(in.Fd()))
			if err != nil {
				cols, rows = 80, 24
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			opts := capsule.PTYOptions{Cols: cols, Rows: rows, CommandOptions: capsule.CommandOptions{Env: vars, Cwd: cwd, User: user,
				OnStdout: func(b []byte) { _, _ = a.stdio.Out.Write(b) }}}
			if len(args) == 2 {
				opts.Cmd = args[1]
			}
			t, err := c.Commands.StartPTY(ctx, args[0], opts)
			if err != nil {
				return err
			}
			defer t.Close()
			old, err := term.MakeRaw(int(in.Fd()))
			if err != nil {
				return err
			}
			defer term.Restore(int(in.Fd()), old)

			winch := make(chan os.Signal, 1)
			signal.Notify(winch, syscall.SIGWINCH)
			defer signal.Stop(winch)
			go func() {
				for {
					select {
					case <-t.Done():
						return
					case <-winch:
						if w, h, err := term.GetSize(int(in.Fd())); err == nil {
							_ = t.Resize(ctx, w, h)
						}
					}
				}
			}()
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := in.Read(buf)
					if n > 0 {
						if _, werr := t.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
			res, err := t.Wait(ctx)
			if err != nil {
				return err
			}
			return exitStatus(res)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&cwd, "cwd", "w", "", "working directory (default: the user's home)")
	f.StringVarP(&user, "user", "u", "", "guest user (default: the sandbox's)")
	return cmd
}

// exitStatus is the error that gives capsule the exit code of a command
// that ended in a sandbox (nil for 0); one a signal ended, or a code out of
// a process' range, is 137, as a shell reports a killed process.
func exitStatus(res capsule.CommandResult) error {
	code := res.ExitCode
	if code == 0 {
		return nil
	}
	if code < 0 || code > 255 {
		code = 128 + 9
	}
	return &exitError{code: code}
}
