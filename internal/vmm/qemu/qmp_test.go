package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeQMP is a QMP server over a unix socket that answers a few commands
// the way QEMU does, emitting an event before some replies and answering
// out of order.
type fakeQMP struct {
	t      *testing.T
	path   string
	ln     *net.UnixListener
	mu     sync.Mutex
	gotFD  bool
	closed chan struct{}
}

func newFakeQMP(t *testing.T) *fakeQMP {
	// A long directory name exercises the short-path dialing.
	dir := filepath.Join(t.TempDir(), strings.Repeat("d", 100))
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	f := &fakeQMP{t: t, path: filepath.Join(dir, "qmp.sock"), closed: make(chan struct{})}
	// Bind through the directory's descriptor too (the path is too long).
	d, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: "/proc/self/fd/" + itoa(int(d.Fd())) + "/qmp.sock", Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f.ln = ln
	go f.serve()
	t.Cleanup(func() { ln.Close() })
	return f
}

func (f *fakeQMP) serve() {
	conn, err := f.ln.AcceptUnix()
	if err != nil {
		return
	}
	defer close(f.closed)
	defer conn.Close()
	var wmu sync.Mutex
	send := func(v any) {
		b, _ := json.Marshal(v)
		wmu.Lock()
		defer wmu.Unlock()
		_, _ = conn.Write(append(b, '\r', '\n'))
	}
	send(map[string]any{"QMP": map[string]any{"version": map[string]any{}, "capabilities": []string{"oob"}}})
	r := bufio.NewReader(connReader{conn, f})
	var slow sync.WaitGroup
	for {
		line, err := r.ReadBytes('\n')
		if err != nil {
			slow.Wait()
			return
		}
		var cmd struct {
			Execute   string         `json:"execute"`
			ID        string         `json:"id"`
			Arguments map[string]any `json:"arguments"`
		}
		if err := json.Unmarshal(line, &cmd); err != nil {
			f.t.Errorf("bad command %q", line)
			return
		}
		switch cmd.Execute {
		case "qmp_capabilities":
			send(map[string]any{"return": map[string]any{}, "id": cmd.ID})
		case "stop":
			send(map[string]any{"event": "STOP", "timestamp": map[string]any{"seconds": 1, "microseconds": 5}})
			send(map[string]any{"return": map[string]any{}, "id": cmd.ID})
		case "slow":
			// Answered after the commands that follow it.
			slow.Add(1)
			go func() {
				defer slow.Done()
				time.Sleep(100 * time.Millisecond)
				send(map[string]any{"return": map[string]any{"n": 1}, "id": cmd.ID})
			}()
		case "query-status":
			send(map[string]any{"return": map[string]any{"status": "running"}, "id": cmd.ID})
		case "getfd":
			f.mu.Lock()
			ok := f.gotFD
			f.mu.Unlock()
			if !ok {
				send(map[string]any{"error": map[string]any{"class": "GenericError", "desc": "No file descriptor supplied via SCM_RIGHTS"}, "id": cmd.ID})
				continue
			}
			send(map[string]any{"return": map[string]any{}, "id": cmd.ID})
		case "hang":
			// never answered
		case "quit":
			send(map[string]any{"return": map[string]any{}, "id": cmd.ID})
			send(map[string]any{"event": "SHUTDOWN", "data": map[string]any{"guest": false, "reason": "host-qmp-quit"}})
			return
		default:
			send(map[string]any{"error": map[string]any{"class": "CommandNotFound", "desc": "The command " + cmd.Execute + " has not been found"}, "id": cmd.ID})
		}
	}
}

// connReader reads from conn and notes descriptors that come along.
type connReader struct {
	c *net.UnixConn
	f *fakeQMP
}

func (r connReader) Read(p []byte) (int, error) {
	oob := make([]byte, 64)
	n, oobn, _, _, err := r.c.ReadMsgUnix(p, oob)
	if oobn > 0 {
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, m := range msgs {
			if fds, err := unix.ParseUnixRights(&m); err == nil {
				for _, fd := range fds {
					unix.Close(fd)
				}
				r.f.mu.Lock()
				r.f.gotFD = true
				r.f.mu.Unlock()
			}
		}
	}
	if n == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}

func TestQMPClient(t *testing.T) {
	f := newFakeQMP(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := dialQMP(ctx, f.path, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ev, unsubscribe := c.subscribe()
	defer unsubscribe()
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-ev:
		if e.Name != "STOP" || e.Time.Unix() != 1 {
			t.Fatalf("event %+v", e)
		}
	case <-ctx.Done():
		t.Fatal("no STOP event")
	}

	// Replies are matched by id, whatever their order.
	slowDone := make(chan error, 1)
	go func() {
		var r struct{ N int }
		err := c.Execute(ctx, "slow", nil, &r)
		if err == nil && r.N != 1 {
			err = errors.New("wrong reply")
		}
		slowDone <- err
	}()
	time.Sleep(20 * time.Millisecond)
	var st struct{ Status string }
	if err := c.Execute(ctx, "query-status", nil, &st); err != nil || st.Status != "running" {
		t.Fatalf("query-status: %v %+v", err, st)
	}
	if err := <-slowDone; err != nil {
		t.Fatal(err)
	}

	// Errors come back typed.
	var qe *QMPError
	if err := c.Execute(ctx, "nope", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("unknown command: %v", err)
	}
	if err := c.Execute(ctx, "getfd", map[string]any{"fdname": "x"}, nil); !errors.As(err, &qe) {
		t.Fatalf("getfd without a descriptor: %v", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := c.ExecuteFD(ctx, "getfd", map[string]any{"fdname": "x"}, w); err != nil {
		t.Fatalf("getfd with a descriptor: %v", err)
	}

	// A command that gets no answer ends with its context.
	hctx, hcancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer hcancel()
	if err := c.Execute(hctx, "hang", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("hang: %v", err)
	}

	// When the server goes, pending and later commands fail and
	// subscriptions close.
	if err := c.Execute(ctx, "quit", nil, nil); err != nil {
		t.Fatal(err)
	}
	<-f.closed
	for e := range ev {
		if e.Name != "SHUTDOWN" {
			t.Fatalf("event after quit: %+v", e)
		}
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, errQMPClosed) {
		t.Fatalf("after close: %v", err)
	}
}
