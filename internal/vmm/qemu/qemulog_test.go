package qemu

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A guest that makes QEMU log without end (a guarded clone refusing its
// balloon's discards, line after line) cannot fill the host's disk:
// qemu.log is cut back to its head whenever it passes its cap, and QEMU's
// appends go on after the cut.
func TestQEMULogCapped(t *testing.T) {
	path := filepath.Join(t.TempDir(), qemuLogFile)
	const limit, keep = 64 << 10, 4 << 10
	head := "qemu-system-x86_64: the start-up line that must stay\n"
	if err := os.WriteFile(path, []byte(head), 0o600); err != nil {
		t.Fatal(err)
	}
	c := startLogCap(path, limit, keep, 2*time.Millisecond)
	defer c.close()

	// QEMU's side: O_APPEND, as start opens it for QEMU.
	w, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	line := "qemu-system-x86_64: ram_block_discard_range: Failed to fallocate :0 +200000 (-95)\n"
	var written int64
	for i := 0; written < 64*limit; i++ {
		n, err := fmt.Fprintf(w, "%08d %s", i, line)
		if err != nil {
			t.Fatal(err)
		}
		written += int64(n)
		if i%200 == 0 {
			time.Sleep(time.Millisecond) // QEMU logs as its guest asks; the watcher runs meanwhile
		}
	}
	// Once the watcher has cut it back under its cap, QEMU's next line
	// lands after the cut.
	deadline := time.Now().Add(5 * time.Second)
	for {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() <= limit || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	last := fmt.Sprintf("the last line, after %d bytes\n", written)
	if _, err := w.WriteString(last); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond) // a few looks of the watcher
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name string
		ok   bool
	}{
		{"under its cap", int64(len(data)) <= limit},
		{"far less than was written", written > 16*int64(len(data))},
		{"its head kept", bytes.HasPrefix(data, []byte(head))},
		{"the cut noted", bytes.Contains(data, []byte("cut back to its first"))},
		{"appends land after the cut", bytes.HasSuffix(data, []byte(last))},
	} {
		t.Run(step.name, func(t *testing.T) {
			if !step.ok {
				t.Errorf("qemu.log: %d bytes of %d written; starts %q, ends %q", len(data), written,
					data[:min(len(data), 80)], data[max(0, len(data)-80):])
			}
		})
	}
}

// A log under its cap is left as it is.
func TestQEMULogUnderCapUntouched(t *testing.T) {
	path := filepath.Join(t.TempDir(), qemuLogFile)
	body := bytes.Repeat([]byte("x"), 1000)
	if err := os.WriteFile(path, body, 0o600); err != nil {
		t.Fatal(err)
	}
	c := startLogCap(path, 1000, 10, time.Millisecond)
	time.Sleep(20 * time.Millisecond)
	c.close()
	if data, err := os.ReadFile(path); err != nil || !bytes.Equal(data, body) {
		t.Errorf("qemu.log = %d bytes, %v; want the 1000 written", len(data), err)
	}
}
