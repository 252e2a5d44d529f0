package guestinit

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/kmod"
)

// ModulesOrderFile, in a modules directory, lists module files one per line
// in the order to load them (a path's directory part is ignored, so the
// kernel's own modules.order format works too).
const ModulesOrderFile = "modules.order"

// Module is a kernel module file to load.
type Module struct {
	Name    string   // canonical module name: file name without extension, '-' as '_'
	Path    string   // file to pass to finit_module
	Depends []string // canonical names from .modinfo "depends=", when readable
}

// ModuleName returns the canonical module name of a file name or module
// name: "virtio-net.ko.xz" and "virtio_net" both give "virtio_net".
func ModuleName(file string) string { return kmod.Name(file) }

func compressedModule(path string) bool {
	return !strings.HasSuffix(path, ".ko")
}

// ScanModules lists the module files in dir (not recursive) with their
// dependencies read from each uncompressed module's .modinfo section.
func ScanModules(dir string) ([]Module, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read modules directory: %w", err)
	}
	var mods []Module
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		if !kmod.IsModuleFile(e.Name()) {
			continue
		}
		m := Module{Name: kmod.Name(e.Name()), Path: filepath.Join(dir, e.Name())}
		if !compressedModule(m.Path) {
			if info, err := kmod.ReadInfo(m.Path); err == nil {
				m.Name, m.Depends = info.Name, info.Depends
			}
		}
		mods = append(mods, m)
	}
	return mods, nil
}

// readModulesOrder reads a modules.order file; a missing file is no order.
func readModulesOrder(path string) ([]string, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		out = append(out, line)
	}
	return out, sc.Err()
}

// PlanModules orders mods for loading: every module comes after the
// modules it depends on (dependencies not among mods are assumed built
// into the kernel); among the modules whose dependencies are met, those
// named in order — or needed by one named there — come first, in that
// order, then the rest by name. It
// fails when order names a module that is not in mods, or when
// dependencies form a cycle.
func PlanModules(mods []Module, order []string) ([]Module, error) {
	byName := map[string]int{}
	for i, m := range mods {
		if _, dup := byName[m.Name]; dup {
			return nil, fmt.Errorf("module %s present twice", m.Name)
		}
		byName[m.Name] = i
	}
	rank := map[string]int{}
	for i, o := range order {
		n := ModuleName(o)
		if _, ok := byName[n]; !ok {
			return nil, fmt.Errorf("module %s is listed in the load order but missing", n)
		}
		if _, seen := rank[n]; !seen {
			rank[n] = i
		}
	}
	// A listed module's dependencies inherit its rank, so that it loads
	// as early as they allow instead of waiting for unlisted ones.
	var lift func(name string, r int, seen map[string]bool)
	lift = func(name string, r int, seen map[string]bool) {
		if seen[name] {
			return
		}
		seen[name] = true
		if cur, ok := rank[name]; !ok || r < cur {
			rank[name] = r
		}
		for _, d := range mods[byName[name]].Depends {
			if _, in := byName[d]; in {
				lift(d, r, seen)
			}
		}
	}
	for _, o := range order {
		n := ModuleName(o)
		lift(n, rank[n], map[string]bool{})
	}
	less := func(a, b string) bool {
		ra, oka := rank[a]
		rb, okb := rank[b]
		switch {
		case oka && okb:
			return ra < rb
		case oka != okb:
			return oka
		}
		return a < b
	}
	// Kahn's algorithm, picking the best-ranked ready module each time.
	pending := map[string]int{} // unmet in-set dependencies
	users := map[string][]string{}
	for _, m := range mods {
		seen := map[string]bool{}
		for _, d := range m.Depends {
			if _, in := byName[d]; !in || seen[d] || d == m.Name {
				continue
			}
			seen[d] = true
			pending[m.Name]++
			users[d] = append(users[d], m.Name)
		}
	}
	var ready []string
	for _, m := range mods {
		if pending[m.Name] == 0 {
			ready = append(ready, m.Name)
		}
	}
	out := make([]Module, 0, len(mods))
	for len(ready) > 0 {
		sort.Slice(ready, func(i, j int) bool { return less(ready[i], ready[j]) })
		n := ready[0]
		ready = ready[1:]
		out = append(out, mods[byName[n]])
		for _, u := range users[n] {
			if pending[u]--; pending[u] == 0 {
				ready = append(ready, u)
			}
		}
	}
	if len(out) != len(mods) {
		var stuck []string
		for _, m := range mods {
			if pending[m.Name] > 0 {
				stuck = append(stuck, m.Name)
			}
		}
		sort.Strings(stuck)
		return nil, fmt.Errorf("module dependency cycle among %s", strings.Join(stuck, ", "))
	}
	return out, nil
}

// LoadModules loads the kernel modules in dir with finit_module(2), in the
// order PlanModules gives for order (when order is empty, dir's
// modules.order file is used if present). A module that is already loaded
// or built in (EEXIST) is not an error; other failures are collected and
// the remaining modules are still tried.
func LoadModules(log *slog.Logger, dir string, order []string) error {
	if log == nil {
		log = slog.Default()
	}
	mods, err := ScanModules(dir)
	if err != nil {
		return err
	}
	if len(order) == 0 {
		if order, err = readModulesOrder(filepath.Join(dir, ModulesOrderFile)); err != nil {
			return fmt.Errorf("read %s: %w", ModulesOrderFile, err)
		}
	}
	plan, err := PlanModules(mods, order)
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range plan {
		if err := loadModule(m); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Debug("module loaded", "module", m.Name)
	}
	return errors.Join(errs...)
}

func loadModule(m Module) error {
	f, err := os.Open(m.Path)
	if err != nil {
		return fmt.Errorf("load module %s: %w", m.Name, err)
	}
	defer f.Close()
	flags := 0
	if compressedModule(m.Path) {
		flags = unix.MODULE_INIT_COMPRESSED_FILE
	}
	if err := unix.FinitModule(int(f.Fd()), "", flags); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("load module %s: %w", m.Name, err)
	}
	return nil
}
