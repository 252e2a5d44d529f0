package agent

import (
	"context"
	"errors"
	"time"

	"connectrpc.com/connect"

	procpb "github.com/capsulehq/capsule/gen/envd/process"
	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/envdclient"
)

// keepaliveSeconds asks envd for a keepalive event after this many quiet
// seconds; Exec forwards them, so that idle streams stay visibly alive.
const keepaliveSeconds = "30"

// activityEvery bounds how often a long exec marks its sandbox active.
const activityEvery = 5 * time.Second

// envd returns the envd client of a running sandbox and marks the sandbox
// active.
func (s *service) envd(ctx context.Context, id string) (*envdclient.Client, error) {
	c, err := s.a.mgr.Client(id)
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	_ = s.a.mgr.Ping(id)
	return c, nil
}

func (s *service) Exec(ctx context.Context, req *connect.Request[pb.ExecRequest], stream *connect.ServerStream[pb.ExecResponse]) error {
	m := req.Msg
	if m.GetCmd() == "" {
		return s.a.failState(ctx, invalid("cmd is required"))
	}
	if sz := m.GetPty(); sz != nil && (sz.GetCols() == 0 || sz.GetRows() == 0 || sz.GetCols() > 65535 || sz.GetRows() > 65535) {
		return s.a.failState(ctx, invalid("pty size must be 1..65535 columns and rows"))
	}
	c, err := s.envd(ctx, m.GetSandboxId())
	if err != nil {
		return err
	}
	cfg := &procpb.ProcessConfig{Cmd: m.GetCmd(), Args: m.GetArgs(), Envs: m.GetEnvs()}
	if m.GetCwd() != "" {
		cwd := m.GetCwd()
		cfg.Cwd = &cwd
	}
	stdin := m.GetStdin()
	start := &procpb.StartRequest{Process: cfg, Stdin: &stdin}
	if sz := m.GetPty(); sz != nil {
		start.Pty = &procpb.PTY{Size: &procpb.PTY_Size{Cols: sz.GetCols(), Rows: sz.GetRows()}}
	}
	ereq := connect.NewRequest(start)
	ereq.Header().Set("Keepalive-Ping-Interval", keepaliveSeconds)
	if m.GetUser() != "" {
		ereq.Header().Set("Authorization", envdclient.UserAuthorization(m.GetUser()))
	}
	// envd makes the stream's deadline the process' lifetime: it kills the
	// process then, whether or not anyone still listens.
	ectx := ctx
	timeout := duration(m.GetTimeout())
	if timeout > 0 {
		var cancel context.CancelFunc
		ectx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	es, err := c.Process().Start(ectx, ereq)
	if err != nil {
		return s.a.failState(ctx, err)
	}
	defer es.Close()

	id := m.GetSandboxId()
	lastPing := s.a.now()
	ended := false
	for !ended && es.Receive() {
		out, end := execEvent(es.Msg().GetEvent())
		ended = end
		if out == nil {
			continue
		}
		if err := stream.Send(out); err != nil {
			return err // the caller went away; the process goes on
		}
		if now := s.a.now(); now.Sub(lastPing) > activityEvery || ended {
			_ = s.a.mgr.Ping(id)
			lastPing = now
		}
	}
	if ended {
		return nil
	}
	err = es.Err()
	if err == nil {
		err = errors.New("envd's process stream ended without an end event")
	}
	if timeout > 0 && ctx.Err() == nil && errors.Is(ectx.Err(), context.DeadlineExceeded) {
		// Our timeout, not the caller's: envd killed the process.
		return stream.Send(&pb.ExecResponse{Event: &pb.ExecResponse_Ended{Ended: &pb.ExecEnded{
			ExitCode: -1, Status: "timed out", TimedOut: true,
		}}})
	}
	return s.a.failState(ctx, err)
}

// execEvent converts an envd process event; nil for events that are not
// forwarded. end reports the end event.
func execEvent(ev *procpb.ProcessEvent) (out *pb.ExecResponse, end bool) {
	switch e := ev.GetEvent().(type) {
	case *procpb.ProcessEvent_Start:
		return &pb.ExecResponse{Event: &pb.ExecResponse_Started{Started: &pb.ExecStarted{Pid: e.Start.GetPid()}}}, false
	case *procpb.ProcessEvent_Data:
		o := &pb.ExecOutput{}
		switch d := e.Data.GetOutput().(type) {
		case *procpb.ProcessEvent_DataEvent_Stdout:
			o.Data = &pb.ExecOutput_Stdout{Stdout: d.Stdout}
		case *procpb.ProcessEvent_DataEvent_Stderr:
			o.Data = &pb.ExecOutput_Stderr{Stderr: d.Stderr}
		case *procpb.ProcessEvent_DataEvent_Pty:
			o.Data = &pb.ExecOutput_Pty{Pty: d.Pty}
		default:
			return nil, false
		}
		return &pb.ExecResponse{Event: &pb.ExecResponse_Output{Output: o}}, false
	case *procpb.ProcessEvent_End:
		return &pb.ExecResponse{Event: &pb.ExecResponse_Ended{Ended: &pb.ExecEnded{
			ExitCode: e.End.GetExitCode(),
			Exited:   e.End.GetExited(),
			Status:   e.End.GetStatus(),
			Error:    e.End.GetError(),
		}}}, true
	case *procpb.ProcessEvent_Keepalive:
		return &pb.ExecResponse{Event: &pb.ExecResponse_Keepalive{Keepalive: &pb.ExecKeepalive{}}}, false
	}
	return nil, false
}

func pidSelector(pid uint32) *procpb.ProcessSelector {
	return &procpb.ProcessSelector{Selector: &procpb.ProcessSelector_Pid{Pid: pid}}
}

func (s *service) SendExecInput(ctx context.Context, req *connect.Request[pb.SendExecInputRequest]) (*connect.Response[pb.SendExecInputResponse], error) {
	m := req.Msg
	c, err := s.envd(ctx, m.GetSandboxId())
	if err != nil {
		return nil, err
	}
	in := &procpb.ProcessInput{Input: &procpb.ProcessInput_Stdin{Stdin: m.GetData()}}
	if m.GetPty() {
		in.Input = &procpb.ProcessInput_Pty{Pty: m.GetData()}
	}
	if _, err := c.Process().SendInput(ctx, connect.NewRequest(&procpb.SendInputRequest{
		Process: pidSelector(m.GetPid()), Input: in,
	})); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.SendExecInputResponse{}), nil
}

func (s *service) CloseExecInput(ctx context.Context, req *connect.Request[pb.CloseExecInputRequest]) (*connect.Response[pb.CloseExecInputResponse], error) {
	c, err := s.envd(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	if _, err := c.Process().CloseStdin(ctx, connect.NewRequest(&procpb.CloseStdinRequest{
		Process: pidSelector(req.Msg.GetPid()),
	})); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.CloseExecInputResponse{}), nil
}

var signals = map[pb.Signal]procpb.Signal{
	pb.Signal_SIGNAL_SIGKILL: procpb.Signal_SIGNAL_SIGKILL,
	pb.Signal_SIGNAL_SIGTERM: procpb.Signal_SIGNAL_SIGTERM,
}

func (s *service) SignalExec(ctx context.Context, req *connect.Request[pb.SignalExecRequest]) (*connect.Response[pb.SignalExecResponse], error) {
	sig, ok := signals[req.Msg.GetSignal()]
	if !ok {
		return nil, s.a.failState(ctx, invalid("signal %v is not supported", req.Msg.GetSignal()))
	}
	c, err := s.envd(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	if _, err := c.Process().SendSignal(ctx, connect.NewRequest(&procpb.SendSignalRequest{
		Process: pidSelector(req.Msg.GetPid()), Signal: sig,
	})); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.SignalExecResponse{}), nil
}

func (s *service) ResizeExec(ctx context.Context, req *connect.Request[pb.ResizeExecRequest]) (*connect.Response[pb.ResizeExecResponse], error) {
	sz := req.Msg.GetSize()
	if sz.GetCols() == 0 || sz.GetRows() == 0 || sz.GetCols() > 65535 || sz.GetRows() > 65535 {
		return nil, s.a.failState(ctx, invalid("pty size must be 1..65535 columns and rows"))
	}
	c, err := s.envd(ctx, req.Msg.GetSandboxId())
	if err != nil {
		return nil, err
	}
	if _, err := c.Process().Update(ctx, connect.NewRequest(&procpb.UpdateRequest{
		Process: pidSelector(req.Msg.GetPid()),
		Pty:     &procpb.PTY{Size: &procpb.PTY_Size{Cols: sz.GetCols(), Rows: sz.GetRows()}},
	})); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.ResizeExecResponse{}), nil
}
