package service

import (
	"context"
	"errors"
	"sort"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
)

// Kept terminals: a PTY process started with StartTerminal outlives the
// connection that started it. The control plane reads its output all the
// time into a scrollback buffer (the last TerminalScrollback bytes), and a
// later connection (AttachTerminal, by the sandbox and the pid) takes it
// over: it first gets the scrollback, then the live output. A terminal
// nobody is attached to for its keep time is killed; so is every kept
// terminal when the control plane shuts down. The terminals live in this
// replica's memory: behind several replicas, a reattach that reaches
// another one finds none (404) and the client starts a new shell.
const (
	// MaxTerminalKeepSec bounds how long a detached terminal waits.
	MaxTerminalKeepSec = 3600
	// TerminalScrollback is how much output a terminal keeps for the next
	// attach.
	TerminalScrollback = 256 << 10
	// maxKeptTerminals bounds the kept terminals of one sandbox: a new one
	// beyond it ends the one detached longest (none detached: refused).
	maxKeptTerminals = 8
	// terminalChunk bounds one event of a terminal's output.
	terminalChunk = 64 << 10
)

// ErrTakenOver ends a terminal connection whose terminal another
// connection attached to.
var ErrTakenOver = errors.New("another connection attached to the terminal")

type terminalKey struct {
	sandbox pgtype.UUID
	pid     uint32
}

// terminal is a kept process (on a terminal, or with stdout and stderr)
// and its scrollback.
type terminal struct {
	s    *Sandboxes
	key  terminalKey
	pr   *Process
	keep time.Duration

	mu sync.Mutex
	// out holds the output bytes [end-size, end) as the process wrote
	// them (a chunk per event, each of its stream).
	out  []outChunk
	size int
	end  int64
	// exit (or err) is the process' end, once the pump read it.
	exit *ExecExit
	err  error
	// changed is closed (and replaced) when output, the end or the owner
	// changes.
	changed chan struct{}
	// owner is the attached connection's generation (0: none).
	owner, gen uint64
	// detached is when the last connection left; timer kills the process
	// keep later.
	detached time.Time
	timer    *time.Timer
	gone     bool
}

// outChunk is output of one stream (a terminal's, stdout or stderr) that
// starts at byte at of the process' whole output.
type outChunk struct {
	at     int64
	stream execStream
	data   []byte
}

type execStream uint8

const (
	streamPTY execStream = iota
	streamStdout
	streamStderr
)

// event is the chunk's bytes from from on, at most terminalChunk of them.
func (c outChunk) event(from int64) ExecEvent {
	data := append([]byte(nil), c.data[from-c.at:min(int64(len(c.data)), from-c.at+terminalChunk)]...)
	switch c.stream {
	case streamStdout:
		return ExecEvent{Stdout: data}
	case streamStderr:
		return ExecEvent{Stderr: data}
	}
	return ExecEvent{PTY: data}
}

// TerminalConn is one connection's view of a kept terminal: its events
// (Next) and its input.
type TerminalConn struct {
	PID uint32
	t   *terminal
	gen uint64
	pos int64
}

// StartTerminal starts cmd in a running sandbox of p's team, on a
// terminal of size pty (nil: with stdout and stderr apart; stdin open or
// not), kept keep (1 s to MaxTerminalKeepSec) after its last connection
// ends, and attaches to it. The process outlives ctx.
func (s *Sandboxes) StartTerminal(ctx context.Context, p Principal, id SandboxID, cmd ExecCommand, stdin bool, pty *PTYSize, keep time.Duration) (*TerminalConn, error) {
	if keep < time.Second || keep > MaxTerminalKeepSec*time.Second {
		return nil, errorf(ErrInvalid, "keep_sec: 1 to %d seconds", MaxTerminalKeepSec)
	}
	if err := cmd.normalize(0, MaxStreamTimeoutSec); err != nil {
		return nil, err
	}
	if pty != nil {
		if err := validPTY(pty); err != nil {
			return nil, err
		}
	}
	row, _, err := s.running(ctx, p, id)
	if err != nil {
		return nil, err
	}
	if err := s.roomForTerminal(row.ID); err != nil {
		return nil, err
	}
	// The stream is not the caller's: it ends with the process (or the
	// keep time), not with the request.
	pr, err := s.startExec(context.WithoutCancel(ctx), p, id, cmd, stdin, pty)
	if err != nil {
		return nil, err
	}
	t := &terminal{s: s, key: terminalKey{row.ID, pr.PID}, pr: pr, keep: keep, changed: make(chan struct{})}
	s.termMu.Lock()
	if s.terms == nil {
		s.terms = map[terminalKey]*terminal{}
	}
	s.terms[t.key] = t
	s.termMu.Unlock()
	c := t.attach()
	go t.pump()
	s.log.InfoContext(ctx, "terminal started", "sandbox", id.String(), "pid", pr.PID, "keep", keep)
	return c, nil
}

// roomForTerminal ends the kept terminal of the sandbox detached longest
// when it has maxKeptTerminals; when none is detached, it refuses.
func (s *Sandboxes) roomForTerminal(sandbox pgtype.UUID) error {
	s.termMu.Lock()
	var mine []*terminal
	for k, t := range s.terms {
		if k.sandbox == sandbox {
			mine = append(mine, t)
		}
	}
	s.termMu.Unlock()
	if len(mine) < maxKeptTerminals {
		return nil
	}
	var idle []*terminal
	for _, t := range mine {
		t.mu.Lock()
		if t.owner == 0 && !t.gone {
			idle = append(idle, t)
		}
		t.mu.Unlock()
	}
	if len(idle) == 0 {
		return errorf(ErrConflict, "the sandbox has %d kept terminals, all attached: close one first", maxKeptTerminals)
	}
	sort.Slice(idle, func(i, j int) bool { return idle[i].detachedAt().Before(idle[j].detachedAt()) })
	idle[0].kill("replaced by a newer terminal")
	return nil
}

// AttachTerminal attaches to the kept terminal pid of a running sandbox of
// p's team; a connection attached before is ended (ErrTakenOver). Its
// first events replay the scrollback.
func (s *Sandboxes) AttachTerminal(ctx context.Context, p Principal, id SandboxID, pid uint32) (*TerminalConn, error) {
	row, _, err := s.running(ctx, p, id)
	if err != nil {
		return nil, err
	}
	s.termMu.Lock()
	t := s.terms[terminalKey{row.ID, pid}]
	s.termMu.Unlock()
	if t == nil {
		return nil, errorf(ErrNotFound, "no kept terminal with pid %d in this sandbox (it ended, or was not started with keep_sec)", pid)
	}
	c := t.attach()
	if c == nil {
		return nil, errorf(ErrNotFound, "the terminal with pid %d has ended", pid)
	}
	s.log.InfoContext(ctx, "terminal attached", "sandbox", id.String(), "pid", pid)
	return c, nil
}

// CloseTerminals kills every kept terminal (the control plane shuts down).
func (s *Sandboxes) CloseTerminals() {
	s.termMu.Lock()
	all := make([]*terminal, 0, len(s.terms))
	for _, t := range s.terms {
		all = append(all, t)
	}
	s.termMu.Unlock()
	for _, t := range all {
		t.kill("the control plane shuts down")
	}
}

// notifyLocked wakes the connections waiting for a change.
func (t *terminal) notifyLocked() {
	close(t.changed)
	t.changed = make(chan struct{})
}

func (t *terminal) attach() *TerminalConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.gone || t.exit != nil || t.err != nil {
		return nil
	}
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	t.gen++
	t.owner = t.gen
	t.notifyLocked()
	return &TerminalConn{PID: t.pr.PID, t: t, gen: t.gen, pos: t.end - int64(t.size)}
}

func (t *terminal) detachedAt() time.Time {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.detached
}

// pump reads the process' output into the scrollback until it ends.
func (t *terminal) pump() {
	for {
		ev, err := t.pr.Next()
		t.mu.Lock()
		switch {
		case err != nil:
			t.err = err
		case ev.Exit != nil:
			t.exit = ev.Exit
		default:
			t.keepOutput(ev)
		}
		t.notifyLocked()
		done := t.err != nil || t.exit != nil
		t.mu.Unlock()
		if done {
			t.forget()
			t.pr.Close() // the stream; kills the process unless it ended
			return
		}
	}
}

// keepOutput appends ev's output to the scrollback, dropping what falls
// out of its TerminalScrollback bytes. t.mu is held.
func (t *terminal) keepOutput(ev ExecEvent) {
	c := outChunk{at: t.end, stream: streamPTY, data: ev.PTY}
	switch {
	case ev.Stdout != nil:
		c.stream, c.data = streamStdout, ev.Stdout
	case ev.Stderr != nil:
		c.stream, c.data = streamStderr, ev.Stderr
	}
	if len(c.data) == 0 {
		return
	}
	t.out = append(t.out, c)
	t.size += len(c.data)
	t.end += int64(len(c.data))
	for t.size > TerminalScrollback {
		first := &t.out[0]
		if over := t.size - TerminalScrollback; over < len(first.data) {
			first.data = first.data[over:]
			first.at += int64(over)
			t.size -= over
			break
		}
		t.size -= len(first.data)
		t.out = t.out[1:]
	}
}

// forget takes the terminal out of the registry.
func (t *terminal) forget() {
	t.s.termMu.Lock()
	if t.s.terms[t.key] == t {
		delete(t.s.terms, t.key)
	}
	t.s.termMu.Unlock()
	t.mu.Lock()
	t.gone = true
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	t.mu.Unlock()
}

// kill ends the process (the pump then sees its end).
func (t *terminal) kill(why string) {
	t.s.log.Info("terminal ended", "sandbox", ID(t.key.sandbox), "pid", t.key.pid, "reason", why)
	t.forget()
	// SIGKILL, and the stream's end: the pump sees it and closes the
	// stream (it alone reads it).
	if !t.pr.ended.Load() {
		t.pr.kill()
	}
	t.pr.cancel()
}

// Next returns the connection's next event: output (the scrollback first,
// at most 64 KiB an event), then the process' end; ErrTakenOver once
// another connection attached; the error of a failed stream.
func (c *TerminalConn) Next(ctx context.Context) (ExecEvent, error) {
	t := c.t
	for {
		t.mu.Lock()
		if t.owner != c.gen {
			t.mu.Unlock()
			return ExecEvent{}, ErrTakenOver
		}
		start := t.end - int64(t.size)
		if c.pos < start {
			c.pos = start // the output it missed is out of the scrollback
		}
		if c.pos < t.end {
			// The chunk that holds c.pos: the last that starts at or
			// before it.
			i := sort.Search(len(t.out), func(i int) bool { return t.out[i].at > c.pos }) - 1
			ev := t.out[i].event(c.pos)
			c.pos += int64(len(ev.PTY) + len(ev.Stdout) + len(ev.Stderr))
			t.mu.Unlock()
			return ev, nil
		}
		if t.exit != nil {
			x := *t.exit
			t.mu.Unlock()
			return ExecEvent{Exit: &x}, nil
		}
		if t.err != nil {
			err := t.err
			t.mu.Unlock()
			return ExecEvent{}, err
		}
		ch := t.changed
		t.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ExecEvent{}, ctx.Err()
		}
	}
}

// Detach ends the connection: when it is still the attached one, the
// process waits its keep time for the next attach, then is killed.
func (c *TerminalConn) Detach() {
	t := c.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.owner != c.gen || t.gone || t.exit != nil || t.err != nil {
		return
	}
	t.owner = 0
	t.detached = t.s.now()
	t.timer = time.AfterFunc(t.keep, func() {
		t.mu.Lock()
		still := t.owner == 0 && !t.gone
		t.mu.Unlock()
		if still {
			t.kill("nobody attached within its keep time")
		}
	})
}

// SendInput writes to the terminal.
func (c *TerminalConn) SendInput(ctx context.Context, data []byte) error {
	return c.t.pr.SendInput(ctx, data)
}

// CloseInput closes the terminal's input.
func (c *TerminalConn) CloseInput(ctx context.Context) error { return c.t.pr.CloseInput(ctx) }

// Signal sends a signal to the process.
func (c *TerminalConn) Signal(ctx context.Context, name string) error {
	return c.t.pr.Signal(ctx, name)
}

// Resize changes the terminal's size.
func (c *TerminalConn) Resize(ctx context.Context, sz PTYSize) error {
	return c.t.pr.Resize(ctx, sz)
}
