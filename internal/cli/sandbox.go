package cli

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

func (a *app) sandboxCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "sandbox",
		Aliases: []string{"sbx"},
		Short:   "Create, run commands in, copy files to and from, pause and kill sandboxes",
		Example: `  id=$(capsule sandbox create --template base --json | jq -r .id)
  capsule sandbox exec "$id" -- uname -a
  capsule sandbox cp ./data.csv "$id":/home/user/data.csv
  capsule sandbox kill "$id"`,
	}
	cmd.AddCommand(a.createCmd(), a.listCmd(), a.getCmd(), a.execCmd(), a.shellCmd(), a.cpCmd(),
		a.lifecycleCmd("pause", "Pause sandboxes: memory and disk saved, the VM stopped", (*capsule.SandboxService).Pause),
		a.lifecycleCmd("resume", "Resume paused sandboxes where they stopped", (*capsule.SandboxService).Resume),
		a.killCmd(), a.snapshotCmd(), a.timeoutCmd(), a.metricsCmd(), a.forkCmd(), a.logsCmd())
	return cmd
}

// keyValues parses K=V flags.
func keyValues(flag string, kvs []string) (map[string]string, error) {
	if len(kvs) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--%s %q: want KEY=VALUE", flag, kv)
		}
		m[k] = v
	}
	return m, nil
}

func (a *app) createCmd() *cobra.Command {
	var (
		o                   capsule.CreateOptions
		env, meta           []string
		noInternet, noPause bool
	)
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a sandbox and print its ID",
		Example: `  capsule sandbox create
  capsule sandbox create --template base --vcpus 2 --memory 1024 --timeout 30m --env TOKEN=x --metadata job=42`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if o.EnvVars, err = keyValues("env", env); err != nil {
				return err
			}
			if o.Metadata, err = keyValues("metadata", meta); err != nil {
				return err
			}
			if noInternet {
				o.AllowInternetAccess = new(bool)
			}
			if noPause {
				o.AutoPause = new(bool)
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			pr := startProgress(a.stdio.Err, isTerminal(a.stdio.Err), "creating sandbox", 0)
			sb, err := c.Sandboxes.Create(cmd.Context(), o)
			pr.end()
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(sb)
			}
			fmt.Fprintln(a.stdio.Out, sb.ID)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.Template, "template", "t", "", "template: a built-in image (base, minimal) or a snapshot of the team")
	f.IntVar(&o.VCPUs, "vcpus", 0, "vCPUs (default: the template's)")
	f.IntVar(&o.MemoryMB, "memory", 0, "memory in MiB (default: the template's)")
	f.DurationVar(&o.Timeout, "timeout", 0, "idle time before the sandbox is paused (or killed with --no-auto-pause), e.g. 30m")
	f.StringArrayVarP(&env, "env", "e", nil, "environment variable KEY=VALUE (repeatable)")
	f.StringArrayVarP(&meta, "metadata", "m", nil, "metadata KEY=VALUE (repeatable)")
	f.BoolVar(&noInternet, "no-internet", false, "no egress to the internet")
	f.BoolVar(&noPause, "no-auto-pause", false, "kill the sandbox at its timeout instead of pausing it")
	f.BoolVar(&o.AutoResume, "auto-resume", false, "traffic through the proxy resumes it when paused")
	f.BoolVar(&o.AllowPublicTraffic, "public", false, "its ports are open to anyone through the proxy")
	return cmd
}

func (a *app) listCmd() *cobra.Command {
	var (
		states []string
		meta   []string
		limit  int
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the team's sandboxes, newest first",
		Example: "  capsule sandbox list\n  capsule sandbox list --state running --metadata job=42 --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			md, err := keyValues("metadata", meta)
			if err != nil {
				return err
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			opts := capsule.ListOptions{Metadata: md}
			for _, s := range states {
				opts.States = append(opts.States, capsule.State(s))
			}
			list := []capsule.Sandbox{}
			for sb, err := range c.Sandboxes.List(cmd.Context(), opts) {
				if err != nil {
					return err
				}
				list = append(list, sb)
				if limit > 0 && len(list) >= limit {
					break
				}
			}
			return printList(a, list, "ID\tTEMPLATE\tSTATE\tVCPUS\tMEMORY\tAGE\tMETADATA", func(tw io.Writer, i int) {
				sb := list[i]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d MiB\t%s\t%s\n", sb.ID, sb.Template, sb.State, sb.VCPUs, sb.MemoryMB,
					age(time.Since(sb.CreatedAt)), metadata(sb.Metadata))
			})
		},
	}
	cmd.Flags().StringArrayVar(&states, "state", nil, "only sandboxes in this state (repeatable): running, paused, stopped…")
	cmd.Flags().StringArrayVarP(&meta, "metadata", "m", nil, "only sandboxes with this metadata KEY=VALUE (repeatable)")
	cmd.Flags().IntVar(&limit, "limit", 0, "at most this many (0: all)")
	return cmd
}

func age(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func metadata(m map[string]string) string {
	keys := slices.Sorted(maps.Keys(m))
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + m[k]
	}
	return strings.Join(parts, ",")
}

func (a *app) getCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "get SANDBOX",
		Short:   "Show a sandbox",
		Example: "  capsule sandbox get 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			sb, err := c.Sandboxes.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(sb)
			}
			tw := tabwriter.NewWriter(a.stdio.Out, 0, 4, 2, ' ', 0)
			row := func(k string, v any) { fmt.Fprintf(tw, "%s\t%v\n", k, v) }
			row("ID", sb.ID)
			row("Template", sb.Template)
			row("State", sb.State)
			if sb.StateReason != "" {
				row("Reason", sb.StateReason)
			}
			row("vCPUs", sb.VCPUs)
			row("Memory", fmt.Sprintf("%d MiB", sb.MemoryMB))
			row("Timeout", sb.Timeout)
			row("Created", sb.CreatedAt.Local().Format(time.RFC3339))
			if !sb.EndAt.IsZero() {
				row("Ends", sb.EndAt.Local().Format(time.RFC3339))
			}
			if !sb.PausedAt.IsZero() {
				row("Paused", sb.PausedAt.Local().Format(time.RFC3339))
			}
			row("Internet", sb.AllowInternetAccess)
			row("Auto-pause", sb.AutoPause)
			row("Metadata", metadata(sb.Metadata))
			return tw.Flush()
		},
	}
}

func (a *app) lifecycleCmd(verb, short string, do func(*capsule.SandboxService, context.Context, string) (capsule.Sandbox, error)) *cobra.Command {
	return &cobra.Command{
		Use:     verb + " SANDBOX...",
		Short:   short,
		Example: "  capsule sandbox " + verb + " 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			var out []capsule.Sandbox
			for _, id := range args {
				pr := startProgress(a.stdio.Err, isTerminal(a.stdio.Err), verb+" "+id, 0)
				sb, err := do(c.Sandboxes, cmd.Context(), id)
				pr.end()
				if err != nil {
					return fmt.Errorf("%s %s: %w", verb, id, err)
				}
				out = append(out, sb)
				if !a.json {
					fmt.Fprintf(a.stdio.Out, "%s %s\n", sb.ID, sb.State)
				}
			}
			if a.json {
				return a.printJSON(out)
			}
			return nil
		},
	}
}

func (a *app) killCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "kill SANDBOX...",
		Aliases: []string{"rm"},
		Short:   "Destroy sandboxes and their disks",
		Example: "  capsule sandbox kill 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.each(cmd, args, "killed", func(ctx context.Context, c *capsule.Client, id string) (string, error) {
				return "", c.Sandboxes.Kill(ctx, id)
			})
		},
	}
}

func (a *app) snapshotCmd() *cobra.Command {
	var overwrite bool
	cmd := &cobra.Command{
		Use:   "snapshot SANDBOX NAME",
		Short: "Snapshot a running sandbox (memory and disk) as a template of the team",
		Long: `snapshot saves the running sandbox's memory and disk under NAME; the sandbox goes on
running. New sandboxes created with --template NAME start where it was.`,
		Example: "  capsule sandbox snapshot 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e warm-python\n  capsule sandbox create --template warm-python",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			pr := startProgress(a.stdio.Err, isTerminal(a.stdio.Err), "snapshotting", 0)
			snap, err := c.Snapshots.Create(cmd.Context(), args[0], args[1], overwrite)
			pr.end()
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(snap)
			}
			fmt.Fprintf(a.stdio.Out, "%s (%s, %s)\n", snap.Name, snap.Kind, size(snap.SizeBytes))
			return nil
		},
	}
	cmd.Flags().BoolVar(&overwrite, "overwrite", false, "replace the team's snapshot of that name")
	return cmd
}

func (a *app) timeoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "timeout SANDBOX DURATION",
		Short:   "Set how long from now a sandbox may stay idle (0: never times out)",
		Example: "  capsule sandbox timeout 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e 2h",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := time.ParseDuration(args[1])
			if err != nil || d < 0 {
				return fmt.Errorf("duration %q: want e.g. 30m or 2h", args[1])
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			sb, err := c.Sandboxes.SetTimeout(cmd.Context(), args[0], d)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(sb)
			}
			if sb.EndAt.IsZero() {
				fmt.Fprintf(a.stdio.Out, "%s never times out\n", sb.ID)
			} else {
				fmt.Fprintf(a.stdio.Out, "%s ends at %s\n", sb.ID, sb.EndAt.Local().Format(time.RFC3339))
			}
			return nil
		},
	}
}
