package guestinit

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRenderResolvConf(t *testing.T) {
	got := string(RenderResolvConf([]netip.Addr{addr("1.1.1.1"), {}, addr("2606:4700:4700::1111"), addr("1.1.1.1")}))
	want := "# Written by envd from the kernel command line.\nnameserver 1.1.1.1\nnameserver 2606:4700:4700::1111\n"
	if got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestRenderHosts(t *testing.T) {
	tests := []struct {
		name, existing, hostname string
		addr                     netip.Addr
		want                     string
	}{
		{
			name: "empty file", hostname: "sb-1", addr: addr("169.254.0.21"),
			want: "127.0.0.1\tlocalhost\t# capsule\n::1\tlocalhost ip6-localhost ip6-loopback\t# capsule\n169.254.0.21\tsb-1\t# capsule\n",
		},
		{
			name:     "debian template",
			existing: "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate-host\n\n# IPv6\n::1     localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\n\n",
			hostname: "sb-2.example", addr: addr("10.0.0.2"),
			want: "127.0.0.1\tlocalhost\n127.0.1.1\ttemplate-host\n\n# IPv6\n::1     localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\n10.0.0.2\tsb-2.example sb-2\t# capsule\n",
		},
		{
			name:     "previous boot and a stale mapping of the same name",
			existing: "127.0.0.1 localhost\n::1 localhost\n10.9.9.9 sb-3 # set by hand\n169.254.0.21\told\t# capsule\n",
			hostname: "sb-3",
			want:     "127.0.0.1 localhost\n::1 localhost\n127.0.1.1\tsb-3\t# capsule\n",
		},
		{
			name:     "hostname on the localhost line stays",
			existing: "127.0.0.1 localhost sb-4\n::1 localhost\n",
			hostname: "sb-4", addr: addr("10.0.0.4"),
			want: "127.0.0.1 localhost sb-4\n::1 localhost\n10.0.0.4\tsb-4\t# capsule\n",
		},
		{
			name:     "commented localhost does not count",
			existing: "#127.0.0.1 localhost\n1.2.3.4 other # localhost\n",
			hostname: "h", addr: addr("10.0.0.5"),
			want: "#127.0.0.1 localhost\n1.2.3.4 other # localhost\n127.0.0.1\tlocalhost\t# capsule\n::1\tlocalhost ip6-localhost ip6-loopback\t# capsule\n10.0.0.5\th\t# capsule\n",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := string(RenderHosts([]byte(tc.existing), tc.hostname, tc.addr))
			if got != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.want)
			}
			if again := string(RenderHosts([]byte(got), tc.hostname, tc.addr)); again != got {
				t.Fatalf("not idempotent:\n%s\nthen\n%s", got, again)
			}
		})
	}
}

func TestWriteFileAtomicReplacesSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "stub-resolv.conf")
	if err := os.WriteFile(target, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "etc", "resolv.conf")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		t.Fatal(err)
	}
	if err := writeFileAtomic(p, []byte("new\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(p); err != nil || !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o644 {
		t.Fatalf("resolv.conf is not a 0644 regular file: %v %v", fi, err)
	}
	if b, _ := os.ReadFile(target); string(b) != "old" {
		t.Error("wrote through the symlink")
	}
	ents, _ := os.ReadDir(filepath.Dir(p))
	if len(ents) != 1 {
		t.Errorf("temporary files left: %v", ents)
	}
}

func TestIdentityApply(t *testing.T) {
	etc := filepath.Join(t.TempDir(), "etc")
	var set []string
	id := identity{
		etc:         etc,
		hostname:    "sb-9",
		addr:        addr("169.254.0.21"),
		dns:         []netip.Addr{addr("9.9.9.9")},
		sethostname: func(h string) error { set = append(set, h); return nil },
	}
	for i := 0; i < 2; i++ {
		if err := id.apply(); err != nil {
			t.Fatal(err)
		}
	}
	if len(set) != 2 || set[0] != "sb-9" {
		t.Errorf("sethostname calls: %v", set)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(etc, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if got := read("hostname"); got != "sb-9\n" {
		t.Errorf("hostname = %q", got)
	}
	if got := read("hosts"); strings.Count(got, "sb-9") != 1 || !strings.Contains(got, "169.254.0.21\tsb-9") {
		t.Errorf("hosts = %q", got)
	}
	if got := read("resolv.conf"); !strings.Contains(got, "nameserver 9.9.9.9\n") {
		t.Errorf("resolv.conf = %q", got)
	}

	// Nothing to do: nothing written, nothing called.
	empty := identity{etc: filepath.Join(t.TempDir(), "etc"), sethostname: func(string) error { t.Error("sethostname called"); return nil }}
	if err := empty.apply(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(empty.etc); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("etc created without anything to write: %v", err)
	}

	// No hostname of its own: the kernel's is the root filesystem's, and
	// no file changes.
	for _, tc := range []struct {
		name, file string
		want       []string
		wantErr    bool
	}{
		{"a hostname", "capsule\n", []string{"capsule"}, false},
		{"blanks around it, a second line", "  box-1 \nother\n", []string{"box-1"}, false},
		{"an empty file", "\n", nil, false},
		{"no hostname there", "bad name!\n", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			keep := identity{etc: t.TempDir(), sethostname: func(h string) error { got = append(got, h); return nil }}
			path := filepath.Join(keep.etc, "hostname")
			if err := os.WriteFile(path, []byte(tc.file), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := keep.apply(); (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
				t.Fatalf("apply: %v, sethostname %q; want error %v, %q", err, got, tc.wantErr, tc.want)
			}
			if b, _ := os.ReadFile(path); string(b) != tc.file {
				t.Errorf("/etc/hostname became %q", b)
			}
			if ents, _ := os.ReadDir(keep.etc); len(ents) != 1 {
				t.Errorf("files written: %v", ents)
			}
		})
	}

	// Failures are collected, and the other steps still run.
	bad := id
	bad.sethostname = func(string) error { return errors.New("EPERM") }
	bad.etc = filepath.Join(t.TempDir(), "etc")
	err := bad.apply()
	if err == nil || !strings.Contains(err.Error(), "set hostname") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(filepath.Join(bad.etc, "resolv.conf")); err != nil {
		t.Errorf("resolv.conf not written after a hostname failure: %v", err)
	}
}
