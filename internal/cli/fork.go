package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// forkCmd is `capsule sandbox fork`.
func (a *app) forkCmd() *cobra.Command {
	var o capsule.ForkOptions
	cmd := &cobra.Command{
		Use:   "fork SANDBOX",
		Short: "Make running copies of a running sandbox and print their IDs",
		Long: `fork copies a running sandbox on its host: every fork starts where the source is (its
processes, memory and files) and then goes its own way, with its own ID. The exit status is 1
when a fork failed (the others still run).`,
		Example: `  capsule sandbox fork 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e
  capsule sandbox fork 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e --count 4 --timeout 30m --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			pr := startProgress(a.stdio.Err, isTerminal(a.stdio.Err) && !a.json, "forking", 0)
			f, err := c.Sandboxes.Fork(cmd.Context(), args[0], o)
			pr.end()
			if err != nil {
				return err
			}
			failed := 0
			type result struct {
				Sandbox *capsule.Sandbox `json:"sandbox,omitempty"`
				Error   string           `json:"error,omitempty"`
			}
			out := struct {
				SourceHoldMS int64    `json:"source_hold_ms"`
				Forks        []result `json:"forks"`
			}{SourceHoldMS: f.SourceHold.Milliseconds()}
			for _, r := range f.Results {
				if r.Err != nil {
					failed++
					out.Forks = append(out.Forks, result{Error: r.Err.Error()})
					if !a.json {
						fmt.Fprintln(a.stdio.Err, "fork failed:", strings.TrimPrefix(r.Err.Error(), "capsule: "))
					}
					continue
				}
				out.Forks = append(out.Forks, result{Sandbox: r.Sandbox})
				if !a.json {
					fmt.Fprintln(a.stdio.Out, r.Sandbox.ID)
				}
			}
			if a.json {
				if err := a.printJSON(out); err != nil {
					return err
				}
			} else if isTerminal(a.stdio.Err) {
				fmt.Fprintf(a.stdio.Err, "source held %s\n", f.SourceHold.Round(time.Millisecond))
			}
			if failed > 0 {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().IntVar(&o.Count, "count", 1, "how many forks (at most 16)")
	cmd.Flags().DurationVar(&o.Timeout, "timeout", 0, "each fork's idle timeout (default: the source's)")
	return cmd
}

// logsCmd is `capsule sandbox logs`.
func (a *app) logsCmd() *cobra.Command {
	var o capsule.LogOptions
	var since string
	cmd := &cobra.Command{
		Use:   "logs SANDBOX",
		Short: "Print a sandbox's log: its lifecycle events, envd's log and its console",
		Example: `  capsule sandbox logs 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e
  capsule sandbox logs 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e --level warn --search oom --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if since != "" {
				d, err := time.ParseDuration(since)
				if err != nil || d <= 0 {
					return fmt.Errorf("--since %q: want a duration such as 10m", since)
				}
				o.Since = time.Now().Add(-d)
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			for e, err := range c.Sandboxes.Logs(cmd.Context(), args[0], o) {
				if err != nil {
					return err
				}
				if a.json {
					if err := a.printJSON(e); err != nil {
						return err
					}
					continue
				}
				fmt.Fprintf(a.stdio.Out, "%s %-5s %-9s %s\n", e.Time.Local().Format(time.DateTime), e.Level, e.Source, e.Message)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Level, "level", "", "debug, info, warn or error: that level and more severe ones")
	cmd.Flags().StringVar(&o.Search, "search", "", "entries whose message contains this text (any case)")
	cmd.Flags().BoolVar(&o.Backward, "backward", false, "newest first")
	cmd.Flags().StringVar(&since, "since", "", "only the last DURATION (e.g. 10m)")
	return cmd
}
