package cli

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/capsulehq/capsule/sdk/go/capsule"
)

// buildCmd is `capsule template build`: submit a recipe (and a context
// directory), follow the build's log, exit with the build's outcome.
func (a *app) buildCmd() *cobra.Command {
	var (
		file, contextDir string
		vcpus, memoryMB  int
		detach           bool
	)
	cmd := &cobra.Command{
		Use:   "build NAME -f RECIPE [--context DIR]",
		Short: "Build the team's template NAME from a recipe and follow its log",
		Long: `build submits RECIPE (FROM, RUN, COPY, ENV, WORKDIR, USER, START, HEALTHCHECK; see the
README) as a build of the team's template NAME, with the files of --context DIR for its COPY
instructions, and prints the build's log as it runs. The exit status is 0 when the build
succeeds, 1 when it fails or is cancelled. Interrupting the command leaves the build running
(--detach returns at once): follow it again with 'capsule template logs NAME BUILD'.`,
		Example: `  capsule template build web -f Capsulefile --context ./site
  capsule template build tools -f - <<'EOF'
  FROM base
  RUN apk add git
  EOF`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if file == "" {
				return fmt.Errorf("-f RECIPE is required (- reads it from standard input)")
			}
			var recipe []byte
			var err error
			if file == "-" {
				recipe, err = readAllLimited(a.stdio.In, 1<<20)
			} else {
				recipe, err = os.ReadFile(file)
			}
			if err != nil {
				return fmt.Errorf("recipe: %w", err)
			}
			opts := capsule.BuildOptions{Recipe: string(recipe), VCPUs: vcpus, MemoryMB: memoryMB}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			pr := startProgress(a.stdio.Err, isTerminal(a.stdio.Err) && !a.json, "submitting the build", 0)
			if contextDir != "" {
				if st, err := os.Stat(contextDir); err != nil || !st.IsDir() {
					pr.end()
					return fmt.Errorf("--context %s: not a directory", contextDir)
				}
				arc := capsule.ArchiveDir(contextDir)
				defer arc.Close()
				opts.Context = pr.reader(arc)
			}
			b, err := c.Templates.Build(cmd.Context(), args[0], opts)
			pr.end()
			if err != nil {
				return err
			}
			if detach {
				if a.json {
					return a.printJSON(b)
				}
				fmt.Fprintln(a.stdio.Out, b.ID)
				return nil
			}
			return a.followBuild(cmd, c, args[0], b.ID)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the recipe file (- for standard input)")
	cmd.Flags().StringVar(&contextDir, "context", "", "directory whose files COPY reads")
	cmd.Flags().IntVar(&vcpus, "vcpus", 0, "vCPUs of the build's sandbox (default: the platform's)")
	cmd.Flags().IntVar(&memoryMB, "memory", 0, "memory of the build's sandbox in MiB (default: the platform's)")
	cmd.Flags().BoolVar(&detach, "detach", false, "print the build's ID and return without following it")
	return cmd
}

// buildLogsCmd is `capsule template logs NAME BUILD`.
func (a *app) buildLogsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "logs NAME BUILD",
		Short:   "Follow a build's log until it ends (exit status: the build's outcome)",
		Example: "  capsule template logs web bld-3f9a0c1d2b4e4a6f8e0c1d2b4e4a6f8e",
		Args:    cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := a.newClient()
			if err != nil {
				return err
			}
			return a.followBuild(cmd, c, args[0], args[1])
		},
	}
}

// followBuild prints the log of build id as it is written and returns an
// exit status 1 unless the build succeeds. With --json, each line is a
// JSON object and the build's final state is the last one.
func (a *app) followBuild(cmd *cobra.Command, c *capsule.Client, name, id string) error {
	tty := isTerminal(a.stdio.Err) && !a.json
	step := -1
	b, err := c.Templates.FollowBuildLog(cmd.Context(), name, id, 0, func(l capsule.BuildLogLine) {
		if a.json {
			_ = a.printJSON(l)
			return
		}
		if l.Step != step && tty {
			fmt.Fprintf(a.stdio.Err, "--- step %d\n", l.Step)
		}
		step = l.Step
		fmt.Fprintln(a.stdio.Out, strings.TrimRight(l.Line, "\n"))
	})
	if err != nil {
		return err
	}
	if a.json {
		if err := a.printJSON(b); err != nil {
			return err
		}
	} else {
		switch b.Status {
		case "success":
			fmt.Fprintf(a.stdio.Err, "template %s built (%s)\n", name, b.Kind)
		case "failed":
			fmt.Fprintf(a.stdio.Err, "build failed at step %d (recipe line %d): %s\n", b.FailedStep, b.FailedLine, b.Error)
		default:
			fmt.Fprintf(a.stdio.Err, "build %s\n", b.Status)
		}
	}
	if b.Status != "success" {
		return &exitError{code: 1}
	}
	return nil
}

// readAllLimited reads r to its end, refusing more than limit bytes.
func readAllLimited(r io.Reader, limit int64) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err == nil && int64(len(b)) > limit {
		err = fmt.Errorf("over %d bytes", limit)
	}
	return b, err
}
