package image

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"
)

// BuildOptions says what image to build.
type BuildOptions struct {
	// Template is "base" or "minimal" (see Templates); default "base".
	Template string
	// EnvdBin is the envd binary to install (statically linked: it is
	// also the initramfs's init). Required.
	EnvdBin string
	// DiskSizeMB is the size of the root filesystem in MiB (its free
	// space is real; the file is sparse). Default: 2048 for base, 128 for
	// minimal.
	DiskSizeMB int
	// KernelDeb is a kernel .deb or bzImage file to use instead of the
	// apt package KernelPackage (default DefaultKernelPackage).
	KernelDeb     string
	KernelPackage string
	// Mirror is the Debian mirror for the base template; default the
	// host's apt source for the suite, else DefaultMirror.
	Mirror string
}

// Build returns the image for opts, building what the store lacks: the
// kernel, the initramfs and the rootfs are each keyed by a hash of all
// their inputs and reused whenever those are unchanged, so a second Build
// with the same inputs only hashes files and reads records. It waits while
// another builder holds the store.
func (s *Store) Build(ctx context.Context, opts BuildOptions) (*Image, error) {
	start := time.Now()
	if opts.Template == "" {
		opts.Template = "base"
	}
	t, ok := templates[opts.Template]
	if !ok {
		return nil, fmt.Errorf("build: unknown template %q (have %v)", opts.Template, Templates())
	}
	if opts.DiskSizeMB == 0 {
		opts.DiskSizeMB = t.defaultSizeMB()
	}
	if opts.DiskSizeMB < 16 {
		return nil, fmt.Errorf("build: disk size %d MiB is too small", opts.DiskSizeMB)
	}
	envd, err := checkEnvd(opts.EnvdBin)
	if err != nil {
		return nil, err
	}
	opts.EnvdBin = envd
	envdHash, err := fileHash(envd)
	if err != nil {
		return nil, err
	}
	log := s.log.With("template", opts.Template)

	l, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer l.unlock()

	src, kkey, err := s.resolveKernel(ctx, opts)
	if err != nil {
		return nil, err
	}
	ikey := initrdKey(kkey, envdHash)
	rkey, err := rootfsKey(ctx, s, opts, t, envdHash, opts.DiskSizeMB)
	if err != nil {
		return nil, err
	}
	idk := newKeyer("image")
	idk.add("template", opts.Template)
	idk.add("artifacts", kkey, ikey, rkey)
	id := idk.sum()
	if img, err := s.readRecord(id); err == nil && s.complete(img) {
		log.InfoContext(ctx, "image up to date", "image", id, "took", time.Since(start).Round(time.Millisecond))
		return img, nil
	}

	k, err := s.ensureKernel(ctx, src, kkey)
	if err != nil {
		return nil, err
	}
	if _, err := s.ensureInitrd(ctx, k, envd, ikey); err != nil {
		return nil, err
	}
	if _, err := s.ensureRootfs(ctx, opts, t, opts.DiskSizeMB, rkey); err != nil {
		return nil, err
	}
	r := &record{
		ID: id, Template: opts.Template,
		Kernel: kkey, Initrd: ikey, Rootfs: rkey,
		SizeBytes:     int64(opts.DiskSizeMB) << 20,
		KernelVersion: k.Version,
		Created:       time.Now().UTC().Truncate(time.Second),
	}
	if err := writeJSONAtomic(s.recordPath(id), r); err != nil {
		return nil, err
	}
	img := s.image(r)
	log.InfoContext(ctx, "image built", "image", id, "took", time.Since(start).Round(time.Millisecond))
	return img, nil
}

// complete reports whether all of an image's files exist.
func (s *Store) complete(img *Image) bool {
	for _, p := range []string{img.Kernel, img.Initrd, img.Rootfs} {
		if _, err := os.Stat(p); err != nil {
			return false
		}
	}
	return true
}

// checkEnvd checks that path is a statically linked executable (the
// initramfs has no libc) and returns its absolute path.
func checkEnvd(path string) (string, error) {
	if path == "" {
		return "", errors.New("build: no envd binary given")
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("build: envd: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("build: envd: %w", err)
	}
	if !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
		return "", fmt.Errorf("build: envd %s is not an executable file", abs)
	}
	f, err := elf.Open(abs)
	if err != nil {
		return "", fmt.Errorf("build: envd: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("build: envd %s is dynamically linked (build it with CGO_ENABLED=0)", abs)
		}
	}
	return abs, nil
}
