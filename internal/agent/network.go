package agent

import (
	"context"
	"slices"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/egress"
)

// SetSandboxNetwork replaces a sandbox's egress rules (sandbox.Manager.SetNetwork).
func (s *service) SetSandboxNetwork(ctx context.Context, req *connect.Request[pb.SetSandboxNetworkRequest]) (*connect.Response[pb.SetSandboxNetworkResponse], error) {
	if err := s.a.mgr.SetNetwork(ctx, req.Msg.GetSandboxId(), rulesFromProto(req.Msg.GetNetwork())); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.SetSandboxNetworkResponse{}), nil
}

// rulesFromProto: an absent message is no egress at all.
func rulesFromProto(n *pb.NetworkRules) egress.Rules {
	return egress.Rules{
		AllowInternet: n.GetAllowInternet(),
		AllowOut:      slices.Clone(n.GetAllowOut()),
		DenyOut:       slices.Clone(n.GetDenyOut()),
	}
}

// createRules are a create request's rules: network when set.
func createRules(m *pb.CreateSandboxRequest) *egress.Rules {
	if m.GetNetwork() == nil {
		return nil
	}
	r := rulesFromProto(m.GetNetwork())
	return &r
}

func rulesToProto(r egress.Rules) *pb.NetworkRules {
	return &pb.NetworkRules{AllowInternet: r.AllowInternet, AllowOut: slices.Clone(r.AllowOut), DenyOut: slices.Clone(r.DenyOut)}
}
