package cli

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule"
	"github.com/spf13/cobra"
)

func (a *app) templateCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "template",
		Aliases: []string{"templates"},
		Short:   "Build, list and remove the templates the team can use",
		Example: "  capsule template build web -f Capsulefile --context ./site\n  capsule template list\n  capsule template rm warm-python",
	}
	cmd.AddCommand(a.buildCmd(), a.buildLogsCmd())
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the team's snapshots and the public images",
		Example: "  capsule template list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			list, err := c.Templates.List(cmd.Context())
			if err != nil {
				return err
			}
			return printList(a, list, "NAME\tKIND\tVCPUS\tMEMORY\tSIZE\tPUBLIC\tCREATED", func(tw io.Writer, i int) {
				s := list[i]
				fmt.Fprintf(tw, "%s\t%s\t%d\t%d MiB\t%s\t%v\t%s\n", s.Name, s.Kind, s.VCPUs, s.MemoryMB, size(s.SizeBytes), s.Public,
					s.CreatedAt.Local().Format(time.DateTime))
			})
		},
	}, &cobra.Command{
		Use:     "rm NAME...",
		Short:   "Remove the team's templates (refused while sandboxes created from one run)",
		Example: "  capsule template rm warm-python",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.each(cmd, args, "removed", func(ctx context.Context, c *capsule.Client, name string) (string, error) {
				return "", c.Templates.Delete(ctx, name)
			})
		},
	})
	return cmd
}

func (a *app) keysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "keys",
		Short:   "Create, list and revoke the team's API keys",
		Example: "  capsule keys create ci\n  capsule keys list\n  capsule keys revoke key-…",
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List the team's API keys (never their secret)",
		Example: "  capsule keys list\n  capsule keys list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			keys, err := c.Keys.List(cmd.Context())
			if err != nil {
				return err
			}
			return printList(a, keys, "ID\tNAME\tPREFIX\tCREATED\tLAST USED", func(tw io.Writer, i int) {
				k := keys[i]
				last := "never"
				if !k.LastUsedAt.IsZero() {
					last = k.LastUsedAt.Local().Format(time.DateTime)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.ID, k.Name, k.Prefix, k.CreatedAt.Local().Format(time.DateTime), last)
			})
		},
	}, &cobra.Command{
		Use:     "create NAME",
		Short:   "Create an API key and print it (shown this once)",
		Example: "  capsule keys create ci",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			k, err := c.Keys.Create(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(k)
			}
			fmt.Fprintln(a.stdio.Out, k.Key)
			fmt.Fprintln(a.stdio.Err, "Keep it now: the platform keeps only a hash and cannot show it again.")
			return nil
		},
	}, &cobra.Command{
		Use:     "revoke ID...",
		Short:   "Revoke API keys (they stop working at once)",
		Example: "  capsule keys revoke key-1a2b…",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			for _, id := range args {
				if err := c.Keys.Revoke(cmd.Context(), id); err != nil {
					return fmt.Errorf("revoke %s: %w", id, err)
				}
				if !a.json {
					fmt.Fprintf(a.stdio.Out, "%s revoked\n", id)
				}
			}
			if a.json {
				return a.printJSON(map[string][]string{"revoked": args})
			}
			return nil
		},
	})
	return cmd
}
