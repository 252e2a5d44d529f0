package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/vmm"
)

// Files of a machine's runtime directory (Spec.Dir).
const (
	recordFile  = "vmm.json"    // the running VMM, for Adopt and Cleanup
	qmpSocket   = "qmp.sock"    // QMP monitor
	consoleFile = "console.log" // serial console unless Spec.ConsoleLog
	qemuLogFile = "qemu.log"    // QEMU's own stdout and stderr
)

// record is what Spec.Dir/vmm.json says about a running VMM.
type record struct {
	Version   int       `json:"version"`
	ID        string    `json:"id"`
	PID       int       `json:"pid"`
	StartTime uint64    `json:"startTime"` // /proc/<pid>/stat field 22
	Binary    string    `json:"binary"`
	Args      []string  `json:"args"`
	Accel     vmm.Accel `json:"accel"`
	MemoryMB  int       `json:"memoryMB"`
	VCPUs     int       `json:"vcpus"`
	// Memory is memShared (MemoryFD is the memfd's descriptor number in
	// the VMM) or memPrivate (MemoryPath is the mapped snapshot file).
	Memory      string     `json:"memory"`
	MemoryFD    int        `json:"memoryFD,omitempty"`
	MemoryPath  string     `json:"memoryPath,omitempty"`
	MemoryDev   uint64     `json:"memoryDev,omitempty"` // of MemoryPath's file when mapped
	MemoryIno   uint64     `json:"memoryIno,omitempty"`
	Disks       []vmm.Disk `json:"disks"`
	Net         string     `json:"net,omitempty"` // "", "tap" or "user"
	MAC         string     `json:"mac,omitempty"`
	HostForward string     `json:"hostForward,omitempty"`
	ConsoleLog  string     `json:"consoleLog"`
	ConsoleMax  int64      `json:"consoleMax,omitempty"` // 0: vmm.DefaultConsoleLogMax
	// Balloon: the machine has the virtio-balloon device (free-page
	// reporting), which its snapshots must have too.
	Balloon bool      `json:"balloon,omitempty"`
	Started time.Time `json:"started"`
}

const recordVersion = 1

// consoleMax is the cap of the machine's console log.
func (r *record) consoleMax() int64 {
	if r.ConsoleMax > 0 {
		return r.ConsoleMax
	}
	return vmm.DefaultConsoleLogMax
}

// removeRuntimeFiles deletes the record and the QMP socket of dir if the
// record is pid's (or unreadable).
func removeRuntimeFiles(dir string, pid int) {
	if r, err := readRecord(dir); err == nil && r.PID != pid {
		return // another VMM owns the directory now
	}
	os.Remove(filepath.Join(dir, recordFile))
	os.Remove(filepath.Join(dir, qmpSocket))
	os.Remove(filepath.Join(dir, consoleSocket))
}

// findRunning reads dir's record and opens a pidfd on its process after
// checking it is still the recorded one. A record whose process is gone
// is removed, and vmm.ErrExited returned.
func findRunning(dir string) (record, int, error) {
	rec, err := readRecord(dir)
	if err != nil {
		return record{}, -1, err
	}
	pidfd, err := unix.PidfdOpen(rec.PID, 0)
	if err == nil {
		// Checked after opening the pidfd: if the pid was reused before
		// that, the start time differs; after it, the pidfd still refers
		// to the process checked.
		var ok bool
		if ok, err = processMatches(rec.PID, rec.StartTime); err == nil && ok {
			return rec, pidfd, nil
		}
		unix.Close(pidfd)
	}
	if err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, os.ErrNotExist) {
		return record{}, -1, err
	}
	removeRuntimeFiles(dir, rec.PID)
	return record{}, -1, fmt.Errorf("pid %d: %w", rec.PID, vmm.ErrExited)
}

// procStartTime is field 22 of /proc/<pid>/stat: when the process started,
// in clock ticks after boot. With the pid it identifies a process.
func procStartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is parenthesized and may hold anything.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, errors.New("malformed /proc stat")
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		return 0, errors.New("malformed /proc stat")
	}
	return strconv.ParseUint(f[19], 10, 64) // field 22 is the 20th after the name
}

// processMatches reports whether pid runs and started at startTime.
func processMatches(pid int, startTime uint64) (bool, error) {
	st, err := procStartTime(pid)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return st == startTime, nil
}

func readRecord(dir string) (record, error) {
	var r record
	b, err := os.ReadFile(filepath.Join(dir, recordFile))
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return r, fmt.Errorf("%s: %w", recordFile, err)
	}
	if r.Version != recordVersion || r.PID <= 0 {
		return r, fmt.Errorf("%s: unsupported record", recordFile)
	}
	return r, nil
}

// writeJSONAtomic writes v to path through a synced temporary file, a
// rename and a sync of the directory.
func writeJSONAtomic(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	syncDir(filepath.Dir(path)) // the rename too is durable
	return nil
}
