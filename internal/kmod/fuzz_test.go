package kmod

import (
	"strings"
	"testing"
)

// FuzzParseModinfo: a module's .modinfo section (from a downloaded kernel
// package) yields non-empty keys without NULs, and dependency names that
// are non-empty module names.
func FuzzParseModinfo(f *testing.F) {
	f.Add([]byte("license=GPL\x00depends=virtio,virtio_ring\x00name=virtio_net\x00vermagic=6.1.0 SMP mod_unload \x00"))
	f.Add([]byte("depends=\x00=x\x00noequals\x00\x00\x00"))
	f.Add([]byte("depends= a-b , ,c.ko.xz,/\x00"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		kv := ParseModinfo(data)
		for k, v := range kv {
			if k == "" || strings.ContainsRune(k, 0) || strings.ContainsRune(v, 0) || strings.Contains(k, "=") {
				t.Fatalf("ParseModinfo(%q) gave %q=%q", data, k, v)
			}
		}
		for _, d := range splitDepends(kv["depends"]) {
			if d == "" || strings.ContainsAny(d, "-,\x00") {
				t.Fatalf("ParseModinfo(%q): dependency %q", data, d)
			}
		}
	})
}
