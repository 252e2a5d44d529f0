package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Console tails (Manager.ConsoleTail): DefaultConsoleTail bytes unless
// asked for fewer, never more than MaxConsoleTail.
const (
	DefaultConsoleTail = 256 << 10
	MaxConsoleTail     = 1 << 20
)

// consoleLogPath is a sandbox's console log (vmm.Spec.ConsoleLog); the
// driver rotates it into consoleLogPath+".1".
func (m *Manager) consoleLogPath(id string) string {
	return filepath.Join(m.sandboxDir(id), "console.log")
}

// ConsoleTail returns the last limit bytes (0: DefaultConsoleTail; at most
// MaxConsoleTail) of sandbox id's serial console log, in any state, the
// rotated file's end before the current file. When older output is left
// out (truncated), the tail starts at a line: the partial first line is
// dropped. An empty log is no error; an unknown sandbox is ErrNotFound.
func (m *Manager) ConsoleTail(id string, limit int) (data []byte, truncated bool, err error) {
	if _, err := m.get(id); err != nil {
		return nil, false, err
	}
	if limit <= 0 {
		limit = DefaultConsoleTail
	}
	limit = min(limit, MaxConsoleTail)
	path := m.consoleLogPath(id)
	cur, curCut, err := readTail(path, limit)
	if err != nil {
		return nil, false, err
	}
	data, truncated = cur, curCut
	if !curCut && len(cur) < limit {
		old, oldCut, err := readTail(path+".1", limit-len(cur))
		if err != nil {
			return nil, false, err
		}
		data, truncated = append(old, cur...), oldCut
	}
	if truncated {
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		} else {
			data = nil
		}
	}
	return data, truncated, nil
}

// readTail reads the last limit bytes of path (a missing file is empty);
// cut tells that the file is longer.
func readTail(path string, limit int) (data []byte, cut bool, err error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("console log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, false, fmt.Errorf("console log: %w", err)
	}
	off := max(fi.Size()-int64(limit), 0)
	data, err = io.ReadAll(io.NewSectionReader(f, off, fi.Size()-off))
	if err != nil {
		return nil, false, fmt.Errorf("console log: %w", err)
	}
	return data, off > 0, nil
}
