package qemu

import (
	"fmt"
	"os"
	"sync"
	"time"
)

// QEMU's own output (qemu.log) is appended to by QEMU itself (O_APPEND),
// and a guest can make QEMU write to it: a guarded clone logs one line per
// discard its guest's balloon asks for and the guard refuses (guard.go),
// and a hostile guest kernel can ask for them without end. The log is
// therefore capped from outside: a watcher per machine (started by start
// and Adopt, stopped when the machine exits or is detached) cuts the file
// back to its head once it grows past its cap. QEMU's next append lands at
// the new end; its first lines (the start-up, where most errors are)
// stay.
const (
	qemuLogMax   = 4 << 20                // the size past which qemu.log is cut
	qemuLogKeep  = 256 << 10              // what a cut keeps of its head
	qemuLogCheck = 500 * time.Millisecond // how often the size is read
)

// logCap watches one machine's qemu.log.
type logCap struct {
	path      string
	max, keep int64
	every     time.Duration

	stop     chan struct{}
	stopOnce sync.Once
	done     chan struct{}
}

// capLog starts watching path with the package's limits.
func capLog(path string) *logCap {
	return startLogCap(path, qemuLogMax, qemuLogKeep, qemuLogCheck)
}

func startLogCap(path string, max, keep int64, every time.Duration) *logCap {
	c := &logCap{path: path, max: max, keep: keep, every: every, stop: make(chan struct{}), done: make(chan struct{})}
	go c.run()
	return c
}

func (c *logCap) run() {
	defer close(c.done)
	t := time.NewTicker(c.every)
	defer t.Stop()
	for {
		c.check()
		select {
		case <-c.stop:
			return
		case <-t.C:
		}
	}
}

// check cuts the log back to its head when it is past its cap, and notes
// the cut in it.
func (c *logCap) check() {
	fi, err := os.Stat(c.path)
	if err != nil || fi.Size() <= c.max {
		return
	}
	f, err := os.OpenFile(c.path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if err := f.Truncate(c.keep); err != nil {
		return
	}
	fmt.Fprintf(f, "\n[capsule %s: qemu.log reached %d bytes; cut back to its first %d]\n",
		time.Now().UTC().Format(time.RFC3339), fi.Size(), c.keep)
}

// close stops the watcher and waits for it.
func (c *logCap) close() {
	c.stopOnce.Do(func() { close(c.stop) })
	<-c.done
}
