package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/egress"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
)

// Egress rules (issue 14.4). A sandbox's rules live on its record
// (sandboxes.network, NULL: allow_internet_access alone) and on its host
// (the agent keeps them in the sandbox's state and applies them to its
// network slot, across pause, resume and an agent restart). Package egress
// says what they mean; it is also what checks them here, so a request the
// control plane accepts is one the host applies.

// CheckNetwork returns r's problems as ErrInvalid (a 400 naming the entry).
func CheckNetwork(r egress.Rules) error {
	if _, err := egress.Parse(r); err != nil {
		return errorf(ErrInvalid, "network: %v", err)
	}
	return nil
}

// networkJSON is the record's form of r.
func networkJSON(r *egress.Rules) ([]byte, error) {
	if r == nil {
		return nil, nil
	}
	return json.Marshal(r)
}

// NetworkOf returns a sandbox record's egress rules.
func NetworkOf(row db.Sandbox) egress.Rules {
	if len(row.Network) > 0 {
		var r egress.Rules
		if err := json.Unmarshal(row.Network, &r); err == nil {
			return r
		}
	}
	if row.AllowInternetAccess {
		return egress.Open()
	}
	return egress.Closed()
}

func rulesToProto(r egress.Rules) *pb.NetworkRules {
	return &pb.NetworkRules{AllowInternet: r.AllowInternet, AllowOut: r.AllowOut, DenyOut: r.DenyOut}
}

// GetNetwork returns the egress rules of a sandbox of p's team.
func (s *Sandboxes) GetNetwork(ctx context.Context, p Principal, id SandboxID) (egress.Rules, error) {
	row, err := s.get(ctx, p, id)
	if err != nil {
		return egress.Rules{}, err
	}
	if row.State == store.SandboxStopped {
		return egress.Rules{}, errorf(ErrNotFound, "sandbox not found (it was destroyed)")
	}
	return NetworkOf(row), nil
}

// SetNetwork replaces the egress rules of a sandbox of p's team (all of
// them: what r leaves out is cleared). The host applies them first — a
// running sandbox within the call, open connections included — then the
// record keeps them. A destroyed sandbox is not found; one in error or
// whose host lost it is a conflict.
func (s *Sandboxes) SetNetwork(ctx context.Context, p Principal, id SandboxID, r egress.Rules) (egress.Rules, error) {
	if err := CheckNetwork(r); err != nil {
		return egress.Rules{}, err
	}
	row, err := s.get(ctx, p, id)
	if err != nil {
		return egress.Rules{}, err
	}
	switch row.State {
	case store.SandboxStopped:
		return egress.Rules{}, errorf(ErrNotFound, "sandbox not found (it was destroyed)")
	case store.SandboxError, store.SandboxMissing:
		return egress.Rules{}, errorf(ErrConflict, "the sandbox is %s", row.State)
	}
	js, err := networkJSON(&r)
	if err != nil {
		return egress.Rules{}, fmt.Errorf("network: %w", err)
	}
	c, err := s.agentFor(ctx, row.HostID)
	if err != nil {
		return egress.Rules{}, err
	}
	if _, err := c.SetSandboxNetwork(ctx, connect.NewRequest(&pb.SetSandboxNetworkRequest{SandboxId: id.String(), Network: rulesToProto(r)})); err != nil {
		return egress.Rules{}, agentError(err, "set network")
	}
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		if _, err := q.SetSandboxNetwork(ctx, db.SetSandboxNetworkParams{ID: pgUUID(id), TeamID: pgUUID(p.TeamID), Network: js, AllowInternetAccess: r.AllowInternet}); err != nil {
			if errors.Is(err, store.ErrNotFound) {
				return notFound(err, "sandbox")
			}
			return fmt.Errorf("set network: %w", err)
		}
		return s.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: id.String(),
			Action: "sandbox.set_network", Metadata: map[string]any{"allow_internet": r.AllowInternet,
				"allow_out": len(r.AllowOut), "deny_out": len(r.DenyOut)}})
	})
	if err != nil {
		return egress.Rules{}, err
	}
	s.log.InfoContext(ctx, "sandbox network rules set", "sandbox", id.String(), "allow_internet", r.AllowInternet,
		"allow_out", len(r.AllowOut), "deny_out", len(r.DenyOut))
	return r, nil
}

// network checks a create request's rules and returns their record form
// (nil without rules).
func (req CreateSandbox) network() ([]byte, error) {
	if req.Network == nil {
		return nil, nil
	}
	if err := CheckNetwork(*req.Network); err != nil {
		return nil, err
	}
	return networkJSON(req.Network)
}

func (req CreateSandbox) networkProto() *pb.NetworkRules {
	if req.Network == nil {
		return nil
	}
	return rulesToProto(*req.Network)
}
