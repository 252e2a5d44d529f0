package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// aptPackage is a concrete Debian package version.
type aptPackage struct{ Name, Version string }

// aptStateFiles are the files whose change can change what apt resolves a
// package name to: the package indexes, the sources and the pin
// preferences.
var aptStateFiles = []string{
	"/var/lib/apt/lists/*",
	"/etc/apt/sources.list", "/etc/apt/sources.list.d/*",
	"/etc/apt/preferences", "/etc/apt/preferences.d/*",
}

// aptStateKey fingerprints the apt state (names, sizes and modification
// times of aptStateFiles) together with pkg.
func aptStateKey(pkg string) string {
	k := newKeyer("apt-resolve")
	k.add("package", pkg)
	for _, pattern := range aptStateFiles {
		matches, _ := filepath.Glob(pattern)
		for _, m := range matches {
			if filepath.Base(m) == "lock" {
				continue // touched by every apt run
			}
			if fi, err := os.Stat(m); err == nil && fi.Mode().IsRegular() {
				k.add("file", m, fmt.Sprint(fi.Size()), fmt.Sprint(fi.ModTime().UnixNano()))
			}
		}
	}
	return k.sum()
}

// resolveKernelPackage is resolveAptKernel, remembered in the store's
// cache for as long as the apt state is unchanged (apt-cache takes about a
// second per call, the fingerprint a millisecond).
func (s *Store) resolveKernelPackage(ctx context.Context, pkg string) (aptPackage, error) {
	path := filepath.Join(s.dir, dirCache, "apt", aptStateKey(pkg)+".json")
	var p aptPackage
	if data, err := os.ReadFile(path); err == nil && json.Unmarshal(data, &p) == nil && p.Name != "" && p.Version != "" {
		return p, nil
	}
	p, err := resolveAptKernel(ctx, s.log, pkg)
	if err != nil {
		return p, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return p, fmt.Errorf("apt cache: %w", err)
	}
	return p, writeJSONAtomic(path, p)
}

// resolveAptKernel turns a kernel package name (a metapackage such as
// linux-image-cloud-amd64, or a concrete linux-image-<version>-<flavour>)
// into the concrete package and the version apt would install, without
// downloading anything.
func resolveAptKernel(ctx context.Context, log *slog.Logger, pkg string) (aptPackage, error) {
	name := pkg
	for range 3 { // metapackage → concrete package, at most a few levels
		out, err := runCommand(ctx, log, "", "apt-cache", "depends", "--no-recommends", "--no-suggests", name)
		if err != nil {
			return aptPackage{}, fmt.Errorf("resolve kernel package %s (try apt-get update): %w", pkg, err)
		}
		next := ""
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			dep, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "Depends: ")
			if ok && strings.HasPrefix(dep, "linux-image-") && !strings.HasPrefix(dep, "<") {
				next = dep
				break
			}
		}
		if next == "" {
			break // concrete: it depends on no other kernel image
		}
		name = next
	}
	out, err := runCommand(ctx, log, "", "apt-cache", "show", "--no-all-versions", name)
	if err != nil {
		return aptPackage{}, fmt.Errorf("resolve kernel package %s (try apt-get update): %w", pkg, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return aptPackage{Name: name, Version: strings.TrimSpace(v)}, nil
		}
	}
	return aptPackage{}, fmt.Errorf("resolve kernel package %s: no version for %s", pkg, name)
}

// aptDownload fetches the .deb of p with apt-get download into dir (a
// fresh directory) and returns its path.
func aptDownload(ctx context.Context, log *slog.Logger, dir string, p aptPackage) (string, error) {
	log.InfoContext(ctx, "downloading package", "package", p.Name, "version", p.Version)
	if _, err := runCommand(ctx, log, dir, "apt-get", "download", "-q", p.Name+"="+p.Version); err != nil {
		return "", fmt.Errorf("download %s=%s: %w", p.Name, p.Version, err)
	}
	debs, err := filepath.Glob(filepath.Join(dir, "*.deb"))
	if err != nil || len(debs) != 1 {
		return "", fmt.Errorf("download %s=%s: expected one .deb in %s, found %d", p.Name, p.Version, dir, len(debs))
	}
	if _, err := os.Stat(debs[0]); err != nil {
		return "", fmt.Errorf("download %s=%s: %w", p.Name, p.Version, err)
	}
	return debs[0], nil
}
