package cli

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

func (a *app) loginCmd() *cobra.Command {
	var url, key string
	cmd := &cobra.Command{
		Use:   "login",
		Short: "Save the platform's URL and an API key in a profile",
		Long: `login checks the API key against the platform and saves it, with the URL, in the
profile (mode 0600, in ~/.config/capsule/config.yaml or $` + envConfig + `). The
key is read from --api-key, else $` + envAPIKey + `, else typed at the prompt (not echoed).
The profile becomes the current one.`,
		Example: `  capsule login --url http://localhost:8080
  capsule login --profile prod --url https://capsule.example.com --api-key "$KEY"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := configPath()
			if err != nil {
				return err
			}
			cfg, err := loadConfig(path)
			if err != nil {
				return err
			}
			name, p := cfg.resolve(a.profile)
			if url != "" {
				p.URL = url
			}
			if p.URL == "" {
				p.URL = capsule.DefaultAPIURL
			}
			if key != "" {
				p.APIKey = key
			}
			if key == "" && os.Getenv(envAPIKey) == "" {
				if p.APIKey, err = a.prompt("API key: "); err != nil {
					return err
				}
			}
			if p.APIKey == "" {
				return errors.New("no API key: pass --api-key, set " + envAPIKey + " or type it at the prompt")
			}
			c, err := capsule.New(p.URL, capsule.WithAPIKey(p.APIKey), capsule.WithUserAgent("capsule-cli"))
			if err != nil {
				return err
			}
			if _, err := c.Sandboxes.ListPage(cmd.Context(), capsule.ListOptions{PageSize: 1}, ""); err != nil {
				return fmt.Errorf("checking the key at %s: %w", p.URL, err)
			}
			cfg.Profiles[name] = p
			cfg.Current = name
			if err := cfg.save(path); err != nil {
				return fmt.Errorf("saving %s: %w", path, err)
			}
			if a.json {
				return a.printJSON(map[string]string{"profile": name, "url": p.URL, "config": path})
			}
			fmt.Fprintf(a.stdio.Out, "Logged in to %s (profile %s, saved in %s)\n", p.URL, name, path)
			return nil
		},
	}
	cmd.Flags().StringVar(&url, "url", "", "the platform's API URL (default: the profile's, else "+capsule.DefaultAPIURL+")")
	cmd.Flags().StringVar(&key, "api-key", "", "a team API key (e2b_…)")
	return cmd
}

func (a *app) logoutCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "logout",
		Short:   "Forget a profile's API key",
		Example: "  capsule logout\n  capsule logout --profile prod",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			path, err := configPath()
			if err != nil {
				return err
			}
			cfg, err := loadConfig(path)
			if err != nil {
				return err
			}
			name, _ := cfg.resolve(a.profile)
			if _, ok := cfg.Profiles[name]; !ok {
				return fmt.Errorf("no profile %q (profiles: %s)", name, strings.Join(cfg.names(), ", "))
			}
			delete(cfg.Profiles, name)
			if cfg.Current == name {
				cfg.Current = ""
			}
			if err := cfg.save(path); err != nil {
				return err
			}
			fmt.Fprintf(a.stdio.Out, "Profile %s removed\n", name)
			return nil
		},
	}
}

// prompt asks for a secret: not echoed on a terminal, else one line.
func (a *app) prompt(label string) (string, error) {
	if f, ok := a.stdio.In.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(a.stdio.Err, label)
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(a.stdio.Err)
		return strings.TrimSpace(string(b)), err
	}
	line, err := bufio.NewReader(a.stdio.In).ReadString('\n')
	if err != nil && line == "" {
		return "", fmt.Errorf("reading the API key: %w", err)
	}
	return strings.TrimSpace(line), nil
}
