package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// adminCmd is `capsule admin`: the platform's administration, for
// platform admins.
func (a *app) adminCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "admin",
		Short: "Administer the platform: every team, user and host, and the audit log (platform admins)",
		Long: `admin is for the platform's administrators: list every team and enable bring-your-own-
compute for one or delete it, list users and disable or re-enable them, list every host
with its team, and read the platform-wide audit log.
` + strings.Replace(sessionNote, "a user's session token", "a platform admin's session token", 1),
		Example: `  capsule admin teams
  capsule admin teams byoc team-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e on
  capsule admin users --email alice
  capsule admin users disable alice@example.com
  capsule admin hosts
  capsule admin audit --team team-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e --limit 20`,
	}
	cmd.AddCommand(a.adminTeamsCmd(), a.adminUsersCmd(), a.adminHostsCmd(), a.adminAuditCmd())
	return cmd
}

// collectAll drains seq into a slice (never nil: --json prints []).
func collectAll[T any](seq func(func(T, error) bool)) ([]T, error) {
	out := []T{}
	for v, err := range seq {
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

func (a *app) adminTeamsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "teams",
		Short: "List every team with its members and live sandboxes; BYOC and deletion",
		Example: `  capsule admin teams
  capsule admin teams byoc team-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e on
  capsule admin teams rm team-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e --yes`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			list, err := collectAll(c.Admin.Teams(cmd.Context(), capsule.PageOptions{}))
			if err != nil {
				return err
			}
			return printList(a, list, "ID\tNAME\tSLUG\tBYOC\tMEMBERS\tSANDBOXES\tCREATED", func(tw io.Writer, i int) {
				t := list[i]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%d\t%d\t%s\n", t.ID, t.Name, t.Slug, t.BYOC, t.Members, t.Sandboxes, t.CreatedAt.Local().Format(time.DateOnly))
			})
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:       "byoc TEAM on|off",
		Short:     "Let a team register its own sandbox hosts, or stop it",
		Example:   "  capsule admin teams byoc team-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e on",
		Args:      cobra.ExactArgs(2),
		ValidArgs: []string{"on", "off"},
		RunE: func(cmd *cobra.Command, args []string) error {
			on, err := onOff(args[1])
			if err != nil {
				return err
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			b, err := c.Admin.SetBYOC(cmd.Context(), args[0], on)
			if err != nil {
				return adminHint(err)
			}
			if a.json {
				return a.printJSON(b)
			}
			fmt.Fprintf(a.stdio.Out, "%s (%s): BYOC %s\n", b.ID, b.Name, map[bool]string{true: "on", false: "off"}[b.BYOC])
			return nil
		},
	})
	var yes bool
	rm := &cobra.Command{
		Use:     "rm TEAM... --yes",
		Short:   "Delete teams and destroy their sandboxes (you need not be a member)",
		Example: "  capsule admin teams rm team-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e --yes",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if !yes {
				return errors.New("deleting a team destroys its sandboxes: add --yes to go ahead")
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			var out []capsule.TeamDeletion
			for _, id := range args {
				d, err := c.Admin.DeleteTeam(cmd.Context(), id)
				if err != nil {
					return fmt.Errorf("rm %s: %w", id, adminHint(err))
				}
				out = append(out, d)
				if !a.json {
					fmt.Fprintf(a.stdio.Out, "%s deleted (%d sandboxes destroyed, %d not)\n", id, d.SandboxesDestroyed, d.SandboxesNotDestroyed)
				}
			}
			if a.json {
				return a.printJSON(out)
			}
			return nil
		},
	}
	rm.Flags().BoolVar(&yes, "yes", false, "confirm the deletion")
	cmd.AddCommand(rm)
	return cmd
}

// adminHint says where to look when an admin call finds nothing.
func adminHint(err error) error {
	if errors.Is(err, capsule.ErrNotFound) {
		return &hinted{err, "`capsule admin teams` and `capsule admin users` list what there is"}
	}
	return err
}

func onOff(s string) (bool, error) {
	switch s {
	case "on", "true", "enable":
		return true, nil
	case "off", "false", "disable":
		return false, nil
	}
	return false, fmt.Errorf("%q: want on or off", s)
}

// findUser finds a user by ID or exact e-mail address.
func findUser(ctx context.Context, c *capsule.Client, ref string) (capsule.AdminUser, error) {
	opts := capsule.UserListOptions{}
	if strings.Contains(ref, "@") {
		opts.EmailPrefix = ref
	}
	for u, err := range c.Admin.Users(ctx, opts) {
		if err != nil {
			return capsule.AdminUser{}, err
		}
		if u.ID == ref || strings.EqualFold(u.Email, ref) {
			return u, nil
		}
	}
	return capsule.AdminUser{}, &hinted{fmt.Errorf("no user %s", ref), "`capsule admin users --email PREFIX` finds users"}
}

func (a *app) adminUsersCmd() *cobra.Command {
	var prefix string
	cmd := &cobra.Command{
		Use:   "users",
		Short: "List users by e-mail address; disable or re-enable them",
		Example: `  capsule admin users
  capsule admin users --email alice
  capsule admin users disable alice@example.com
  capsule admin users enable usr-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			list, err := collectAll(c.Admin.Users(cmd.Context(), capsule.UserListOptions{EmailPrefix: prefix}))
			if err != nil {
				return err
			}
			return printList(a, list, "ID\tEMAIL\tNAME\tADMIN\tDISABLED\tTEAMS\tCREATED", func(tw io.Writer, i int) {
				u := list[i]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%v\t%d\t%s\n", u.ID, u.Email, u.Name, u.Admin, u.Disabled, u.Teams, u.CreatedAt.Local().Format(time.DateOnly))
			})
		},
	}
	cmd.Flags().StringVar(&prefix, "email", "", "only users whose e-mail address starts with this")
	for _, disable := range []bool{true, false} {
		use, short := "enable USER...", "Re-enable users (by ID or e-mail address): their logins, sessions and API keys work again"
		if disable {
			use, short = "disable USER...", "Disable users (by ID or e-mail address): no login, their sessions and API keys refused"
		}
		cmd.AddCommand(&cobra.Command{
			Use:     use,
			Short:   short,
			Example: "  capsule admin users " + strings.Fields(use)[0] + " alice@example.com",
			Args:    cobra.MinimumNArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				c, err := a.newClient()
				if err != nil {
					return err
				}
				var out []capsule.AdminUser
				for _, ref := range args {
					u, err := findUser(cmd.Context(), c, ref)
					if err != nil {
						return err
					}
					if u, err = c.Admin.SetUserDisabled(cmd.Context(), u.ID, disable); err != nil {
						return fmt.Errorf("%s: %w", ref, err)
					}
					out = append(out, u)
					if !a.json {
						fmt.Fprintf(a.stdio.Out, "%s %s\n", u.Email, map[bool]string{true: "disabled", false: "enabled"}[u.Disabled])
					}
				}
				if a.json {
					return a.printJSON(out)
				}
				return nil
			},
		})
	}
	return cmd
}

func (a *app) adminHostsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "hosts",
		Short:   "List every sandbox host with its team (the platform's and BYOC teams')",
		Example: "  capsule admin hosts\n  capsule admin hosts --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			list, err := collectAll(c.Admin.Hosts(cmd.Context(), capsule.PageOptions{}))
			if err != nil {
				return err
			}
			return printList(a, list, "ID\tNAME\tTEAM\tTYPE\tSTATUS\tADDRESS\tVCPUS\tMEMORY\tSANDBOXES\tHEARTBEAT", func(tw io.Writer, i int) {
				h := list[i]
				kind, beat := "regular", "-"
				if h.BYOC {
					kind = "byoc"
				}
				if h.LastHeartbeatAt != nil {
					beat = time.Since(*h.LastHeartbeatAt).Round(time.Second).String() + " ago"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d MiB\t%d\t%s\n", h.ID, h.Name, h.TeamName, kind, h.Status, h.Address,
					h.Total.VCPUs, h.Total.MemoryMB, h.Sandboxes, beat)
			})
		},
	}
}

func (a *app) adminAuditCmd() *cobra.Command {
	var (
		f    auditFlags
		team string
	)
	cmd := &cobra.Command{
		Use:     "audit",
		Short:   "Print the platform-wide audit log, newest first (every team's, deleted ones' too)",
		Example: "  capsule admin audit --limit 20\n  capsule admin audit --action user.disable,user.enable --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			return a.printAudit(c.Admin.AuditLog(cmd.Context(), capsule.AdminAuditLogOptions{AuditLogOptions: f.options(), TeamID: team}), f.limit, true)
		},
	}
	f.register(cmd)
	cmd.Flags().StringVar(&team, "team", "", "only this team's events (its ID)")
	return cmd
}
