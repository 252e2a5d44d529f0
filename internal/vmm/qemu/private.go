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

// copyPrivateMemory writes the guest memory of the stopped machine (a
// private mapping of the file dev/ino) into dst, which has size bytes.
func copyPrivateMemory(dst *os.File, pid int, dev, ino uint64, size int64) (dirty int64, err error) {
	mp, err := findRAMMapping(pid, dev, ino, size)
	if err != nil {
		return 0, err
	}
	base, err := os.Open(fmt.Sprintf("/proc/%d/map_files/%x-%x", pid, mp.start, mp.end))
	if err != nil {
		return 0, fmt.Errorf("open the mapped memory file: %w", err)
	}
	defer base.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(base.Fd()), &st); err != nil {
		return 0, err
	}
	if st.Ino != ino || st.Size != size {
		return 0, fmt.Errorf("mapped memory file changed (inode %d, %d bytes)", st.Ino, st.Size)
	}
	// The file's contents first: a reflink where the filesystem allows,
	// else a sparse copy.
	if err := unix.IoctlFileClone(int(dst.Fd()), int(base.Fd())); err != nil {
		if _, err := copySparse(dst, base, size); err != nil {
			return 0, err
		}
	}
	pm, err := os.Open(fmt.Sprintf("/proc/%d/pagemap", pid))
	if err != nil {
		return 0, err
	}
	defer pm.Close()
	mem, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return 0, err
	}
	defer mem.Close()

	const page = 4096
	const batch = 4096 // pages per pagemap read (16 MiB of guest memory)
	entries := make([]byte, 8*batch)
	buf := make([]byte, batch*page)
	zero := make([]byte, page)
	pages := size / page
	for first := int64(0); first < pages; first += batch {
		n := min(batch, pages-first)
		if _, err := pm.ReadAt(entries[:8*n], int64(mp.start/page+uint64(first))*8); err != nil {
			return dirty, fmt.Errorf("read pagemap: %w", err)
		}
		isDirty := func(i int64) bool {
			v := binary.LittleEndian.Uint64(entries[8*i:])
			return v&pmSwapped != 0 || (v&pmPresent != 0 && v&pmFilePage == 0)
		}
		for i := int64(0); i < n; {
			if !isDirty(i) {
				i++
				continue
			}
			j := i + 1
			for j < n && isDirty(j) {
				j++
			}
			// Pages [i, j) are the guest's own: copy them over.
			chunk := buf[:(j-i)*page]
			if _, err := mem.ReadAt(chunk, int64(mp.start)+(first+i)*page); err != nil {
				return dirty, fmt.Errorf("read guest memory: %w", err)
			}
			for k := int64(0); k < j-i; k++ {
				p := chunk[k*page : (k+1)*page]
				off := (first + i + k) * page
				if bytes.Equal(p, zero) {
					err = unix.Fallocate(int(dst.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, page)
				} else {
					_, err = dst.WriteAt(p, off)
				}
				if err != nil {
					return dirty, fmt.Errorf("write memory file: %w", err)
				}
			}
			dirty += j - i
			i = j
		}
	}
	return dirty * page, nil
}

// errNoDeviceSave reports a QEMU without xen-save-devices-state.
var errNoDeviceSave = errors.New("QEMU cannot save device state alone")
