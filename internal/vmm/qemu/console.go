package qemu

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// The serial console. QEMU does not write it to a file itself (a file
// chardev grows without bound: a guest printing in a loop fills the disk);
// it serves it on a unix socket in the runtime directory (consoleSocket,
// server=on,wait=off), and the driver copies what comes out into
// Spec.ConsoleLog through a consoleLog, which keeps the file under the
// cap and rotates it into <ConsoleLog>.1.
//
// Why a socket: QEMU discards console output while no client is connected,
// so a guest never stalls on a console nobody reads (a pipe would fill and
// then block the guest's UART: every printk waits for the transmitter,
// and a process writing to /dev/ttyS0 hangs). The price is that output
// written while no agent is attached (between an agent's exit and the
// next one's Adopt, or in the first milliseconds of a boot, before the
// driver connects) is lost. While connected, the copy never waits on
// anything but the local file system.

// consoleSocket is the console's socket in the runtime directory.
const consoleSocket = "console.sock"

// consoleLog is an io.Writer appending to a file that it keeps at most max
// bytes long: a write that would pass the cap fills the file up to it,
// renames it to path+".1" (replacing the previous one) and goes on in a
// new file. So the console takes at most 2×max bytes of disk.
type consoleLog struct {
	path string
	max  int64
	f    *os.File
	size int64
}

func openConsoleLog(path string, max int64) (*consoleLog, error) {
	c := &consoleLog{path: path, max: max}
	if err := c.open(); err != nil {
		return nil, err
	}
	if c.size >= max {
		// A file left over a larger cap (or by a QEMU file chardev).
		if err := c.rotate(); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (c *consoleLog) open() error {
	f, err := os.OpenFile(c.path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("console log: %w", err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("console log: %w", err)
	}
	c.f, c.size = f, fi.Size()
	return nil
}

func (c *consoleLog) rotate() error {
	c.f.Close()
	c.f = nil
	if err := os.Rename(c.path, c.path+".1"); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("console log: rotate: %w", err)
	}
	return c.open()
}

func (c *consoleLog) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		if c.f == nil {
			return written, errors.New("console log: closed")
		}
		room := c.max - c.size
		if room <= 0 {
			if err := c.rotate(); err != nil {
				return written, err
			}
			continue
		}
		n := int64(len(p))
		if n > room {
			n = room
		}
		k, err := c.f.Write(p[:n])
		c.size += int64(k)
		written += k
		if err != nil {
			return written, fmt.Errorf("console log: %w", err)
		}
		p = p[k:]
	}
	return written, nil
}

func (c *consoleLog) Close() error {
	if c.f == nil {
		return nil
	}
	err := c.f.Close()
	c.f = nil
	return err
}

// console copies a machine's console socket into its log.
type console struct {
	stop     chan struct{} // closed: stop connecting
	stopOnce sync.Once
	done     chan struct{} // closed when the copy ended and the log is closed

	mu   sync.Mutex
	conn net.Conn
}

// followConsole connects to the console socket of the QEMU that runs in
// dir (retrying until it exists or the console is stopped) and copies it
// into the log until QEMU closes it (it exited) or the console is
// stopped.
func followConsole(dir, logPath string, max int64, log interface{ Warn(string, ...any) }) (*console, error) {
	w, err := openConsoleLog(logPath, max)
	if err != nil {
		return nil, err
	}
	c := &console{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer w.Close()
		conn := c.connect(dir + "/" + consoleSocket)
		if conn == nil {
			return
		}
		if _, err := io.Copy(w, conn); err != nil && !errors.Is(err, net.ErrClosed) {
			log.Warn("console copy ended", "err", err)
		}
		conn.Close()
	}()
	return c, nil
}

// connect dials path until it answers; nil when the console was stopped
// first.
func (c *console) connect(path string) net.Conn {
	wait := 10 * time.Millisecond
	for {
		conn, err := net.Dial("unix", path)
		if err == nil {
			c.mu.Lock()
			defer c.mu.Unlock()
			select {
			case <-c.stop:
				conn.Close()
				return nil
			default:
			}
			c.conn = conn
			return conn
		}
		select {
		case <-c.stop:
			return nil
		case <-time.After(wait):
		}
		// Quick while QEMU starts; rare for a VMM without the socket (one
		// started by an older driver, which wrote the file itself).
		wait = min(2*wait, time.Second)
	}
}

// close stops the console: at once with drain 0 (Detach: another agent
// will connect), or after waiting up to drain for the rest of the output
// (QEMU exited: the socket ends once what QEMU wrote has been read).
func (c *console) close(drain time.Duration) {
	c.stopOnce.Do(func() { close(c.stop) })
	if drain > 0 {
		select {
		case <-c.done:
			return
		case <-time.After(drain):
		}
	}
	c.mu.Lock()
	if c.conn != nil {
		c.conn.Close()
	}
	c.mu.Unlock()
	<-c.done
}
