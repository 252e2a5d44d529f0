package sandbox

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzValidTemplateName: a name that validates is safe to use as a file
// name in the templates directory: no separator, no "..", nothing that
// leaves the directory or names it.
func FuzzValidTemplateName(f *testing.F) {
	for _, s := range []string{
		"minimal", "base", "my-template_1", "a", strings.Repeat("a", 63), strings.Repeat("a", 64),
		"..", "../etc", "a/b", `a\b`, ".hidden", "-x", "a..b", "tpl-0123456789abcdef0123456789abcdef",
		"a\x00b", "é", "",
	} {
		f.Add(s)
	}
	const dir = "/var/lib/capsule/templates"
	f.Fuzz(func(t *testing.T, name string) {
		if !ValidTemplateName(name) {
			return
		}
		if name == "" || len(name) > 63 || strings.ContainsAny(name, "/\\\x00.") || strings.HasPrefix(name, "-") {
			t.Fatalf("accepted %q", name)
		}
		p := filepath.Join(dir, name+".json")
		if filepath.Dir(p) != dir || filepath.Base(p) != name+".json" {
			t.Fatalf("%q leaves the templates directory: %s", name, p)
		}
	})
}
