package image

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/capsulehq/capsule/internal/errdefs"
)

// DefaultDataDir is Capsule's data directory; the store is its images/
// subdirectory.
const DefaultDataDir = "/var/lib/capsule"

// Directories of the store (see doc.go).
const (
	kindKernel = "kernel"
	kindInitrd = "initrd"
	kindRootfs = "rootfs"
	dirImages  = "image"
	dirCache   = "cache"
	dirTmp     = "tmp"
	lockName   = "lock"
)

// Store is a content-addressed image store in a directory. Reads (Get,
// List) need no lock: every file appears by rename. Build and Remove take
// an exclusive file lock, so concurrent builders in any process
// serialize, and the second finds the first's result in the cache.
type Store struct {
	dir string
	log *slog.Logger
}

// Image is a bootable template image: a kernel, an initramfs with envd as
// its init, and a raw ext4 root filesystem. Paths are absolute; the files
// must be treated as read-only (sandboxes boot from overlays, see package
// disk).
type Image struct {
	ID        string    `json:"id"`       // hash of the three artifacts' keys
	Template  string    `json:"template"` // "minimal", "base"
	Kernel    string    `json:"kernel"`   // bzImage
	Initrd    string    `json:"initrd"`   // initramfs (newc cpio)
	Rootfs    string    `json:"rootfs"`   // raw ext4 image
	SizeBytes int64     `json:"sizeBytes"`
	Created   time.Time `json:"created"`
	// KernelVersion is the kernel's release (uname -r).
	KernelVersion string `json:"kernelVersion"`
}

// Open opens (creating it if needed) the image store in dataDir/images.
// A nil log means slog.Default().
func Open(dataDir string, log *slog.Logger) (*Store, error) {
	if log == nil {
		log = slog.Default()
	}
	if dataDir == "" {
		dataDir = DefaultDataDir
	}
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("image store: %w", err)
	}
	s := &Store{dir: filepath.Join(abs, "images"), log: log.With("store", abs)}
	for _, d := range []string{kindKernel, kindInitrd, kindRootfs, dirImages, dirCache, dirTmp} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("image store: %w", err)
		}
	}
	return s, nil
}

// Dir is the store's directory (dataDir/images).
func (s *Store) Dir() string { return s.dir }

func (s *Store) artifactDir(kind, key string) string { return filepath.Join(s.dir, kind, key) }

func (s *Store) recordPath(id string) string { return filepath.Join(s.dir, dirImages, id+".json") }

// workDir makes a private scratch directory under tmp/. Callers remove it;
// whatever a crash leaves there, the next locked builder removes.
func (s *Store) workDir(what string) (string, error) {
	d, err := os.MkdirTemp(filepath.Join(s.dir, dirTmp), what+"-")
	if err != nil {
		return "", fmt.Errorf("image store: %w", err)
	}
	return d, nil
}

// dropWorkDir removes a scratch directory made by workDir; a failure is
// logged (the next locked builder tries again).
func (s *Store) dropWorkDir(ctx context.Context, dir string) {
	if err := removeTree(dir); err != nil {
		s.log.WarnContext(ctx, "cannot remove build directory", "err", err)
	}
}

// lock takes the store's exclusive lock and clears tmp/, which then holds
// nothing of a live builder.
func (s *Store) lock(ctx context.Context) (*fileLock, error) {
	l, err := lockFile(ctx, s.log, filepath.Join(s.dir, lockName))
	if err != nil {
		return nil, err
	}
	ents, _ := os.ReadDir(filepath.Join(s.dir, dirTmp))
	for _, e := range ents {
		p := filepath.Join(s.dir, dirTmp, e.Name())
		if err := removeTree(p); err != nil {
			s.log.WarnContext(ctx, "cannot clear leftover build directory", "path", p, "err", err)
		}
	}
	return l, nil
}

// List returns the images in the store, by template name, newest first.
func (s *Store) List(ctx context.Context) ([]*Image, error) {
	ents, err := os.ReadDir(filepath.Join(s.dir, dirImages))
	if err != nil {
		return nil, fmt.Errorf("list images: %w", err)
	}
	var out []*Image
	for _, e := range ents {
		id, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || strings.HasPrefix(id, ".") {
			continue
		}
		img, err := s.readRecord(id)
		if err != nil {
			s.log.WarnContext(ctx, "skipping unreadable image record", "image", id, "err", err)
			continue
		}
		out = append(out, img)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Template != out[j].Template {
			return out[i].Template < out[j].Template
		}
		if !out[i].Created.Equal(out[j].Created) {
			return out[i].Created.After(out[j].Created)
		}
		return out[i].ID < out[j].ID
	})
	return out, nil
}

// record is an image as stored in image/<id>.json: artifact keys rather
// than paths, so that the store can move.
type record struct {
	ID            string    `json:"id"`
	Template      string    `json:"template"`
	Kernel        string    `json:"kernel"`
	Initrd        string    `json:"initrd"`
	Rootfs        string    `json:"rootfs"`
	SizeBytes     int64     `json:"sizeBytes"`
	KernelVersion string    `json:"kernelVersion"`
	Created       time.Time `json:"created"`
}

func (s *Store) image(r *record) *Image {
	return &Image{
		ID:            r.ID,
		Template:      r.Template,
		Kernel:        filepath.Join(s.artifactDir(kindKernel, r.Kernel), kernelImageFile),
		Initrd:        filepath.Join(s.artifactDir(kindInitrd, r.Initrd), initrdFile),
		Rootfs:        filepath.Join(s.artifactDir(kindRootfs, r.Rootfs), rootfsFile),
		SizeBytes:     r.SizeBytes,
		Created:       r.Created,
		KernelVersion: r.KernelVersion,
	}
}

func (s *Store) readRecord(id string) (*Image, error) {
	data, err := os.ReadFile(s.recordPath(id))
	if err != nil {
		return nil, err
	}
	r := &record{}
	if err := json.Unmarshal(data, r); err != nil {
		return nil, fmt.Errorf("image %s: %w", id, err)
	}
	if r.ID != id {
		return nil, fmt.Errorf("image %s: record names ID %s", id, r.ID)
	}
	return s.image(r), nil
}

// ErrNotFound is returned (wrapped) when no image matches a name or ID.
var ErrNotFound = errdefs.Sentinel("image not found", errdefs.ErrNotFound)

// Get returns the image a reference names: an image ID, a unique prefix
// of one (at least 6 hex digits), or a template name (its newest image).
func (s *Store) Get(ctx context.Context, ref string) (*Image, error) {
	imgs, err := s.resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	return imgs[0], nil
}

// resolve returns the images ref names: the one image of an ID or unique
// ID prefix, else all images of a template, newest first.
func (s *Store) resolve(ctx context.Context, ref string) ([]*Image, error) {
	all, err := s.List(ctx)
	if err != nil {
		return nil, err
	}
	var byID, byName []*Image
	for _, img := range all {
		if img.ID == ref || (len(ref) >= 6 && strings.HasPrefix(img.ID, ref)) {
			byID = append(byID, img)
		}
		if img.Template == ref {
			byName = append(byName, img)
		}
	}
	switch {
	case len(byID) == 1:
		return byID, nil
	case len(byID) > 1:
		return nil, fmt.Errorf("image %q: ambiguous ID prefix (%d images)", ref, len(byID))
	case len(byName) > 0:
		return byName, nil
	}
	return nil, fmt.Errorf("image %q: %w", ref, ErrNotFound)
}

// Remove deletes the images ref names (an ID or ID prefix: that image; a
// template name: all its images) and then every artifact no remaining
// image uses. Caches (downloaded packages, debootstrap trees) stay. The
// caller must make sure no sandbox still uses the images' files.
func (s *Store) Remove(ctx context.Context, ref string) ([]*Image, error) {
	l, err := s.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer l.unlock()
	imgs, err := s.resolve(ctx, ref)
	if err != nil {
		return nil, err
	}
	for _, img := range imgs {
		if err := os.Remove(s.recordPath(img.ID)); err != nil {
			return nil, fmt.Errorf("remove image %s: %w", img.ID, err)
		}
		s.log.InfoContext(ctx, "image removed", "image", img.ID, "template", img.Template)
	}
	if err := syncDir(filepath.Join(s.dir, dirImages)); err != nil {
		return nil, err
	}
	return imgs, s.collectGarbage(ctx)
}

// collectGarbage removes the artifacts that no image record references.
// The caller holds the lock.
func (s *Store) collectGarbage(ctx context.Context) error {
	imgs, err := s.List(ctx)
	if err != nil {
		return err
	}
	used := map[string]bool{}
	for _, img := range imgs {
		for _, p := range []string{img.Kernel, img.Initrd, img.Rootfs} {
			used[filepath.Dir(p)] = true
		}
	}
	var errs []error
	for _, kind := range []string{kindKernel, kindInitrd, kindRootfs} {
		ents, err := os.ReadDir(filepath.Join(s.dir, kind))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range ents {
			p := filepath.Join(s.dir, kind, e.Name())
			if used[p] {
				continue
			}
			if err := removeTree(p); err != nil {
				errs = append(errs, err)
				continue
			}
			s.log.DebugContext(ctx, "artifact removed", "path", p)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("collect garbage: %w", err)
	}
	return nil
}
