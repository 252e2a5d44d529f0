package deptest

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// root is the repository's root, from this package's directory.
const root = "../.."

// goPackageDirs lists the directories under internal/, cmd/ and sdk/ that hold Go
// files (testdata and hidden directories excluded, as the go tool does).
func goPackageDirs(t *testing.T) []string {
	t.Helper()
	seen := map[string]bool{}
	for _, top := range []string{"internal", "cmd", "sdk"} {
		err := filepath.WalkDir(filepath.Join(root, top), func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_")) {
				return filepath.SkipDir
			}
			if !d.IsDir() && strings.HasSuffix(p, ".go") {
				rel, err := filepath.Rel(root, filepath.Dir(p))
				if err != nil {
					return err
				}
				seen[filepath.ToSlash(rel)] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	var dirs []string
	for d := range seen {
		dirs = append(dirs, d)
	}
	slices.Sort(dirs)
	return dirs
}

// architectureList returns the packages the README's "Architecture"
// section lists: the first word of each line of its first code block.
func architectureList(readme string) map[string]bool {
	_, sec, ok := strings.Cut(readme, "\n## Architecture\n")
	if !ok {
		return nil
	}
	if i := strings.Index(sec, "\n## "); i >= 0 {
		sec = sec[:i]
	}
	_, block, _ := strings.Cut(sec, "```\n")
	block, _, _ = strings.Cut(block, "```")
	listed := map[string]bool{}
	first := regexp.MustCompile(`^(\S+)\s`)
	for _, line := range strings.Split(block, "\n") {
		if m := first.FindStringSubmatch(line + " "); m != nil {
			listed[m[1]] = true
		}
	}
	return listed
}

// The README's architecture list names every package, and nothing that is
// gone.
func TestREADMEArchitectureNamesEveryPackage(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	listed := architectureList(string(b))
	if len(listed) == 0 {
		t.Fatal(`README.md: no code block under "## Architecture"`)
	}
	for _, dir := range goPackageDirs(t) {
		if !listed[dir] {
			t.Errorf("README.md's architecture list does not name package %s: add a line for it", dir)
		}
	}
	for entry := range listed {
		if !strings.HasPrefix(entry, "internal/") && !strings.HasPrefix(entry, "cmd/") {
			continue // proto/, gen/, web/, deploy, tests/: not Go packages of ours
		}
		if _, err := os.Stat(filepath.Join(root, entry)); err != nil {
			t.Errorf("README.md's architecture list names %s, which does not exist", entry)
		}
	}
}

// The list parser finds entries only in the section's code block.
func TestArchitectureList(t *testing.T) {
	readme := "# X\n\n## Setup\n\n```\ninternal/elsewhere  no\n```\n\n## Architecture\n\nText.\n\n```\ninternal/a    one\n              continued\ninternal/b/c  two\ncmd/d\n```\n\n## Next\n```\ninternal/later  no\n```\n"
	got := architectureList(readme)
	want := map[string]bool{"internal/a": true, "internal/b/c": true, "cmd/d": true}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k := range want {
		if !got[k] {
			t.Errorf("%s missing from %v", k, got)
		}
	}
}
