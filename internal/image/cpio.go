package image

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
)

// The initramfs is a cpio archive in the "newc" format that the kernel
// unpacks (Documentation/driver-api/early-userspace/buffer-format.rst):
// each entry is a 110-byte ASCII header "070701" + 13 eight-digit hex
// fields, the NUL-terminated name padded to a multiple of 4 bytes, then the
// data padded likewise; the archive ends with the entry "TRAILER!!!".

const (
	cpioMagic   = "070701"
	cpioTrailer = "TRAILER!!!"
	cpioHdrLen  = 110
)

// Unix file type bits of a cpio mode.
const (
	cpioTypeMask = 0o170000
	cpioDir      = 0o040000
	cpioReg      = 0o100000
	cpioLink     = 0o120000
	cpioChr      = 0o020000
)

// cpioEntry describes one archive member. Mode holds the Unix permission
// bits (including setuid, setgid and sticky); the type comes from the
// method that writes the entry.
type cpioEntry struct {
	Name     string // path relative to the archive root, no leading "/"
	Mode     fs.FileMode
	UID, GID uint32
	Mtime    uint32
}

// cpioWriter writes a newc archive. Inode numbers are assigned in order;
// hard links are not supported (none are needed).
type cpioWriter struct {
	w      io.Writer
	ino    uint32
	off    int64
	closed bool
}

func newCPIOWriter(w io.Writer) *cpioWriter { return &cpioWriter{w: w, ino: 1} }

// Dir adds a directory.
func (c *cpioWriter) Dir(e cpioEntry) error {
	return c.add(e, cpioDir, 2, 0, 0, nil, 0)
}

// File adds a regular file of size bytes read from r.
func (c *cpioWriter) File(e cpioEntry, r io.Reader, size int64) error {
	return c.add(e, cpioReg, 1, 0, 0, r, size)
}

// Bytes adds a regular file with the given content.
func (c *cpioWriter) Bytes(e cpioEntry, data []byte) error {
	return c.File(e, bytes.NewReader(data), int64(len(data)))
}

// Symlink adds a symbolic link to target.
func (c *cpioWriter) Symlink(e cpioEntry, target string) error {
	e.Mode = 0o777
	return c.add(e, cpioLink, 1, 0, 0, strings.NewReader(target), int64(len(target)))
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(e cpioEntry, major, minor uint32) error {
	return c.add(e, cpioChr, 1, major, minor, nil, 0)
}

// Close writes the trailer. It does not close the underlying writer.
func (c *cpioWriter) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	return c.header(cpioTrailer, 0, 0, 0, 1, 0, 0, 0, 0)
}

func (c *cpioWriter) add(e cpioEntry, typ, nlink, major, minor uint32, r io.Reader, size int64) error {
	if c.closed {
		return errors.New("cpio: write after close")
	}
	name := strings.TrimPrefix(e.Name, "/")
	if name == "" || name == cpioTrailer || strings.Contains(name, "\x00") {
		return fmt.Errorf("cpio: bad entry name %q", e.Name)
	}
	if size < 0 || size > 0xffffffff {
		return fmt.Errorf("cpio: %s: size %d out of range", name, size)
	}
	mode := typ | uint32(e.Mode.Perm())
	if e.Mode&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if e.Mode&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if e.Mode&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	if err := c.header(name, mode, e.UID, e.GID, nlink, e.Mtime, uint32(size), major, minor); err != nil {
		return err
	}
	if size > 0 {
		n, err := io.CopyN(c.w, r, size)
		c.off += n
		if err != nil {
			return fmt.Errorf("cpio: %s: %w", name, err)
		}
	}
	return c.pad()
}

func (c *cpioWriter) header(name string, mode, uid, gid, nlink, mtime, size, rmajor, rminor uint32) error {
	ino := uint32(0)
	if name != cpioTrailer {
		ino = c.ino
		c.ino++
	}
	hdr := fmt.Sprintf("%s%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%s\x00",
		cpioMagic, ino, mode, uid, gid, nlink, mtime, size,
		0, 0, // device of the archived file: irrelevant
		rmajor, rminor, len(name)+1, 0, name)
	n, err := io.WriteString(c.w, hdr)
	c.off += int64(n)
	if err != nil {
		return fmt.Errorf("cpio: %s: %w", name, err)
	}
	return c.pad()
}

// pad writes NULs up to the next multiple of 4 bytes.
func (c *cpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		n, err := c.w.Write(make([]byte, 4-r))
		c.off += int64(n)
		if err != nil {
			return fmt.Errorf("cpio: %w", err)
		}
	}
	return nil
}
