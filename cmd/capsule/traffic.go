package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/e2bapi"
	"github.com/capsulehq/capsule/internal/proxy"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

// trafficResolver is the proxy's view of the control plane: sandboxes
// from the service, agents' addresses from the endpoints serve knows.
type trafficResolver struct {
	sandboxes *service.Sandboxes
	accounts  *service.Accounts
	agents    map[string]agentclient.Endpoint
}

func (t trafficResolver) Resolve(ctx context.Context, sandboxID string) (proxy.Route, error) {
	rt, err := t.sandboxes.ResolveTraffic(ctx, sandboxID)
	if errors.Is(err, service.ErrNotFound) || errors.Is(err, service.ErrNotRunning) {
		return proxy.Route{}, proxy.ErrNotFound
	}
	if err != nil {
		return proxy.Route{}, err
	}
	ep, ok := t.agents[rt.Host]
	if !ok {
		return proxy.Route{}, fmt.Errorf("no address for host agent %q", rt.Host)
	}
	return proxy.Route{
		SandboxID: rt.SandboxID, AgentURL: ep.URL, AgentToken: ep.Token,
		EnvdAccessToken: rt.EnvdAccessToken, TrafficToken: rt.TrafficToken, Public: rt.Public, Team: rt.Team,
	}, nil
}

func (t trafficResolver) APIKeyTeam(ctx context.Context, key string) (string, error) {
	p, err := t.accounts.AuthenticateAPIKey(ctx, key)
	if err != nil {
		return "", err
	}
	return wireid.Format(wireid.Team, p.TeamID), nil
}

func (t trafficResolver) Touch(ctx context.Context, sandboxID string) {
	t.sandboxes.TouchTraffic(ctx, sandboxID)
}

// rootHandler sends sandbox traffic to the proxy, E2B's control-plane
// paths to the E2B facade, and the rest to the native API.
func rootHandler(px *proxy.Handler, e2b *e2bapi.Handler, api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case px.Matches(r):
			px.ServeHTTP(w, r)
		case e2b.Matches(r):
			e2b.ServeHTTP(w, r)
		default:
			api.ServeHTTP(w, r)
		}
	})
}
