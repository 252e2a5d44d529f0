package netslot

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"github.com/google/nftables"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/capsulehq/capsule/internal/egress"
)

// A resolver is a slot's DNS server while its rules name domains (and
// the peeker of its HTTP and HTTPS connections, peek.go). It
// listens on the gateway's port 53 inside the slot's namespace (the dns
// chain sends every DNS query of the guest there, whatever server the
// guest asked), answers NXDOMAIN for names the rules do not allow, and
// forwards the others to Config.DNSUpstream from the host's namespace.
// Before it answers, the addresses in the answer join the slot's set
// "allowed" (with the "deny" default) for the record's TTL, bounded to
// [minLearnTTL, maxLearnTTL]: those are the only addresses besides the
// allowed CIDRs a guest reaches, so knowing a denied name's address
// does not help it. With the "allow" default, a query for a denied name
// is resolved all the same and its addresses join the set "denied".
type resolver struct {
	slot     *Slot
	log      *slog.Logger
	upstream []netip.AddrPort
	ns       *os.File // the slot's namespace, for nftables
	udp      *net.UDPConn
	tcp      *net.TCPListener
	wg       sync.WaitGroup

	connMu  sync.Mutex
	conns   map[net.Conn]struct{} // DNS over TCP
	proxied map[*proxied]struct{} // peek.go
	closed  bool
	peekLns []*net.TCPListener

	// mu guards policy and names, and serializes set updates with
	// SetRules (which holds it while it replaces the sets).
	mu     sync.Mutex
	policy egress.Policy
	names  map[netip.Addr]map[string]time.Time // address → names answered with it → expiry
}

const (
	minLearnTTL     = time.Minute
	maxLearnTTL     = time.Hour
	upstreamTimeout = 3 * time.Second
	tcpIdle         = 10 * time.Second
)

func startResolver(s *Slot) (*resolver, error) {
	r := &resolver{
		slot:     s,
		log:      s.pool.log.With("slot", s.Index, "component", "netslot-dns"),
		upstream: s.pool.cfg.DNSUpstream,
		conns:    map[net.Conn]struct{}{},
		proxied:  map[*proxied]struct{}{},
		names:    map[netip.Addr]map[string]time.Time{},
		policy:   s.policy,
	}
	ns, err := os.Open(s.NetNSPath)
	if err != nil {
		return nil, err
	}
	r.ns = ns
	addr := netip.AddrPortFrom(s.plan.gateway, 53)
	err = inNetNS(s.NetNSPath, func() error {
		var err error
		if r.udp, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(addr)); err != nil {
			return err
		}
		r.tcp, err = net.ListenTCP("tcp4", net.TCPAddrFromAddrPort(addr))
		return err
	})
	if err != nil {
		if r.udp != nil {
			r.udp.Close()
		}
		ns.Close()
		return nil, err
	}
	r.wg.Add(2)
	go r.serveUDP()
	go r.serveTCP()
	if err := r.startPeekers(); err != nil {
		r.close()
		return nil, err
	}
	return r, nil
}

func (r *resolver) close() {
	r.connMu.Lock()
	r.closed = true
	for c := range r.conns {
		c.Close()
	}
	var cut []*proxied
	for p := range r.proxied {
		cut = append(cut, p)
	}
	r.connMu.Unlock()
	for _, p := range cut {
		p.close()
	}
	for _, l := range r.peekLns {
		l.Close()
	}
	r.udp.Close()
	r.tcp.Close()
	r.wg.Wait()
	r.ns.Close()
}

func (r *resolver) serveUDP() {
	defer r.wg.Done()
	buf := make([]byte, 65535)
	for {
		n, from, err := r.udp.ReadFromUDPAddrPort(buf)
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				r.log.Warn("dns read", "err", err)
			}
			return
		}
		q := append([]byte(nil), buf[:n]...)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if resp := r.answer(q, false); resp != nil {
				_, _ = r.udp.WriteToUDPAddrPort(resp, from)
			}
		}()
	}
}

func (r *resolver) serveTCP() {
	defer r.wg.Done()
	for {
		c, err := r.tcp.Accept()
		if err != nil {
			return
		}
		r.connMu.Lock()
		if r.closed {
			r.connMu.Unlock()
			c.Close()
			return
		}
		r.conns[c] = struct{}{}
		r.connMu.Unlock()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			defer func() {
				r.connMu.Lock()
				delete(r.conns, c)
				r.connMu.Unlock()
				c.Close()
			}()
			br := bufio.NewReader(c)
			for {
				_ = c.SetDeadline(time.Now().Add(tcpIdle))
				q, err := readTCPMsg(br)
				if err != nil {
					return
				}
				resp := r.answer(q, true)
				if resp == nil {
					return
				}
				if err := writeTCPMsg(c, resp); err != nil {
					return
				}
			}
		}()
	}
}

func readTCPMsg(rd io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(rd, l[:]); err != nil {
		return nil, err
	}
	m := make([]byte, binary.BigEndian.Uint16(l[:]))
	_, err := io.ReadFull(rd, m)
	return m, err
}

func writeTCPMsg(w io.Writer, m []byte) error {
	b := make([]byte, 2+len(m))
	binary.BigEndian.PutUint16(b, uint16(len(m)))
	copy(b[2:], m)
	_, err := w.Write(b)
	return err
}

// answer returns the reply to query q (nil: no reply).
func (r *resolver) answer(q []byte, viaTCP bool) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil || h.Response {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 || h.OpCode != 0 {
		return reply(h, qs, dnsmessage.RCodeFormatError)
	}
	name := qs[0].Name.String()
	r.mu.Lock()
	pol := r.policy
	r.mu.Unlock()
	if !pol.NameAllowed(name) {
		if pol.NameDenied(name) && !pol.DenyByDefault && qs[0].Type == dnsmessage.TypeA {
			// Learn the denied name's addresses, so that connecting to
			// them by IP is denied too.
			if resp, err := r.forward(q, viaTCP); err == nil {
				r.learn(name, resp)
			}
		}
		return reply(h, qs, dnsmessage.RCodeNameError)
	}
	if qs[0].Type == dnsmessage.TypeAAAA {
		return reply(h, qs, dnsmessage.RCodeSuccess) // sandboxes have no IPv6
	}
	resp, err := r.forward(q, viaTCP)
	if err != nil {
		r.log.Warn("dns upstream", "name", name, "err", err)
		return reply(h, qs, dnsmessage.RCodeServerFailure)
	}
	if err := r.learn(name, resp); err != nil {
		r.log.Error("dns: add the answer's addresses to the slot's set", "name", name, "err", err)
		return reply(h, qs, dnsmessage.RCodeServerFailure)
	}
	return resp
}

// reply is an answer without records.
func reply(h dnsmessage.Header, qs []dnsmessage.Question, rc dnsmessage.RCode) []byte {
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{
		ID: h.ID, Response: true, OpCode: h.OpCode, RecursionDesired: h.RecursionDesired,
		RecursionAvailable: true, RCode: rc,
	})
	_ = b.StartQuestions()
	for _, q := range qs {
		_ = b.Question(q)
	}
	out, err := b.Finish()
	if err != nil {
		return nil
	}
	return out
}

// forward asks the upstream servers in turn.
func (r *resolver) forward(q []byte, viaTCP bool) ([]byte, error) {
	if len(r.upstream) == 0 {
		return nil, errors.New("no upstream DNS server configured")
	}
	var errs []error
	for _, up := range r.upstream {
		resp, err := exchange(up, q, viaTCP)
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s: %w", up, err))
	}
	return nil, errors.Join(errs...)
}

func exchange(up netip.AddrPort, q []byte, viaTCP bool) ([]byte, error) {
	network := "udp4"
	if viaTCP {
		network = "tcp4"
	}
	c, err := net.DialTimeout(network, up.String(), upstreamTimeout)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(upstreamTimeout))
	if viaTCP {
		if err := writeTCPMsg(c, q); err != nil {
			return nil, err
		}
		return readTCPMsg(c)
	}
	if _, err := c.Write(q); err != nil {
		return nil, err
	}
	buf := make([]byte, 65535)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return nil, err
		}
		if n >= 2 && buf[0] == q[0] && buf[1] == q[1] {
			return append([]byte(nil), buf[:n]...), nil
		}
	}
}

// learn records the IPv4 addresses of answer resp for name and adds them
// to the slot's sets as the current policy says, before the guest gets
// the answer.
func (r *resolver) learn(name string, resp []byte) error {
	var p dnsmessage.Parser
	if _, err := p.Start(resp); err != nil {
		return err
	}
	if err := p.SkipAllQuestions(); err != nil {
		return err
	}
	now := time.Now()
	type rec struct {
		a   netip.Addr
		ttl time.Duration
	}
	var recs []rec
	for {
		h, err := p.AnswerHeader()
		if errors.Is(err, dnsmessage.ErrSectionDone) {
			break
		}
		if err != nil {
			return err
		}
		if h.Type != dnsmessage.TypeA || h.Class != dnsmessage.ClassINET {
			if err := p.SkipAnswer(); err != nil {
				return err
			}
			continue
		}
		ar, err := p.AResource()
		if err != nil {
			return err
		}
		ttl := min(max(time.Duration(h.TTL)*time.Second, minLearnTTL), maxLearnTTL)
		recs = append(recs, rec{netip.AddrFrom4(ar.A), ttl})
	}
	if len(recs) == 0 {
		return nil
	}
	name = egress.Canonical(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	var allow, deny []nftables.SetElement
	for _, x := range recs {
		m := r.names[x.a]
		if m == nil {
			m = map[string]time.Time{}
			r.names[x.a] = m
		}
		if exp := now.Add(x.ttl); exp.After(m[name]) {
			m[name] = exp
		}
		el := nftables.SetElement{Key: x.a.AsSlice(), Timeout: x.ttl}
		switch {
		case r.policy.DenyByDefault && r.policy.NameAllowed(name):
			allow = append(allow, el)
		case !r.policy.DenyByDefault && r.policy.NameDenied(name):
			deny = append(deny, el)
		}
	}
	return r.addElements(allow, deny)
}

// addElements adds (or refreshes the timeout of) elements of the sets;
// r.mu must be held.
func (r *resolver) addElements(allow, deny []nftables.SetElement) error {
	if len(allow) == 0 && len(deny) == 0 {
		return nil
	}
	cc, err := nftables.New(nftables.WithNetNSFd(int(r.ns.Fd())))
	if err != nil {
		return err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: r.slot.pool.cfg.Name}
	for name, els := range map[string][]nftables.SetElement{setAllowed: allow, setDenied: deny} {
		if len(els) == 0 {
			continue
		}
		set := learnedSet(t, name)
		// Add (a no-op when present), delete, add: the element ends up
		// with the new timeout whether it existed or not.
		keys := make([]nftables.SetElement, len(els))
		for i, e := range els {
			keys[i] = nftables.SetElement{Key: e.Key, Timeout: e.Timeout}
		}
		_ = cc.SetAddElements(set, keys)
		_ = cc.SetDeleteElements(set, keys)
		_ = cc.SetAddElements(set, els)
	}
	return cc.Flush()
}

// learnedLocked computes the learned sets' content under r.policy,
// forgetting expired answers; r.mu must be held.
func (r *resolver) learnedLocked() *learned {
	now := time.Now()
	l := &learned{allowed: map[netip.Addr]time.Duration{}, denied: map[netip.Addr]time.Duration{}}
	for a, m := range r.names {
		var allowTill, denyTill time.Time
		for name, exp := range m {
			if !exp.After(now) {
				delete(m, name)
				continue
			}
			if r.policy.DenyByDefault && r.policy.NameAllowed(name) && exp.After(allowTill) {
				allowTill = exp
			}
			if !r.policy.DenyByDefault && r.policy.NameDenied(name) && exp.After(denyTill) {
				denyTill = exp
			}
		}
		if len(m) == 0 {
			delete(r.names, a)
			continue
		}
		if !allowTill.IsZero() {
			l.allowed[a] = allowTill.Sub(now).Round(time.Second) + time.Second
		}
		if !denyTill.IsZero() {
			l.denied[a] = denyTill.Sub(now).Round(time.Second) + time.Second
		}
	}
	return l
}
