package pgembed

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// DebianBinGlob is where Debian and Ubuntu install PostgreSQL server binaries,
// one directory per major version.
const DebianBinGlob = "/usr/lib/postgresql/*/bin"

// ErrNoBinaries means no PostgreSQL server binaries were found.
var ErrNoBinaries = errors.New("pgembed: no PostgreSQL server binaries (initdb, postgres) found; install postgresql-15 (Debian) or set the binary directory")

// FindBinDir returns a directory holding initdb and postgres.
//
// A configured directory is used as is (and must hold both). Otherwise the
// newest version under /usr/lib/postgresql/*/bin is chosen, or, when major is
// not empty (the version of an existing cluster), that version; last, the
// directory of initdb on PATH.
func FindBinDir(configured, major string) (string, error) {
	if configured != "" {
		if err := checkBinDir(configured); err != nil {
			return "", err
		}
		return configured, nil
	}
	dirs, _ := filepath.Glob(DebianBinGlob)
	type cand struct {
		dir string
		ver []int
	}
	var cands []cand
	for _, d := range dirs {
		v := filepath.Base(filepath.Dir(d))
		ver, ok := parseVersion(v)
		if !ok || checkBinDir(d) != nil {
			continue
		}
		if major != "" && v == major {
			return d, nil
		}
		cands = append(cands, cand{d, ver})
	}
	if major != "" {
		// An existing cluster needs binaries of its own major version.
		if d, err := pathBinDir(); err == nil {
			if v, err := BinVersion(d); err == nil && v == major {
				return d, nil
			}
		}
		have := make([]string, 0, len(cands))
		for _, c := range cands {
			have = append(have, c.dir)
		}
		return "", fmt.Errorf("pgembed: the cluster was made by PostgreSQL %s, but no binaries of that version were found (have: %s); install postgresql-%s or upgrade the cluster with pg_upgrade", major, strings.Join(have, ", "), major)
	}
	if len(cands) > 0 {
		sort.Slice(cands, func(i, j int) bool { return versionLess(cands[j].ver, cands[i].ver) })
		return cands[0].dir, nil
	}
	return pathBinDir()
}

func pathBinDir() (string, error) {
	p, err := exec.LookPath("initdb")
	if err != nil {
		return "", ErrNoBinaries
	}
	if r, err := filepath.EvalSymlinks(p); err == nil {
		p = r
	}
	d := filepath.Dir(p)
	if err := checkBinDir(d); err != nil {
		return "", err
	}
	return d, nil
}

func checkBinDir(dir string) error {
	for _, name := range []string{"initdb", "postgres"} {
		st, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return fmt.Errorf("pgembed: %s: %w", dir, ErrNoBinaries)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return fmt.Errorf("pgembed: %s is not executable", filepath.Join(dir, name))
		}
	}
	return nil
}

var versionRE = regexp.MustCompile(`\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?`)

// BinVersion returns the major version ("15") of the postgres binary in dir.
func BinVersion(dir string) (string, error) {
	out, err := exec.Command(filepath.Join(dir, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("pgembed: %s --version: %w", filepath.Join(dir, "postgres"), err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("pgembed: unrecognized postgres --version output %q", strings.TrimSpace(string(out)))
	}
	major := string(m[1])
	if major == "9" || major == "8" {
		major += "." + string(m[2])
	}
	return major, nil
}

func parseVersion(s string) ([]int, bool) {
	parts := strings.Split(s, ".")
	v := make([]int, 0, len(parts))
	for _, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return nil, false
		}
		v = append(v, n)
	}
	return v, len(v) > 0
}

func versionLess(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}
