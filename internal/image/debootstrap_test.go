package image

import (
	"os"
	"path/filepath"
	"testing"
)

func TestDeb822Mirror(t *testing.T) {
	tests := []struct {
		name, content, suite, want string
	}{
		{
			name: "debian.sources",
			content: `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
`,
			suite: "bookworm", want: "http://deb.debian.org/debian",
		},
		{
			name:    "second stanza",
			content: "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\nTypes: deb deb-src\nURIs: http://mirror.example/debian http://other.example/debian\nSuites: bookworm\n",
			suite:   "bookworm", want: "http://mirror.example/debian",
		},
		{name: "other suite", content: "Types: deb\nURIs: http://x/debian\nSuites: trixie\n", suite: "bookworm", want: ""},
		{name: "empty", content: "", suite: "bookworm", want: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "x.sources")
			if err := os.WriteFile(p, []byte(tt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if got := deb822Mirror(p, tt.suite); got != tt.want {
				t.Fatalf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestKeyerSeparatesInputs(t *testing.T) {
	a := newKeyer("x")
	a.add("l", "ab", "c")
	b := newKeyer("x")
	b.add("l", "a", "bc")
	c := newKeyer("x")
	c.addList("l", []string{"ab", "c"})
	d := newKeyer("x")
	d.addList("l", []string{"a", "bc"})
	keys := map[string]bool{a.sum(): true, b.sum(): true, c.sum(): true, d.sum(): true}
	if len(keys) != 4 {
		t.Fatalf("inputs collide: %v", keys)
	}
	if len(a.sum()) != keyLen {
		t.Fatalf("key length %d", len(a.sum()))
	}
}
