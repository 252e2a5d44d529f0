package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
)

// remotePath splits "SANDBOX:/path" (ok) from a local path.
func remotePath(arg string) (sandbox, p string, ok bool) {
	id, rest, found := strings.Cut(arg, ":")
	if !found || id == "" || !strings.HasPrefix(rest, "/") || strings.ContainsAny(id, `/\.`) {
		return "", "", false
	}
	return id, rest, true
}

func (a *app) cpCmd() *cobra.Command {
	var user string
	cmd := &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy a file into or out of a sandbox",
		Long: `cp copies one file between this machine and a sandbox, streamed (any size). A
sandbox path is SANDBOX:/absolute/path; the other side is a local path, or - for
stdin/stdout. Copying to a directory (local, or a sandbox path ending in /) keeps the
file's name. A progress bar shows on a terminal.`,
		Example: `  capsule sandbox cp ./model.bin SANDBOX:/home/user/model.bin
  capsule sandbox cp SANDBOX:/home/user/out.csv .
  capsule sandbox cp SANDBOX:/var/log/app.log - | tail`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			src, dst := args[0], args[1]
			sid, spath, sRemote := remotePath(src)
			did, dpath, dRemote := remotePath(dst)
			switch {
			case sRemote == dRemote:
				return errors.New("cp: exactly one of SRC and DST is SANDBOX:/path")
			}
			c, err := a.newClient()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			show := isTerminal(a.stdio.Err)
			if dRemote {
				var r io.Reader = a.stdio.In
				var total int64
				if src != "-" {
					f, err := os.Open(src)
					if err != nil {
						return err
					}
					defer f.Close()
					fi, err := f.Stat()
					if err != nil {
						return err
					}
					if fi.IsDir() {
						return fmt.Errorf("cp: %s is a directory (copy files one by one, or a tar archive through exec -i)", src)
					}
					r, total = f, fi.Size()
				}
				if strings.HasSuffix(dpath, "/") {
					if src == "-" {
						return errors.New("cp: name the sandbox file when copying stdin")
					}
					dpath += filepath.Base(src)
				}
				pr := startProgress(a.stdio.Err, show, "uploading", total)
				n, err := c.Files.Write(ctx, did, dpath, user, pr.reader(r))
				pr.end()
				if err != nil {
					return err
				}
				if a.json {
					return a.printJSON(map[string]any{"path": dpath, "bytes": n})
				}
				if show {
					fmt.Fprintf(a.stdio.Err, "%s → %s:%s (%s)\n", src, did, dpath, size(n))
				}
				return nil
			}
			f, err := c.Files.Open(ctx, sid, spath, user)
			if err != nil {
				return err
			}
			defer f.Close()
			var w io.Writer = a.stdio.Out
			var out *os.File
			if dst != "-" {
				if fi, err := os.Stat(dst); err == nil && fi.IsDir() {
					dst = filepath.Join(dst, path.Base(spath))
				}
				// Written beside the destination, renamed into place when
				// complete: an interrupted copy leaves no partial file.
				out, err = os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".capsule-*")
				if err != nil {
					return err
				}
				defer os.Remove(out.Name())
				defer out.Close()
				w = out
			}
			pr := startProgress(a.stdio.Err, show && dst != "-", "downloading", max(f.Size, 0))
			n, err := io.Copy(w, pr.reader(f))
			pr.end()
			if err != nil {
				return fmt.Errorf("cp: %w", err)
			}
			if out != nil {
				if err := out.Sync(); err != nil {
					return err
				}
				if err := out.Close(); err != nil {
					return err
				}
				if err := os.Chmod(out.Name(), 0o644); err != nil {
					return err
				}
				if err := os.Rename(out.Name(), dst); err != nil {
					return err
				}
			}
			if a.json && dst != "-" {
				return a.printJSON(map[string]any{"path": dst, "bytes": n})
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&user, "user", "u", "", "guest user who owns what is written and reads (default: the sandbox's)")
	return cmd
}
