package proxy

import (
	"context"
	"errors"
	"fmt"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/service"
)

// ServiceResolver is the Resolver over the control plane's services:
// sandboxes (and auto-resume) from service.Sandboxes, API keys from
// service.Accounts, agents' addresses from Agents (by host name: the pool
// the services reach the agents with, so an address is registered once).
type ServiceResolver struct {
	Sandboxes *service.Sandboxes
	Accounts  *service.Accounts
	Agents    *agentclient.Pool
}

// Resolve implements Resolver.
func (t ServiceResolver) Resolve(ctx context.Context, sandboxID string) (Route, error) {
	rt, err := t.Sandboxes.ResolveTraffic(ctx, sandboxID)
	return t.route(ctx, rt, err)
}

// Wake implements Resolver.
func (t ServiceResolver) Wake(ctx context.Context, sandboxID string) (Route, error) {
	rt, err := t.Sandboxes.WakeTraffic(ctx, sandboxID)
	return t.route(ctx, rt, err)
}

func (t ServiceResolver) route(ctx context.Context, rt service.TrafficRoute, err error) (Route, error) {
	if errors.Is(err, service.ErrNotFound) || errors.Is(err, service.ErrNotRunning) {
		return Route{}, ErrNotFound
	}
	if err != nil {
		return Route{}, err
	}
	ep, err := t.Agents.Endpoint(ctx, rt.Host)
	if err != nil {
		return Route{}, fmt.Errorf("no address for host agent %q: %w", rt.Host, err)
	}
	return Route{
		SandboxID: rt.SandboxID, AgentURL: ep.URL, AgentToken: ep.Token, Asleep: rt.Asleep,
		EnvdAccessToken: rt.EnvdAccessToken, TrafficToken: rt.TrafficToken, Public: rt.Public, Team: rt.Team,
	}, nil
}

// APIKeyTeam implements Resolver.
func (t ServiceResolver) APIKeyTeam(ctx context.Context, key string) (string, error) {
	p, err := t.Accounts.AuthenticateAPIKey(ctx, key)
	if err != nil {
		return "", err
	}
	return p.TeamID.String(), nil
}

// Touch implements Resolver.
func (t ServiceResolver) Touch(ctx context.Context, sandboxID string) {
	t.Sandboxes.TouchTraffic(ctx, sandboxID)
}

// RunningSandboxes implements Resolver.
func (t ServiceResolver) RunningSandboxes(ctx context.Context) ([]string, error) {
	return t.Sandboxes.RunningSandboxIDs(ctx)
}

// EnvdToken implements Resolver.
func (t ServiceResolver) EnvdToken(sandboxID string) string {
	return t.Sandboxes.EnvdAccessToken(sandboxID)
}
