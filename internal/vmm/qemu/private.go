package qemu

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A machine restored lazily maps its snapshot's memory file privately:
// the pages the guest never wrote are still the file's, the ones it wrote
// are anonymous copies in QEMU's address space. copyPrivateMemory
// rebuilds the guest's whole memory from those two sources, with the
// guest stopped: the mapped file (reopened through /proc/<pid>/map_files,
// which works even when it was unlinked or replaced since) is cloned or
// sparse-copied, then the pages that /proc/<pid>/pagemap reports as
// anonymous (present and not file-backed, or swapped out) are read from
// /proc/<pid>/mem and written over it. That costs what the guest uses and
// wrote, not its RAM size: QEMU's own migration would read every page of
// the mapping, faulting in the file's holes one by one.

// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const (
	pmPresent  = 1 << 63
	pmSwapped  = 1 << 62
	pmFilePage = 1 << 61
)

// ramMapping is the guest RAM mapping of a QEMU process.
type ramMapping struct {
	start, end uint64
}

// findRAMMapping finds the mapping of the file (dev, ino) at offset 0 and
// of size bytes in pid's address space.
func findRAMMapping(pid int, dev, ino uint64, size int64) (ramMapping, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/maps")
	if err != nil {
		return ramMapping{}, err
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x", unix.Major(dev), unix.Minor(dev))
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fl := strings.Fields(sc.Text())
		if len(fl) < 6 || fl[2] != "00000000" || fl[3] != want || fl[4] != strconv.FormatUint(ino, 10) {
			continue
		}
		lo, hi, ok := strings.Cut(fl[0], "-")
		if !ok {
			continue
		}
		s, err1 := strconv.ParseUint(lo, 16, 64)
		e, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && int64(e-s) == size {
			return ramMapping{s, e}, nil
		}
	}
	if err := sc.Err(); err != nil {
		return ramMapping{}, err
	}
	return ramMapping{}, fmt.Errorf("no %d-byte mapping of inode %s:%d in process %d", size, want, ino, pid)
}

// privateMemory is the guest memory of a stopped machine whose RAM is a
// private file mapping.
type privateMemory struct {
	pid  int
	mp   ramMapping
	size int64
	base *os.File // the mapped file
}

// openPrivateMemory finds the guest RAM mapping (of the file dev/ino) of
// process pid and opens the mapped file.
func openPrivateMemory(pid int, dev, ino uint64, size int64) (*privateMemory, error) {
	mp, err := findRAMMapping(pid, dev, ino, size)
	if err != nil {
		return nil, err
	}
	base, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, mp.start, mp.end))
	if err != nil {
		return nil, fmt.Errorf("open the mapped memory file: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(base.Fd()), &st); err != nil {
		base.Close()
		return nil, err
	}
	if st.Ino != ino || st.Size != size {
		base.Close()
		return nil, fmt.Errorf("mapped memory file changed (inode %d, %d bytes)", st.Ino, st.Size)
	}
	return &privateMemory{pid: pid, mp: mp, size: size, base: base}, nil
}

func (p *privateMemory) Close() error { return p.base.Close() }

// copyBase writes the mapped file's contents into dst (a reflink where the
// filesystem allows, else a sparse copy). The file never changes, so this
// may run while the guest runs.
func (p *privateMemory) copyBase(dst *os.File) error {
	if err := unix.IoctlFileClone(int(dst.Fd()), int(p.base.Fd())); err == nil {
		return nil
	}
	_, err := copySparse(dst, p.base, p.size)
	return err
}

// dirtyPages calls fn for every run of pages that the guest owns (those
// that pagemap reports present and not file-backed, or swapped out), with
// their offset in guest memory and their contents, read from
// /proc/<pid>/mem. It returns the bytes in those pages.
func (p *privateMemory) dirtyPages(fn func(off int64, data []byte) error) (int64, error) {
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", p.pid))
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", p.pid))
	if err != nil {
		return 0, err
	}
	defer mem.Close()
	const page = 4096
	const batch = 4096 // pages per pagemap read (16 MiB of guest memory)
	entries := make([]byte, 8*batch)
	buf := make([]byte, batch*page)
	var total int64
	pages := p.size / page
	for first := int64(0); first < pages; first += batch {
		n := min(batch, pages-first)
		if _, err := pm.ReadAt(entries[:8*n], int64(p.mp.start/page+uint64(first))*8); err != nil {
			return total, fmt.Errorf("read pagemap: %w", err)
		}
		owned := func(i int64) bool {
			v := binary.LittleEndian.Uint64(entries[8*i:])
			return v&pmSwapped != 0 || (v&pmPresent != 0 && v&pmFilePage == 0)
		}
		for i := int64(0); i < n; {
			if !owned(i) {
				i++
				continue
			}
			j := i + 1
			for j < n && owned(j) {
				j++
			}
			chunk := buf[:(j-i)*page]
			off := (first + i) * page
			if _, err := mem.ReadAt(chunk, int64(p.mp.start)+off); err != nil {
				return total, fmt.Errorf("read guest memory: %w", err)
			}
			if err := fn(off, chunk); err != nil {
				return total, err
			}
			total += int64(len(chunk))
			i = j
		}
	}
	return total, nil
}

// writePages writes data at off into f page by page: zero pages become
// holes, the others are written.
func writePages(f *os.File, off int64, data []byte) error {
	const page = 4096
	var zero [page]byte
	for k := 0; k < len(data); k += page {
		p := data[k : k+page]
		var err error
		if bytes.Equal(p, zero[:]) {
			err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off+int64(k), page)
		} else {
			_, err = f.WriteAt(p, off+int64(k))
		}
		if err != nil {
			return fmt.Errorf("write %s: %w", f.Name(), err)
		}
	}
	return nil
}

// capturedPages holds guest-owned pages taken while the guest was stopped,
// to be written over a copy of the base once it runs again.
type capturedPages struct {
	f    *os.File // memfd: the pages at their guest offsets
	runs [][2]int64
}

// capture copies the guest-owned pages into a memfd (RAM speed).
func (p *privateMemory) capture() (*capturedPages, error) {
	f, err := newMemfd("capsule-capture", p.size)
	if err != nil {
		return nil, err
	}
	c := &capturedPages{f: f}
	_, err = p.dirtyPages(func(off int64, data []byte) error {
		c.runs = append(c.runs, [2]int64{off, int64(len(data))})
		_, err := f.WriteAt(data, off)
		return err
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

// apply writes the captured pages into dst.
func (c *capturedPages) apply(dst *os.File) error {
	buf := make([]byte, 1<<20)
	for _, r := range c.runs {
		for done := int64(0); done < r[1]; {
			n := min(int64(len(buf)), r[1]-done)
			if _, err := c.f.ReadAt(buf[:n], r[0]+done); err != nil {
				return err
			}
			if err := writePages(dst, r[0]+done, buf[:n]); err != nil {
				return err
			}
			done += n
		}
	}
	return nil
}

func (c *capturedPages) Close() error { return c.f.Close() }

// errNoDeviceSave reports a QEMU without xen-save-devices-state.
var errNoDeviceSave = errors.New("QEMU cannot save device state alone")
