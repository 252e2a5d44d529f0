package envd

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/creack/pty"

	pb "github.com/capsulehq/capsule/gen/envd/process"
)

const (
	// Output chunk sizes, as E2B sends them.
	pipeChunk = 32 << 10
	ptyChunk  = 16 << 10
	// How long a finished process stays attachable by Connect.
	retainExited = 30 * time.Second
	// How long output is still drained after the process was reaped, for
	// descendants that inherited its stdout and keep writing.
	drainGrace = 250 * time.Millisecond
	// Events buffered per subscriber before the producer waits for it.
	subscriberBuffer = 64
)

var defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ChildTracker is told about every process envd spawns, so that a PID 1
// reaper leaves their exit status to os/exec. guestinit.Reaper implements it.
type ChildTracker interface {
	// Start runs spawn (which forks the child) and registers the child's
	// pid before any reaper may wait for it.
	Start(spawn func() (pid int, err error)) error
	// Done is called after the child was waited for.
	Done(pid int)
}

// processManager owns the processes started through the Process service.
type processManager struct {
	s       *Server
	tracker ChildTracker

	mu    sync.Mutex
	procs map[uint32]*proc // live, and exited within retainExited
}

func newProcessManager(s *Server) *processManager {
	return &processManager{s: s, tracker: s.cfg.Children, procs: map[uint32]*proc{}}
}

// proc is one process with its I/O and its subscribers.
type proc struct {
	pid    uint32
	tag    *string
	config *pb.ProcessConfig
	cmd    *exec.Cmd

	tty   *os.File       // PTY master, nil without a PTY
	stdin io.WriteCloser // stdin pipe; nil without a pipe or once closed
	inMu  sync.Mutex     // serializes writes to stdin/tty and closing stdin
	hasIn bool           // a stdin pipe was requested

	mu     sync.Mutex
	subs   map[*subscriber]struct{}
	end    *pb.ProcessEvent_EndEvent // set once, when finished
	done   chan struct{}             // closed once end is set
	reaped chan struct{}             // closed once the process was waited for
}

// subscriber receives the data and end events of one process for one
// stream. The producer blocks while ch is full, so output is never dropped
// for an attached stream; gone releases it when the stream leaves.
type subscriber struct {
	ch   chan *pb.ProcessEvent
	gone chan struct{}
}

func newSubscriber() *subscriber {
	return &subscriber{ch: make(chan *pb.ProcessEvent, subscriberBuffer), gone: make(chan struct{})}
}

// spec is everything needed to spawn a process.
type spec struct {
	config  *pb.ProcessConfig
	tag     *string
	pty     *pb.PTY
	stdin   bool
	account *account
	cwd     string
	env     []string
}

// start spawns a process with sub already attached, so that no output is
// missed by the stream that started it.
func (m *processManager) start(sp spec, sub *subscriber) (*proc, error) {
	p := &proc{
		tag:    sp.tag,
		config: sp.config,
		subs:   map[*subscriber]struct{}{sub: {}},
		done:   make(chan struct{}),
		reaped: make(chan struct{}),
		hasIn:  sp.stdin && sp.pty == nil,
	}
	cmd := exec.Command(sp.config.GetCmd(), sp.config.GetArgs()...)
	cmd.Dir = sp.cwd
	cmd.Env = sp.env
	attr := &syscall.SysProcAttr{}
	if cred := credentialFor(sp.account); cred != nil {
		attr.Credential = cred
	}
	cmd.SysProcAttr = attr
	p.cmd = cmd

	var readers []readerSpec
	var spawn func() (int, error)
	if sp.pty != nil {
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
		spawn = func() (int, error) {
			tty, err := pty.StartWithAttrs(cmd, winsize(sp.pty), attr)
			if err != nil {
				return 0, err
			}
			p.tty = tty
			return cmd.Process.Pid, nil
		}
	} else {
		attr.Setpgid = true
		outR, outW, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		errR, errW, err := os.Pipe()
		if err != nil {
			closeAll(outR, outW)
			return nil, err
		}
		cmd.Stdout, cmd.Stderr = outW, errW
		var inW io.WriteCloser
		if p.hasIn {
			inR, w, err := os.Pipe()
			if err != nil {
				closeAll(outR, outW, errR, errW)
				return nil, err
			}
			cmd.Stdin, inW = inR, w
		}
		spawn = func() (int, error) {
			err := cmd.Start()
			// The child owns its ends now (or never will).
			closeAll(outW, errW)
			if f, ok := cmd.Stdin.(*os.File); ok {
				f.Close()
			}
			if err != nil {
				closeAll(outR, errR)
				if inW != nil {
					inW.Close()
				}
				return 0, err
			}
			p.stdin = inW
			return cmd.Process.Pid, nil
		}
		readers = []readerSpec{{outR, pipeChunk, stdoutEvent}, {errR, pipeChunk, stderrEvent}}
	}

	if err := m.spawn(spawn); err != nil {
		return nil, err
	}
	p.pid = uint32(cmd.Process.Pid)
	if p.tty != nil {
		readers = []readerSpec{{p.tty, ptyChunk, ptyEvent}}
	}
	m.mu.Lock()
	m.procs[p.pid] = p
	m.mu.Unlock()
	go m.run(p, readers)
	return p, nil
}

func (m *processManager) spawn(fn func() (int, error)) error {
	if m.tracker == nil {
		_, err := fn()
		return err
	}
	return m.tracker.Start(fn)
}

type readerSpec struct {
	f     *os.File
	chunk int
	event func([]byte) *pb.ProcessEvent
}

// run pumps the output of p to its subscribers, waits for the process and
// publishes the end event after the last byte of output.
func (m *processManager) run(p *proc, readers []readerSpec) {
	var wg sync.WaitGroup
	for _, r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.pump(r)
		}()
	}
	err := p.cmd.Wait()
	close(p.reaped)
	if m.tracker != nil {
		m.tracker.Done(int(p.pid))
	}
	// Everything the process wrote is in the pipe buffers by now and the
	// readers reach EOF after it. Descendants that inherited the pipes can
	// hold them open: after a grace period, drain what is buffered and stop.
	readersDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(readersDone)
	}()
	select {
	case <-readersDone:
	case <-time.After(drainGrace):
		for _, r := range readers {
			if r.f.SetReadDeadline(time.Now()) != nil {
				r.f.Close() // not pollable: unblock the reader the hard way
			}
		}
		<-readersDone
	}
	for _, r := range readers {
		r.f.Close()
	}
	p.inMu.Lock()
	if p.stdin != nil {
		p.stdin.Close()
		p.stdin = nil
	}
	p.inMu.Unlock()

	p.finish(endEvent(p.cmd.ProcessState, err))
	time.AfterFunc(retainExited, func() {
		m.mu.Lock()
		if m.procs[p.pid] == p {
			delete(m.procs, p.pid)
		}
		m.mu.Unlock()
	})
}

func (p *proc) pump(r readerSpec) {
	for {
		buf := make([]byte, r.chunk)
		n, err := r.f.Read(buf)
		if n > 0 {
			p.publish(r.event(buf[:n]))
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			p.drain(r)
			return
		}
		if err != nil {
			return
		}
	}
}

// drain publishes what is still buffered in a pipe whose read deadline has
// passed, with non-blocking reads that bypass the deadline.
func (p *proc) drain(r readerSpec) {
	rc, err := r.f.SyscallConn()
	if err != nil {
		return
	}
	for {
		buf := make([]byte, r.chunk)
		var n int
		var rerr error
		if err := rc.Control(func(fd uintptr) { n, rerr = syscall.Read(int(fd), buf) }); err != nil || rerr != nil || n <= 0 {
			return
		}
		p.publish(r.event(buf[:n]))
	}
}

// publish hands ev to every attached subscriber, waiting for slow ones.
func (p *proc) publish(ev *pb.ProcessEvent) {
	p.mu.Lock()
	subs := make([]*subscriber, 0, len(p.subs))
	for s := range p.subs {
		subs = append(subs, s)
	}
	p.mu.Unlock()
	for _, s := range subs {
		select {
		case s.ch <- ev:
		case <-s.gone:
		}
	}
}

func (p *proc) finish(end *pb.ProcessEvent_EndEvent) {
	ev := &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: end}}
	p.mu.Lock()
	p.end = end
	close(p.done)
	p.mu.Unlock()
	p.publish(ev)
}

// attach subscribes to a process. When it has already finished, the end
// event is queued at once.
func (p *proc) attach() *subscriber {
	s := newSubscriber()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.end != nil {
		s.ch <- &pb.ProcessEvent{Event: &pb.ProcessEvent_End{End: p.end}}
		return s
	}
	p.subs[s] = struct{}{}
	return s
}

func (p *proc) detach(s *subscriber) {
	p.mu.Lock()
	delete(p.subs, s)
	p.mu.Unlock()
	close(s.gone)
}

func (p *proc) finished() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// signal delivers sig to the process and the process group it leads, so
// that a command's children go with it.
func (p *proc) signal(sig syscall.Signal) error {
	if p.finished() {
		return errProcessNotFound
	}
	err := syscall.Kill(-int(p.pid), sig)
	if errors.Is(err, syscall.ESRCH) {
		err = syscall.Kill(int(p.pid), sig)
	}
	if errors.Is(err, syscall.ESRCH) {
		return errProcessNotFound
	}
	return err
}

// awaitReaped waits up to timeout for the process to be reaped (its pid no
// longer exists), reporting whether it was.
func (p *proc) awaitReaped(timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-p.reaped:
		return true
	case <-t.C:
		return false
	}
}

var (
	errProcessNotFound = errors.New("process not found")
	errNoStdin         = errors.New("stdin is not enabled or already closed for this process")
	errNotPTY          = errors.New("process has no PTY")
	errIsPTY           = errors.New("process has a PTY: send its input as pty data")
)

// writeStdin writes to the stdin pipe.
func (p *proc) writeStdin(b []byte) error {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.tty != nil {
		return errIsPTY
	}
	if p.stdin == nil {
		return errNoStdin
	}
	_, err := p.stdin.Write(b)
	return err
}

// writePTY writes to the PTY master, as if typed on the terminal.
func (p *proc) writePTY(b []byte) error {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.tty == nil {
		return errNotPTY
	}
	_, err := p.tty.Write(b)
	return err
}

// closeStdin closes the stdin pipe; closing it again is a no-op.
func (p *proc) closeStdin() error {
	p.inMu.Lock()
	defer p.inMu.Unlock()
	if p.tty != nil {
		return errIsPTY
	}
	if p.stdin != nil {
		err := p.stdin.Close()
		p.stdin = nil
		return err
	}
	if !p.hasIn {
		return errNoStdin
	}
	return nil
}

func (p *proc) resize(sz *pb.PTY) error {
	if p.tty == nil {
		return errNotPTY
	}
	return pty.Setsize(p.tty, winsize(sz))
}

// find returns a live or recently exited process by selector. For tags the
// first live match wins.
func (m *processManager) find(sel *pb.ProcessSelector) (*proc, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch s := sel.GetSelector().(type) {
	case *pb.ProcessSelector_Pid:
		if p, ok := m.procs[s.Pid]; ok {
			return p, nil
		}
	case *pb.ProcessSelector_Tag:
		var exited *proc
		for _, p := range m.procs {
			if p.tag == nil || *p.tag != s.Tag {
				continue
			}
			if !p.finished() {
				return p, nil
			}
			exited = p
		}
		if exited != nil {
			return exited, nil
		}
	default:
		return nil, fmt.Errorf("process selector: %w", errNoSelector)
	}
	return nil, errProcessNotFound
}

var errNoSelector = errors.New("no pid or tag given")

// live lists the processes that have not finished.
func (m *processManager) live() []*proc {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*proc, 0, len(m.procs))
	for _, p := range m.procs {
		if !p.finished() {
			out = append(out, p)
		}
	}
	return out
}

// killAll kills every live process (server shutdown).
func (m *processManager) killAll() {
	for _, p := range m.live() {
		_ = p.signal(syscall.SIGKILL)
	}
}

func endEvent(st *os.ProcessState, waitErr error) *pb.ProcessEvent_EndEvent {
	if st == nil {
		msg := "process could not be waited for"
		if waitErr != nil {
			msg = waitErr.Error()
		}
		return &pb.ProcessEvent_EndEvent{ExitCode: -1, Status: msg, Error: &msg}
	}
	end := &pb.ProcessEvent_EndEvent{ExitCode: int32(st.ExitCode()), Exited: st.Exited(), Status: st.String()}
	if !st.Success() {
		status := end.Status
		end.Error = &status
	}
	return end
}

func credentialFor(a *account) *syscall.Credential {
	if a == nil {
		return nil
	}
	if uint32(os.Getuid()) == a.UID && uint32(os.Getgid()) == a.GID {
		return nil // already that user; a non-root envd cannot switch anyway
	}
	return &syscall.Credential{Uid: a.UID, Gid: a.GID, Groups: a.Groups}
}

func winsize(p *pb.PTY) *pty.Winsize {
	sz := p.GetSize()
	ws := &pty.Winsize{Cols: uint16(sz.GetCols()), Rows: uint16(sz.GetRows())}
	if ws.Cols == 0 {
		ws.Cols = 80
	}
	if ws.Rows == 0 {
		ws.Rows = 24
	}
	return ws
}

func closeAll(fs ...*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

func stdoutEvent(b []byte) *pb.ProcessEvent {
	return dataEvent(&pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stdout{Stdout: b}})
}

func stderrEvent(b []byte) *pb.ProcessEvent {
	return dataEvent(&pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Stderr{Stderr: b}})
}

func ptyEvent(b []byte) *pb.ProcessEvent {
	return dataEvent(&pb.ProcessEvent_DataEvent{Output: &pb.ProcessEvent_DataEvent_Pty{Pty: b}})
}

func dataEvent(d *pb.ProcessEvent_DataEvent) *pb.ProcessEvent {
	return &pb.ProcessEvent{Event: &pb.ProcessEvent_Data{Data: d}}
}
