package qemu

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// newMemfd returns an anonymous shared-memory file of size bytes for guest
// RAM. Its pages are freed when the last descriptor and mapping go: no
// file is left behind whatever happens to the agent or QEMU.
func newMemfd(name string, size int64) (*os.File, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "memfd:"+name)
	if err := f.Truncate(size); err != nil {
		f.Close()
		return nil, fmt.Errorf("size guest memory: %w", err)
	}
	return f, nil
}

// copySparse copies the first size bytes of src into dst (already sized)
// at the same offsets, reading only src's allocated ranges (SEEK_DATA,
// SEEK_HOLE) and writing only pages that are not all zeros, so dst stays
// as sparse as the guest's memory use allows. It returns the bytes
// written.
func copySparse(dst, src *os.File, size int64) (int64, error) {
	const page = 4096
	buf := make([]byte, 1<<20)
	zero := make([]byte, page)
	var written int64
	sfd := int(src.Fd())
	for off := int64(0); off < size; {
		data, err := unix.Seek(sfd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return written, fmt.Errorf("seek data in %s: %w", src.Name(), err)
		}
		if data >= size {
			break
		}
		hole, err := unix.Seek(sfd, data, unix.SEEK_HOLE)
		if err != nil {
			return written, fmt.Errorf("seek hole in %s: %w", src.Name(), err)
		}
		hole = min(hole, size)
		for pos := data; pos < hole; {
			n := int(min(int64(len(buf)), hole-pos))
			if _, err := src.ReadAt(buf[:n], pos); err != nil && !errors.Is(err, io.EOF) {
				return written, fmt.Errorf("read %s: %w", src.Name(), err)
			}
			// Write each run of non-zero pages at once.
			for i := 0; i < n; {
				if bytes.Equal(buf[i:min(i+page, n)], zero[:min(page, n-i)]) {
					i += page
					continue
				}
				j := i + page
				for j < n && !bytes.Equal(buf[j:min(j+page, n)], zero[:min(page, n-j)]) {
					j += page
				}
				j = min(j, n)
				if _, err := dst.WriteAt(buf[i:j], pos+int64(i)); err != nil {
					return written, fmt.Errorf("write %s: %w", dst.Name(), err)
				}
				written += int64(j - i)
				i = j
			}
			pos += int64(n)
		}
		off = hole
	}
	return written, nil
}

// allocatedBytes is the space a file occupies (its allocated blocks).
func allocatedBytes(f *os.File) int64 {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0
	}
	return st.Blocks * 512
}
