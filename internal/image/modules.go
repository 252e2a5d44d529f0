package image

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"sort"
	"strings"

	"github.com/capsulehq/capsule/internal/kmod"
)

// GuestModules are the kernel modules a guest needs for QEMU's microvm
// machine (virtio-mmio transport discovered through ACPI, virtio block
// for the rootfs, virtio net, and virtio balloon, whose free-page
// reporting hands the pages the guest frees back to the host: see package
// qemu, Memory). Their dependencies are added from each module's .modinfo;
// a module the kernel has built in is skipped.
var GuestModules = []string{"virtio_mmio", "virtio_blk", "virtio_net", "virtio_balloon"}

// moduleFile is a kernel module file and what it depends on.
type moduleFile struct {
	Name    string   // canonical name: file name without .ko, '-' as '_'
	Path    string   // the .ko file
	Depends []string // canonical names from .modinfo "depends="
}

// moduleName is the canonical module name of a file or module name.
func moduleName(file string) string { return kmod.Name(file) }

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
	info, err := kmod.ReadInfo(path)
	return info.Depends, err
}

// moduleClosure returns the modules in want plus everything they depend
// on (dependsOf reads a module file's dependencies), in a load order where
// each module follows its dependencies (depth first, in the order of want,
// dependencies by name). A wanted module absent from idx is taken as built
// into the kernel and skipped; a missing dependency or a cycle is an
// error.
func moduleClosure(idx map[string]string, want []string, dependsOf func(path string) ([]string, error)) ([]moduleFile, error) {
	var out []moduleFile
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
		out = append(out, moduleFile{Name: name, Path: path, Depends: deps})
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
