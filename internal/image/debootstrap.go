package image

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// DefaultMirror is the Debian mirror used when the host's apt sources name
// none for the suite.
const DefaultMirror = "http://deb.debian.org/debian"

// debootstrapSpec is what a debootstrap run depends on; its key names the
// cached tarball of the result.
type debootstrapSpec struct {
	Suite    string
	Variant  string
	Mirror   string
	Packages []string
}

func (d debootstrapSpec) key() string {
	k := newKeyer("debootstrap")
	k.add("suite", d.Suite)
	k.add("variant", d.Variant)
	k.add("mirror", d.Mirror)
	k.addList("packages", d.Packages)
	return k.sum()
}

func (s *Store) debootstrapCache(d debootstrapSpec) string {
	return filepath.Join(s.dir, dirCache, "debootstrap", d.key()+".tar")
}

// tarFlags keep numeric owners, modes, device nodes, hard links and
// extended attributes (file capabilities) of a root filesystem tree.
var tarFlags = []string{"--numeric-owner", "--xattrs", "--xattrs-include=*"}

// debootstrapTree fills root (an empty directory) with the result of
// debootstrap for d, running debootstrap only when the store has no cached
// tarball of it. The caller holds the store lock.
func (s *Store) debootstrapTree(ctx context.Context, d debootstrapSpec, root string) error {
	cache := s.debootstrapCache(d)
	if _, err := os.Stat(cache); errors.Is(err, os.ErrNotExist) {
		if err := s.runDebootstrap(ctx, d, cache); err != nil {
			return err
		}
	} else if err != nil {
		return fmt.Errorf("debootstrap cache: %w", err)
	}
	args := append([]string{"-C", root, "-xpf", cache}, tarFlags...)
	if _, err := runCommand(ctx, s.log, "", "tar", args...); err != nil {
		return fmt.Errorf("unpack debootstrap cache: %w", err)
	}
	return nil
}

// runDebootstrap runs debootstrap in a scratch directory and stores the
// cleaned tree as a tarball at cache (written to a temporary name, then
// renamed).
func (s *Store) runDebootstrap(ctx context.Context, d debootstrapSpec, cache string) error {
	work, err := s.workDir("debootstrap")
	if err != nil {
		return err
	}
	defer s.dropWorkDir(ctx, work)
	tree := filepath.Join(work, "tree")
	s.log.InfoContext(ctx, "running debootstrap (once per package list)", "suite", d.Suite, "mirror", d.Mirror, "packages", len(d.Packages))
	cmd := exec.CommandContext(ctx, "debootstrap", "--variant="+d.Variant, "--components=main",
		"--include="+strings.Join(d.Packages, ","), d.Suite, tree, d.Mirror)
	// A private mount namespace: the /proc and /sys that debootstrap
	// mounts in the tree vanish with it, even when it is killed. Its own
	// process group, so that cancellation kills dpkg and friends too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8")
	if _, err := runCmd(ctx, s.log, cmd, ""); err != nil {
		return fmt.Errorf("debootstrap: %w", err)
	}
	if err := cleanDebootstrapTree(tree); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(cache), 0o755); err != nil {
		return fmt.Errorf("debootstrap cache: %w", err)
	}
	tmp := filepath.Join(work, "tree.tar")
	args := append([]string{"-C", tree, "-cf", tmp}, tarFlags...)
	if _, err := runCommand(ctx, s.log, "", "tar", append(args, ".")...); err != nil {
		return fmt.Errorf("debootstrap cache: %w", err)
	}
	if err := os.Rename(tmp, cache); err != nil {
		return fmt.Errorf("debootstrap cache: %w", err)
	}
	return syncDir(filepath.Dir(cache))
}

// cleanDebootstrapTree drops what a template must not carry: downloaded
// packages and indexes (apt-get update refreshes them) and the host's
// resolver configuration, which debootstrap copies in (envd writes the
// guest's own at boot).
func cleanDebootstrapTree(tree string) error {
	var errs []error
	for _, pattern := range []string{
		"var/cache/apt/archives/*.deb",
		"var/cache/apt/*.bin",
		"var/lib/apt/lists/*_*",
		"etc/resolv.conf",
	} {
		matches, err := filepath.Glob(filepath.Join(tree, pattern))
		if err != nil {
			errs = append(errs, err)
		}
		for _, m := range matches {
			if err := os.Remove(m); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("clean debootstrap tree: %w", err)
	}
	return nil
}

// aptMirror returns the host's Debian mirror for suite: the URIs of the
// deb822 source in /etc/apt/sources.list.d/*.sources or the one-line
// source in /etc/apt/sources.list that carries the suite, else
// DefaultMirror.
func aptMirror(suite string) string {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*.sources")
	for _, f := range files {
		if m := deb822Mirror(f, suite); m != "" {
			return m
		}
	}
	if data, err := os.ReadFile("/etc/apt/sources.list"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			if len(f) < 3 || f[0] != "deb" {
				continue
			}
			f = f[1:]
			if strings.HasPrefix(f[0], "[") { // [arch=… signed-by=…]
				for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
					f = f[1:]
				}
				if len(f) > 0 {
					f = f[1:]
				}
			}
			if len(f) >= 2 && f[1] == suite {
				return f[0]
			}
		}
	}
	return DefaultMirror
}

// deb822Mirror returns the first URI of the stanza in a .sources file
// whose Types include deb and whose Suites include suite.
func deb822Mirror(path, suite string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fields := map[string]string{}
	match := func() string {
		defer clear(fields)
		if !hasWord(fields["types"], "deb") || !hasWord(fields["suites"], suite) {
			return ""
		}
		if uris := strings.Fields(fields["uris"]); len(uris) > 0 {
			return uris[0]
		}
		return ""
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			if m := match(); m != "" {
				return m
			}
			continue
		}
		if strings.HasPrefix(line, "#") || strings.HasPrefix(line, " ") || strings.HasPrefix(line, "\t") {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
		}
	}
	return match()
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}
