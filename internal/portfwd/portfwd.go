package portfwd

import (
	"bufio"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Config configures a Forwarder.
type Config struct {
	// Interval between scans (default 1 s).
	Interval time.Duration
	// Exclude lists ports never forwarded (envd's own).
	Exclude []uint16
	// ProcNet is the directory of the socket tables (default /proc/net).
	ProcNet string
	// Addrs returns the external addresses to listen on (default: every
	// IPv4 address of every interface but the loopback ones).
	Addrs func() ([]netip.Addr, error)
	Log   *slog.Logger
}

// Forwarder relays external connections to loopback-only listeners.
type Forwarder struct {
	cfg     Config
	log     *slog.Logger
	exclude map[uint16]bool

	mu       sync.Mutex
	forwards map[forwardKey]*forward
	wg       sync.WaitGroup
}

type forwardKey struct {
	addr netip.Addr
	port uint16
}

func (k forwardKey) String() string { return netip.AddrPortFrom(k.addr, k.port).String() }

type forward struct {
	ln     net.Listener
	target netip.AddrPort
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
}

// New returns a Forwarder; Run starts it.
func New(cfg Config) *Forwarder {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.ProcNet == "" {
		cfg.ProcNet = "/proc/net"
	}
	if cfg.Addrs == nil {
		cfg.Addrs = ExternalAddrs
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	f := &Forwarder{cfg: cfg, log: cfg.Log.With("component", "portfwd"), exclude: map[uint16]bool{}, forwards: map[forwardKey]*forward{}}
	for _, p := range cfg.Exclude {
		f.exclude[p] = true
	}
	return f
}

// Run scans until ctx ends, then closes every forward and waits for its
// connections to finish.
func (f *Forwarder) Run(ctx context.Context) error {
	t := time.NewTicker(f.cfg.Interval)
	defer t.Stop()
	defer f.closeAll()
	for {
		if err := f.Scan(ctx); err != nil {
			f.log.WarnContext(ctx, "scan", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Scan runs one scan: starts the forwards that are missing and closes
// those whose loopback listener is gone.
func (f *Forwarder) Scan(ctx context.Context) error {
	ls, err := Listeners(f.cfg.ProcNet)
	if err != nil {
		return err
	}
	addrs, err := f.cfg.Addrs()
	if err != nil {
		return fmt.Errorf("external addresses: %w", err)
	}
	want := f.plan(ls, addrs)
	f.mu.Lock()
	defer f.mu.Unlock()
	for k, fw := range f.forwards {
		if t, ok := want[k]; !ok || t != fw.target {
			f.log.InfoContext(ctx, "forward closed", "addr", k.addr, "port", k.port)
			fw.close()
			delete(f.forwards, k)
		}
	}
	for k, target := range want {
		if _, ok := f.forwards[k]; ok {
			continue
		}
		ln, err := net.Listen("tcp4", netip.AddrPortFrom(k.addr, k.port).String())
		if err != nil {
			// Someone else bound it between the scan and now; the next
			// scan sees that listener.
			f.log.DebugContext(ctx, "forward listen", "addr", k.addr, "port", k.port, "err", err)
			continue
		}
		fw := &forward{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
		f.forwards[k] = fw
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.serve(fw)
		}()
		f.log.InfoContext(ctx, "forward opened", "addr", k.addr, "port", k.port, "target", target)
	}
	return nil
}

// plan decides the forwards: for each port listened on by a loopback
// address only, each external address that has no listener of its own on
// that port (ours excepted) forwards to the loopback listener.
func (f *Forwarder) plan(ls []Listener, addrs []netip.Addr) map[forwardKey]netip.AddrPort {
	type portInfo struct {
		loopback  netip.AddrPort
		hasLoop   bool
		wildcard  bool
		boundAddr map[netip.Addr]bool
	}
	ports := map[uint16]*portInfo{}
	for _, l := range ls {
		p := l.Addr.Port()
		if f.exclude[p] {
			continue
		}
		pi := ports[p]
		if pi == nil {
			pi = &portInfo{boundAddr: map[netip.Addr]bool{}}
			ports[p] = pi
		}
		a := l.Addr.Addr().Unmap()
		switch {
		case a.IsUnspecified():
			pi.wildcard = true
		case a.IsLoopback():
			// Prefer an IPv4 loopback target when there are both.
			if !pi.hasLoop || (a.Is4() && !pi.loopback.Addr().Is4()) {
				pi.loopback, pi.hasLoop = netip.AddrPortFrom(a, p), true
			}
		default:
			pi.boundAddr[a] = true
		}
	}
	f.mu.Lock()
	ours := map[forwardKey]bool{}
	for k := range f.forwards {
		ours[k] = true
	}
	f.mu.Unlock()
	want := map[forwardKey]netip.AddrPort{}
	for p, pi := range ports {
		if !pi.hasLoop || pi.wildcard {
			continue
		}
		for _, a := range addrs {
			k := forwardKey{a, p}
			if pi.boundAddr[a] && !ours[k] {
				continue
			}
			want[k] = pi.loopback
		}
	}
	return want
}

func (f *Forwarder) serve(fw *forward) {
	for {
		c, err := fw.ln.Accept()
		if err != nil {
			return
		}
		if !fw.track(c) {
			c.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer fw.untrack(c)
			relay(c, fw.target)
		}()
	}
}

func (fw *forward) track(c net.Conn) bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.conns == nil {
		return false
	}
	fw.conns[c] = struct{}{}
	return true
}

func (fw *forward) untrack(c net.Conn) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	delete(fw.conns, c)
}

// close stops accepting and drops the forward's connections (their
// target is gone).
func (fw *forward) close() {
	fw.ln.Close()
	fw.mu.Lock()
	defer fw.mu.Unlock()
	for c := range fw.conns {
		c.Close()
	}
	fw.conns = nil
}

func (f *Forwarder) closeAll() {
	f.mu.Lock()
	for k, fw := range f.forwards {
		fw.close()
		delete(f.forwards, k)
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// relay copies both ways between c and a new connection to target,
// passing half-closes on.
func relay(c net.Conn, target netip.AddrPort) {
	defer c.Close()
	d := net.Dialer{Timeout: 5 * time.Second}
	t, err := d.Dial("tcp", target.String())
	if err != nil {
		return
	}
	defer t.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		} else {
			dst.Close()
		}
		done <- struct{}{}
	}
	go pipe(t, c)
	go pipe(c, t)
	<-done
	<-done
}

// Listener is a listening TCP socket of the kernel's tables.
type Listener struct {
	Addr netip.AddrPort
}

// tcpListen is the state column's value for LISTEN.
const tcpListen = "0A"

// Listeners reads the listening sockets of /proc/net/tcp and tcp6 under
// procNet (a missing tcp6 table is fine: no IPv6).
func Listeners(procNet string) ([]Listener, error) {
	var out []Listener
	for _, name := range []string{"tcp", "tcp6"} {
		fh, err := os.Open(filepath.Join(procNet, name))
		if errors.Is(err, os.ErrNotExist) && name == "tcp6" {
			continue
		}
		if err != nil {
			return nil, err
		}
		ls, err := parseTable(fh)
		fh.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		out = append(out, ls...)
	}
	return out, nil
}

// parseTable reads one /proc/net/tcp{,6} table.
func parseTable(r io.Reader) ([]Listener, error) {
	var out []Listener
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || fields[3] != tcpListen {
			continue
		}
		ap, err := parseAddrPort(fields[1])
		if err != nil {
			return nil, err
		}
		out = append(out, Listener{Addr: ap})
	}
	return out, sc.Err()
}

// parseAddrPort decodes "0100007F:1F90": the address is in the kernel's
// byte order word by word (little-endian 32-bit words here), the port in
// big-endian hex.
func parseAddrPort(s string) (netip.AddrPort, error) {
	hexAddr, hexPort, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("malformed address %q", s)
	}
	port, err := strconv.ParseUint(hexPort, 16, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("malformed port %q", s)
	}
	raw, err := hex.DecodeString(hexAddr)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, fmt.Errorf("malformed address %q", s)
	}
	for i := 0; i < len(raw); i += 4 {
		raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	a, _ := netip.AddrFromSlice(raw)
	return netip.AddrPortFrom(a, uint16(port)), nil
}

// ExternalAddrs returns the IPv4 addresses of the machine's interfaces
// that are not loopback addresses.
func ExternalAddrs() ([]netip.Addr, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, ia := range ifAddrs {
		pfx, err := netip.ParsePrefix(ia.String())
		if err != nil {
			continue
		}
		if a := pfx.Addr().Unmap(); a.Is4() && !a.IsLoopback() {
			out = append(out, a)
		}
	}
	return out, nil
}
