package image

import (
	"bytes"
	"debug/elf"
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"
)

// GuestModules are the kernel modules a guest needs for QEMU's microvm
// machine (virtio-mmio transport discovered through ACPI, virtio block
// for the rootfs, virtio net). Their dependencies are added from each
// module's .modinfo; a module the kernel has built in is skipped.
var GuestModules = []string{"virtio_mmio", "virtio_blk", "virtio_net"}

// kmod is a kernel module file and what it depends on.
type kmod struct {
	Name    string   // canonical name: file name without .ko, '-' as '_'
	Path    string   // the .ko file
	Depends []string // canonical names from .modinfo "depends="
}

// moduleName is the canonical module name of a file or module name.
func moduleName(file string) string {
	n := strings.TrimSuffix(filepath.Base(file), ".ko")
	return strings.ReplaceAll(n, "-", "_")
}

// indexModules maps canonical module names to their .ko files under dir
// (a kernel's lib/modules/<version>). Compressed modules are reported as
// an error: this builder reads .modinfo from plain ELF files only.
func indexModules(dir string) (map[string]string, error) {
	idx := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		switch n := d.Name(); {
		case d.IsDir():
		case strings.HasSuffix(n, ".ko"):
			idx[moduleName(n)] = p
		case strings.HasSuffix(n, ".ko.xz"), strings.HasSuffix(n, ".ko.zst"), strings.HasSuffix(n, ".ko.gz"):
			return fmt.Errorf("%s: compressed kernel modules are not supported", p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("index kernel modules: %w", err)
	}
	return idx, nil
}

// readModuleDepends returns the dependencies of the module file at path.
func readModuleDepends(path string) ([]string, error) {
	_, deps, err := readModinfo(path)
	return deps, err
}

// readModinfo reads a module's canonical name and dependencies from its
// ELF .modinfo section (NUL-separated key=value strings).
func readModinfo(path string) (name string, depends []string, err error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", nil, fmt.Errorf("read module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return "", nil, fmt.Errorf("read module %s: no .modinfo section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return "", nil, fmt.Errorf("read module %s: %w", path, err)
	}
	name = moduleName(path)
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			name = moduleName(v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					depends = append(depends, moduleName(d))
				}
			}
		}
	}
	return name, depends, nil
}

// moduleClosure returns the modules in want plus everything they depend
// on (dependsOf reads a module file's dependencies), in a load order where
// each module follows its dependencies (depth first, in the order of want,
// dependencies by name). A wanted module absent from idx is taken as built
// into the kernel and skipped; a missing dependency or a cycle is an
// error.
func moduleClosure(idx map[string]string, want []string, dependsOf func(path string) ([]string, error)) ([]kmod, error) {
	var out []kmod
	state := map[string]int{} // 1: visiting, 2: done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("kernel module dependency cycle: %s", strings.Join(append(chain, name), " → "))
		case 2:
			return nil
		}
		path, ok := idx[name]
		if !ok {
			return fmt.Errorf("kernel module %s (needed by %s) not found", name, strings.Join(chain, " → "))
		}
		state[name] = 1
		deps, err := dependsOf(path)
		if err != nil {
			return err
		}
		deps = append([]string(nil), deps...)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, kmod{Name: name, Path: path, Depends: deps})
		return nil
	}
	for _, w := range want {
		w = moduleName(w)
		if _, ok := idx[w]; !ok {
			continue // built in
		}
		if err := visit(w, nil); err != nil {
			return nil, err
		}
	}
	return out, nil
}
