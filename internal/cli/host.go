package cli

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// hostCmd is `capsule host`: the machines a BYOC team (or, for admins,
// the platform) runs sandboxes on. The API wants a user's session token
// for these, not a team API key.
func (a *app) hostCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "host",
		Aliases: []string{"hosts"},
		Short:   "List, add and remove the hosts sandboxes run on (BYOC teams and admins)",
		Long: `host manages the machines that run sandboxes: a BYOC team's own, or every platform host
for an admin. These calls need a user's session token in the profile (capsule login
--api-key "$SESSION_TOKEN", the token of POST /v1/auth/login), not a team API key.`,
		Example: `  capsule host list
  capsule host add node-2 --address 10.0.0.12:7001
  capsule host rm host-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e --force`,
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the hosts you may see",
		Example: "  capsule host list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			list, err := c.Hosts.List(cmd.Context())
			if err != nil {
				return err
			}
			return printList(a, list, "ID\tNAME\tTYPE\tSTATUS\tADDRESS\tVCPUS\tMEMORY\tSANDBOXES\tHEARTBEAT", func(tw io.Writer, i int) {
				h := list[i]
				beat := "-"
				if h.LastHeartbeatAt != nil {
					beat = time.Since(*h.LastHeartbeatAt).Round(time.Second).String() + " ago"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%d/%d MiB\t%d\t%s\n", h.ID, h.Name, h.Type, h.Status, h.Address,
					h.Used.VCPUs, h.Total.VCPUs, h.Used.MemoryMB, h.Total.MemoryMB, h.Sandboxes, beat)
			})
		},
	}, a.hostAddCmd(), a.hostRmCmd())
	return cmd
}

func (a *app) hostAddCmd() *cobra.Command {
	var (
		o    capsule.CreateHostOptions
		tags string
	)
	cmd := &cobra.Command{
		Use:   "add NAME --address HOST:PORT",
		Short: "Add a host and print the one-time token its agent registers with",
		Example: `  capsule host add node-2 --address 10.0.0.12:7001
  # then, on node-2:
  capsule agent --control-plane https://capsule.example.com --register-token "$TOKEN"`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Name = args[0]
			if tags != "" {
				o.Tags = strings.Split(tags, ",")
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			nh, err := c.Hosts.Create(cmd.Context(), o)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(nh)
			}
			fmt.Fprintf(a.stdio.Out, "%s\n", nh.RegistrationToken)
			fmt.Fprintf(a.stdio.Err, "host %s (%s) added; its agent registers with the token above (shown once, valid until %s)\n",
				nh.Host.Name, nh.Host.ID, nh.RegistrationTokenExpiresAt.Local().Format(time.DateTime))
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Address, "address", "", "HOST:PORT where the control plane reaches the agent (required)")
	cmd.Flags().StringVar(&o.Type, "type", "byoc", "byoc (your team's) or regular (the platform's; admins)")
	cmd.Flags().StringVar(&tags, "tags", "", "comma-separated tags")
	_ = cmd.MarkFlagRequired("address")
	return cmd
}

func (a *app) hostRmCmd() *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:     "rm HOST...",
		Short:   "Remove hosts (--force stops their sandboxes first)",
		Example: "  capsule host rm host-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.each(cmd, args, "removed", func(ctx context.Context, c *capsule.Client, id string) (string, error) {
				n, err := c.Hosts.Delete(ctx, id, force)
				return fmt.Sprintf("%d sandboxes stopped", n), err
			})
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "destroy the hosts' sandboxes (without it, a host with sandboxes is refused)")
	return cmd
}

// metricsCmd is `capsule sandbox metrics`.
func (a *app) metricsCmd() *cobra.Command {
	var rng string
	cmd := &cobra.Command{
		Use:   "metrics SANDBOX",
		Short: "Print a sandbox's CPU, memory and disk samples over a range",
		Example: `  capsule sandbox metrics 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e
  capsule sandbox metrics 3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e --range 1h --json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			ms, err := c.Sandboxes.Metrics(cmd.Context(), args[0], rng)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(ms)
			}
			tw := tabwriter.NewWriter(a.stdio.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TIME\tCPU\tPSS\tDISK\tGUEST CPU\tGUEST MEM")
			for _, p := range ms.Points {
				gcpu, gmem := "-", "-"
				if p.Guest != nil {
					gcpu = fmt.Sprintf("%.1f%%", p.Guest.CPUPct)
					gmem = fmt.Sprintf("%s/%s", size(p.Guest.MemUsedBytes), size(p.Guest.MemTotalBytes))
				}
				fmt.Fprintf(tw, "%s\t%.1f%%\t%s\t%s\t%s\t%s\n", p.Time.Local().Format(time.TimeOnly), p.CPUPct, size(p.MemPSSBytes),
					size(p.DiskUsedBytes), gcpu, gmem)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(a.stdio.Err, "%d samples, %s resolution, %s\n", len(ms.Points), ms.Step, ms.Source)
			return nil
		},
	}
	cmd.Flags().StringVar(&rng, "range", "5m", "5m, 10m, 1h, 2h, 6h, 12h or 24h")
	return cmd
}
