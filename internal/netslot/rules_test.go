package netslot

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/capsulehq/capsule/internal/egress"
	"github.com/capsulehq/capsule/internal/testenv"
)

// The test internet for egress rules: besides inetAddr, the internet
// namespace holds the "public" addresses of webNet (routed from the host
// through inetHostIf) and a few special ones (a private address, the
// cloud metadata address, a CGNAT address), each serving HTTP-ish echo
// on port 80, and a DNS server on inetAddr:53 that knows the names below.
var (
	webNet     = netip.MustParsePrefix("198.19.1.0/24")
	webAllowed = netip.MustParseAddr("198.19.1.1") // allowed.test
	webWildA   = netip.MustParseAddr("198.19.1.2") // a.wild.test
	webWildB   = netip.MustParseAddr("198.19.1.3") // b.wild.test
	webDenied  = netip.MustParseAddr("198.19.1.4") // denied.test
	webCIDR    = netip.MustParseAddr("198.19.1.5") // no name
	webDenied2 = netip.MustParseAddr("198.19.1.6") // sub.denied.test
	// Special ranges, reachable from the host (routes below), never from a
	// guest.
	specials = map[string]netip.Addr{
		"private":  netip.MustParseAddr("192.168.251.1"),
		"metadata": netip.MustParseAddr("169.254.169.254"),
		"cgnat":    netip.MustParseAddr("100.64.251.1"),
	}
	testNames = map[string]netip.Addr{
		"allowed.test":    webAllowed,
		"a.wild.test":     webWildA,
		"b.wild.test":     webWildB,
		"wild.test":       webCIDR,
		"denied.test":     webDenied,
		"sub.denied.test": webDenied2,
	}
)

// startWebInternet starts the internet namespace with its web servers and
// DNS server (answering testNames with TTL 300; it counts the queries it
// gets).
func startWebInternet(t *testing.T) (*internet, *dnsCounter) {
	t.Helper()
	in := startInternet(t)
	addrs := []netip.Addr{webAllowed, webWildA, webWildB, webDenied, webCIDR, webDenied2}
	for _, a := range specials {
		addrs = append(addrs, a)
	}
	err := inNetNS(in.path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if err := netlink.AddrAdd(lo, &netlink.Addr{IPNet: ipNet(a, 32)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("internet addresses: %v", err)
	}
	link, err := netlink.LinkByName(inetHostIf)
	if err != nil {
		t.Fatal(err)
	}
	dsts := []netip.Prefix{webNet}
	for _, a := range specials {
		dsts = append(dsts, netip.PrefixFrom(a, 32))
	}
	for _, d := range dsts {
		// Removed with the interface.
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: ipNet(d.Addr(), d.Bits()), Gw: ipNet(inetAddr, 32).IP}
		if err := netlink.RouteAdd(r); err != nil {
			t.Fatalf("route %s: %v", d, err)
		}
	}
	for _, a := range addrs {
		serve(t, in.path, netip.AddrPortFrom(a, 81).String(), "web-"+a.String())
		serveHTTP(t, in.path, a)
	}
	serve(t, in.path, netip.AddrPortFrom(inetAddr, 853).String(), "dot")
	for _, port := range []uint16{443, 444} {
		serveUDPEcho(t, in.path, netip.AddrPortFrom(webAllowed, port))
	}
	return in, serveDNS(t, in.path, netip.AddrPortFrom(inetAddr, 53))
}

type dnsCounter struct {
	mu sync.Mutex
	n  int
}

func (c *dnsCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// serveDNS answers A queries for testNames (NXDOMAIN otherwise) over UDP
// and TCP.
func serveDNS(t *testing.T, nsPath string, addr netip.AddrPort) *dnsCounter {
	t.Helper()
	var (
		uc *net.UDPConn
		tl *net.TCPListener
	)
	err := inNetNS(nsPath, func() error {
		var err error
		if uc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr)); err != nil {
			return err
		}
		tl, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		t.Fatalf("dns server: %v", err)
	}
	ctr := &dnsCounter{}
	answer := func(q []byte) []byte {
		ctr.mu.Lock()
		ctr.n++
		ctr.mu.Unlock()
		var p dnsmessage.Parser
		h, err := p.Start(q)
		if err != nil {
			return nil
		}
		qs, err := p.AllQuestions()
		if err != nil || len(qs) != 1 {
			return nil
		}
		a, ok := testNames[egress.Canonical(qs[0].Name.String())]
		rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired}
		if !ok {
			rh.RCode = dnsmessage.RCodeNameError
		}
		b := dnsmessage.NewBuilder(nil, rh)
		_ = b.StartQuestions()
		_ = b.Question(qs[0])
		if ok && qs[0].Type == dnsmessage.TypeA {
			_ = b.StartAnswers()
			_ = b.AResource(dnsmessage.ResourceHeader{Name: qs[0].Name, Class: dnsmessage.ClassINET, TTL: 300}, dnsmessage.AResource{A: a.As4()})
		}
		out, _ := b.Finish()
		return out
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		buf := make([]byte, 65535)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if out := answer(buf[:n]); out != nil {
				_, _ = uc.WriteToUDPAddrPort(out, from)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			c, err := tl.Accept()
			if err != nil {
				return
			}
			_ = c.SetDeadline(time.Now().Add(5 * time.Second))
			if q, err := readTCPMsg(c); err == nil {
				if out := answer(q); out != nil {
					_ = writeTCPMsg(c, out)
				}
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		uc.Close()
		tl.Close()
		wg.Wait()
	})
	return ctr
}

// lookup sends an A query for name to server from the namespace at nsPath
// and returns the answer's rcode and addresses.
func lookup(nsPath string, server netip.AddrPort, name string, viaTCP bool) (dnsmessage.RCode, []netip.Addr, error) {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 4242, RecursionDesired: true})
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name + "."), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, _ := b.Finish()
	var resp []byte
	err := inNetNS(nsPath, func() error {
		network := "udp4"
		if viaTCP {
			network = "tcp4"
		}
		c, err := net.DialTimeout(network, server.String(), 2*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if viaTCP {
			if err := writeTCPMsg(c, q); err != nil {
				return err
			}
			resp, err = readTCPMsg(bufio.NewReader(c))
			return err
		}
		if _, err := c.Write(q); err != nil {
			return err
		}
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		resp = buf[:n]
		return err
	})
	if err != nil {
		return 0, nil, err
	}
	var p dnsmessage.Parser
	h, err := p.Start(resp)
	if err != nil {
		return 0, nil, err
	}
	if err := p.SkipAllQuestions(); err != nil {
		return 0, nil, err
	}
	var out []netip.Addr
	for {
		rh, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return 0, nil, err
		}
		if rh.Type != dnsmessage.TypeA {
			_ = p.SkipAnswer()
			continue
		}
		a, err := p.AResource()
		if err != nil {
			return 0, nil, err
		}
		out = append(out, netip.AddrFrom4(a.A))
	}
	return h.RCode, out, nil
}

func mustResolve(t *testing.T, nsPath string, server netip.AddrPort, name string, viaTCP bool) netip.Addr {
	t.Helper()
	rc, addrs, err := lookup(nsPath, server, name, viaTCP)
	if err != nil || rc != dnsmessage.RCodeSuccess || len(addrs) != 1 {
		t.Fatalf("resolve %s at %s (tcp %t): rcode %v, %v, %v; want one address", name, server, viaTCP, rc, addrs, err)
	}
	if want := testNames[name]; addrs[0] != want {
		t.Fatalf("resolve %s: %s, want %s", name, addrs[0], want)
	}
	return addrs[0]
}

func mustNotResolve(t *testing.T, nsPath string, server netip.AddrPort, name string, viaTCP bool) {
	t.Helper()
	rc, addrs, err := lookup(nsPath, server, name, viaTCP)
	if err == nil && rc == dnsmessage.RCodeSuccess && len(addrs) > 0 {
		t.Fatalf("resolve %s at %s (tcp %t): %v, want refused", name, server, viaTCP, addrs)
	}
	t.Logf("resolve %s at %s (tcp %t): rcode %v, err %v", name, server, viaTCP, rc, err)
}

// web is a's raw TCP service (port 81: address rules only); its HTTP and
// HTTPS services (80, 443) go through the slot's name check.
// serveUDPEcho echoes UDP datagrams at addr.
func serveUDPEcho(t *testing.T, nsPath string, addr netip.AddrPort) {
	t.Helper()
	var uc *net.UDPConn
	if err := inNetNS(nsPath, func() (err error) { uc, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr)); return err }); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = uc.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	t.Cleanup(func() { uc.Close(); <-done })
}

// udpEchoes reports whether a datagram to addr from nsPath comes back.
func udpEchoes(nsPath string, addr netip.AddrPort) bool {
	ok := false
	_ = inNetNS(nsPath, func() error {
		c, err := net.Dial("udp4", addr.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(700 * time.Millisecond))
		if _, err := c.Write([]byte("ping")); err != nil {
			return err
		}
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		ok = err == nil && string(buf[:n]) == "ping"
		return nil
	})
	return ok
}

func web(a netip.Addr) netip.AddrPort { return netip.AddrPortFrom(a, 81) }

var (
	testCertOnce sync.Once
	testCert     tls.Certificate
)

// serveHTTP answers HTTP on a:80 and HTTPS on a:443 (a self-signed
// certificate for any name) with "web-<a> <Host>".
func serveHTTP(t *testing.T, nsPath string, a netip.Addr) {
	t.Helper()
	testCertOnce.Do(func() {
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tpl := &x509.Certificate{SerialNumber: big.NewInt(1), DNSNames: []string{"*.test", "allowed.test", "denied.test"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
		der, _ := x509.CreateCertificate(rand.Reader, tpl, tpl, &key.PublicKey, key)
		testCert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "web-%s %s", a, r.Host) })
	for _, port := range []uint16{80, 443} {
		var ln net.Listener
		if err := inNetNS(nsPath, func() (err error) { ln, err = net.Listen("tcp4", netip.AddrPortFrom(a, port).String()); return err }); err != nil {
			t.Fatal(err)
		}
		if port == 443 {
			ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{testCert}})
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.Serve(ln) }()
		t.Cleanup(func() { _ = srv.Close() })
	}
}

// fetch GETs http(s)://addr/ from the namespace at nsPath naming host (in
// the Host header, and as the TLS server name), on a fresh connection.
func fetch(nsPath string, addr netip.Addr, host string, https bool) (string, error) {
	d := &net.Dialer{Timeout: 2 * time.Second}
	tr := &http.Transport{
		// The transport dials on goroutines of its own: enter the
		// namespace there.
		DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
			var c net.Conn
			err := inNetNS(nsPath, func() (err error) { c, err = d.DialContext(ctx, network, a); return err })
			return c, err
		},
		TLSClientConfig:   &tls.Config{ServerName: host, InsecureSkipVerify: true},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	scheme := "http"
	if https {
		scheme = "https"
	}
	req, err := http.NewRequest("GET", scheme+"://"+addr.String()+"/", nil)
	if err != nil {
		return "", err
	}
	req.Host = host
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func setRules(t *testing.T, s *Slot, r egress.Rules) {
	t.Helper()
	if err := s.SetRules(context.Background(), r); err != nil {
		t.Fatalf("SetRules(%+v): %v", r, err)
	}
}

func newRulesPool(t *testing.T) *Pool {
	return newTestPool(t, func(c *Config) {
		c.DNSUpstream = []netip.AddrPort{netip.AddrPortFrom(inetAddr, 53)}
		// No host-level denials: what is denied below is denied by the
		// slot's rules alone.
		c.DenyEgress = []netip.Prefix{}
	})
}

func TestEgressRules(t *testing.T) {
	p := newRulesPool(t)
	_, dnsSeen := startWebInternet(t)
	theirDNS := netip.AddrPortFrom(inetAddr, 53)
	s := acquire(t, p)
	g := startGuest(t, s)

	t.Run("deny by default, allowed names and CIDRs", func(t *testing.T) {
		setRules(t, s, egress.Rules{AllowOut: []string{"allowed.test", "*.wild.test", webCIDR.String() + "/32"}})
		// The guest asks "its own" resolver (the internet's DNS server):
		// the slot's resolver answers, over UDP and TCP.
		mustResolve(t, g.path, theirDNS, "allowed.test", false)
		if ident, _ := mustReach(t, g.path, web(webAllowed)); ident != "web-"+webAllowed.String() {
			t.Errorf("answered by %q", ident)
		}
		// A wildcard name's address is closed until the guest resolves it.
		mustNotReach(t, g.path, web(webWildA))
		mustResolve(t, g.path, theirDNS, "a.wild.test", true)
		mustReach(t, g.path, web(webWildA))
		mustNotReach(t, g.path, web(webWildB)) // not resolved
		// The CIDR needs no name.
		mustReach(t, g.path, web(webCIDR))
	})
	t.Run("denied names do not resolve, whatever server the guest asks", func(t *testing.T) {
		before := dnsSeen.count()
		for _, name := range []string{"denied.test", "wild.test", "unknown.test"} {
			mustNotResolve(t, g.path, theirDNS, name, false)
			mustNotResolve(t, g.path, theirDNS, name, true)
			mustNotResolve(t, g.path, netip.AddrPortFrom(webCIDR, 53), name, false) // an allowed address
		}
		if n := dnsSeen.count(); n != before {
			t.Errorf("the internet's DNS server got %d queries for denied names, want none (the slot's resolver refuses them)", n-before)
		}
	})
	t.Run("raw IP of a denied name is blocked", func(t *testing.T) {
		mustNotReach(t, g.path, web(webDenied))
	})
	t.Run("DNS over TLS and QUIC are blocked", func(t *testing.T) {
		mustNotReach(t, g.path, netip.AddrPortFrom(inetAddr, 853))
		if udpEchoes(g.path, netip.AddrPortFrom(webAllowed, 443)) {
			t.Error("QUIC's port reaches allowed.test's address")
		}
		if !udpEchoes(g.path, netip.AddrPortFrom(webAllowed, 444)) {
			t.Error("other UDP to allowed.test's address is blocked")
		}
	})
	t.Run("HTTP and HTTPS are checked by the name they carry", func(t *testing.T) {
		// allowed.test's address, with another name in the request: the
		// case of a CDN serving an allowed and a denied name.
		for _, https := range []bool{false, true} {
			body, err := fetch(g.path, webAllowed, "allowed.test", https)
			if err != nil || body != "web-"+webAllowed.String()+" allowed.test" {
				t.Errorf("https %t: allowed.test at its address: %q, %v", https, body, err)
			}
			for _, host := range []string{"denied.test", "unknown.test", webAllowed.String()} {
				if body, err := fetch(g.path, webAllowed, host, https); err == nil {
					t.Errorf("https %t: %s at allowed.test's address: %q, want refused", https, host, body)
				}
			}
			// An allowed name at an address that is not its own.
			if body, err := fetch(g.path, webDenied, "allowed.test", https); err == nil {
				t.Errorf("https %t: allowed.test at denied.test's address: %q, want refused", https, body)
			}
		}
		// An allowed CIDR needs no name.
		if body, err := fetch(g.path, webCIDR, webCIDR.String(), false); err != nil {
			t.Errorf("the allowed CIDR over HTTP: %q, %v", body, err)
		}
	})
	t.Run("deny beats a wildcard allow for names", func(t *testing.T) {
		setRules(t, s, egress.Rules{AllowOut: []string{"*.wild.test"}, DenyOut: []string{"b.wild.test"}})
		mustResolve(t, g.path, theirDNS, "a.wild.test", false)
		mustNotResolve(t, g.path, theirDNS, "b.wild.test", false)
		mustNotReach(t, g.path, web(webWildB))
	})
	t.Run("allow by default, denied names and CIDRs", func(t *testing.T) {
		setRules(t, s, egress.Rules{AllowInternet: true, DenyOut: []string{"*.denied.test", "denied.test", webCIDR.String()}})
		mustResolve(t, g.path, theirDNS, "allowed.test", false)
		mustReach(t, g.path, web(webAllowed))
		mustReach(t, g.path, web(webWildB)) // never resolved: allowed by default
		mustNotReach(t, g.path, web(webCIDR))
		// Asking for a denied name fails, and its addresses close.
		mustReach(t, g.path, web(webDenied2))
		mustNotResolve(t, g.path, theirDNS, "sub.denied.test", false)
		mustNotResolve(t, g.path, theirDNS, "denied.test", false)
		mustNotReach(t, g.path, web(webDenied2))
		mustNotReach(t, g.path, web(webDenied))
	})
	t.Run("private ranges and the host stay closed whatever the rules", func(t *testing.T) {
		setRules(t, s, egress.Rules{AllowInternet: true, AllowOut: []string{egress.AllTraffic}})
		serve(t, "", "0.0.0.0:17003", "host-service")
		for name, a := range specials {
			// Reachable from the host: only the slot's rules stop the guest.
			if ident, _ := mustReach(t, "", web(a)); ident != "web-"+a.String() {
				t.Fatalf("host -> %s (%s): %q", a, name, ident)
			}
			mustNotReach(t, g.path, web(a))
		}
		mustNotReach(t, g.path, netip.AddrPortFrom(inetHostAddr, 17003))
		mustNotReach(t, g.path, netip.AddrPortFrom(s.plan.linkHost, 17003))
		mustReach(t, g.path, web(webDenied)) // everything else is open
	})
	t.Run("rules without names stop the resolver", func(t *testing.T) {
		setRules(t, s, egress.Rules{AllowInternet: true})
		// DNS is ordinary egress again: the internet's server answers
		// denied.test itself.
		mustResolve(t, g.path, theirDNS, "denied.test", false)
		if _, _, err := lookup(g.path, netip.AddrPortFrom(s.Gateway, 53), "allowed.test", false); err == nil {
			t.Error("the slot's resolver still answers with rules that name no domain")
		}
	})
	t.Run("invalid rules change nothing", func(t *testing.T) {
		err := s.SetRules(context.Background(), egress.Rules{AllowOut: []string{"not a domain"}})
		if !errors.Is(err, ErrInvalidRules) {
			t.Fatalf("SetRules: %v, want ErrInvalidRules", err)
		}
		if r := s.Rules(); !r.Equal(egress.Open()) {
			t.Errorf("rules after a refused change: %+v", r)
		}
		mustReach(t, g.path, web(webDenied))
	})
}

// A rules change applies to open connections within 2 s: a connection the
// new rules deny is cut (reset), one they allow goes on.
func TestEgressRulesLiveUpdate(t *testing.T) {
	p := newRulesPool(t)
	_, _ = startWebInternet(t)
	theirDNS := netip.AddrPortFrom(inetAddr, 53)
	s := acquire(t, p)
	g := startGuest(t, s)
	setRules(t, s, egress.Rules{AllowOut: []string{"allowed.test", "a.wild.test"}})
	mustResolve(t, g.path, theirDNS, "allowed.test", false)
	mustResolve(t, g.path, theirDNS, "a.wild.test", false)

	open := func(a netip.Addr) *conn {
		c, err := dial(g.path, web(a), 5*time.Second)
		if err != nil {
			t.Fatalf("guest -> %s: %v", a, err)
		}
		t.Cleanup(func() { c.Close() })
		if _, _, err := c.hello(); err != nil {
			t.Fatal(err)
		}
		if err := c.echo("before", 2*time.Second); err != nil {
			t.Fatal(err)
		}
		return c
	}
	stays, cut := open(webAllowed), open(webWildA)
	// Kept-alive HTTP connections through the name check: to a.wild.test
	// (cut below) and allowed.test (kept).
	keptAlive := func(a netip.Addr, host string) func() error {
		hc, err := dial(g.path, netip.AddrPortFrom(a, 80), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { hc.Close() })
		get := func() error {
			_ = hc.SetDeadline(time.Now().Add(2 * time.Second))
			if _, err := fmt.Fprintf(hc, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host); err != nil {
				return err
			}
			resp, err := http.ReadResponse(hc.r, nil)
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return err
		}
		if err := get(); err != nil {
			t.Fatalf("HTTP through the name check: %v", err)
		}
		return get
	}
	get, getKept := keptAlive(webWildA, "a.wild.test"), keptAlive(webAllowed, "allowed.test")

	steps := []struct {
		name  string
		rules egress.Rules
	}{
		{"drop a name", egress.Rules{AllowOut: []string{"allowed.test"}}},
		{"same rules again", egress.Rules{AllowOut: []string{"allowed.test"}}},
	}
	for i, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			setRules(t, s, st.rules)
			if err := stays.echo("after "+st.name, 2*time.Second); err != nil {
				t.Errorf("allowed connection after the change: %v", err)
			}
			if err := getKept(); err != nil {
				t.Errorf("allowed HTTP connection after the change: %v", err)
			}
			if i == 0 {
				err := cut.echo("after", 2*time.Second)
				if err == nil {
					t.Fatal("the denied connection still echoes after the change")
				}
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Errorf("denied connection: %v; want it reset, not left hanging", err)
				}
				t.Logf("denied connection: %v", err)
				mustNotReach(t, g.path, web(webWildA))
				if err := get(); err == nil {
					t.Error("the kept-alive HTTP connection to a name no longer allowed still answers")
				} else {
					t.Logf("HTTP connection: %v", err)
				}
			}
		})
	}
	t.Run("deny everything", func(t *testing.T) {
		setRules(t, s, egress.Closed())
		if err := stays.echo("closed", 2*time.Second); err == nil {
			t.Fatal("connection survives egress.Closed")
		}
		mustNotResolve(t, g.path, theirDNS, "allowed.test", false)
	})
	t.Run("destroy stops the resolver", func(t *testing.T) {
		setRules(t, s, egress.Rules{AllowOut: []string{"allowed.test"}})
		if err := p.Destroy(context.Background(), s); err != nil {
			t.Fatal(err)
		}
		s.mu.Lock()
		res := s.res
		s.mu.Unlock()
		if res != nil {
			t.Error("a destroyed slot keeps its resolver")
		}
		s2 := acquire(t, p)
		if r := s2.Rules(); !r.Equal(egress.Closed()) || s2.Egress() {
			t.Errorf("new slot's rules: %+v", r)
		}
	})
}

// An agent that restarts claims its slots back and sets their recorded
// rules again: the guest's open connections and what the resolver had
// learned stay, and a later change applies as usual.
func TestEgressRulesSurviveAgentRestart(t *testing.T) {
	testenv.RequireRoot(t)
	ctx := context.Background()
	cfg := testConfig(t)
	cfg.DNSUpstream = []netip.AddrPort{netip.AddrPortFrom(inetAddr, 53)}
	cfg.DenyEgress = []netip.Prefix{}
	old, err := NewPool(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = startWebInternet(t)
	theirDNS := netip.AddrPortFrom(inetAddr, 53)
	live := acquire(t, old)
	g := startGuest(t, live)
	rules := egress.Rules{AllowOut: []string{"allowed.test", "*.wild.test"}}
	setRules(t, live, rules)
	mustResolve(t, g.path, theirDNS, "allowed.test", false)
	mustResolve(t, g.path, theirDNS, "a.wild.test", false)
	c, err := dial(g.path, web(webAllowed), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.hello(); err != nil {
		t.Fatal(err)
	}
	old.crash()
	live.closeResolver() // the dead agent's sockets die with it

	p := newTestPool(t, func(c *Config) {
		c.KeepSlots = true
		c.DNSUpstream = cfg.DNSUpstream
		c.DenyEgress = cfg.DenyEgress
	})
	s, err := p.Claim(live.Index)
	if err != nil {
		t.Fatal(err)
	}
	setRules(t, s, rules)
	t.Run("open connections and learned addresses stay", func(t *testing.T) {
		if err := c.echo("after the restart", 2*time.Second); err != nil {
			t.Fatalf("open connection: %v", err)
		}
		mustReach(t, g.path, web(webWildA)) // resolved before the restart
		mustNotReach(t, g.path, web(webWildB))
	})
	t.Run("the resolver answers again", func(t *testing.T) {
		mustResolve(t, g.path, theirDNS, "b.wild.test", false)
		mustReach(t, g.path, web(webWildB))
		mustNotResolve(t, g.path, theirDNS, "denied.test", false)
	})
	t.Run("a change applies", func(t *testing.T) {
		setRules(t, s, egress.Rules{AllowOut: []string{"b.wild.test"}})
		if err := c.echo("after the change", 2*time.Second); err == nil {
			t.Fatal("the connection to a name no longer allowed survives the change")
		}
		mustReach(t, g.path, web(webWildB))
	})
}
