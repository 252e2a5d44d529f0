package sandbox

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/disk"
	"github.com/capsulehq/capsule/internal/errdefs"
)

// Replication: a template's files copied to another host (replicate.go).
//
// ExportTemplate reads a template as a manifest and a stream of chunks;
// ImportTemplate, on another host, writes them into a new template
// directory. The manifest names every file the template needs: those of
// its directory and, for a snapshot template whose disk is a chain of
// qcow2 layers (package doc: Template chains), every layer of the chain
// that lives in another template's directory (copied under chain/), down
// to the guest image's root filesystem, which is not sent: the importing
// host has the image of the same ID (images are content-addressed) or the
// import is refused. A copy is thus self-contained on its host; its
// layers are rebased onto their new paths (disk.Rebase: only the qcow2
// header's backing name changes, the data is the exporter's).
//
// Integrity: each file's data is hashed as it is read and as it is
// written (SHA-256 over the data chunks framed by offset and length, then
// the size: holes are not sent, and a hole cannot be confused with
// zeros); a mismatch aborts the import, which then removes everything it
// wrote. Files are fsynced, then the directory, and the template's index
// is written last (durably): the index is the commit point, and a
// directory without one (an import cut short by a crash) is collected at
// start-up like any template directory nothing references.
//
// Cache: an imported template is a replica (Template.Replica). When an
// import needs more room than the data disk's headroom leaves, the
// least recently used replicas (their index file's modification time,
// touched by every create from them) are deleted first, never one whose
// files a sandbox or another template reads through (that would free
// nothing); the import answers which ones went, so that the control
// plane forgets them.

// ErrCorrupt: a transferred file's data does not match the sender's hash.
var ErrCorrupt = errdefs.Sentinel("corrupt transfer", errdefs.ErrInvalid)

// TemplateManifest describes an exported template (hostagent.v1's
// TemplateManifest).
type TemplateManifest struct {
	Name        string
	Kind        string
	ImageID     string
	DiskSize    int64
	VCPUs       int
	MemoryMB    int
	CreatedAt   time.Time
	FromSandbox string
	EnvdToken   string
	Files       []TemplateFile
	// Rootfs is the path (of Files) of the disk sandboxes chain onto;
	// Snapshot the directory of the saved machine (snapshot templates).
	Rootfs   string
	Snapshot string
}

// TemplateFile is one file of an exported template: Path relative to the
// template's directory ('/'-separated). A qcow2 layer reads through
// Backing (another file's Path) or, with BackingImage, the image's root
// filesystem.
type TemplateFile struct {
	Path         string
	Size         int64
	Allocated    int64
	Backing      string
	BackingImage bool

	src string // the exporter's file
}

// TemplateChunk is data of file File at Offset; SHA256 is set on a file's
// last chunk (whose Data may be empty).
type TemplateChunk struct {
	File   int
	Offset int64
	Data   []byte
	SHA256 []byte
}

// chunkSize is the most data one chunk carries (well under the RPC
// stacks' message limits).
const chunkSize = 1 << 20

// maxManifestFiles bounds an imported manifest.
const maxManifestFiles = 4096

// fileHash is the transfer hash of one file (see TemplateChunk).
type fileHash struct{ h hash.Hash }

func newFileHash() fileHash { return fileHash{sha256.New()} }

func (f fileHash) chunk(off int64, data []byte) {
	var frame [16]byte
	binary.BigEndian.PutUint64(frame[:8], uint64(off))
	binary.BigEndian.PutUint64(frame[8:], uint64(len(data)))
	f.h.Write(frame[:])
	f.h.Write(data)
}

func (f fileHash) sum(size int64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(size))
	f.h.Write(b[:])
	return f.h.Sum(nil)
}

// ExportManifest returns the manifest of template name (NotFound for one
// this manager did not save or import: built-in images are not exported).
func (m *Manager) ExportManifest(ctx context.Context, name string) (*TemplateManifest, error) {
	if !ValidTemplateName(name) || isWarm(name) {
		return nil, fmt.Errorf("%w: template %s", ErrNotFound, name)
	}
	t, err := m.readTemplate(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: template %s", ErrNotFound, name)
	}
	if err != nil {
		return nil, err
	}
	man := &TemplateManifest{
		Name: t.Name, Kind: t.Kind, ImageID: t.ImageID, DiskSize: t.RootfsSize, VCPUs: t.VCPUs, MemoryMB: t.MemoryMB,
		CreatedAt: t.CreatedAt, FromSandbox: t.FromSandbox, EnvdToken: t.EnvdToken,
	}
	rel := func(p string) (string, bool) {
		r, err := filepath.Rel(t.Dir, p)
		if err != nil || r == ".." || strings.HasPrefix(r, "../") {
			return "", false
		}
		return filepath.ToSlash(r), true
	}
	index := map[string]int{}
	err = filepath.WalkDir(t.Dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		r, _ := rel(p)
		index[r] = len(man.Files)
		man.Files = append(man.Files, TemplateFile{Path: r, src: p})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	var ok bool
	if man.Rootfs, ok = rel(t.Rootfs); !ok {
		return nil, fmt.Errorf("template %s: its disk %s is outside its directory", name, t.Rootfs)
	}
	if t.isSnapshot() {
		if man.Snapshot, ok = rel(t.Snapshot); !ok {
			return nil, fmt.Errorf("template %s: its snapshot %s is outside its directory", name, t.Snapshot)
		}
	}
	// The disk's chain: layers in this directory are listed already, those
	// of other template directories are added, the image ends it.
	chain, err := disk.BackingChain(t.Rootfs)
	if err != nil {
		return nil, fmt.Errorf("template %s: %w", name, err)
	}
	imgRootfs := ""
	if img, err := m.cfg.Images.Get(ctx, t.ImageID); err == nil {
		imgRootfs = img.Rootfs
	}
	tdir := m.templatesDir() + string(filepath.Separator)
	prev := -1
	for i, p := range chain {
		cur, in := -1, false
		if r, inDir := rel(p); inDir {
			cur, in = index[r]
		}
		switch {
		case in:
		case i > 0 && i == len(chain)-1 && p == imgRootfs:
			man.Files[prev].BackingImage = true
			continue
		case strings.HasPrefix(p, tdir):
			cur = len(man.Files)
			man.Files = append(man.Files, TemplateFile{Path: "chain/" + strconv.Itoa(i) + "/" + filepath.Base(p), src: p})
		default:
			return nil, fmt.Errorf("template %s: layer %s of its disk is neither a template's nor its image's", name, p)
		}
		if prev >= 0 {
			man.Files[prev].Backing = man.Files[cur].Path
		}
		prev = cur
	}
	for i := range man.Files {
		var st unix.Stat_t
		if err := unix.Stat(man.Files[i].src, &st); err != nil {
			return nil, fmt.Errorf("template %s: %w", name, err)
		}
		man.Files[i].Size, man.Files[i].Allocated = st.Size, min(st.Blocks*512, st.Size)
	}
	return man, nil
}

// ExportTemplate sends template name: its manifest (ExportManifest), then
// every file's data extents in chunks, each file's last chunk with its
// hash.
func (m *Manager) ExportTemplate(ctx context.Context, name string, manifest func(*TemplateManifest) error, chunk func(*TemplateChunk) error) error {
	man, err := m.ExportManifest(ctx, name)
	if err != nil {
		return err
	}
	if err := manifest(man); err != nil {
		return err
	}
	buf := make([]byte, chunkSize)
	for i, f := range man.Files {
		if err := sendFile(ctx, i, f, buf, chunk); err != nil {
			return fmt.Errorf("template %s: %s: %w", name, f.Path, err)
		}
	}
	return nil
}

// sendFile sends file i's data and hash: every chunkSize window of the
// file that holds data (SEEK_DATA) goes whole, as one chunk, and windows
// without any are skipped. A memory image's data is scattered in pages:
// whole windows keep the chunks few and large, and the receiver leaves
// the zero pages they carry unwritten (receiveFile), so holes stay holes.
func sendFile(ctx context.Context, i int, f TemplateFile, buf []byte, chunk func(*TemplateChunk) error) error {
	fd, err := os.Open(f.src)
	if err != nil {
		return err
	}
	defer fd.Close()
	h := newFileHash()
	window := int64(len(buf))
	for off := int64(0); off < f.Size; off += window {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(fd.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return err
		}
		if data >= off+window {
			off = data / window * window // the window that holds it
		}
		n, err := fd.ReadAt(buf[:min(window, f.Size-off)], off)
		if err != nil && !(errors.Is(err, io.EOF) && n > 0) {
			return fmt.Errorf("read at %d: %w", off, err)
		}
		h.chunk(off, buf[:n])
		if err := chunk(&TemplateChunk{File: i, Offset: off, Data: buf[:n]}); err != nil {
			return err
		}
		if int64(n) < min(window, f.Size-off) {
			return fmt.Errorf("read at %d: short read (%d bytes): the file changed", off, n)
		}
	}
	return chunk(&TemplateChunk{File: i, Offset: f.Size, SHA256: h.sum(f.Size)})
}

// validManifest checks an imported manifest: a valid name and kind, safe
// and unique relative paths, backing references to files of the manifest,
// and a disk (and a snapshot directory) among them.
func validManifest(man *TemplateManifest) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: manifest: %s", ErrInvalid, fmt.Sprintf(format, args...))
	}
	if !ValidTemplateName(man.Name) || man.Name == "minimal" || man.Name == "base" || isWarm(man.Name) {
		return bad("template name %q", man.Name)
	}
	if man.Kind != KindImage && man.Kind != KindSnapshot {
		return bad("kind %q", man.Kind)
	}
	if len(man.Files) == 0 || len(man.Files) > maxManifestFiles {
		return bad("%d files", len(man.Files))
	}
	if man.DiskSize <= 0 || man.VCPUs < 0 || man.MemoryMB < 0 {
		return bad("sizes")
	}
	paths := map[string]bool{}
	for _, f := range man.Files {
		if !safeRelPath(f.Path) || paths[f.Path] || f.Size < 0 || f.Allocated < 0 {
			return bad("file %q", f.Path)
		}
		paths[f.Path] = true
	}
	// No file may be another's directory.
	for p := range paths {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if paths[d] {
				return bad("file %q is also a directory", d)
			}
		}
	}
	for _, f := range man.Files {
		if (f.Backing != "" && (!paths[f.Backing] || f.Backing == f.Path)) || (f.Backing != "" && f.BackingImage) {
			return bad("backing of %q", f.Path)
		}
	}
	if !paths[man.Rootfs] {
		return bad("disk %q", man.Rootfs)
	}
	if man.Kind == KindSnapshot {
		if !safeRelPath(man.Snapshot) || !paths[man.Snapshot+"/snapshot.json"] || man.VCPUs == 0 || man.MemoryMB == 0 {
			return bad("snapshot %q", man.Snapshot)
		}
	}
	return nil
}

// safeRelPath: a clean, relative, '/'-separated path without "..".
func safeRelPath(p string) bool {
	if p == "" || len(p) > 512 || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "." {
		return false
	}
	return !slices.Contains(strings.Split(p, "/"), "..") && !strings.ContainsAny(p, "\\\x00")
}

// ImportTemplate writes a template another host exported (man, then the
// chunks next returns until io.EOF) and publishes it as a replica: see
// the top of this file. It returns the template, the data bytes received
// and the replicas evicted to make room. On any error nothing of the
// import is left (ErrCorrupt: a hash mismatch; ErrInvalid: a malformed
// stream; ErrConflict: the host lacks the template's image; ErrNoSpace).
func (m *Manager) ImportTemplate(ctx context.Context, man *TemplateManifest, next func() (*TemplateChunk, error)) (tpl *Template, received int64, evicted []string, err error) {
	if err := validManifest(man); err != nil {
		return nil, 0, nil, err
	}
	img, err := m.cfg.Images.Get(ctx, man.ImageID)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("%w: template %s needs image %s, which this host does not have", ErrConflict, man.Name, man.ImageID)
	}
	var need int64
	for _, f := range man.Files {
		need += f.Allocated
	}
	if evicted, err = m.makeRoom("import", need>>20+1, man.Name); err != nil {
		return nil, 0, evicted, err
	}

	dir, err := os.MkdirTemp(m.templatesDir(), man.Name+"-")
	if err != nil {
		return nil, 0, evicted, err
	}
	defer func() {
		if err != nil {
			_ = os.RemoveAll(dir)
		}
	}()
	dirs := map[string]bool{dir: true}
	var pending *TemplateChunk
	for i, f := range man.Files {
		n, p, err := receiveFile(ctx, dir, i, f, pending, next)
		received += n
		if err != nil {
			return nil, received, evicted, fmt.Errorf("template %s: %s: %w", man.Name, f.Path, err)
		}
		pending = p
		dirs[filepath.Dir(filepath.Join(dir, filepath.FromSlash(f.Path)))] = true
	}
	if pending != nil {
		return nil, received, evicted, fmt.Errorf("%w: template %s: data after the last file", ErrInvalid, man.Name)
	}
	if c, err := next(); !errors.Is(err, io.EOF) {
		if err == nil {
			err = fmt.Errorf("%w: template %s: data after the last file (file %d)", ErrInvalid, man.Name, c.File)
		}
		return nil, received, evicted, err
	}
	// The layers onto their new paths, then everything durable.
	for _, f := range man.Files {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		back := ""
		switch {
		case f.Backing != "":
			back = filepath.Join(dir, filepath.FromSlash(f.Backing))
		case f.BackingImage:
			back = img.Rootfs
		default:
			continue
		}
		if err := disk.Rebase(ctx, p, back, disk.Format(back)); err != nil {
			return nil, received, evicted, err
		}
		if err := syncPath(p); err != nil {
			return nil, received, evicted, err
		}
	}
	for d := range dirs {
		for ; strings.HasPrefix(d, dir); d = filepath.Dir(d) {
			if err := syncDir(d); err != nil {
				return nil, received, evicted, err
			}
		}
	}
	tpl = &Template{
		Name: man.Name, Kind: man.Kind, ImageID: img.ID, Kernel: img.Kernel, Initrd: img.Initrd,
		Rootfs: filepath.Join(dir, filepath.FromSlash(man.Rootfs)), RootfsSize: man.DiskSize,
		VCPUs: man.VCPUs, MemoryMB: man.MemoryMB, CreatedAt: man.CreatedAt, FromSandbox: man.FromSandbox,
		Dir: dir, EnvdToken: man.EnvdToken, Replica: true,
	}
	if man.Kind == KindSnapshot {
		tpl.Snapshot = filepath.Join(dir, filepath.FromSlash(man.Snapshot))
	}
	// The chain must end at this host's image or in the copy itself.
	chain, err := disk.BackingChain(tpl.Rootfs)
	if err != nil {
		return nil, received, evicted, fmt.Errorf("%w: template %s: %v", ErrInvalid, man.Name, err)
	}
	if last := chain[len(chain)-1]; last != img.Rootfs && !strings.HasPrefix(last, dir+string(filepath.Separator)) {
		return nil, received, evicted, fmt.Errorf("%w: template %s: its disk ends at %s", ErrInvalid, man.Name, last)
	}
	if err := m.publishTemplate(tpl); err != nil {
		return nil, received, evicted, err
	}
	m.log.InfoContext(ctx, "template imported", "name", man.Name, "kind", man.Kind, "bytes", received, "files", len(man.Files))
	return tpl, received, evicted, nil
}

// receiveFile writes file i of an import from its chunks (the first may
// be pending, read already) and checks its hash. It returns the bytes
// received.
func receiveFile(ctx context.Context, dir string, i int, f TemplateFile, first *TemplateChunk, next func() (*TemplateChunk, error)) (int64, *TemplateChunk, error) {
	p := filepath.Join(dir, filepath.FromSlash(f.Path))
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return 0, nil, err
	}
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, nil, err
	}
	defer out.Close()
	h := newFileHash()
	var n, pos int64
	for {
		c := first
		first = nil
		if c == nil {
			if err := ctx.Err(); err != nil {
				return n, nil, err
			}
			if c, err = next(); err != nil {
				if errors.Is(err, io.EOF) {
					err = fmt.Errorf("%w: the stream ended inside the file", ErrInvalid)
				}
				return n, nil, err
			}
		}
		if c.File != i {
			return n, nil, fmt.Errorf("%w: a chunk of file %d while file %d was not finished", ErrInvalid, c.File, i)
		}
		if c.SHA256 != nil {
			if len(c.Data) != 0 {
				return n, nil, fmt.Errorf("%w: data on the hash chunk", ErrInvalid)
			}
			if !bytes.Equal(h.sum(f.Size), c.SHA256) {
				return n, nil, fmt.Errorf("%w: its data does not match the sender's SHA-256", ErrCorrupt)
			}
			if err := out.Truncate(f.Size); err != nil {
				return n, nil, err
			}
			if err := out.Sync(); err != nil {
				return n, nil, err
			}
			return n, nil, out.Close()
		}
		if c.Offset < pos || c.Offset+int64(len(c.Data)) > f.Size || len(c.Data) == 0 {
			return n, nil, fmt.Errorf("%w: chunk at %d+%d (file of %d bytes, at %d)", ErrInvalid, c.Offset, len(c.Data), f.Size, pos)
		}
		if err := writeSparse(out, c.Data, c.Offset); err != nil {
			return n, nil, err
		}
		h.chunk(c.Offset, c.Data)
		pos = c.Offset + int64(len(c.Data))
		n += int64(len(c.Data))
	}
}

// zeroPage is a page of zeros: writeSparse does not write those.
var zeroPage = make([]byte, 4096)

// writeSparse writes data at off into a new file, leaving its all-zero
// pages unwritten (holes: the file is new and truncated to its size at the
// end, so they read as zeros).
func writeSparse(f *os.File, data []byte, off int64) error {
	for len(data) > 0 {
		// A run of non-zero pages, written at once.
		run := 0
		for run < len(data) {
			end := min(run+len(zeroPage), len(data))
			if bytes.Equal(data[run:end], zeroPage[:end-run]) {
				break
			}
			run = end
		}
		if run > 0 {
			if _, err := f.WriteAt(data[:run], off); err != nil {
				return err
			}
			data, off = data[run:], off+int64(run)
			continue
		}
		skip := min(len(zeroPage), len(data))
		data, off = data[skip:], off+int64(skip)
	}
	return nil
}

// syncPath fsyncs the file at p.
func syncPath(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// makeRoom makes sure needMB fit on the data disk above its headroom,
// deleting replicas least recently used first if they do not (never
// keep, nor one whose files something else reads through). It returns
// the names of the replicas it deleted, and ErrNoSpace when that was not
// enough.
func (m *Manager) makeRoom(op string, needMB int64, keep string) (evicted []string, err error) {
	err = m.checkDisk(op, needMB)
	if !errors.Is(err, ErrNoSpace) {
		return nil, err
	}
	for _, t := range m.evictionOrder(keep) {
		if derr := m.DeleteTemplate(t.Name); derr != nil {
			m.log.Warn("evict a replicated template", "template", t.Name, "err", derr)
			continue
		}
		m.log.Info("replicated template evicted", "template", t.Name, "for", op)
		evicted = append(evicted, t.Name)
		if err = m.checkDisk(op, needMB); !errors.Is(err, ErrNoSpace) {
			return evicted, err
		}
	}
	return evicted, err
}

// evictionOrder lists the replicas that can be evicted, least recently
// used first: those whose directory nothing but their own index reads
// through (no sandbox's disk, no other template's chain).
func (m *Manager) evictionOrder(keep string) []*Template {
	ts, err := m.allTemplates()
	if err != nil {
		return nil
	}
	type cand struct {
		t    *Template
		used time.Time
	}
	var out []cand
	for _, t := range ts {
		if !t.Replica || t.Name == keep || t.Dir == "" || isWarm(t.Name) {
			continue
		}
		refs, ok := m.referencedTemplateDirsExcept(t.Name)
		if !ok || refs[t.Dir] {
			continue
		}
		fi, err := os.Stat(m.templateIndex(t.Name))
		if err != nil {
			continue
		}
		out = append(out, cand{t, fi.ModTime()})
	}
	slices.SortFunc(out, func(a, b cand) int { return a.used.Compare(b.used) })
	res := make([]*Template, len(out))
	for i, c := range out {
		res[i] = c.t
	}
	return res
}

// touchTemplate marks template t used now (a replica's LRU clock: its
// index file's modification time).
func (m *Manager) touchTemplate(t *Template) {
	if !t.Replica {
		return
	}
	now := m.now()
	_ = os.Chtimes(m.templateIndex(t.Name), now, now)
}
