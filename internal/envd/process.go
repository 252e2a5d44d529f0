package envd

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"syscall"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/envd/process"
)

// defaultKeepalive is used when a stream carries no valid
// Keepalive-Ping-Interval header.
const defaultKeepalive = 90 * time.Second

// processService implements process.Process on top of processManager.
type processService struct {
	s *Server
}

// Start spawns a process and streams start, output, keepalives and end. The
// stream's deadline (Connect-Timeout-Ms) is also the process' lifetime; a
// client that merely disconnects leaves the process running.
func (ps *processService) Start(ctx context.Context, req *connect.Request[pb.StartRequest], stream *connect.ServerStream[pb.StartResponse]) error {
	sp, err := ps.spec(req)
	if err != nil {
		return err
	}
	sub := newSubscriber()
	p, err := ps.s.procs.start(sp, sub)
	if err != nil {
		return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cannot start %q: %w", sp.config.GetCmd(), err))
	}
	ps.s.log.DebugContext(ctx, "process started", "pid", p.pid, "cmd", sp.config.GetCmd())
	if deadline, ok := ctx.Deadline(); ok {
		// The deadline outlives a disconnected client: it is the process'
		// lifetime, not the stream's.
		t := time.AfterFunc(time.Until(deadline), func() { _ = p.signal(syscall.SIGKILL) })
		go func() {
			<-p.done
			t.Stop()
		}()
	}
	send := func(ev *pb.ProcessEvent) error { return stream.Send(&pb.StartResponse{Event: ev}) }
	return ps.follow(ctx, req.Header(), p, sub, send)
}

// Connect re-attaches to a running (or just finished) process.
func (ps *processService) Connect(ctx context.Context, req *connect.Request[pb.ConnectRequest], stream *connect.ServerStream[pb.ConnectResponse]) error {
	p, err := ps.find(req.Msg.GetProcess())
	if err != nil {
		return err
	}
	send := func(ev *pb.ProcessEvent) error { return stream.Send(&pb.ConnectResponse{Event: ev}) }
	return ps.follow(ctx, req.Header(), p, p.attach(), send)
}

// follow sends start{pid}, then every event of sub, with keepalives in the
// quiet periods, until the end event or the stream's end.
func (ps *processService) follow(ctx context.Context, h http.Header, p *proc, sub *subscriber, send func(*pb.ProcessEvent) error) error {
	defer p.detach(sub)
	if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Start{Start: &pb.ProcessEvent_StartEvent{Pid: p.pid}}}); err != nil {
		return err
	}
	interval := keepaliveInterval(h)
	keep := time.NewTimer(interval)
	defer keep.Stop()
	for {
		select {
		case ev := <-sub.ch:
			if err := send(ev); err != nil {
				return err
			}
			if ev.GetEnd() != nil {
				return nil
			}
			keep.Reset(interval)
		case <-keep.C:
			if err := send(&pb.ProcessEvent{Event: &pb.ProcessEvent_Keepalive{Keepalive: &pb.ProcessEvent_KeepAlive{}}}); err != nil {
				return err
			}
			keep.Reset(interval)
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return connect.NewError(connect.CodeDeadlineExceeded, errors.New("process timed out and was killed"))
			}
			return connect.NewError(connect.CodeCanceled, ctx.Err())
		}
	}
}

// spec validates a StartRequest and resolves its user, cwd and environment.
func (ps *processService) spec(req *connect.Request[pb.StartRequest]) (spec, error) {
	msg := req.Msg
	if msg.GetProcess().GetCmd() == "" {
		return spec{}, connect.NewError(connect.CodeInvalidArgument, errors.New("process.cmd is required"))
	}
	acct, err := ps.s.rpcAccount(req.Header())
	if err != nil {
		return spec{}, err
	}
	cwd, err := ps.s.rpcPath(msg.GetProcess().GetCwd(), acct)
	if err != nil {
		return spec{}, err
	}
	if fi, err := os.Stat(cwd); err != nil || !fi.IsDir() {
		return spec{}, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("cwd '%s' does not exist or is not a directory", cwd))
	}
	if msg.Pty != nil {
		if sz := msg.Pty.GetSize(); sz.GetCols() > 65535 || sz.GetRows() > 65535 {
			return spec{}, connect.NewError(connect.CodeInvalidArgument, errors.New("pty size out of range"))
		}
	}
	return spec{
		config:  msg.GetProcess(),
		tag:     msg.Tag,
		pty:     msg.Pty,
		stdin:   msg.Stdin == nil || *msg.Stdin,
		account: acct,
		cwd:     cwd,
		env:     ps.environ(acct, msg.GetProcess().GetEnvs()),
	}, nil
}

// environ builds a process environment; later sources win: envd's PATH and
// the user's identity, the global variables, the request's variables.
func (ps *processService) environ(a *account, envs map[string]string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = defaultPath
	}
	m := map[string]string{"PATH": path, "HOME": a.Home, "USER": a.Name, "LOGNAME": a.Name}
	maps.Copy(m, ps.s.environ())
	maps.Copy(m, envs)
	out := make([]string, 0, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	return out
}

func (ps *processService) find(sel *pb.ProcessSelector) (*proc, error) {
	p, err := ps.s.procs.find(sel)
	switch {
	case errors.Is(err, errNoSelector):
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	case err != nil:
		return nil, connect.NewError(connect.CodeNotFound, processNotFound(sel))
	}
	return p, nil
}

func processNotFound(sel *pb.ProcessSelector) error {
	if t, ok := sel.GetSelector().(*pb.ProcessSelector_Tag); ok {
		return fmt.Errorf("process with tag %q not found", t.Tag)
	}
	return fmt.Errorf("process with pid %d not found", sel.GetPid())
}

// findLive is find for the RPCs that act on a running process.
func (ps *processService) findLive(sel *pb.ProcessSelector) (*proc, error) {
	p, err := ps.find(sel)
	if err != nil {
		return nil, err
	}
	if p.finished() {
		return nil, connect.NewError(connect.CodeNotFound, processNotFound(sel))
	}
	return p, nil
}

func (ps *processService) List(context.Context, *connect.Request[pb.ListRequest]) (*connect.Response[pb.ListResponse], error) {
	live := ps.s.procs.live()
	slices.SortFunc(live, func(a, b *proc) int { return int(a.pid) - int(b.pid) })
	out := &pb.ListResponse{Processes: make([]*pb.ProcessInfo, 0, len(live))}
	for _, p := range live {
		out.Processes = append(out.Processes, &pb.ProcessInfo{Config: p.config, Pid: p.pid, Tag: p.tag})
	}
	return connect.NewResponse(out), nil
}

func (ps *processService) SendInput(_ context.Context, req *connect.Request[pb.SendInputRequest]) (*connect.Response[pb.SendInputResponse], error) {
	p, err := ps.findLive(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := ps.input(p, req.Msg.GetInput()); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.SendInputResponse{}), nil
}

// input delivers one ProcessInput to p.
func (ps *processService) input(p *proc, in *pb.ProcessInput) error {
	var err error
	switch v := in.GetInput().(type) {
	case *pb.ProcessInput_Stdin:
		err = p.writeStdin(v.Stdin)
	case *pb.ProcessInput_Pty:
		err = p.writePTY(v.Pty)
	default:
		return connect.NewError(connect.CodeUnimplemented, errors.New("input must set stdin or pty"))
	}
	if err != nil {
		return connect.NewError(connect.CodeInternal, fmt.Errorf("write input to pid %d: %w", p.pid, err))
	}
	return nil
}

// StreamInput takes a start{process} message, then data messages, until the
// client closes its side.
func (ps *processService) StreamInput(_ context.Context, stream *connect.ClientStream[pb.StreamInputRequest]) (*connect.Response[pb.StreamInputResponse], error) {
	var p *proc
	for stream.Receive() {
		switch ev := stream.Msg().GetEvent().(type) {
		case *pb.StreamInputRequest_Start:
			found, err := ps.findLive(ev.Start.GetProcess())
			if err != nil {
				return nil, err
			}
			p = found
		case *pb.StreamInputRequest_Data:
			if p == nil {
				return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the first message must be start"))
			}
			if err := ps.input(p, ev.Data.GetInput()); err != nil {
				return nil, err
			}
		case *pb.StreamInputRequest_Keepalive:
		default:
			return nil, connect.NewError(connect.CodeInvalidArgument, errors.New("empty stream input event"))
		}
	}
	if err := stream.Err(); err != nil {
		return nil, err
	}
	return connect.NewResponse(&pb.StreamInputResponse{}), nil
}

// killReapTimeout bounds how long SendSignal(SIGKILL) waits for the process
// to be reaped, so that its pid is gone for whatever the client runs next
// (E2B's SDK tests probe a killed pid with `kill -0` right away).
const killReapTimeout = 2 * time.Second

func (ps *processService) SendSignal(ctx context.Context, req *connect.Request[pb.SendSignalRequest]) (*connect.Response[pb.SendSignalResponse], error) {
	var sig syscall.Signal
	switch req.Msg.GetSignal() {
	case pb.Signal_SIGNAL_SIGKILL:
		sig = syscall.SIGKILL
	case pb.Signal_SIGNAL_SIGTERM:
		sig = syscall.SIGTERM
	default:
		return nil, connect.NewError(connect.CodeUnimplemented, fmt.Errorf("signal %v is not supported", req.Msg.GetSignal()))
	}
	p, err := ps.findLive(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := p.signal(sig); err != nil {
		if errors.Is(err, errProcessNotFound) {
			return nil, connect.NewError(connect.CodeNotFound, processNotFound(req.Msg.GetProcess()))
		}
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("signal pid %d: %w", p.pid, err))
	}
	if sig == syscall.SIGKILL && !p.awaitReaped(killReapTimeout) {
		// Stuck in the kernel (uninterruptible sleep); it dies when it
		// leaves. The signal was delivered, so this is still a success.
		ps.s.log.WarnContext(ctx, "killed process not reaped yet", "pid", p.pid, "waited", killReapTimeout)
	}
	return connect.NewResponse(&pb.SendSignalResponse{}), nil
}

func (ps *processService) CloseStdin(_ context.Context, req *connect.Request[pb.CloseStdinRequest]) (*connect.Response[pb.CloseStdinResponse], error) {
	p, err := ps.findLive(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if err := p.closeStdin(); err != nil {
		code := connect.CodeInternal
		if errors.Is(err, errIsPTY) {
			code = connect.CodeUnknown
		}
		return nil, connect.NewError(code, fmt.Errorf("close stdin of pid %d: %w", p.pid, err))
	}
	return connect.NewResponse(&pb.CloseStdinResponse{}), nil
}

func (ps *processService) Update(_ context.Context, req *connect.Request[pb.UpdateRequest]) (*connect.Response[pb.UpdateResponse], error) {
	p, err := ps.findLive(req.Msg.GetProcess())
	if err != nil {
		return nil, err
	}
	if req.Msg.Pty != nil {
		if err := p.resize(req.Msg.Pty); err != nil {
			return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("resize pid %d: %w", p.pid, err))
		}
	}
	return connect.NewResponse(&pb.UpdateResponse{}), nil
}

// maxKeepalive bounds Keepalive-Ping-Interval: larger values would
// overflow time.Duration.
const maxKeepalive = 24 * time.Hour

// keepaliveInterval reads Keepalive-Ping-Interval (whole seconds, at most
// maxKeepalive).
func keepaliveInterval(h http.Header) time.Duration {
	n, err := strconv.Atoi(h.Get("Keepalive-Ping-Interval"))
	if err != nil || n <= 0 {
		return defaultKeepalive
	}
	if n > int(maxKeepalive/time.Second) {
		return maxKeepalive
	}
	return time.Duration(n) * time.Second
}
