package metrics

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat:
// 100 on every Linux architecture Capsule runs on (sysconf(_SC_CLK_TCK)).
const clockTicks = 100

// proc holds the open files of one VMM process and the buffer they are
// read into.
type proc struct {
	stat, statm, smaps *os.File
	disks              []*os.File
	buf                []byte
}

func openProc(pid int, disks []string) (*proc, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("metrics: no process (pid %d)", pid)
	}
	p := &proc{buf: make([]byte, 4096)}
	var err error
	if p.stat, err = os.Open(fmt.Sprintf("/proc/%d/stat", pid)); err != nil {
		return nil, err
	}
	if p.statm, err = os.Open(fmt.Sprintf("/proc/%d/statm", pid)); err != nil {
		p.close()
		return nil, err
	}
	if p.smaps, err = os.Open(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err != nil {
		p.close()
		return nil, err
	}
	for _, d := range disks {
		f, err := os.Open(d)
		if err != nil {
			p.close()
			return nil, err
		}
		p.disks = append(p.disks, f)
	}
	return p, nil
}

func (p *proc) close() {
	for _, f := range append([]*os.File{p.stat, p.statm, p.smaps}, p.disks...) {
		if f != nil {
			f.Close()
		}
	}
}

// pread reads f from offset 0 into p.buf (one system call).
func (p *proc) pread(f *os.File) ([]byte, error) {
	n, err := syscall.Pread(int(f.Fd()), p.buf, 0)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("empty read")
	}
	return p.buf[:n], nil
}

// cpuTicks is utime + stime of the process, in clock ticks.
func (p *proc) cpuTicks() (uint64, error) {
	b, err := p.pread(p.stat)
	if err != nil {
		return 0, err
	}
	return parseStatTicks(b)
}

// ProcessCPU is the CPU time process pid has used (utime + stime of
// /proc/<pid>/stat, its threads included, its waited-for children not).
func ProcessCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	ticks, err := parseStatTicks(b)
	if err != nil {
		return 0, err
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// parseStatTicks reads fields 14 (utime) and 15 (stime) of a
// /proc/<pid>/stat line. The command (field 2) is in parentheses and may
// hold spaces and parentheses: fields are counted after the last ')'.
func parseStatTicks(b []byte) (uint64, error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, errors.New("stat: no command field")
	}
	b = b[i+1:]
	var sum uint64
	field := 2 // the last field read
	for len(b) > 0 && field < 15 {
		b = bytes.TrimLeft(b, " ")
		end := bytes.IndexByte(b, ' ')
		if end < 0 {
			end = len(b)
		}
		field++
		if field == 14 || field == 15 {
			v, ok := atou(bytes.TrimSpace(b[:end]))
			if !ok {
				return 0, fmt.Errorf("stat field %d: not a number", field)
			}
			sum += v
		}
		b = b[end:]
	}
	if field < 15 {
		return 0, errors.New("stat: too few fields")
	}
	return sum, nil
}

// rss is the process' resident set size in bytes, from /proc/<pid>/statm
// (the kernel's counters: O(1), unlike smaps_rollup).
func (p *proc) rss() (int64, error) {
	b, err := p.pread(p.statm)
	if err != nil {
		return 0, err
	}
	return parseStatm(b)
}

// parseStatm reads field 2 (resident, in pages) of /proc/<pid>/statm.
func parseStatm(b []byte) (int64, error) {
	i := bytes.IndexByte(b, ' ')
	if i < 0 {
		return 0, errors.New("statm: one field")
	}
	b = b[i+1:]
	if j := bytes.IndexAny(b, " \n"); j >= 0 {
		b = b[:j]
	}
	pages, ok := atou(b)
	if !ok {
		return 0, fmt.Errorf("statm: malformed %q", b)
	}
	return int64(pages) * int64(pageSize), nil
}

var pageSize = os.Getpagesize()

// memory is the process' RSS and PSS in bytes from smaps_rollup, which
// walks the process' page tables: its cost grows with the memory mapped
// (about 2 ms for a VMM with 256 MiB resident).
func (p *proc) memory() (rss, pss int64, err error) {
	b, err := p.pread(p.smaps)
	if err != nil {
		return 0, 0, err
	}
	return parseRollup(b)
}

// parseRollup reads the Rss: and Pss: lines (kB) of smaps_rollup.
func parseRollup(b []byte) (rss, pss int64, err error) {
	found := 0
	for len(b) > 0 && found < 2 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		var dst *int64
		switch {
		case bytes.HasPrefix(line, []byte("Rss:")):
			dst = &rss
		case bytes.HasPrefix(line, []byte("Pss:")):
			dst = &pss
		default:
			continue
		}
		v := bytes.TrimSpace(line[4:])
		if i := bytes.IndexByte(v, ' '); i >= 0 {
			v = v[:i]
		}
		kb, ok := atou(v)
		if !ok {
			return 0, 0, fmt.Errorf("smaps_rollup: malformed %q", line)
		}
		*dst = int64(kb) << 10
		found++
	}
	if found < 2 {
		return 0, 0, errors.New("smaps_rollup: no Rss or Pss")
	}
	return rss, pss, nil
}

// diskBytes is what the overlay files take on the host's disk: their
// allocated blocks, not their apparent size.
func (p *proc) diskBytes() (int64, error) {
	var total int64
	var st syscall.Stat_t
	for _, f := range p.disks {
		if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
			return 0, err
		}
		total += st.Blocks * 512
	}
	return total, nil
}

// atou parses a decimal number without allocating.
func atou(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 19 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	return v, true
}
