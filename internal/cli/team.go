package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// hinted is an error with a hint of what to do about it (explain prints
// it instead of the class's generic one).
type hinted struct {
	err  error
	hint string
}

func (h *hinted) Error() string { return h.err.Error() }
func (h *hinted) Unwrap() error { return h.err }

// teamHint says where to look when a team or one of its members is not
// found.
func teamHint(err error) error {
	if errors.Is(err, capsule.ErrNotFound) {
		return &hinted{err, "`capsule team list` shows your teams, `capsule team members` the current team's members"}
	}
	return err
}

// sessionNote is the part of the team and admin commands' help about
// credentials.
const sessionNote = `These calls need a user's session token in the profile (capsule login
--api-key "$SESSION_TOKEN", the token of POST /v1/auth/login), not a team API key.`

// teamCmd is `capsule team`: the user's teams, their members and
// invitations.
func (a *app) teamCmd() *cobra.Command {
	var team string
	cmd := &cobra.Command{
		Use:     "team",
		Aliases: []string{"teams"},
		Short:   "Create, rename, delete and switch teams; manage members and invitations",
		Long: `team manages the teams of the logged-in user. Commands about one team act on the
session's current team unless --team names another (its ID, name or slug).
` + sessionNote,
		Example: `  capsule team list
  capsule team create Research
  capsule team switch Research
  capsule team members add alice@example.com --role admin
  capsule team invite bob@example.com
  capsule team remove alice@example.com`,
	}
	cmd.PersistentFlags().StringVar(&team, "team", "", "the team to act on: ID, name or slug (default: the session's)")
	pick := func(ctx context.Context) (*capsule.Client, capsule.Team, error) {
		c, err := a.newClient()
		if err != nil {
			return nil, capsule.Team{}, err
		}
		t, err := pickTeam(ctx, c, team)
		return c, t, err
	}
	cmd.AddCommand(a.teamListCmd(), a.teamCreateCmd(), a.teamRenameCmd(pick), a.teamRmCmd(), a.teamSwitchCmd(),
		a.teamMembersCmd(pick), a.teamRemoveCmd(pick), a.teamLeaveCmd(pick), a.teamInviteCmd(pick), a.teamInvitesCmd(pick),
		a.teamAuditCmd())
	return cmd
}

// teamPicker is a client of the profile and the team a command acts on
// (--team, or the session's).
type teamPicker func(ctx context.Context) (*capsule.Client, capsule.Team, error)

// pickTeam finds the user's team named by ref (ID, name or slug; "" the
// session's).
func pickTeam(ctx context.Context, c *capsule.Client, ref string) (capsule.Team, error) {
	me, err := c.Teams.Me(ctx)
	if err != nil {
		return capsule.Team{}, err
	}
	if ref == "" {
		t, ok := me.Team()
		if !ok {
			return capsule.Team{}, &hinted{errors.New("the session has no team (it was left or deleted)"),
				"`capsule team switch TEAM` to act in another of your teams"}
		}
		return t, nil
	}
	var found []capsule.Team
	for _, t := range me.Teams {
		if t.ID == ref || t.Slug == ref || t.Name == ref {
			found = append(found, t)
		}
	}
	switch len(found) {
	case 0:
		if isTeamID(ref) {
			// The platform says what it is (another team's is not found).
			return capsule.Team{ID: ref, Name: ref}, nil
		}
		return capsule.Team{}, &hinted{fmt.Errorf("no team %q among yours", ref), "`capsule team list` shows your teams"}
	case 1:
		return found[0], nil
	}
	return capsule.Team{}, fmt.Errorf("%d of your teams are called %q: name it by its ID or slug", len(found), ref)
}

// isTeamID reports whether s has the shape of a team ID.
func isTeamID(s string) bool {
	hex := strings.TrimPrefix(s, "team-")
	return len(s) == len("team-")+32 && hex != s && strings.Trim(hex, "0123456789abcdef") == ""
}

func (a *app) teamListCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List your teams and your role in each (* marks the session's)",
		Example: "  capsule team list\n  capsule team list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			me, err := c.Teams.Me(cmd.Context())
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(me)
			}
			tw := tabwriter.NewWriter(a.stdio.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "\tID\tNAME\tSLUG\tROLE\tBYOC\tJOINED")
			for _, t := range me.Teams {
				cur := ""
				if t.ID == me.TeamID {
					cur = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", cur, t.ID, t.Name, t.Slug, t.Role, t.BYOC, t.JoinedAt.Local().Format(time.DateOnly))
			}
			return tw.Flush()
		},
	}
}

func (a *app) teamCreateCmd() *cobra.Command {
	var switchTo bool
	cmd := &cobra.Command{
		Use:     "create NAME",
		Short:   "Create a team with you as its owner",
		Example: "  capsule team create Research\n  capsule team create Research --switch",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			t, err := c.Teams.Create(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if switchTo {
				if _, err := a.switchTeam(cmd.Context(), c, t); err != nil {
					return err
				}
			}
			if a.json {
				return a.printJSON(t)
			}
			fmt.Fprintln(a.stdio.Out, t.ID)
			if !switchTo {
				fmt.Fprintf(a.stdio.Err, "team %s created; `capsule team switch %s` acts in it\n", t.Name, t.Slug)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&switchTo, "switch", false, "make the new team the profile's current one")
	return cmd
}

func (a *app) teamRenameCmd(pick teamPicker) *cobra.Command {
	return &cobra.Command{
		Use:     "rename NEW-NAME",
		Short:   "Rename the team (admins and owners; its slug stays)",
		Example: "  capsule team rename 'Research & Development'\n  capsule team rename Platform --team 3f9a0c1d2b4e",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, t, err := pick(cmd.Context())
			if err != nil {
				return err
			}
			if t, err = c.Teams.Rename(cmd.Context(), t.ID, args[0]); err != nil {
				return teamHint(err)
			}
			if a.json {
				return a.printJSON(t)
			}
			fmt.Fprintf(a.stdio.Out, "%s renamed %s\n", t.ID, t.Name)
			return nil
		},
	}
}

func (a *app) teamRmCmd() *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "rm TEAM... --yes",
		Short: "Delete teams and destroy their sandboxes (owners)",
		Long: `rm deletes each team (by ID, name or slug) at once: its API keys and sessions stop
working, then its sandboxes are destroyed. It asks for --yes.`,
		Example: "  capsule team rm Research --yes",
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
			for _, ref := range args {
				t, err := pickTeam(cmd.Context(), c, ref)
				if err != nil {
					return err
				}
				d, err := c.Teams.Delete(cmd.Context(), t.ID)
				if err != nil {
					return fmt.Errorf("rm %s: %w", ref, teamHint(err))
				}
				out = append(out, d)
				if !a.json {
					fmt.Fprintf(a.stdio.Out, "%s deleted (%d sandboxes destroyed, %d not)\n", t.ID, d.SandboxesDestroyed, d.SandboxesNotDestroyed)
				}
			}
			if a.json {
				return a.printJSON(out)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "confirm the deletion")
	return cmd
}

// switchTeam gets a session of team t and saves it in the profile.
func (a *app) switchTeam(ctx context.Context, c *capsule.Client, t capsule.Team) (capsule.Session, error) {
	sess, err := c.Teams.Switch(ctx, t.ID)
	if err != nil {
		return capsule.Session{}, teamHint(err)
	}
	path, err := configPath()
	if err != nil {
		return sess, err
	}
	cfg, err := loadConfig(path)
	if err != nil {
		return sess, err
	}
	name, p := cfg.resolve(a.profile)
	p.URL = c.URL()
	p.APIKey = sess.Token
	cfg.Profiles[name] = p
	if err := cfg.save(path); err != nil {
		return sess, fmt.Errorf("saving %s: %w", path, err)
	}
	if os.Getenv(envAPIKey) != "" {
		fmt.Fprintf(a.stdio.Err, "warning: %s overrides the profile: unset it to act in team %s\n", envAPIKey, t.Name)
	}
	return sess, nil
}

func (a *app) teamSwitchCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "switch TEAM",
		Short: "Act in another of your teams (saves its session in the profile)",
		Long: `switch gets a session token of TEAM (ID, name or slug) for your user and saves it in the
profile: later commands act in that team, and your next logins land there. A team
API key cannot switch: it belongs to its team.`,
		Example: "  capsule team switch Research\n  capsule team switch team-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			t, err := pickTeam(cmd.Context(), c, args[0])
			if err != nil {
				return err
			}
			sess, err := a.switchTeam(cmd.Context(), c, t)
			if err != nil {
				return err
			}
			if a.json {
				return a.printJSON(map[string]any{"team": sess.Team, "expires_at": sess.ExpiresAt})
			}
			fmt.Fprintf(a.stdio.Out, "Now acting in team %s (%s) until %s\n", t.Name, t.ID, sess.ExpiresAt.Local().Format(time.DateTime))
			return nil
		},
	}
}

// memberOf finds a member of team by user ID or e-mail address.
func memberOf(ctx context.Context, c *capsule.Client, teamID, ref string) (capsule.Member, error) {
	list, err := c.Teams.Members(ctx, teamID)
	if err != nil {
		return capsule.Member{}, teamHint(err)
	}
	for _, m := range list {
		if m.UserID == ref || strings.EqualFold(m.Email, ref) {
			return m, nil
		}
	}
	return capsule.Member{}, &hinted{fmt.Errorf("%s is not a member of the team", ref), "`capsule team members` lists them"}
}

func (a *app) teamMembersCmd(pick teamPicker) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "members",
		Aliases: []string{"member"},
		Short:   "List the team's members; add them and change their roles",
		Example: `  capsule team members
  capsule team members add alice@example.com --role admin
  capsule team members role alice@example.com owner`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, t, err := pick(cmd.Context())
			if err != nil {
				return err
			}
			list, err := c.Teams.Members(cmd.Context(), t.ID)
			if err != nil {
				return teamHint(err)
			}
			return printList(a, list, "USER\tEMAIL\tNAME\tROLE\tJOINED", func(tw io.Writer, i int) {
				m := list[i]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", m.UserID, m.Email, m.Name, m.Role, m.JoinedAt.Local().Format(time.DateOnly))
			})
		},
	}
	var role string
	add := &cobra.Command{
		Use:   "add EMAIL...",
		Short: "Add registered users to the team (admins and owners; only owners add owners)",
		Long: `add makes the users registered with these e-mail addresses members of the team. An
address nobody registered is refused: invite it (capsule team invite EMAIL).`,
		Example: "  capsule team members add alice@example.com\n  capsule team members add bob@example.com --role admin",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, t, err := pick(cmd.Context())
			if err != nil {
				return err
			}
			var added []capsule.Member
			for _, email := range args {
				m, err := c.Teams.AddMember(cmd.Context(), t.ID, email, role)
				if errors.Is(err, capsule.ErrNotFound) {
					return fmt.Errorf("add %s: %w", email, &hinted{err, "nobody is registered with it: `capsule team invite " + email + "`"})
				}
				if err != nil {
					return fmt.Errorf("add %s: %w", email, err)
				}
				added = append(added, m)
				if !a.json {
					fmt.Fprintf(a.stdio.Out, "%s added to %s as %s\n", m.Email, t.Name, m.Role)
				}
			}
			if a.json {
				return a.printJSON(added)
			}
			return nil
		},
	}
	add.Flags().StringVar(&role, "role", capsule.RoleMember, "member, admin or owner")
	setRole := &cobra.Command{
		Use:       "role USER ROLE",
		Short:     "Change a member's role (by user ID or e-mail address)",
		Example:   "  capsule team members role alice@example.com admin",
		Args:      cobra.ExactArgs(2),
		ValidArgs: []string{capsule.RoleMember, capsule.RoleAdmin, capsule.RoleOwner},
		RunE: func(cmd *cobra.Command, args []string) error {
			c, t, err := pick(cmd.Context())
			if err != nil {
				return err
			}
			m, err := memberOf(cmd.Context(), c, t.ID, args[0])
			if err != nil {
				return err
			}
			if m, err = c.Teams.SetRole(cmd.Context(), t.ID, m.UserID, args[1]); err != nil {
				return err
			}
			if a.json {
				return a.printJSON(m)
			}
			fmt.Fprintf(a.stdio.Out, "%s is now %s of %s\n", m.Email, m.Role, t.Name)
			return nil
		},
	}
	cmd.AddCommand(add, setRole)
	return cmd
}

func (a *app) teamRemoveCmd(pick teamPicker) *cobra.Command {
	return &cobra.Command{
		Use:     "remove USER...",
		Short:   "Remove members from the team (by user ID or e-mail address)",
		Example: "  capsule team remove alice@example.com",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, t, err := pick(cmd.Context())
			if err != nil {
				return err
			}
			var removed []string
			for _, ref := range args {
				m, err := memberOf(cmd.Context(), c, t.ID, ref)
				if err != nil {
					return err
				}
				if err := c.Teams.RemoveMember(cmd.Context(), t.ID, m.UserID); err != nil {
					return fmt.Errorf("remove %s: %w", ref, err)
				}
				removed = append(removed, m.UserID)
				if !a.json {
					fmt.Fprintf(a.stdio.Out, "%s removed from %s\n", m.Email, t.Name)
				}
			}
			if a.json {
				return a.printJSON(map[string][]string{"removed": removed})
			}
			return nil
		},
	}
}

func (a *app) teamLeaveCmd(pick teamPicker) *cobra.Command {
	return &cobra.Command{
		Use:     "leave",
		Short:   "Leave the team (the last owner cannot)",
		Example: "  capsule team leave --team Research",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, t, err := pick(cmd.Context())
			if err != nil {
				return err
			}
			if err := c.Teams.Leave(cmd.Context(), t.ID); err != nil {
				return teamHint(err)
			}
			if a.json {
				return a.printJSON(map[string]string{"left": t.ID})
			}
			fmt.Fprintf(a.stdio.Out, "You left %s\n", t.Name)
			return nil
		},
	}
}

func (a *app) teamInviteCmd(pick teamPicker) *cobra.Command {
	var o capsule.InviteOptions
	cmd := &cobra.Command{
		Use:   "invite EMAIL",
		Short: "Invite an e-mail address into the team and print the one-time token",
		Long: `invite makes a one-time invitation for an address nobody registered yet (add a registered
user with capsule team members add). The invitee signs up with the token printed (POST
/v1/auth/signup with "invitation", or the dashboard's sign-up page); it is shown once.`,
		Example: "  capsule team invite bob@example.com\n  capsule team invite carol@example.com --role admin --expires 48h",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Email = args[0]
			c, t, err := pick(cmd.Context())
			if err != nil {
				return err
			}
			inv, err := c.Teams.Invite(cmd.Context(), t.ID, o)
			if errors.Is(err, capsule.ErrConflict) {
				return &hinted{err, "a user is registered with it: `capsule team members add " + o.Email + "`"}
			}
			if err != nil {
				return teamHint(err)
			}
			if a.json {
				return a.printJSON(inv)
			}
			fmt.Fprintln(a.stdio.Out, inv.Token)
			fmt.Fprintf(a.stdio.Err, "%s invited into %s as %s (%s); the token above is shown once, valid until %s\n",
				inv.Email, t.Name, inv.Role, inv.ID, inv.ExpiresAt.Local().Format(time.DateTime))
			return nil
		},
	}
	cmd.Flags().StringVar(&o.Role, "role", capsule.RoleMember, "member, admin or owner")
	cmd.Flags().DurationVar(&o.Expires, "expires", 7*24*time.Hour, "the invitation's lifetime (whole hours, at most 720h)")
	return cmd
}

func (a *app) teamInvitesCmd(pick teamPicker) *cobra.Command {
	cmd := &cobra.Command{
		Use:     "invitations",
		Aliases: []string{"invites"},
		Short:   "List the team's invitations (admins and owners); revoke pending ones",
		Example: "  capsule team invitations\n  capsule team invitations revoke inv-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, t, err := pick(cmd.Context())
			if err != nil {
				return err
			}
			list, err := c.Teams.Invitations(cmd.Context(), t.ID)
			if err != nil {
				return teamHint(err)
			}
			return printList(a, list, "ID\tEMAIL\tROLE\tSTATUS\tEXPIRES", func(tw io.Writer, n int) {
				i := list[n]
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", i.ID, i.Email, i.Role, i.Status, i.ExpiresAt.Local().Format(time.DateTime))
			})
		},
	}
	cmd.AddCommand(&cobra.Command{
		Use:     "revoke INVITATION...",
		Short:   "Revoke pending invitations (their tokens stop signing anyone up)",
		Example: "  capsule team invitations revoke inv-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, t, err := pick(cmd.Context())
			if err != nil {
				return err
			}
			for _, id := range args {
				if err := c.Teams.RevokeInvitation(cmd.Context(), t.ID, id); err != nil {
					if errors.Is(err, capsule.ErrNotFound) {
						err = &hinted{err, "`capsule team invitations` lists the pending ones (a redeemed one cannot be revoked)"}
					}
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

// auditFlags are the filters of the audit log commands.
type auditFlags struct {
	actions, types []string
	limit          int
}

func (f *auditFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringSliceVar(&f.actions, "action", nil, "only these actions (sandbox.create, member.add…; comma-separated)")
	cmd.Flags().StringSliceVar(&f.types, "type", nil, "only these resource types (sandbox, api_key, member…; comma-separated)")
	cmd.Flags().IntVar(&f.limit, "limit", 50, "print at most this many events, newest first (0: all)")
}

func (f *auditFlags) options() capsule.AuditLogOptions {
	o := capsule.AuditLogOptions{Actions: f.actions, ResourceTypes: f.types}
	if f.limit > 0 && f.limit < 100 {
		o.PageSize = f.limit
	}
	return o
}

// printAudit prints up to limit events of seq.
func (a *app) printAudit(seq func(func(capsule.AuditEvent, error) bool), limit int, withTeam bool) error {
	var events []capsule.AuditEvent
	for e, err := range seq {
		if err != nil {
			return err
		}
		events = append(events, e)
		if limit > 0 && len(events) == limit {
			break
		}
	}
	if a.json {
		if events == nil {
			events = []capsule.AuditEvent{}
		}
		return a.printJSON(events)
	}
	tw := tabwriter.NewWriter(a.stdio.Out, 0, 4, 2, ' ', 0)
	head := "TIME\tACTOR\tACTION\tRESOURCE\tSTATUS"
	if withTeam {
		head = "TIME\tTEAM\tACTOR\tACTION\tRESOURCE\tSTATUS"
	}
	fmt.Fprintln(tw, head)
	for _, e := range events {
		team := ""
		if withTeam {
			team = e.TeamID + "\t"
		}
		fmt.Fprintf(tw, "%s\t%s%s\t%s\t%s\t%s\n", e.CreatedAt.Local().Format(time.DateTime), team, e.ActorName, e.Action, e.ResourceID, e.Status)
	}
	return tw.Flush()
}

func (a *app) teamAuditCmd() *cobra.Command {
	var f auditFlags
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Print the session's team's audit log, newest first",
		Long: `audit prints who did what in the session's team. Members see the team's events;
admins and owners also the administrative ones (API keys, members…).`,
		Example: "  capsule team audit --limit 20\n  capsule team audit --action member.add,member.remove --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if cmd.Flags().Changed("team") {
				return errors.New("the audit log is the session's team's: `capsule team switch TEAM` first")
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			return a.printAudit(c.Teams.AuditLog(cmd.Context(), f.options()), f.limit, false)
		},
	}
	f.register(cmd)
	return cmd
}
