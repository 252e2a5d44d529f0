package image

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// DefaultKernelPackage is the Debian package guests boot by default: its
// virtio drivers are modules, which the initramfs loads.
const DefaultKernelPackage = "linux-image-cloud-amd64"

// Files of a kernel artifact directory.
const (
	kernelImageFile = "vmlinuz"
	kernelModDir    = "modules"     // the GuestModules closure, as <name>.ko
	kernelMetaFile  = "kernel.json" // kernelArtifact
	modulesOrder    = "modules.order"
)

// kernelArtifact is a kernel in the store: its directory holds the boot
// image (bzImage) and the modules the initramfs needs.
type kernelArtifact struct {
	Key     string   `json:"key"`
	Dir     string   `json:"-"`
	Source  string   `json:"source"`  // package=version, or the file it came from
	Version string   `json:"version"` // uname -r
	Modules []string `json:"modules"` // file names in load order
}

func (k *kernelArtifact) modulesDir() string { return filepath.Join(k.Dir, kernelModDir) }

// kernelSource says where a kernel comes from: an apt package (resolved to
// a version) or a local .deb or bzImage file.
type kernelSource struct {
	apt  aptPackage
	file string // .deb or bzImage
	deb  bool
	hash string // of file
}

// resolveKernel resolves the BuildOptions kernel fields to a source and its
// key, without building anything.
func (s *Store) resolveKernel(ctx context.Context, opts BuildOptions) (kernelSource, string, error) {
	k := newKeyer("kernel")
	k.addList("modules", GuestModules)
	var src kernelSource
	if opts.KernelDeb == "" {
		pkg := opts.KernelPackage
		if pkg == "" {
			pkg = DefaultKernelPackage
		}
		p, err := s.resolveKernelPackage(ctx, pkg)
		if err != nil {
			return src, "", err
		}
		src.apt = p
		k.add("apt", p.Name, p.Version)
		return src, k.sum(), nil
	}
	abs, err := filepath.Abs(opts.KernelDeb)
	if err != nil {
		return src, "", fmt.Errorf("kernel %s: %w", opts.KernelDeb, err)
	}
	src.file = abs
	if src.deb, err = isDeb(abs); err != nil {
		return src, "", err
	}
	if src.hash, err = fileHash(abs); err != nil {
		return src, "", err
	}
	k.add("file", src.hash)
	return src, k.sum(), nil
}

// loadKernel returns the kernel artifact with key, or nil when the store
// has none.
func (s *Store) loadKernel(key string) (*kernelArtifact, error) {
	dir := s.artifactDir(kindKernel, key)
	data, err := os.ReadFile(filepath.Join(dir, kernelMetaFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", key, err)
	}
	k := &kernelArtifact{}
	if err := json.Unmarshal(data, k); err != nil {
		return nil, fmt.Errorf("kernel %s: %s: %w", key, kernelMetaFile, err)
	}
	k.Dir = dir
	return k, nil
}

// ensureKernel returns the kernel artifact for src, building it when the
// store lacks it. The caller holds the store lock.
func (s *Store) ensureKernel(ctx context.Context, src kernelSource, key string) (*kernelArtifact, error) {
	if k, err := s.loadKernel(key); err != nil || k != nil {
		return k, err
	}
	work, err := s.workDir("kernel")
	if err != nil {
		return nil, err
	}
	defer s.dropWorkDir(ctx, work)
	out := filepath.Join(work, "out")
	if err := os.MkdirAll(filepath.Join(out, kernelModDir), 0o755); err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	k := &kernelArtifact{Key: key}
	switch {
	case src.file != "" && !src.deb:
		k.Source = src.file
		if k.Version, err = bzImageVersion(src.file); err != nil {
			return nil, err
		}
		if err := copyFile(src.file, filepath.Join(out, kernelImageFile), 0o644); err != nil {
			return nil, fmt.Errorf("kernel: %w", err)
		}
	default:
		deb := src.file
		k.Source = src.file
		if deb == "" {
			k.Source = src.apt.Name + "=" + src.apt.Version
			if deb, err = s.cachedDeb(ctx, src.apt); err != nil {
				return nil, err
			}
		}
		if err := s.extractKernelDeb(ctx, deb, filepath.Join(work, "deb"), out, k); err != nil {
			return nil, err
		}
	}
	if err := writeJSONAtomic(filepath.Join(out, kernelMetaFile), k); err != nil {
		return nil, err
	}
	k.Dir = s.artifactDir(kindKernel, key)
	if err := publishDir(out, k.Dir); err != nil {
		return nil, err
	}
	s.log.InfoContext(ctx, "kernel ready", "key", key, "version", k.Version, "source", k.Source, "modules", len(k.Modules))
	return k, nil
}

// cachedDeb returns the store's copy of a package's .deb, downloading it
// once.
func (s *Store) cachedDeb(ctx context.Context, p aptPackage) (string, error) {
	name := strings.NewReplacer("/", "_", ":", "%3a").Replace(p.Name + "_" + p.Version + ".deb")
	path := filepath.Join(s.dir, dirCache, "deb", name)
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	dl, err := s.workDir("apt")
	if err != nil {
		return "", err
	}
	defer s.dropWorkDir(ctx, dl)
	got, err := aptDownload(ctx, s.log, dl, p)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("cache %s: %w", name, err)
	}
	if err := os.Rename(got, path); err != nil {
		return "", fmt.Errorf("cache %s: %w", name, err)
	}
	return path, nil
}

// extractKernelDeb unpacks deb into tmp and fills out with its bzImage
// and the GuestModules closure, recording version and module order in k.
func (s *Store) extractKernelDeb(ctx context.Context, deb, tmp, out string, k *kernelArtifact) error {
	if _, err := runCommand(ctx, s.log, "", "dpkg-deb", "-x", deb, tmp); err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	imgs, _ := filepath.Glob(filepath.Join(tmp, "boot", "vmlinuz-*"))
	if len(imgs) != 1 {
		return fmt.Errorf("kernel: %s holds %d boot/vmlinuz-* files, want 1", deb, len(imgs))
	}
	k.Version = strings.TrimPrefix(filepath.Base(imgs[0]), "vmlinuz-")
	if err := copyFile(imgs[0], filepath.Join(out, kernelImageFile), 0o644); err != nil {
		return fmt.Errorf("kernel: %w", err)
	}
	var modDir string
	for _, d := range []string{"lib/modules", "usr/lib/modules"} {
		p := filepath.Join(tmp, d, k.Version)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			modDir = p
			break
		}
	}
	if modDir == "" {
		return nil // a monolithic kernel: nothing to load
	}
	idx, err := indexModules(modDir)
	if err != nil {
		return err
	}
	builtin, err := readBuiltinModules(filepath.Join(modDir, "modules.builtin"))
	if err != nil {
		return err
	}
	for _, m := range GuestModules {
		if _, ok := idx[m]; !ok && !builtin[m] {
			return fmt.Errorf("kernel %s: module %s is neither a module nor built in", k.Version, m)
		}
	}
	mods, err := moduleClosure(idx, GuestModules, readModuleDepends)
	if err != nil {
		return fmt.Errorf("kernel %s: %w", k.Version, err)
	}
	var order bytes.Buffer
	for _, m := range mods {
		file := m.Name + ".ko"
		if err := copyFile(m.Path, filepath.Join(out, kernelModDir, file), 0o644); err != nil {
			return fmt.Errorf("kernel: %w", err)
		}
		k.Modules = append(k.Modules, file)
		fmt.Fprintln(&order, file)
	}
	return os.WriteFile(filepath.Join(out, kernelModDir, modulesOrder), order.Bytes(), 0o644)
}

// readBuiltinModules reads a modules.builtin file (paths such as
// kernel/fs/ext4/ext4.ko, one a line); a missing file lists none.
func readBuiltinModules(path string) (map[string]bool, error) {
	out := map[string]bool{}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if l := strings.TrimSpace(sc.Text()); l != "" {
			out[moduleName(l)] = true
		}
	}
	return out, sc.Err()
}

// isDeb tells a Debian package (an ar archive) from a bzImage.
func isDeb(path string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("kernel: %w", err)
	}
	defer f.Close()
	magic := make([]byte, 8)
	if _, err := io.ReadFull(f, magic); err != nil {
		return false, fmt.Errorf("kernel %s: %w", path, err)
	}
	return string(magic) == "!<arch>\n", nil
}

// bzImageVersion checks that path is an x86 bzImage and returns the
// kernel release from its header (the boot protocol's kernel_version
// field points to "6.1.0-… (builder@host) #1 SMP …").
func bzImageVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("kernel: %w", err)
	}
	defer f.Close()
	hdr := make([]byte, 0x210)
	if _, err := io.ReadFull(f, hdr); err != nil || string(hdr[0x202:0x206]) != "HdrS" {
		return "", fmt.Errorf("kernel %s: neither a .deb nor an x86 bzImage", path)
	}
	ptr := int64(hdr[0x20e]) | int64(hdr[0x20f])<<8
	if ptr == 0 {
		return "unknown", nil
	}
	buf := make([]byte, 256)
	n, _ := f.ReadAt(buf, ptr+0x200)
	v, _, _ := strings.Cut(string(buf[:n]), "\x00")
	if fields := strings.Fields(v); len(fields) > 0 {
		return fields[0], nil
	}
	return "unknown", nil
}
