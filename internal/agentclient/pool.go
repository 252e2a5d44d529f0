package agentclient

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	"connectrpc.com/connect"
)

// ErrUnknownHost is Pool.Get's answer for a host it cannot resolve.
var ErrUnknownHost = errors.New("agent: unknown host")

// Resolver finds the endpoint of a host (in the control plane: its row in
// the hosts table). It returns an error wrapping ErrUnknownHost for a host
// that does not exist.
type Resolver func(ctx context.Context, hostID string) (Endpoint, error)

// Options configure a Pool.
type Options struct {
	// Resolve finds hosts that Set did not register; nil: only those.
	Resolve Resolver
	// ClientOptions are added to every client's.
	ClientOptions []connect.ClientOption
	// Log receives the pool's logs (default slog.Default()).
	Log *slog.Logger
}

// Pool holds a client per host. It is safe for concurrent use.
type Pool struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	clients map[string]*Client
	static  map[string]Endpoint
	closed  bool
}

// NewPool returns an empty pool.
func NewPool(opts Options) *Pool {
	p := &Pool{opts: opts, log: opts.Log, clients: map[string]*Client{}, static: map[string]Endpoint{}}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.log = p.log.With("component", "agentclient")
	return p
}

// Set registers (or replaces) the endpoint of a host, which then needs no
// Resolver; a client made from an older endpoint is evicted.
func (p *Pool) Set(hostID string, ep Endpoint) error {
	if err := ep.validate(); err != nil {
		return fmt.Errorf("host %s: %w", hostID, err)
	}
	p.mu.Lock()
	p.static[hostID] = ep
	old := p.clients[hostID]
	delete(p.clients, hostID)
	p.mu.Unlock()
	if old != nil {
		old.Close()
	}
	return nil
}

// Endpoint returns the address and token of a host: the one Set
// registered, else what the Resolver finds. Everything that reaches an
// agent (the services' clients, the traffic proxy) takes it from here, so
// that an agent's address is registered in one place.
func (p *Pool) Endpoint(ctx context.Context, hostID string) (Endpoint, error) {
	p.mu.Lock()
	ep, static := p.static[hostID]
	p.mu.Unlock()
	if static {
		return ep, nil
	}
	if p.opts.Resolve == nil {
		return Endpoint{}, fmt.Errorf("%w: %s", ErrUnknownHost, hostID)
	}
	ep, err := p.opts.Resolve(ctx, hostID)
	if err != nil {
		return Endpoint{}, fmt.Errorf("resolve host %s: %w", hostID, err)
	}
	return ep, nil
}

// Get returns the client of a host, creating it on first use.
func (p *Pool) Get(ctx context.Context, hostID string) (*Client, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errors.New("agent pool is closed")
	}
	if c, ok := p.clients[hostID]; ok {
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()
	ep, err := p.Endpoint(ctx, hostID)
	if err != nil {
		return nil, err
	}
	c, err := New(ep, p.opts.ClientOptions...)
	if err != nil {
		return nil, fmt.Errorf("host %s: %w", hostID, err)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, errors.New("agent pool is closed")
	}
	if existing, ok := p.clients[hostID]; ok {
		// Another caller won the race: use its client.
		c.Close()
		return existing, nil
	}
	p.clients[hostID] = c
	p.log.DebugContext(ctx, "agent client created", "host", hostID, "url", ep.URL)
	return c, nil
}

// Evict drops a host's client (and a Set endpoint): the next Get resolves
// the host again. Use it when a host is deleted, moves or gets a new token.
func (p *Pool) Evict(hostID string) {
	p.mu.Lock()
	c := p.clients[hostID]
	delete(p.clients, hostID)
	delete(p.static, hostID)
	p.mu.Unlock()
	if c != nil {
		c.Close()
	}
}

// Hosts lists the hosts that have a client now, sorted.
func (p *Pool) Hosts() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.clients))
}

// Close evicts every client; Get fails afterwards.
func (p *Pool) Close() {
	p.mu.Lock()
	clients := p.clients
	p.clients, p.static, p.closed = map[string]*Client{}, map[string]Endpoint{}, true
	p.mu.Unlock()
	for _, c := range clients {
		c.Close()
	}
}

// Static lists the hosts registered with Set (not resolved), sorted: the
// control plane's static agents, reached by a configured endpoint.
func (p *Pool) Static() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.static))
}
