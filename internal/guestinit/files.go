package guestinit

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// hostsMarker ends every /etc/hosts line that envd manages, so that a
// later boot replaces its own lines and leaves the template's alone.
const hostsMarker = "# capsule"

// RenderResolvConf returns a resolv.conf naming the given servers, in
// order and without duplicates. (glibc reads only the first three.)
func RenderResolvConf(servers []netip.Addr) []byte {
	var b bytes.Buffer
	b.WriteString("# Written by envd from the kernel command line.\n")
	seen := map[netip.Addr]bool{}
	for _, s := range servers {
		if !s.IsValid() || seen[s] {
			continue
		}
		seen[s] = true
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	return b.Bytes()
}

// RenderHosts returns existing (the current /etc/hosts, possibly empty)
// with the lines envd manages replaced: it makes sure localhost resolves
// and maps hostname to addr (127.0.1.1 when addr is invalid, as Debian
// does). Lines envd did not write are kept, except other mappings of the
// same hostname, which would shadow the new one. Rendering its own output
// again gives the same bytes.
func RenderHosts(existing []byte, hostname string, addr netip.Addr) []byte {
	var kept []string
	hasLocal4, hasLocal6 := false, false
	for _, line := range strings.Split(string(existing), "\n") {
		if strings.HasSuffix(strings.TrimSpace(line), hostsMarker) {
			continue
		}
		f := strings.Fields(line)
		if len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			for _, n := range f[1:] {
				if strings.HasPrefix(n, "#") {
					break
				}
				if n == "localhost" {
					if a, err := netip.ParseAddr(f[0]); err == nil && a.Is4() {
						hasLocal4 = true
					} else if err == nil {
						hasLocal6 = true
					}
				}
			}
			if hostname != "" && hostsLineHasName(f[1:], hostname) && !hostsLineHasName(f[1:], "localhost") {
				continue
			}
		}
		kept = append(kept, line)
	}
	for len(kept) > 0 && strings.TrimSpace(kept[len(kept)-1]) == "" {
		kept = kept[:len(kept)-1]
	}
	var b strings.Builder
	for _, l := range kept {
		b.WriteString(l)
		b.WriteByte('\n')
	}
	if !hasLocal4 {
		fmt.Fprintf(&b, "127.0.0.1\tlocalhost\t%s\n", hostsMarker)
	}
	if !hasLocal6 {
		fmt.Fprintf(&b, "::1\tlocalhost ip6-localhost ip6-loopback\t%s\n", hostsMarker)
	}
	if hostname != "" {
		if !addr.IsValid() {
			addr = netip.MustParseAddr("127.0.1.1")
		}
		names := hostname
		if short, _, ok := strings.Cut(hostname, "."); ok && short != "" {
			names += " " + short
		}
		fmt.Fprintf(&b, "%s\t%s\t%s\n", addr, names, hostsMarker)
	}
	return []byte(b.String())
}

func hostsLineHasName(names []string, name string) bool {
	for _, n := range names {
		if strings.HasPrefix(n, "#") {
			return false
		}
		if strings.EqualFold(n, name) {
			return true
		}
	}
	return false
}

// writeFileAtomic replaces path with data through a temporary file in the
// same directory and a rename, so that readers never see a partial file
// and a symlink at path (systemd's resolv.conf) is replaced, not followed.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".envd-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	cerr := f.Close()
	if err := errors.Join(werr, cerr, os.Chmod(tmp, perm)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// identity is what init mode writes into /etc.
type identity struct {
	etc         string // the /etc directory to write to
	hostname    string
	addr        netip.Addr // the guest address the hostname maps to
	dns         []netip.Addr
	sethostname func(string) error // nil: leave the kernel's hostname alone
}

// apply sets the hostname (kernel, /etc/hostname, /etc/hosts) and
// /etc/resolv.conf. Without a hostname of its own, the kernel's is the
// root filesystem's /etc/hostname, as a distribution's init would set it
// (else it stays "(none)", which sudo and resolvers trip on). Each step
// runs whatever the others did; failures are collected.
func (id identity) apply() error {
	var errs []error
	if id.hostname == "" && id.sethostname != nil {
		if err := id.keepHostname(); err != nil {
			errs = append(errs, err)
		}
	}
	if id.hostname != "" {
		if id.sethostname != nil {
			if err := id.sethostname(id.hostname); err != nil {
				errs = append(errs, fmt.Errorf("set hostname %q: %w", id.hostname, err))
			}
		}
		if err := writeFileAtomic(filepath.Join(id.etc, "hostname"), []byte(id.hostname+"\n"), 0o644); err != nil {
			errs = append(errs, err)
		}
		hostsPath := filepath.Join(id.etc, "hosts")
		old, err := os.ReadFile(hostsPath)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("read %s: %w", hostsPath, err))
		} else if err := writeFileAtomic(hostsPath, RenderHosts(old, id.hostname, id.addr), 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	if len(id.dns) > 0 {
		if err := writeFileAtomic(filepath.Join(id.etc, "resolv.conf"), RenderResolvConf(id.dns), 0o644); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// keepHostname sets the kernel's hostname to /etc/hostname's (its first
// line; nothing when the file is absent or empty).
func (id identity) keepHostname() error {
	path := filepath.Join(id.etc, "hostname")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", path, err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	h := strings.TrimSpace(line)
	if h == "" {
		return nil
	}
	if err := validHostname(h); err != nil {
		return fmt.Errorf("%s: hostname %q: %w", path, h, err)
	}
	if err := id.sethostname(h); err != nil {
		return fmt.Errorf("set hostname %q (from %s): %w", h, path, err)
	}
	return nil
}

// SetHostname sets the hostname of a running guest as Setup does at boot:
// in the kernel, /etc/hostname and /etc/hosts (where it maps to
// 127.0.1.1). envd's /init uses it to give a fork its own.
func SetHostname(hostname string) error {
	if err := validHostname(hostname); err != nil {
		return fmt.Errorf("hostname %q: %w", hostname, err)
	}
	return identity{etc: "/etc", hostname: hostname,
		sethostname: func(h string) error { return unix.Sethostname([]byte(h)) }}.apply()
}
