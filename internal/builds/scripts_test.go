package builds

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/capsulehq/capsule/internal/testenv"
)

// TestCopyScript runs COPY's script with the shells guests have (dash as
// Debian's sh, busybox's ash as the minimal image's) on this machine's
// files: a directory's content into the destination, a file to a path or
// into a directory, modes, and a missing source.
func TestCopyScript(t *testing.T) {
	testenv.RequireRoot(t) // chown to root:root
	shells := [][]string{{"/bin/sh"}}
	if bb, err := exec.LookPath("busybox"); err == nil {
		shells = append(shells, []string{bb, "sh"})
	}
	for _, sh := range shells {
		t.Run(strings.Join(sh, " "), func(t *testing.T) {
			ctxDir := t.TempDir()
			for name, body := range map[string]string{"site/index.html": "hi", "site/.hidden": "h", "site/css/a.css": "c", "bin/run": "r"} {
				p := filepath.Join(ctxDir, name)
				os.MkdirAll(filepath.Dir(p), 0o755)
				os.WriteFile(p, []byte(body), 0o644)
			}
			dst := t.TempDir()
			run := func(src, to, mode string) (string, error) {
				cmd := exec.Command(sh[0], append(sh[1:], "-c", copyScript)...)
				cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "CONTEXT=" + ctxDir, "SRC=" + src, "DST=" + to, "OWNER=root", "MODE=" + mode}
				out, err := cmd.CombinedOutput()
				return string(out), err
			}
			for _, tc := range []struct {
				name, src, dst, mode string
				want                 map[string]string // path under dst → content ("" a directory)
				perm                 map[string]os.FileMode
			}{
				{"a directory's content", "site", dst + "/www", "", map[string]string{"www/index.html": "hi", "www/.hidden": "h", "www/css/a.css": "c"}, nil},
				{"the whole context", ".", dst + "/all", "", map[string]string{"all/site/index.html": "hi", "all/bin/run": "r"}, nil},
				{"a file to a path", "bin/run", dst + "/x/y/run2", "0755", map[string]string{"x/y/run2": "r"}, map[string]os.FileMode{"x/y/run2": 0o755}},
				{"a file into a directory", "bin/run", dst + "/into/", "", map[string]string{"into/run": "r"}, nil},
				{"a file into an existing directory", "site/index.html", dst + "/www", "", map[string]string{"www/index.html": "hi"}, nil},
			} {
				t.Run(tc.name, func(t *testing.T) {
					if out, err := run(tc.src, tc.dst, tc.mode); err != nil {
						t.Fatalf("copy: %v: %s", err, out)
					}
					for p, want := range tc.want {
						b, err := os.ReadFile(filepath.Join(dst, p))
						if err != nil || string(b) != want {
							t.Errorf("%s = %q, %v; want %q", p, b, err, want)
						}
					}
					for p, want := range tc.perm {
						if fi, err := os.Stat(filepath.Join(dst, p)); err != nil || fi.Mode().Perm() != want {
							t.Errorf("%s mode %v, want %v", p, fi.Mode().Perm(), want)
						}
					}
				})
			}
			t.Run("a missing source", func(t *testing.T) {
				out, err := run("nope", dst+"/n", "")
				if err == nil || !strings.Contains(out, "COPY: nope is not in the archive") {
					t.Fatalf("copy of a missing source: %v: %s", err, out)
				}
			})
		})
	}
}
