package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/disk"
)

// Template kinds.
const (
	KindImage    = "image"    // root filesystem only: sandboxes cold-boot
	KindSnapshot = "snapshot" // root filesystem + memory: sandboxes restore
)

// Template is something a sandbox can be created from.
type Template struct {
	Name       string    `json:"name"`
	Kind       string    `json:"kind"`
	ImageID    string    `json:"imageId"`
	Kernel     string    `json:"kernel"`
	Initrd     string    `json:"initrd"`
	Rootfs     string    `json:"rootfs"`
	RootfsSize int64     `json:"rootfsSize"`
	Snapshot   string    `json:"snapshot,omitempty"`
	VCPUs      int       `json:"vcpus,omitempty"`
	MemoryMB   int       `json:"memoryMB,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
	// FromSandbox is the sandbox the template was made from.
	FromSandbox string `json:"fromSandbox,omitempty"`
	// Dir holds the template's files (rootfs, snapshot).
	Dir string `json:"dir,omitempty"`
	// EnvdToken is the access token the saved envd holds in memory; a
	// restore presents it to hand envd the new sandbox's token.
	// It is sealed on disk (SealedToken, seal.go).
	EnvdToken   string `json:"-"`
	SealedToken string `json:"sealedToken,omitempty"`
	// LegacyToken is the plaintext token of metadata written before
	// sealing, read once.
	LegacyToken string `json:"envdToken,omitempty"`
	// Replica: the template was imported from another host
	// (ImportTemplate); the host may evict it when its disk runs low.
	Replica bool `json:"replica,omitempty"`

	// hold is how long the source's guest was stopped while the
	// template was taken of it running (not persisted).
	hold time.Duration
}

func (t *Template) isSnapshot() bool { return t.Kind == KindSnapshot }

// diskMB is the size of the root file system a sandbox of t sees, in MiB
// (rounded up).
func (t *Template) diskMB() int { return int((t.RootfsSize + (1<<20 - 1)) >> 20) }

// nameRe is what template names may be: no path separators, no "..".
var nameRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$`)

// ValidTemplateName reports whether name is a safe template name.
func ValidTemplateName(name string) bool { return nameRe.MatchString(name) }

func (m *Manager) templateIndex(name string) string {
	return filepath.Join(m.templatesDir(), name+".json")
}

// resolveTemplate finds a template saved by this manager, else an image
// of the image store.
func (m *Manager) resolveTemplate(ctx context.Context, name string) (*Template, error) {
	if name == "" {
		name = "minimal"
	}
	if !ValidTemplateName(name) {
		return nil, fmt.Errorf("%w: template name %q", ErrInvalid, name)
	}
	if isHidden(name) {
		return nil, fmt.Errorf("%w: template %s", ErrNotFound, name)
	}
	if t, err := m.readTemplate(name); err == nil {
		return t, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	img, err := m.cfg.Images.Get(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("%w: template %s: %v", ErrNotFound, name, err)
	}
	fi, err := os.Stat(img.Rootfs)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	return &Template{
		Name: img.Template, Kind: KindImage, ImageID: img.ID, Kernel: img.Kernel, Initrd: img.Initrd,
		Rootfs: img.Rootfs, RootfsSize: fi.Size(), CreatedAt: img.Created,
	}, nil
}

func (m *Manager) readTemplate(name string) (*Template, error) {
	b, err := os.ReadFile(m.templateIndex(name))
	if err != nil {
		return nil, err
	}
	var t Template
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	t.EnvdToken, t.LegacyToken = t.LegacyToken, ""
	if t.SealedToken != "" {
		if err := unseal(m.key, "template:"+t.Name, t.SealedToken, &t.EnvdToken); err != nil {
			return nil, fmt.Errorf("template %s: %w", name, err)
		}
	}
	return &t, nil
}

// Templates lists the templates saved by this manager (not the warm
// snapshots, which are its own business).
func (m *Manager) Templates() ([]*Template, error) {
	all, err := m.allTemplates()
	if err != nil {
		return nil, err
	}
	return slices.DeleteFunc(all, func(t *Template) bool { return isHidden(t.Name) }), nil
}

func (m *Manager) allTemplates() ([]*Template, error) {
	entries, err := os.ReadDir(m.templatesDir())
	if err != nil {
		return nil, err
	}
	var out []*Template
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() {
			continue
		}
		if t, err := m.readTemplate(name); err == nil {
			out = append(out, t)
		}
	}
	slices.SortFunc(out, func(a, b *Template) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// CreateSnapshot makes a snapshot template named name from a sandbox: its
// memory and disk as they are now. A running sandbox is paused for the
// moment of the copy and resumed; a paused one stays paused. An existing
// template of that name is replaced.
func (m *Manager) CreateSnapshot(ctx context.Context, id, name string) (*Template, error) {
	return m.makeTemplate(ctx, id, name, KindSnapshot, useUser)
}

// FlattenRootfs makes an image template named name from a sandbox's disk
// (no memory: sandboxes created from it cold-boot).
func (m *Manager) FlattenRootfs(ctx context.Context, id, name string) (*Template, error) {
	return m.makeTemplate(ctx, id, name, KindImage, useUser)
}

// SaveDisk makes an image template named name from the disk of a sandbox
// paused without its memory (PauseFilesystem): a copy of the disk's top
// layer, over the layers it reads through (not flattened: it costs what
// the sandbox wrote, and moves as a template's chain does, replicate.go).
// Sandboxes created from it boot cold with the sandbox's files. Any other
// sandbox is a conflict: a running one's disk is in use, and a paused
// one's memory holds what its guest had not written back yet.
func (m *Manager) SaveDisk(ctx context.Context, id, name string) (*Template, error) {
	return m.makeTemplate(ctx, id, name, kindDisk, useUser)
}

// kindDisk asks makeTemplate for SaveDisk's template (of kind KindImage).
const kindDisk = "disk"

// templateUse says what a template is made for: a user's template, or
// one of the manager's hidden ones (a warm snapshot, warm.go; a fork's,
// fork.go), whose names users cannot take.
type templateUse int

const (
	useUser templateUse = iota
	useWarm
	useFork
)

// isHidden reports whether name is one of the manager's own templates.
func isHidden(name string) bool { return isWarm(name) || isFork(name) }

func (m *Manager) makeTemplate(ctx context.Context, id, name, kind string, use templateUse) (tpl *Template, err error) {
	if !ValidTemplateName(name) || name == "minimal" || name == "base" || isHidden(name) != (use != useUser) ||
		isWarm(name) != (use == useWarm) || isFork(name) != (use == useFork) {
		return nil, fmt.Errorf("%w: template name %q (letters, digits, '-' and '_'; not an image name, not %q… or %q…)", ErrInvalid, name, warmPrefix, forkPrefix)
	}
	b, err := m.lock(id)
	if err != nil {
		return nil, err
	}
	defer b.op.Unlock()
	rec := b.snapshotRecord()
	if (rec.State != StateRunning && rec.State != StatePaused) || (use == useFork && rec.State != StateRunning) {
		return nil, fmt.Errorf("%w: sandbox %s is %s", ErrConflict, id, rec.State)
	}
	diskOnly := rec.State == StatePaused && rec.Snapshot == ""
	switch {
	case kind == KindSnapshot && diskOnly:
		return nil, fmt.Errorf("%w: sandbox %s was paused without its memory: there is no machine to snapshot (save its disk instead)", ErrConflict, id)
	case kind == kindDisk && !diskOnly:
		return nil, fmt.Errorf("%w: sandbox %s is %s with its memory: only the disk of a sandbox paused without its memory is saved alone", ErrConflict, id, rec.State)
	}
	// The memory (a running machine's) and a copy of the disk's overlay
	// (a flattened image template holds the whole disk: its virtual size
	// bounds it).
	need := allocatedMB(m.diskPath(id))
	if kind == KindImage { // (a disk save copies the top layer only)
		need = int64(rec.DiskMB)
	}
	if rec.State == StateRunning {
		need += int64(rec.MemoryMB)
	}
	if err := m.checkDisk("snapshot", need); err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp(m.templatesDir(), name+"-")
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	tpl = &Template{
		Name: name, Kind: kind, ImageID: rec.ImageID, Kernel: rec.Kernel, Initrd: rec.Initrd,
		CreatedAt: m.now().UTC(), FromSandbox: rec.ID, Dir: dir,
	}
	// The machine state and the disk as they are now: a running machine
	// saves both while its guest is stopped for a moment and goes on; a
	// paused one already has them at rest.
	snapDir := filepath.Join(dir, "snapshot")
	diskNow := m.diskPath(rec.ID)
	if rec.State == StateRunning {
		b.mu.Lock()
		machine := b.machine
		b.mu.Unlock()
		snap, err := machine.Snapshot(ctx, snapDir, true)
		if err != nil {
			return nil, fmt.Errorf("snapshot %s: %w", id, err)
		}
		tpl.hold = snap.Paused
		if use != useWarm { // a warm snapshot's source is destroyed next
			m.resyncClock(ctx, b, &rec)
		}
		crashPoint("snapshot-saved")
		if len(snap.Disks) == 0 {
			return nil, fmt.Errorf("snapshot %s: the driver saved no disk", id)
		}
		diskNow = snap.Disks[0].Path
	} else if kind == KindSnapshot {
		// Snapshot files are never modified in place (each pause writes a
		// new generation), so hard links share them safely.
		if err := linkTree(rec.Snapshot, snapDir); err != nil {
			return nil, fmt.Errorf("snapshot files: %w", err)
		}
	}

	switch kind {
	case KindSnapshot, kindDisk:
		if kind == KindSnapshot {
			tpl.Snapshot, tpl.VCPUs, tpl.MemoryMB, tpl.EnvdToken = snapDir, rec.VCPUs, rec.MemoryMB, rec.AccessToken
		} else {
			tpl.Kind = KindImage // whose disk is layered, not flattened
		}
		// Sandboxes chain their overlays onto a frozen copy of the disk
		// (a paused sandbox's is copied: it may be resumed).
		tpl.Rootfs = diskNow
		if rec.State == StatePaused {
			tpl.Rootfs = filepath.Join(dir, "rootfs.qcow2")
			if err := copyFile(diskNow, tpl.Rootfs); err != nil {
				return nil, err
			}
		}
		info, err := disk.Inspect(ctx, tpl.Rootfs)
		if err != nil {
			return nil, err
		}
		tpl.RootfsSize = info.VirtualSize
	case KindImage:
		tpl.Rootfs = filepath.Join(dir, "rootfs.raw")
		if err := disk.Flatten(ctx, diskNow, tpl.Rootfs); err != nil {
			return nil, err
		}
		// The memory saved on the way is not part of an image template.
		_ = os.RemoveAll(snapDir)
		fi, err := os.Stat(tpl.Rootfs)
		if err != nil {
			return nil, err
		}
		tpl.RootfsSize = fi.Size()
	}
	if err := m.publishTemplate(tpl); err != nil {
		return nil, err
	}
	if kind == KindSnapshot && use != useFork {
		// Its first creates are likely soon (forks take theirs at once).
		m.prepareFor(tpl, tpl.VCPUs, tpl.MemoryMB, tpl.diskMB())
	}
	m.log.InfoContext(ctx, "template saved", "name", name, "kind", kind, "from", rec.ID, "state", rec.State)
	return tpl, nil
}

// publishTemplate makes tpl the template of its name, replacing an older
// one whose files go once nothing backs onto them (dropTemplateDir).
func (m *Manager) publishTemplate(tpl *Template) error {
	old, _ := m.readTemplate(tpl.Name)
	disk := *tpl
	disk.LegacyToken, disk.SealedToken = "", ""
	if tpl.EnvdToken != "" {
		sealed, err := seal(m.key, "template:"+tpl.Name, tpl.EnvdToken)
		if err != nil {
			return err
		}
		disk.SealedToken = sealed
	}
	b, err := json.MarshalIndent(&disk, "", "  ")
	if err != nil {
		return err
	}
	if err := writeFileDurable(m.templateIndex(tpl.Name), b); err != nil {
		return err
	}
	if old != nil && old.Dir != tpl.Dir {
		m.dropTemplateDir(old.Dir)
	}
	return nil
}

// DeleteTemplate removes a saved template: its name is free at once. Its
// files stay while anything backs onto them — sandboxes created from it
// (running or paused), templates snapshotted from those, and what was
// created from those in turn — and go with the last of them.
func (m *Manager) DeleteTemplate(name string) error {
	if !ValidTemplateName(name) {
		return fmt.Errorf("%w: template name %q", ErrInvalid, name)
	}
	t, err := m.readTemplate(name)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: template %s", ErrNotFound, name)
	}
	if err != nil {
		return err
	}
	if err := os.Remove(m.templateIndex(name)); err != nil {
		return err
	}
	m.dropTemplateDir(t.Dir)
	return nil
}

// dropTemplateDir gives up a template directory (its index is gone or
// names another directory): it is deleted as soon as nothing backs onto
// it (collectTemplates), which may be now or when the last sandbox or
// template chained onto it goes.
func (m *Manager) dropTemplateDir(dir string) {
	if dir != "" {
		// Prepared VMMs map its memory and back onto its disk.
		m.prepared.dropDir(dir)
	}
	if dir == "" {
		return
	}
	m.gcMu.Lock()
	m.orphans[dir] = true
	m.gcMu.Unlock()
	m.collectTemplates()
}

// collectTemplates deletes the given-up template directories (orphans)
// that nothing references any more (referencedTemplateDirs). It runs
// after every template delete or replace and every sandbox destroy, so a
// parent goes with its last dependant.
func (m *Manager) collectTemplates() {
	m.gcMu.Lock()
	defer m.gcMu.Unlock()
	if len(m.orphans) == 0 {
		return
	}
	refs, ok := m.referencedTemplateDirs()
	if !ok {
		return // not sure what is referenced: delete nothing this time
	}
	for dir := range m.orphans {
		if refs[dir] {
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			m.log.Error("remove a template directory", "dir", dir, "err", err)
			continue
		}
		delete(m.orphans, dir)
		m.log.Info("template files removed", "dir", dir)
	}
}

// referencedTemplateDirs is the set of template directories that must stay:
// that of every indexed template, and every one that an indexed
// template's root filesystem or a sandbox's disk (running, paused, or
// being created) reads through, directly or down its backing chain. A
// snapshot template's disk is a copy of its source sandbox's overlay, so
// it backs onto what that sandbox backed onto: a chain template → parent
// template → … → image. Only disks chain; a template's memory file is
// copied, never referenced, by what is made from it. ok is false when a
// template list or a chain could not be read (a missing disk, of a
// sandbox being created or destroyed, is no reference): the set may then
// be incomplete, and nothing must be deleted on its strength.
func (m *Manager) referencedTemplateDirs() (refs map[string]bool, ok bool) {
	return m.referencedTemplateDirsExcept("")
}

// referencedTemplateDirsExcept is referencedTemplateDirs without what the
// index of template except references (eviction: would its directory
// still be needed without it).
func (m *Manager) referencedTemplateDirsExcept(except string) (refs map[string]bool, ok bool) {
	refs, ok = map[string]bool{}, true
	root := m.templatesDir() + string(filepath.Separator)
	mark := func(image string) {
		chain, err := disk.BackingChain(image)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			m.log.Warn("read a disk's backing chain", "disk", image, "err", err)
			ok = false
		}
		for _, p := range chain {
			if rel, under := strings.CutPrefix(p, root); under {
				first, _, _ := strings.Cut(rel, string(filepath.Separator))
				refs[filepath.Join(m.templatesDir(), first)] = true
			}
		}
	}
	ts, err := m.allTemplates()
	if err != nil {
		m.log.Warn("list templates", "err", err)
		return nil, false
	}
	for _, t := range ts {
		if t.Name == except {
			continue
		}
		if t.Dir != "" {
			refs[t.Dir] = true
		}
		mark(t.Rootfs)
	}
	m.mu.Lock()
	ids := slices.Collect(maps.Keys(m.boxes))
	m.mu.Unlock()
	for _, id := range ids {
		mark(m.diskPath(id))
	}
	return refs, ok
}

// allocatedMB is the space a file takes on its filesystem, in MiB (0 when
// it cannot be read).
func allocatedMB(path string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	return st.Blocks * 512 >> 20
}

// linkTree hard-links every file of src into a new directory dst.
func linkTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		return os.Link(p, target)
	})
}

// copyFile copies a (sparse) disk file, preserving holes.
func copyFile(src, dst string) error {
	out, err := exec.Command("cp", "--sparse=always", "--reflink=auto", src, dst).CombinedOutput()
	if err != nil {
		return fmt.Errorf("copy %s: %w: %s", src, err, out)
	}
	return nil
}
