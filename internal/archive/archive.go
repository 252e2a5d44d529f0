package archive

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"strings"
	"time"
)

// Format is the kind of an archive.
type Format string

// The formats Detect knows.
const (
	Tar    Format = "tar"
	TarGz  Format = "tar.gz"
	Zip    Format = "zip"
	noFmt  Format = ""
	header        = 512 // bytes Detect needs at most
)

// DefaultMaxBytes is the default limit of an archive's content, and of
// its upload.
const DefaultMaxBytes int64 = 1 << 30

// DefaultMaxEntries is the default limit of entries.
const DefaultMaxEntries = 100_000

// Limits bound what Normalize reads. Zero values are the defaults.
type Limits struct {
	MaxBytes   int64 // content bytes once uncompressed
	MaxEntries int
}

func (l Limits) withDefaults() Limits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultMaxBytes
	}
	if l.MaxEntries <= 0 {
		l.MaxEntries = DefaultMaxEntries
	}
	return l
}

// ErrTooLarge is an archive over Limits.MaxBytes.
var ErrTooLarge = errors.New("archive: the archive's content is over the size limit")

// ErrUnknownFormat is content that is not a tar, a gzip-compressed tar
// or a zip.
var ErrUnknownFormat = errors.New("archive: not a tar, tar.gz or zip archive")

// Error is an archive refused because of one entry (or, with Name "",
// because it is malformed).
type Error struct {
	Name   string
	Reason string
}

func (e *Error) Error() string {
	if e.Name == "" {
		return "archive: " + e.Reason
	}
	return fmt.Sprintf("archive: entry %q: %s", e.Name, e.Reason)
}

// Detect tells an archive's format from its first bytes (up to 512).
func Detect(head []byte) (Format, error) {
	switch {
	case bytes.HasPrefix(head, []byte{0x1f, 0x8b}):
		return TarGz, nil
	case bytes.HasPrefix(head, []byte("PK\x03\x04")), bytes.HasPrefix(head, []byte("PK\x05\x06")):
		return Zip, nil
	case isTarHeader(head):
		return Tar, nil
	}
	return noFmt, ErrUnknownFormat
}

// isTarHeader: a ustar (POSIX or GNU) header, or the zero block of an
// empty tar.
func isTarHeader(b []byte) bool {
	if len(b) < header {
		return false
	}
	if bytes.Equal(b[257:262], []byte("ustar")) {
		return true
	}
	for _, c := range b[:header] {
		if c != 0 {
			return false
		}
	}
	return true
}

// Stats describe a normalized archive.
type Stats struct {
	Format   Format
	Files    int // regular files and hard links
	Dirs     int
	Symlinks int
	Bytes    int64 // content bytes
}

// entry is what every format's reader yields.
type entry struct {
	name     string
	typ      byte // tar.TypeReg, TypeDir, TypeSymlink, TypeLink
	mode     int64
	size     int64
	linkname string
	mtime    time.Time
	open     func() (io.Reader, error)
}

// Normalize reads the archive in r (size bytes; its format detected) and
// writes the clean tar of its entries to w. Errors: ErrUnknownFormat,
// ErrTooLarge, *Error, or w's.
func Normalize(r io.ReaderAt, size int64, w io.Writer, lim Limits) (Stats, error) {
	lim = lim.withDefaults()
	head := make([]byte, header)
	n, err := r.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Stats{}, fmt.Errorf("archive: read: %w", err)
	}
	format, err := Detect(head[:n])
	if err != nil {
		return Stats{}, err
	}
	nz := &normalizer{lim: lim, tw: tar.NewWriter(errWriter{w}), seen: map[string]byte{}, links: map[string]string{}, stats: Stats{Format: format}}
	switch format {
	case Zip:
		err = nz.zip(r, size)
	case TarGz:
		err = nz.tarGz(io.NewSectionReader(r, 0, size))
	default:
		err = nz.tar(io.NewSectionReader(r, 0, size))
	}
	if err != nil {
		return nz.stats, err
	}
	// Every symlink again, now that all are known: a link may climb out
	// through another link that came after it.
	for name, target := range nz.links {
		if err := nz.resolve(name, target); err != nil {
			return nz.stats, &Error{Name: name, Reason: err.Error()}
		}
	}
	if err := nz.tw.Close(); err != nil {
		return nz.stats, fmt.Errorf("archive: write: %w", err)
	}
	return nz.stats, nil
}

type normalizer struct {
	lim     Limits
	tw      *tar.Writer
	seen    map[string]byte   // cleaned name → type (parents: directories)
	links   map[string]string // cleaned name → symlink target
	entries int
	stats   Stats
}

func (nz *normalizer) tarGz(r io.Reader) error {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return &Error{Reason: "bad gzip stream: " + err.Error()}
	}
	zr.Multistream(false)
	// The decompressed stream must itself be a tar.
	br := &peekReader{r: zr}
	head, err := br.peek(header)
	if err != nil {
		return &Error{Reason: "bad gzip stream: " + err.Error()}
	}
	if !isTarHeader(head) {
		return &Error{Reason: "the gzip stream holds no tar archive"}
	}
	return nz.tar(br)
}

func (nz *normalizer) tar(r io.Reader) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return &Error{Reason: "bad tar stream: " + err.Error()}
		}
		e := entry{name: h.Name, mode: h.Mode, size: h.Size, linkname: h.Linkname, mtime: h.ModTime,
			open: func() (io.Reader, error) { return tr, nil }}
		switch h.Typeflag {
		case tar.TypeReg, 0: // 0: TypeRegA, pre-POSIX
			e.typ = tar.TypeReg
		case tar.TypeDir:
			e.typ = tar.TypeDir
		case tar.TypeSymlink:
			e.typ = tar.TypeSymlink
		case tar.TypeLink:
			e.typ = tar.TypeLink
		case tar.TypeXGlobalHeader:
			continue
		default:
			return &Error{Name: h.Name, Reason: fmt.Sprintf("unsupported entry type %q (only files, directories and links)", h.Typeflag)}
		}
		if err := nz.add(e); err != nil {
			return err
		}
	}
}

func (nz *normalizer) zip(r io.ReaderAt, size int64) error {
	zr, err := zip.NewReader(r, size)
	if err != nil {
		return &Error{Reason: "bad zip archive: " + err.Error()}
	}
	for _, f := range zr.File {
		f := f
		mode := f.Mode()
		e := entry{name: f.Name, mode: int64(mode.Perm()), size: int64(f.UncompressedSize64), mtime: f.Modified,
			open: func() (io.Reader, error) { return f.Open() }}
		switch {
		case mode.IsDir() || strings.HasSuffix(f.Name, "/"):
			e.typ = tar.TypeDir
			e.size = 0
		case mode&fs.ModeSymlink != 0:
			e.typ = tar.TypeSymlink
			target, err := readLink(f, nz.lim)
			if err != nil {
				return err
			}
			e.linkname, e.size = target, 0
		case mode.IsRegular():
			e.typ = tar.TypeReg
		default:
			return &Error{Name: f.Name, Reason: fmt.Sprintf("unsupported entry type (mode %s)", mode)}
		}
		if e.size < 0 || f.UncompressedSize64 > uint64(1<<62) {
			return &Error{Name: f.Name, Reason: "impossible size"}
		}
		if err := nz.add(e); err != nil {
			return err
		}
	}
	return nil
}

func readLink(f *zip.File, lim Limits) (string, error) {
	rc, err := f.Open()
	if err != nil {
		return "", &Error{Name: f.Name, Reason: "bad zip entry: " + err.Error()}
	}
	defer rc.Close()
	b, err := io.ReadAll(io.LimitReader(rc, 4097))
	if err != nil {
		return "", &Error{Name: f.Name, Reason: "bad zip entry: " + err.Error()}
	}
	if len(b) > 4096 {
		return "", &Error{Name: f.Name, Reason: "symlink target longer than 4096 bytes"}
	}
	return string(b), nil
}

// clean makes an entry's name relative and clean, or says why it cannot.
func clean(name string) (string, error) {
	switch {
	case name == "":
		return "", errors.New("empty name")
	case len(name) > 4096:
		return "", errors.New("name longer than 4096 bytes")
	case strings.ContainsRune(name, 0):
		return "", errors.New("name contains a NUL byte")
	case strings.HasPrefix(name, "/"):
		return "", errors.New("absolute name")
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", errors.New(`name contains ".."`)
		}
	}
	return path.Clean(name), nil
}

func (nz *normalizer) add(e entry) error {
	nz.entries++
	if nz.entries > nz.lim.MaxEntries {
		return &Error{Reason: fmt.Sprintf("more than %d entries", nz.lim.MaxEntries)}
	}
	name, err := clean(e.name)
	if err != nil {
		return &Error{Name: e.name, Reason: err.Error()}
	}
	if name == "." {
		if e.typ != tar.TypeDir {
			return &Error{Name: e.name, Reason: "the archive's root is not a directory"}
		}
		return nil // the root itself
	}
	// Every parent must be a directory (one not in the archive is made
	// implicitly, and is one from now on).
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		if t, ok := nz.seen[dir]; ok && t != tar.TypeDir {
			return &Error{Name: e.name, Reason: fmt.Sprintf("its path passes through %q, which is not a directory", dir)}
		}
	}
	for dir := path.Dir(name); dir != "."; dir = path.Dir(dir) {
		nz.seen[dir] = tar.TypeDir
	}
	if prev, ok := nz.seen[name]; ok && (prev != tar.TypeDir || e.typ != tar.TypeDir) {
		return &Error{Name: e.name, Reason: "appears twice"}
	}
	h := &tar.Header{Name: name, Mode: e.mode & 0o777, ModTime: e.mtime, Format: tar.FormatPAX}
	if !e.mtime.IsZero() {
		h.ModTime = e.mtime.UTC().Truncate(time.Second)
	}
	switch e.typ {
	case tar.TypeDir:
		h.Typeflag, h.Name = tar.TypeDir, name+"/"
		nz.stats.Dirs++
	case tar.TypeSymlink:
		if err := checkLink(e.linkname); err != nil {
			return &Error{Name: e.name, Reason: err.Error()}
		}
		if err := nz.resolve(name, e.linkname); err != nil {
			return &Error{Name: e.name, Reason: err.Error()}
		}
		nz.links[name] = e.linkname
		h.Typeflag, h.Linkname, h.Mode = tar.TypeSymlink, e.linkname, 0o777
		nz.stats.Symlinks++
	case tar.TypeLink:
		target, err := clean(e.linkname)
		if err != nil || nz.seen[target] != tar.TypeReg {
			return &Error{Name: e.name, Reason: fmt.Sprintf("hard link to %q, which is not an earlier file of the archive", e.linkname)}
		}
		h.Typeflag, h.Linkname = tar.TypeLink, target
		nz.stats.Files++
	case tar.TypeReg:
		h.Typeflag, h.Size = tar.TypeReg, e.size
		if e.size > nz.lim.MaxBytes-nz.stats.Bytes {
			return ErrTooLarge
		}
		nz.stats.Files++
	}
	nz.seen[name] = e.typ
	if err := nz.tw.WriteHeader(h); err != nil {
		var we writeError
		if errors.As(err, &we) {
			return we.error
		}
		return fmt.Errorf("archive: write: %w", err)
	}
	if e.typ != tar.TypeReg {
		return nil
	}
	src, err := e.open()
	if err != nil {
		return &Error{Name: e.name, Reason: "unreadable: " + err.Error()}
	}
	// Exactly the declared size: more or less is a lying header.
	n, err := io.Copy(nz.tw, io.LimitReader(src, e.size))
	if err != nil {
		var we writeError
		if errors.As(err, &we) {
			return we.error
		}
		return &Error{Name: e.name, Reason: "unreadable: " + err.Error()}
	}
	if n != e.size {
		return &Error{Name: e.name, Reason: fmt.Sprintf("holds %d bytes, its header says %d", n, e.size)}
	}
	// Read on to the end: zip checks the checksum and the size there.
	var one [1]byte
	if m, err := src.Read(one[:]); m > 0 {
		return &Error{Name: e.name, Reason: fmt.Sprintf("holds more bytes than its header says (%d)", e.size)}
	} else if err != nil && !errors.Is(err, io.EOF) {
		return &Error{Name: e.name, Reason: "unreadable: " + err.Error()}
	}
	if c, ok := src.(io.Closer); ok {
		_ = c.Close()
	}
	nz.stats.Bytes += n
	return nil
}

type writeError struct{ error }

// errWriter marks the errors of the output, so that they are not taken
// for the archive's.
type errWriter struct{ w io.Writer }

func (e errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil {
		err = writeError{fmt.Errorf("archive: write: %w", err)}
	}
	return n, err
}

// checkLink refuses a symlink target that is absolute or malformed.
func checkLink(target string) error {
	switch {
	case target == "":
		return errors.New("symlink with an empty target")
	case len(target) > 4096:
		return errors.New("symlink target longer than 4096 bytes")
	case strings.ContainsRune(target, 0):
		return errors.New("symlink target contains a NUL byte")
	case strings.HasPrefix(target, "/"):
		return fmt.Errorf("symlink to the absolute path %q leaves the archive", target)
	}
	return nil
}

// resolve follows the symlink at name to target as the kernel would,
// through the archive's other symlinks known so far, and refuses it when
// it leaves the archive's root at any point.
func (nz *normalizer) resolve(name, target string) error {
	var cur []string // the resolved directory, from the root
	if d := path.Dir(name); d != "." {
		cur = strings.Split(d, "/")
	}
	queue := strings.Split(target, "/")
	for hops := 0; len(queue) > 0; {
		p := queue[0]
		queue = queue[1:]
		switch p {
		case "", ".":
			continue
		case "..":
			if len(cur) == 0 {
				return fmt.Errorf("symlink to %q leaves the archive", target)
			}
			cur = cur[:len(cur)-1]
			continue
		}
		next := strings.Join(append(cur[:len(cur):len(cur)], p), "/")
		t, isLink := nz.links[next]
		if !isLink {
			cur = append(cur, p)
			continue
		}
		if hops++; hops > 40 {
			return fmt.Errorf("symlink to %q: too many levels of links", target)
		}
		if strings.HasPrefix(t, "/") {
			return fmt.Errorf("symlink to %q leaves the archive through %q", target, next)
		}
		queue = append(strings.Split(t, "/"), queue...)
	}
	return nil
}

// peekReader lets the first bytes of a stream be looked at and read again.
type peekReader struct {
	r   io.Reader
	buf []byte
}

func (p *peekReader) peek(n int) ([]byte, error) {
	for len(p.buf) < n {
		b := make([]byte, n-len(p.buf))
		m, err := p.r.Read(b)
		p.buf = append(p.buf, b[:m]...)
		if err != nil {
			if errors.Is(err, io.EOF) {
				return p.buf, nil
			}
			return p.buf, err
		}
	}
	return p.buf, nil
}

func (p *peekReader) Read(b []byte) (int, error) {
	if len(p.buf) > 0 {
		n := copy(b, p.buf)
		p.buf = p.buf[n:]
		return n, nil
	}
	return p.r.Read(b)
}
