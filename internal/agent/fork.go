package agent

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/sandbox"
)

func (s *service) ForkSandbox(ctx context.Context, req *connect.Request[pb.ForkSandboxRequest]) (*connect.Response[pb.ForkSandboxResponse], error) {
	m := req.Msg
	forks := make([]sandbox.CreateOptions, len(m.GetForks()))
	for i, f := range m.GetForks() {
		forks[i] = sandbox.CreateOptions{
			ID:             f.GetSandboxId(),
			Network:        createRules(f),
			Egress:         f.GetEgress(),
			AccessToken:    f.GetAccessToken(),
			DefaultUser:    f.GetDefaultUser(),
			DefaultWorkdir: f.GetDefaultWorkdir(),
			EnvVars:        f.GetEnvVars(),
			Metadata:       f.GetMetadata(),
			Timeout:        duration(f.GetTimeout()),
		}
	}
	res, err := s.a.mgr.Fork(ctx, m.GetSandboxId(), forks)
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	out := &pb.ForkSandboxResponse{Results: make([]*pb.ForkResult, len(forks)), SourceHold: durationpb.New(res.Hold)}
	for i := range forks {
		r := &pb.ForkResult{}
		if in := res.Sandboxes[i]; in != nil {
			r.Sandbox = sandboxToProto(in)
		} else {
			var ce *connect.Error
			if errors.As(s.a.fail(ctx, res.Errs[i], connect.CodeAlreadyExists), &ce) {
				r.ErrorCode, r.ErrorMessage = ce.Code().String(), ce.Message()
			}
		}
		out.Results[i] = r
	}
	return connect.NewResponse(out), nil
}
