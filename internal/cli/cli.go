// Package cli is `capsule`'s client command line: login with named
// profiles, sandboxes (create, list, get, exec, shell, cp, pause, resume,
// snapshot, timeout, kill), templates, API keys, hosts, teams (members,
// invitations, switching, the audit log), the platform's administration
// and shell completion. It is
// built on the Go SDK (sdk/go/capsule) and links nothing of the server: it
// speaks only the public API.
//
// Output is a human table by default and JSON with --json; progress goes
// to stderr and only when it is a terminal. A command run in a sandbox
// (exec, shell) gives `capsule` its exit code.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// Stdio is where a command reads and writes (the process' own in
// production).
type Stdio struct {
	In       io.Reader
	Out, Err io.Writer
}

// exitError carries a command's exit code out of cobra.
type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// app is the state the commands share.
type app struct {
	stdio   Stdio
	profile string
	json    bool
	// newClient makes the SDK client of the chosen profile.
	newClient func() (*capsule.Client, error)
}

// Commands are the top-level commands Main serves (cmd/capsule routes
// them here), with their aliases and cobra's hidden completion requests
// (what the completion scripts run on every TAB).
var Commands = []string{"login", "logout", "sandbox", "sbx", "template", "templates", "host", "hosts", "keys", "team", "teams", "admin",
	"completion", cobra.ShellCompRequestCmd, cobra.ShellCompNoDescRequestCmd}

// Main runs the client command line args (without the program name) and
// returns the process' exit code.
func Main(ctx context.Context, args []string, stdio Stdio) int {
	a := &app{stdio: stdio}
	a.newClient = a.client
	root := a.root()
	root.SetArgs(args)
	root.SetIn(stdio.In)
	root.SetOut(stdio.Out)
	root.SetErr(stdio.Err)
	err := root.ExecuteContext(ctx)
	var ee *exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	}
	fmt.Fprintln(stdio.Err, "capsule:", explain(err))
	return 1
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "capsule",
		Short: "Capsule: microVM sandboxes for untrusted code",
		Long: `The capsule command line drives a Capsule platform through its API.

Log in once with an API key of your team (from the dashboard or
POST /v1/api-keys), then create sandboxes, run commands in them, copy files
and open shells. CAPSULE_API_URL and CAPSULE_API_KEY override the profile.`,
		Example: `  capsule login --url http://localhost:8080
  capsule sandbox create --template base
  capsule sandbox exec SANDBOX -- python3 -c 'print(6*7)'
  capsule sandbox shell SANDBOX`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&a.profile, "profile", "", "configuration profile (default: the current one, or $"+envProfile+")")
	root.PersistentFlags().BoolVar(&a.json, "json", false, "print JSON instead of tables")
	root.AddCommand(a.loginCmd(), a.logoutCmd(), a.sandboxCmd(), a.templateCmd(), a.hostCmd(), a.keysCmd(), a.teamCmd(), a.adminCmd())
	root.CompletionOptions.HiddenDefaultCmd = false
	return root
}

// client makes the SDK client of the chosen profile.
func (a *app) client() (*capsule.Client, error) {
	path, err := configPath()
	if err != nil {
		return nil, err
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, err
	}
	name, p := cfg.resolve(a.profile)
	if p.URL == "" || p.APIKey == "" {
		return nil, fmt.Errorf("profile %q has no API URL or key: run `capsule login` (or set %s and %s)", name, envAPIURL, envAPIKey)
	}
	return capsule.New(p.URL, capsule.WithAPIKey(p.APIKey), capsule.WithUserAgent("capsule-cli"))
}

// printJSON writes v as indented JSON.
func (a *app) printJSON(v any) error {
	enc := json.NewEncoder(a.stdio.Out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// printList prints list: as JSON with --json, else as a table with the
// tab-separated header and a line row writes for each item (by index).
func printList[T any](a *app, list []T, header string, row func(tw io.Writer, i int)) error {
	if a.json {
		return a.printJSON(list)
	}
	tw := tabwriter.NewWriter(a.stdio.Out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, header)
	for i := range list {
		row(tw, i)
	}
	return tw.Flush()
}

// each applies op to every argument in turn, stopping at the first
// failure (named after verb and the argument). On a terminal each success
// is a line "ARG VERB" (op's note after it, in parentheses, when it has
// one); with --json the whole answer is {VERB: [ARGS]}.
func (a *app) each(cmd *cobra.Command, args []string, verb string, op func(ctx context.Context, c *capsule.Client, arg string) (note string, err error)) error {
	c, err := a.newClient()
	if err != nil {
		return err
	}
	for _, arg := range args {
		note, err := op(cmd.Context(), c, arg)
		if err != nil {
			return fmt.Errorf("%s %s: %w", verb, arg, err)
		}
		if !a.json {
			if note != "" {
				note = " (" + note + ")"
			}
			fmt.Fprintf(a.stdio.Out, "%s %s%s\n", arg, verb, note)
		}
	}
	if a.json {
		return a.printJSON(map[string][]string{verb: args})
	}
	return nil
}

// explain turns an error into a message that says what to do.
func explain(err error) string {
	msg := strings.TrimPrefix(err.Error(), "capsule: ")
	var h *hinted
	if errors.As(err, &h) {
		return msg + "\n  " + h.hint
	}
	switch {
	case errors.Is(err, capsule.ErrUnauthorized):
		return msg + "\n  the API key was refused: run `capsule login` with a valid key"
	case errors.Is(err, capsule.ErrNotFound):
		return msg + "\n  `capsule sandbox list` shows your team's sandboxes"
	case errors.Is(err, capsule.ErrForbidden):
		return msg + "\n  team and admin commands need a user's session token (capsule login --api-key \"$SESSION_TOKEN\"), admin ones a platform admin's; some need a team role you do not have"
	case errors.Is(err, capsule.ErrQuota):
		return msg + "\n  a quota of your team refuses it: pause or kill sandboxes you no longer need"
	case errors.Is(err, capsule.ErrUnavailable):
		return msg + "\n  the platform has no capacity or a host is unreachable now: try again shortly"
	case errors.Is(err, capsule.ErrConflict):
		return msg + "\n  `capsule sandbox get ID` shows its state"
	}
	return msg
}

// isTerminal reports whether w is a terminal.
func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
