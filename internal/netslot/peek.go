package netslot

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/egress"
)

// The name check of HTTP and HTTPS connections. While a slot's rules name
// domains, the guest's new TCP connections to ports 80 and 443 (whatever
// the address) are translated to the slot's peeker on the gateway
// (peekHTTPPort, peekTLSPort), which reads the name the connection is for
// — the Host header of the first HTTP request, the server name (SNI) of
// the TLS ClientHello — and, when the rules allow that name at that
// address, opens the connection to the original destination from the
// slot's namespace and splices the two. So an address shared by an allowed
// and a denied name (a CDN) does not open the denied one, and a raw IP
// with an allowed name in the Host header or SNI works only when the
// address is the name's too (learned by the resolver) or an allowed CIDR.
// A change of rules closes the spliced connections they no longer allow.
// Not covered: later requests on a kept-alive HTTP/1.1 connection (only
// the first names the connection), TLS with encrypted ClientHello (no
// readable name: refused unless the address is an allowed CIDR), and
// other ports (address rules only).
const (
	peekHTTPPort = 18080
	peekTLSPort  = 18443
	peekTimeout  = 10 * time.Second
	peekMax      = 16 << 10
)

// proxied is one spliced connection.
type proxied struct {
	name    string
	dst     netip.Addr
	guest   net.Conn
	upTo    net.Conn
	closing sync.Once
}

func (p *proxied) close() {
	p.closing.Do(func() {
		if tc, ok := p.guest.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset: the guest sees the cut at once
		}
		p.guest.Close()
		if p.upTo != nil {
			p.upTo.Close()
		}
	})
}

// startPeekers starts the two listeners in the slot's namespace.
func (r *resolver) startPeekers() error {
	for _, port := range []uint16{peekHTTPPort, peekTLSPort} {
		var ln *net.TCPListener
		addr := netip.AddrPortFrom(r.slot.plan.gateway, port)
		err := inNetNS(r.slot.NetNSPath, func() error {
			var err error
			ln, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr))
			return err
		})
		if err != nil {
			for _, l := range r.peekLns {
				l.Close()
			}
			r.peekLns = nil
			return err
		}
		r.peekLns = append(r.peekLns, ln)
		tlsPort := port == peekTLSPort
		r.wg.Add(1)
		go r.servePeek(ln, tlsPort)
	}
	return nil
}

func (r *resolver) servePeek(ln *net.TCPListener, tlsPort bool) {
	defer r.wg.Done()
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return
		}
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.handlePeek(c, tlsPort)
		}()
	}
}

func (r *resolver) handlePeek(c *net.TCPConn, tlsPort bool) {
	p := &proxied{guest: c}
	if !r.track(p) {
		c.Close()
		return
	}
	defer r.untrack(p)
	defer p.close()
	dst, err := originalDst(c)
	if err != nil {
		r.log.Warn("peek: original destination", "err", err)
		return
	}
	p.dst = dst.Addr()
	// An address no name could open is refused before reading anything.
	if !r.connAllowed("", p.dst, true) {
		return
	}
	_ = c.SetReadDeadline(time.Now().Add(peekTimeout))
	var buf bytes.Buffer
	name := ""
	if tlsPort {
		name = sniOf(io.TeeReader(io.LimitReader(c, peekMax), &buf))
	} else {
		name = hostOf(io.TeeReader(io.LimitReader(c, peekMax), &buf))
	}
	_ = c.SetReadDeadline(time.Time{})
	p.name = egress.Canonical(name)
	if !r.connAllowed(p.name, p.dst, false) {
		r.log.Debug("peek: refused", "name", p.name, "dst", dst)
		return
	}
	var up net.Conn
	err = inNetNS(r.slot.NetNSPath, func() error {
		var err error
		up, err = net.DialTimeout("tcp4", dst.String(), peekTimeout)
		return err
	})
	if err != nil {
		return
	}
	r.connMu.Lock()
	p.upTo = up
	r.connMu.Unlock()
	// The rules may have changed while it connected (SetRules only cuts
	// the connections it sees spliced).
	if !r.connAllowed(p.name, p.dst, false) {
		return
	}
	if _, err := up.Write(buf.Bytes()); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); closeWrite(up); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); closeWrite(c); done <- struct{}{} }()
	<-done
	<-done
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}

func (r *resolver) track(p *proxied) bool {
	r.connMu.Lock()
	defer r.connMu.Unlock()
	if r.closed {
		return false
	}
	r.proxied[p] = struct{}{}
	return true
}

func (r *resolver) untrack(p *proxied) {
	r.connMu.Lock()
	delete(r.proxied, p)
	r.connMu.Unlock()
}

// connAllowed decides for a connection to dst naming name ("" for none).
// early: only the address is known yet; refuse only what no name opens.
func (r *resolver) connAllowed(name string, dst netip.Addr, early bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return connVerdict(r.policy, r.learnedFor(dst), name, dst, early)
}

// learnedFor returns the live names learned for a; r.mu must be held.
func (r *resolver) learnedFor(a netip.Addr) []string {
	now := time.Now()
	var out []string
	for n, exp := range r.names[a] {
		if exp.After(now) {
			out = append(out, n)
		}
	}
	return out
}

// connVerdict: address rules first (AlwaysDenied, allowed CIDRs, denied
// CIDRs), then the name: with the "deny" default the connection needs an
// allowed name at an address learned for an allowed name; with the
// "allow" default a denied name, or an address learned for one, refuses
// it.
func connVerdict(p egress.Policy, learned []string, name string, dst netip.Addr, early bool) bool {
	for _, n := range egress.AlwaysDenied {
		if n.Contains(dst) {
			return false
		}
	}
	for _, n := range p.AllowNets {
		if n.Contains(dst) {
			return true
		}
	}
	for _, n := range p.DenyNets {
		if n.Contains(dst) {
			return false
		}
	}
	allowedAddr, deniedAddr := false, false
	for _, n := range learned {
		if p.NameAllowed(n) {
			allowedAddr = true
		}
		if p.NameDenied(n) {
			deniedAddr = true
		}
	}
	if p.DenyByDefault {
		if !allowedAddr {
			return false
		}
		return early || (name != "" && p.NameAllowed(name))
	}
	if deniedAddr {
		return false
	}
	return early || !p.NameDenied(name)
}

// closeDisallowed closes the spliced connections that the current policy
// no longer allows; r.mu must be held.
func (r *resolver) closeDisallowedLocked() {
	r.connMu.Lock()
	var cut []*proxied
	for p := range r.proxied {
		if p.upTo == nil {
			continue // still being checked, under the new policy
		}
		if !connVerdict(r.policy, r.learnedFor(p.dst), p.name, p.dst, false) {
			cut = append(cut, p)
		}
	}
	r.connMu.Unlock()
	for _, p := range cut {
		p.close()
	}
}

// originalDst is the destination the guest asked for, before the
// translation to the peeker (SO_ORIGINAL_DST).
func originalDst(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	var out netip.AddrPort
	var serr error
	err = rc.Control(func(fd uintptr) {
		mreq, err := unix.GetsockoptIPv6Mreq(int(fd), unix.SOL_IP, unix.SO_ORIGINAL_DST)
		if err != nil {
			serr = err
			return
		}
		// struct sockaddr_in: family, port (big endian), address.
		port := binary.BigEndian.Uint16(mreq.Multiaddr[2:4])
		a := netip.AddrFrom4([4]byte(mreq.Multiaddr[4:8]))
		out = netip.AddrPortFrom(a, port)
	})
	if err == nil {
		err = serr
	}
	return out, err
}

var errPeeked = errors.New("peeked")

// sniOf reads a TLS ClientHello from rd and returns its server name ("" if
// none or not TLS).
func sniOf(rd io.Reader) string {
	var name string
	conn := &readOnlyConn{r: rd}
	_ = tls.Server(conn, &tls.Config{
		GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
			name = h.ServerName
			return nil, errPeeked
		},
	}).Handshake()
	return name
}

// hostOf reads an HTTP request head from rd and returns its host without
// the port ("" if none).
func hostOf(rd io.Reader) string {
	req, err := http.ReadRequest(bufio.NewReader(rd))
	if err != nil {
		return ""
	}
	h := req.Host
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.TrimSuffix(h, ".")
}

// readOnlyConn is a net.Conn that reads from r and writes nothing: TLS's
// handshake stops at the ClientHello.
type readOnlyConn struct {
	r io.Reader
}

func (c *readOnlyConn) Read(p []byte) (int, error)       { return c.r.Read(p) }
func (c *readOnlyConn) Write(p []byte) (int, error)      { return 0, syscall.EPIPE }
func (c *readOnlyConn) Close() error                     { return nil }
func (c *readOnlyConn) LocalAddr() net.Addr              { return nil }
func (c *readOnlyConn) RemoteAddr() net.Addr             { return nil }
func (c *readOnlyConn) SetDeadline(time.Time) error      { return nil }
func (c *readOnlyConn) SetReadDeadline(time.Time) error  { return nil }
func (c *readOnlyConn) SetWriteDeadline(time.Time) error { return nil }
