package main

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzReadConfigFile: a configuration file is either refused with an
// error or read as settings with distinct keys and real line numbers;
// never a panic, whatever YAML it holds.
func FuzzReadConfigFile(f *testing.F) {
	for _, s := range []string{
		"listen: \":8080\"\ndata-dir: /var/lib/capsule\nmetrics: true\n",
		"", "# only a comment\n", "---\n", "- a\n- b\n", "a: [1, 2]\n", "a: {b: c}\n", "a: ~\n", "a: 1\na: 2\n",
		"? [x]\n: y\n", "a: &x 1\nb: *x\n", "*x: 1\n", "a: !!binary aGk=\n", "a: |\n  multi\n  line\n", "{a: 1, b}\n", "a: 'unterminated\n",
		"\t- tab\n", "a: 1\n---\nb: 2\n", "\xff: 1\n",
	} {
		f.Add(s)
	}
	// One file per fuzzing process (t.TempDir per input is slow).
	dir, err := os.MkdirTemp("", "capsule-config-fuzz")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { os.RemoveAll(dir) })
	p := filepath.Join(dir, "capsule.yaml")
	f.Fuzz(func(t *testing.T, content string) {
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		vals, err := readConfigFile(p)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, v := range vals {
			if seen[v.key] {
				t.Fatalf("%q: %q read twice", content, v.key)
			}
			seen[v.key] = true
			if v.line < 1 {
				t.Fatalf("%q: %q on line %d", content, v.key, v.line)
			}
		}
	})
}
