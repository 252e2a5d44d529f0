package cli

import (
	"slices"
	"testing"

	"github.com/spf13/cobra"
)

// TestCommandsRouteEveryClientCommand walks the command tree: cmd/capsule
// hands Main only the commands listed in Commands, so each top-level
// command and alias must be there, and so must the completion requests
// the shell completion scripts send (without them, TAB completes
// nothing).
func TestCommandsRouteEveryClientCommand(t *testing.T) {
	root := (&app{}).root()
	root.InitDefaultCompletionCmd()
	want := []string{cobra.ShellCompRequestCmd, cobra.ShellCompNoDescRequestCmd}
	for _, c := range root.Commands() {
		if c.Name() == "help" {
			continue
		}
		want = append(want, c.Name())
		want = append(want, c.Aliases...)
	}
	for _, name := range want {
		t.Run(name, func(t *testing.T) {
			if !slices.Contains(Commands, name) {
				t.Fatalf("%q is a command of the CLI but not in Commands: `capsule %s` would not reach it", name, name)
			}
		})
	}
	for _, name := range Commands {
		if !slices.Contains(want, name) {
			t.Errorf("Commands lists %q, which the CLI does not serve", name)
		}
	}
}

// TestEveryCommandHasHelpWithExamples walks the command tree: every
// command a person runs has a short description and examples in --help.
func TestEveryCommandHasHelpWithExamples(t *testing.T) {
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
				continue
			}
			t.Run(sub.CommandPath(), func(t *testing.T) {
				if sub.Short == "" || sub.Example == "" {
					t.Errorf("%q has no short description or no examples", sub.CommandPath())
				}
			})
			walk(sub)
		}
	}
	walk((&app{}).root())
}
