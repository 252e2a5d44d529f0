package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ProcessMemory is what a process holds, from /proc/<pid>/smaps: Pss is
// its proportional set size (a page shared by n processes counts 1/n in
// each), GuestPss that of its largest mapping (a VMM's guest RAM), both
// in bytes.
type ProcessMemory struct {
	Pss, GuestPss int64
}

// ReadProcessMemory reads /proc/<pid>/smaps.
func ReadProcessMemory(pid int) (ProcessMemory, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return ProcessMemory{}, err
	}
	return parseSmaps(data)
}

// parseSmaps sums the Pss lines of an smaps file and finds the Pss of its
// largest mapping (by Size).
func parseSmaps(data []byte) (ProcessMemory, error) {
	var m ProcessMemory
	var size, biggest int64
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		key, rest, ok := strings.Cut(line, ":")
		if !ok || strings.Contains(key, " ") {
			continue // a mapping's header line
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return m, fmt.Errorf("smaps: %q: %w", line, err)
		}
		switch key {
		case "Size":
			size = kb << 10
		case "Pss":
			m.Pss += kb << 10
			if size > biggest {
				biggest, m.GuestPss = size, kb<<10
			}
		}
	}
	return m, sc.Err()
}

// FindVMM returns the pid of the VMM process of machine id: the QEMU
// driver names it with -name <id>,process=… (package qemu).
func FindVMM(id string) (int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	want := []byte("-name\x00" + id + ",")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.Contains(cmd, want) {
			return pid, nil
		}
	}
	return 0, fmt.Errorf("no VMM process of machine %s", id)
}

// PSSBreakdown is where a VMM's proportional set size goes, by kind of
// mapping (bytes). Every mapping of the process counts in exactly one
// field, so the fields add up to the process' PSS (smaps_rollup), up to
// the kernel rounding each mapping's figure down to a KiB.
type PSSBreakdown struct {
	// TranslationCache: anonymous rwxp mappings, TCG's code buffer (the
	// guest's code translated for the host).
	TranslationCache int64
	// GuestRAM: the guest's RAM, a mapping of a snapshot's memory file
	// (memory-<gen>, private: the template's pages in the page cache,
	// shared by every clone, plus this machine's copied pages) or any
	// other file mapping at least the guest's size (a boot's memfd).
	GuestRAM int64
	// QEMUBinary: the mappings of the qemu-system-* executable.
	QEMUBinary int64
	// Libraries: the mappings of shared libraries (*.so*).
	Libraries int64
	// Heap: [heap] and the other anonymous rw-p mappings (malloc's
	// arenas, thread stacks, TCG's hash table and TLBs, device buffers).
	Heap int64
	// Other: the rest ([stack], [vdso], other files, read-only or
	// inaccessible anonymous mappings).
	Other int64
}

// Total is the sum of the fields: the process' PSS.
func (b PSSBreakdown) Total() int64 {
	return b.TranslationCache + b.GuestRAM + b.QEMUBinary + b.Libraries + b.Heap + b.Other
}

// MiB is the breakdown in MiB under the JSON keys of `bench density`.
func (b PSSBreakdown) MiB() map[string]float64 {
	mib := func(n int64) float64 { return Round3(float64(n) / (1 << 20)) }
	return map[string]float64{
		"translation_cache": mib(b.TranslationCache),
		"guest_ram":         mib(b.GuestRAM),
		"qemu_binary":       mib(b.QEMUBinary),
		"libraries":         mib(b.Libraries),
		"heap":              mib(b.Heap),
		"other":             mib(b.Other),
	}
}

// ReadPSSBreakdown reads /proc/<pid>/smaps of a VMM whose guest has
// guestBytes of RAM.
func ReadPSSBreakdown(pid int, guestBytes int64) (PSSBreakdown, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return PSSBreakdown{}, err
	}
	defer f.Close()
	return parsePSSBreakdown(f, guestBytes)
}

// parsePSSBreakdown sums the Pss of each mapping of an smaps file into
// the field its header line names (see PSSBreakdown).
func parsePSSBreakdown(r io.Reader, guestBytes int64) (PSSBreakdown, error) {
	var b PSSBreakdown
	var (
		perms, path string
		size        int64
		mapped      bool // a header line was read
	)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if h, ok := parseMapsHeader(line); ok {
			perms, path, size, mapped = h.perms, h.path, h.size, true
			continue
		}
		key, rest, ok := strings.Cut(line, ":")
		if !ok || key != "Pss" {
			continue // Pss_Anon, SwapPss, … are other keys
		}
		if !mapped {
			return b, fmt.Errorf("smaps: %q before any mapping", line)
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return b, fmt.Errorf("smaps: malformed %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return b, fmt.Errorf("smaps: %q: %w", line, err)
		}
		*b.field(perms, path, size, guestBytes) += kb << 10
	}
	return b, sc.Err()
}

// field is the field a mapping's Pss counts in.
func (b *PSSBreakdown) field(perms, path string, size, guestBytes int64) *int64 {
	base := filepath.Base(path)
	file := strings.HasPrefix(path, "/")
	anon := path == "" || strings.HasPrefix(path, "[anon:") // named by prctl(PR_SET_VMA_ANON_NAME)
	switch {
	case anon && perms == "rwxp":
		return &b.TranslationCache
	case file && (strings.HasPrefix(base, "memory-") || guestBytes > 0 && size >= guestBytes):
		return &b.GuestRAM
	case file && strings.HasPrefix(base, "qemu-system-"):
		return &b.QEMUBinary
	case file && strings.Contains(base, ".so"):
		return &b.Libraries
	case path == "[heap]" || anon && perms == "rw-p":
		return &b.Heap
	default:
		return &b.Other
	}
}

// mapsHeader is the header line of a mapping in smaps (as in maps):
// "start-end perms offset dev inode [path]".
type mapsHeader struct {
	perms, path string
	size        int64 // end - start
}

// parseMapsHeader parses a header line; ok is false for any other line.
// The path may hold spaces ("/memfd:ram (deleted)").
func parseMapsHeader(line string) (h mapsHeader, ok bool) {
	rest := line
	var f [5]string
	for i := range f {
		rest = strings.TrimLeft(rest, " ")
		end := strings.IndexByte(rest, ' ')
		if end < 0 {
			if i < 4 {
				return h, false
			}
			end = len(rest)
		}
		f[i], rest = rest[:end], rest[end:]
	}
	lo, hi, ok := strings.Cut(f[0], "-")
	if !ok || len(f[1]) != 4 {
		return h, false
	}
	start, err1 := strconv.ParseUint(lo, 16, 64)
	end, err2 := strconv.ParseUint(hi, 16, 64)
	if err1 != nil || err2 != nil || end < start {
		return h, false
	}
	return mapsHeader{perms: f[1], path: strings.TrimLeft(rest, " "), size: int64(end - start)}, true
}
