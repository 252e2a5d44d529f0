package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/capsulehq/capsule/internal/agentapi"
	"github.com/capsulehq/capsule/internal/agentproxy"
	"github.com/capsulehq/capsule/internal/sandbox"
)

func newProxyTransport() *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			t, ok := ctx.Value(proxyTargetKey{}).(*proxyTarget)
			if !ok {
				return nil, errors.New("proxy: no target")
			}
			return d.DialContext(ctx, network, t.dial.String())
		},
		MaxIdleConns:          1024,
		MaxIdleConnsPerHost:   128,
		IdleConnTimeout:       30 * time.Second,
		ResponseHeaderTimeout: 0, // long polls and slow servers are the guest's business
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
	}
}

type proxyTarget struct {
	sandboxID string
	port      int
	url       *url.URL
	// dial is where the guest's port is; url's host only names the
	// connection pool (see serveProxy).
	dial netip.AddrPort
}

type proxyTargetKey struct{}

// serveProxy forwards sandbox traffic to the guest.
func (a *Agent) serveProxy(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get(agentproxy.SandboxHeader)
	token, ok := bearerValue(r.Header.Get(agentproxy.TokenHeader))
	if !a.cfg.ClientCertAuth && (!ok || a.verifier.Verify(r.Context(), token) != nil) {
		a.log.WarnContext(r.Context(), "proxy request refused: bad token", "remote", r.RemoteAddr)
		agentproxy.WriteError(w, http.StatusUnauthorized, "", 0, "unauthenticated")
		return
	}
	port, err := strconv.Atoi(r.Header.Get(agentproxy.PortHeader))
	if err != nil || port < 1 || port > 65535 {
		agentproxy.WriteError(w, http.StatusBadRequest, id, 0, "Invalid sandbox port")
		return
	}
	info, err := a.mgr.Get(id)
	if err != nil || info.State != sandbox.StateRunning || info.HostAddr == "" {
		w.Header().Set(agentproxy.ErrorHeader, agentproxy.ErrorNotFound)
		agentproxy.WriteError(w, http.StatusBadGateway, id, 0, agentproxy.MsgSandboxNotFound)
		return
	}
	addr, err := netip.ParseAddr(info.HostAddr)
	if err != nil {
		agentproxy.WriteError(w, http.StatusBadGateway, id, 0, agentproxy.MsgSandboxNotFound)
		return
	}
	_ = a.mgr.Ping(id) // traffic is activity
	// Connections are pooled per machine: a network slot (and so the host
	// address) is reused by the next sandbox, and a resumed sandbox is a
	// new machine, so kept-alive connections must never outlive theirs.
	pool := fmt.Sprintf("%s-%d-%d.guest", id, info.VMMPid, port)
	t := &proxyTarget{sandboxID: id, port: port, url: &url.URL{Scheme: "http", Host: pool},
		dial: netip.AddrPortFrom(addr, uint16(port))}
	ctx, done := a.proxying.add(r.Context(), id)
	defer done()
	// A guest may answer while its request body still arrives (an echo,
	// a streaming upload handler): without full duplex, Go's HTTP/1
	// server would end the body's reads at the answer's first bytes.
	_ = http.NewResponseController(w).EnableFullDuplex()
	a.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, proxyTargetKey{}, t)))
}

// newReverseProxy returns the one ReverseProxy of the agent: it streams
// (no buffering: server-sent events and long downloads flow), passes
// WebSocket and other upgrades through, and keeps the client's Host.
func (a *Agent) newReverseProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			t := pr.In.Context().Value(proxyTargetKey{}).(*proxyTarget)
			pr.SetURL(t.url)
			pr.Out.Host = pr.In.Host
			for _, h := range []string{agentproxy.SandboxHeader, agentproxy.PortHeader, agentproxy.TokenHeader, agentapi.RequestIDHeader} {
				pr.Out.Header.Del(h)
			}
		},
		Transport:     newProxyTransport(),
		FlushInterval: -1,
		BufferPool:    copyBuffers{},
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			t := r.Context().Value(proxyTargetKey{}).(*proxyTarget)
			if errors.Is(err, syscall.ECONNREFUSED) {
				agentproxy.WriteError(w, http.StatusBadGateway, t.sandboxID, t.port, agentproxy.MsgPortClosed)
				return
			}
			if r.Context().Err() != nil {
				return // the client went away
			}
			a.log.WarnContext(r.Context(), "proxy", "sandbox", t.sandboxID, "port", t.port, "err", err)
			agentproxy.WriteError(w, http.StatusBadGateway, t.sandboxID, t.port, agentproxy.MsgPortClosed)
		},
	}
}

// bearerValue extracts the token of "Bearer <token>".
func bearerValue(v string) (string, bool) {
	h := http.Header{}
	h.Set("Authorization", v)
	return bearerToken(h)
}

// proxyCalls are the proxied requests in flight, by sandbox.
type proxyCalls struct {
	mu    sync.Mutex
	calls map[string]map[*context.CancelFunc]struct{}
}

// add registers a request to sandbox id: its context ends when the request
// does (done) or when end(id) is called.
func (p *proxyCalls) add(parent context.Context, id string) (ctx context.Context, done func()) {
	ctx, cancel := context.WithCancel(parent)
	p.mu.Lock()
	if p.calls == nil {
		p.calls = map[string]map[*context.CancelFunc]struct{}{}
	}
	if p.calls[id] == nil {
		p.calls[id] = map[*context.CancelFunc]struct{}{}
	}
	p.calls[id][&cancel] = struct{}{}
	p.mu.Unlock()
	return ctx, func() {
		p.mu.Lock()
		delete(p.calls[id], &cancel)
		if len(p.calls[id]) == 0 {
			delete(p.calls, id)
		}
		p.mu.Unlock()
		cancel()
	}
}

// end cancels the proxied requests of sandbox id (it stopped).
func (p *proxyCalls) end(id string) {
	p.mu.Lock()
	calls := p.calls[id]
	delete(p.calls, id)
	p.mu.Unlock()
	for c := range calls {
		(*c)()
	}
}

// copyBuffers lends the reverse proxy 256 KiB copy buffers instead of its
// 32 KiB default: with FlushInterval -1 every read is a write and a flush,
// and a large file moves in eight times fewer of them.
type copyBuffers struct{}

var copyBufferPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

func (copyBuffers) Get() []byte  { return *copyBufferPool.Get().(*[]byte) }
func (copyBuffers) Put(b []byte) { copyBufferPool.Put(&b) }
