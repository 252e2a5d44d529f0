package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// QMPError is an error reply of the QEMU Machine Protocol.
type QMPError struct {
	Command string
	Class   string
	Desc    string
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// errQMPClosed is returned for commands on a connection that ended (the
// VMM exited or closed the monitor).
var errQMPClosed = errors.New("qmp: connection closed")

// qmpEvent is an asynchronous QMP event (STOP, RESUME, SHUTDOWN,
// MIGRATION, ...).
type qmpEvent struct {
	Name string
	Data json.RawMessage
	Time time.Time
}

// qmpMessage is any message QEMU sends: the greeting, a reply or an event.
type qmpMessage struct {
	Greeting  json.RawMessage `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *qmpErrorBody   `json:"error"`
	ID        string          `json:"id"`
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

type qmpErrorBody struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

type qmpReply struct {
	ret json.RawMessage
	err *qmpErrorBody
}

// qmpClient is a small client of the QEMU Machine Protocol over a unix
// socket: one reader goroutine dispatches replies to their commands (by
// id) and events to subscribers, so commands may be issued concurrently.
type qmpClient struct {
	conn *net.UnixConn
	log  *slog.Logger

	wmu sync.Mutex // one command on the wire at a time (fd passing)

	mu      sync.Mutex
	nextID  int
	pending map[string]chan qmpReply
	subs    map[int]chan qmpEvent
	nextSub int
	err     error // set when the reader stopped

	done chan struct{} // closed when the reader stopped
}

// dialUnix connects to a unix socket. Paths longer than the kernel's limit
// (108 bytes, easily reached under test temp dirs) are reached through a
// descriptor of their directory.
func dialUnix(ctx context.Context, path string) (*net.UnixConn, error) {
	var d net.Dialer
	if len(path) < 100 {
		c, err := d.DialContext(ctx, "unix", path)
		if err != nil {
			return nil, err
		}
		return c.(*net.UnixConn), nil
	}
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	short := "/proc/self/fd/" + strconv.Itoa(int(dir.Fd())) + "/" + filepath.Base(path)
	c, err := d.DialContext(ctx, "unix", short)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", path, err)
	}
	return c.(*net.UnixConn), nil
}

// dialQMP connects to a QMP socket, waiting until it exists or ctx ends,
// reads the greeting and leaves capabilities negotiation mode.
func dialQMP(ctx context.Context, path string, log *slog.Logger, exited <-chan struct{}) (*qmpClient, error) {
	var conn *net.UnixConn
	for {
		var err error
		conn, err = dialUnix(ctx, path)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, unix.ECONNREFUSED) {
			return nil, fmt.Errorf("qmp: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("qmp: connect %s: %w", path, ctx.Err())
		case <-exited:
			return nil, fmt.Errorf("qmp: connect %s: %w", path, errExitedEarly)
		case <-time.After(5 * time.Millisecond):
		}
	}
	c := &qmpClient{
		conn:    conn,
		log:     log,
		pending: map[string]chan qmpReply{},
		subs:    map[int]chan qmpEvent{},
		done:    make(chan struct{}),
	}
	greeting := make(chan error, 1)
	go c.read(greeting)
	select {
	case err := <-greeting:
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("qmp: greeting: %w", err)
		}
	case <-ctx.Done():
		conn.Close()
		return nil, fmt.Errorf("qmp: greeting: %w", ctx.Err())
	}
	if err := c.execute(ctx, "qmp_capabilities", nil, nil, nil); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// errExitedEarly reports a VMM that exited before it could be controlled.
var errExitedEarly = errors.New("the VMM process exited")

// read is the reader loop. The first message must be the greeting, whose
// outcome goes to greeting.
func (c *qmpClient) read(greeting chan<- error) {
	dec := json.NewDecoder(bufio.NewReader(c.conn))
	first := true
	var err error
	for {
		var m qmpMessage
		if err = dec.Decode(&m); err != nil {
			break
		}
		if first {
			first = false
			if m.Greeting == nil {
				err = fmt.Errorf("unexpected first message")
				greeting <- err
				break
			}
			greeting <- nil
			continue
		}
		switch {
		case m.Event != "":
			ev := qmpEvent{Name: m.Event, Data: m.Data}
			if m.Timestamp != nil {
				ev.Time = time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)
			}
			c.log.Debug("qmp event", "event", m.Event, "data", string(m.Data))
			c.mu.Lock()
			for _, ch := range c.subs {
				select {
				case ch <- ev:
				default: // a subscriber that does not keep up loses events
				}
			}
			c.mu.Unlock()
		case m.ID != "":
			c.mu.Lock()
			ch := c.pending[m.ID]
			delete(c.pending, m.ID)
			c.mu.Unlock()
			if ch != nil {
				ch <- qmpReply{ret: m.Return, err: m.Error}
			}
		}
	}
	if first {
		greeting <- err
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, unix.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		err = errQMPClosed
	} else {
		err = fmt.Errorf("%w: %w", errQMPClosed, err)
	}
	c.mu.Lock()
	c.err = err
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	for id, ch := range c.subs {
		close(ch)
		delete(c.subs, id)
	}
	c.mu.Unlock()
	close(c.done)
}

// subscribe returns a channel of the events that arrive from now on, and
// a function that ends the subscription. The channel is closed when the
// connection ends.
func (c *qmpClient) subscribe() (<-chan qmpEvent, func()) {
	ch := make(chan qmpEvent, 64)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		close(ch)
		return ch, func() {}
	}
	id := c.nextSub
	c.nextSub++
	c.subs[id] = ch
	return ch, func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if _, ok := c.subs[id]; ok {
			delete(c.subs, id)
			close(ch)
		}
	}
}

// Execute runs a command and decodes its return value into result (when
// not nil).
func (c *qmpClient) Execute(ctx context.Context, cmd string, args, result any) error {
	return c.execute(ctx, cmd, args, result, nil)
}

// ExecuteFD runs a command with a file descriptor attached (SCM_RIGHTS),
// as getfd and add-fd need.
func (c *qmpClient) ExecuteFD(ctx context.Context, cmd string, args any, f *os.File) error {
	return c.execute(ctx, cmd, args, nil, f)
}

func (c *qmpClient) execute(ctx context.Context, cmd string, args, result any, f *os.File) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	c.nextID++
	id := "c" + strconv.Itoa(c.nextID)
	ch := make(chan qmpReply, 1)
	c.pending[id] = ch
	c.mu.Unlock()

	msg := map[string]any{"execute": cmd, "id": id}
	if args != nil {
		msg["arguments"] = args
	}
	b, err := json.Marshal(msg)
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	b = append(b, '\n')
	c.wmu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
	} else {
		_ = c.conn.SetWriteDeadline(time.Time{})
	}
	if f != nil {
		_, _, err = c.conn.WriteMsgUnix(b, unix.UnixRights(int(f.Fd())), nil)
	} else {
		_, err = c.conn.Write(b)
	}
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, err)
	}
	c.log.Debug("qmp command", "cmd", cmd)

	select {
	case r, ok := <-ch:
		if !ok {
			c.mu.Lock()
			err := c.err
			c.mu.Unlock()
			return fmt.Errorf("qmp %s: %w", cmd, err)
		}
		if r.err != nil {
			return &QMPError{Command: cmd, Class: r.err.Class, Desc: r.err.Desc}
		}
		if result != nil && len(r.ret) > 0 {
			if err := json.Unmarshal(r.ret, result); err != nil {
				return fmt.Errorf("qmp %s: decode reply: %w", cmd, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", cmd, ctx.Err())
	}
}

func (c *qmpClient) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Close ends the connection.
func (c *qmpClient) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}
