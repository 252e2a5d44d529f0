// Package kmod reads Linux kernel module files: their canonical names and
// the dependencies recorded in their ELF .modinfo section. The image
// builder uses it to pick a module closure for the initramfs, and the
// guest's first stage (package guestinit) to order the loads.
package kmod

import (
	"bytes"
	"debug/elf"
	"fmt"
	"path/filepath"
	"strings"
)

// exts are the module file endings Name strips; compressed modules need a
// kernel that decompresses them (MODULE_INIT_COMPRESSED_FILE).
var exts = []string{".ko", ".ko.xz", ".ko.zst", ".ko.gz"}

// Name returns the canonical module name of a file or module name:
// "virtio-net.ko.xz" and "virtio_net" both give "virtio_net".
func Name(file string) string {
	n := filepath.Base(strings.TrimSpace(file))
	for _, ext := range exts {
		if strings.HasSuffix(n, ext) {
			n = strings.TrimSuffix(n, ext)
			break
		}
	}
	return strings.ReplaceAll(n, "-", "_")
}

// IsModuleFile reports whether a file name has a module ending.
func IsModuleFile(name string) bool {
	for _, ext := range exts {
		if strings.HasSuffix(name, ext) {
			return true
		}
	}
	return false
}

// Info is what a module's .modinfo says about it.
type Info struct {
	Name    string   // canonical name ("name=", else from the file name)
	Depends []string // canonical names from "depends="
}

// ReadInfo reads the .modinfo section of an uncompressed module file.
func ReadInfo(path string) (Info, error) {
	f, err := elf.Open(path)
	if err != nil {
		return Info{}, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return Info{}, fmt.Errorf("read module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return Info{}, fmt.Errorf("read module %s: %w", path, err)
	}
	kv := ParseModinfo(data)
	info := Info{Name: Name(path), Depends: splitDepends(kv["depends"])}
	if n := kv["name"]; n != "" {
		info.Name = Name(n)
	}
	return info, nil
}

// ParseModinfo splits a .modinfo section (NUL-separated key=value
// strings). Repeated keys (alias=) keep their last value.
func ParseModinfo(data []byte) map[string]string {
	out := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok && k != "" {
			out[k] = v
		}
	}
	return out
}

func splitDepends(s string) []string {
	var out []string
	for _, d := range strings.Split(s, ",") {
		if d = strings.TrimSpace(d); d == "" {
			continue
		}
		if n := Name(d); n != "" { // ".ko" alone names no module
			out = append(out, n)
		}
	}
	return out
}
