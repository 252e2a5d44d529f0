package agent

import (
	"context"
	"fmt"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// GetSandboxConsole returns the tail of a sandbox's serial console log
// (revision 8); it does not mark the sandbox active.
func (s *service) GetSandboxConsole(ctx context.Context, req *connect.Request[pb.GetSandboxConsoleRequest]) (*connect.Response[pb.GetSandboxConsoleResponse], error) {
	n := req.Msg.GetMaxBytes()
	if n > sandbox.MaxConsoleTail {
		return nil, s.a.failState(ctx, fmt.Errorf("%w: max_bytes: at most %d", sandbox.ErrInvalid, sandbox.MaxConsoleTail))
	}
	data, truncated, err := s.a.mgr.ConsoleTail(req.Msg.GetSandboxId(), int(n))
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.GetSandboxConsoleResponse{Console: &pb.ConsoleTail{Data: data, Truncated: truncated}}), nil
}
