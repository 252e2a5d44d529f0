package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
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
