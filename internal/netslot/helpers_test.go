package netslot

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/testenv"
)

// Test names and ranges never collide with a running agent's: pool
// "cnst" (namespaces cnst-<n>, table cnst), host interfaces cnv<n>, and
// 198.18.0.0/15 (RFC 2544 benchmarking), which is only used inside
// namespaces and interfaces these tests create. Helper namespaces are
// "cnstx-*", the fake internet's host interface "cnsx0".
const (
	testName     = "cnst"
	testVeth     = "cnv"
	testHelperNS = "cnstx-"
	inetHostIf   = "cnsx0"
)

var (
	testHostCIDR = netip.MustParsePrefix("198.18.0.0/24")
	testLinkCIDR = netip.MustParsePrefix("198.18.1.0/24")
	// The fake internet: a namespace behind a veth from the host.
	inetNet      = netip.MustParsePrefix("198.19.0.0/30")
	inetHostAddr = netip.MustParseAddr("198.19.0.1")
	inetAddr     = netip.MustParseAddr("198.19.0.2")
)

func testConfig(t *testing.T) Config {
	return Config{
		Name:       testName,
		VethPrefix: testVeth,
		HostCIDR:   testHostCIDR,
		LinkCIDR:   testLinkCIDR,
		MaxSlots:   60,
		Logger:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
}

// newTestPool needs root and returns a pool that is closed at the end.
func newTestPool(t *testing.T, mod func(*Config)) *Pool {
	t.Helper()
	testenv.RequireRoot(t)
	cfg := testConfig(t)
	if mod != nil {
		mod(&cfg)
	}
	p, err := NewPool(context.Background(), cfg)
	if err != nil {
		t.Fatalf("NewPool: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(context.Background()); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func acquire(t *testing.T, p *Pool) *Slot {
	t.Helper()
	s, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	return s
}

// helperNS creates a test namespace (removing a leftover of the same
// name) and deletes it at the end of the test.
func helperNS(t *testing.T, name string) string {
	t.Helper()
	path := netnsPath(testHelperNS + name)
	if err := deleteNetNS(path); err != nil {
		t.Fatal(err)
	}
	if _, err := createNetNS(testHelperNS + name); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := deleteNetNS(path); err != nil {
			t.Error(err)
		}
	})
	return path
}

// guest emulates a VM on a slot without one: the slot's TAP is opened
// with OpenTap, as a VMM would, and its frames are copied to and from a
// TAP "eth0" in a guest namespace configured from the slot (address,
// gateway, MAC). The guest namespace's own kernel stack is the guest.
type guest struct {
	slot *Slot
	path string
}

func startGuest(t *testing.T, s *Slot) *guest {
	t.Helper()
	vm, err := s.OpenTap()
	if err != nil {
		t.Fatalf("OpenTap: %v", err)
	}
	g := &guest{slot: s, path: helperNS(t, "g"+strconv.Itoa(s.Index))}
	var eth *os.File
	err = inNetNS(g.path, func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(lo); err != nil {
			return err
		}
		fd, _, err := tunAttach("eth0")
		if err != nil {
			return err
		}
		eth = nonblockingFile(fd, "guest-eth0")
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		mac, _ := net.ParseMAC(s.MAC)
		if err := netlink.LinkSetHardwareAddr(link, mac); err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(s.GuestAddr, s.Prefix)}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: net.IP(s.Gateway.AsSlice())})
	})
	if err != nil {
		vm.Close()
		t.Fatalf("configure guest: %v", err)
	}
	// Copy frames both ways, as the VMM and the guest's virtio-net would.
	fd, err := unix.Dup(int(vm.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	vm.Close()
	slotEnd := nonblockingFile(fd, "slot-tap0")
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); copyFrames(eth, slotEnd) }()
	go func() { defer wg.Done(); copyFrames(slotEnd, eth) }()
	t.Cleanup(func() {
		slotEnd.Close()
		eth.Close()
		wg.Wait()
	})
	return g
}

func nonblockingFile(fd int, name string) *os.File {
	if err := unix.SetNonblock(fd, true); err != nil {
		panic(err)
	}
	return os.NewFile(uintptr(fd), name) // pollable: Close interrupts Read
}

func copyFrames(dst, src *os.File) {
	buf := make([]byte, 65536)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if _, err := dst.Write(buf[:n]); errors.Is(err, os.ErrClosed) {
			return
		}
	}
}

// internet is a namespace standing for the outside world, routed from
// the host through the veth inetHostIf: 198.19.0.1 (host) - 198.19.0.2.
type internet struct{ path string }

func startInternet(t *testing.T) *internet {
	t.Helper()
	if err := deleteLink(inetHostIf); err != nil {
		t.Fatal(err)
	}
	in := &internet{path: helperNS(t, "inet")}
	nsfd, err := unix.Open(in.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(nsfd)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: inetHostIf}, PeerName: "eth0", PeerNamespace: netlink.NsFd(nsfd)}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create %s: %v", inetHostIf, err)
	}
	t.Cleanup(func() {
		if err := deleteLink(inetHostIf); err != nil {
			t.Error(err)
		}
	})
	link, err := netlink.LinkByName(inetHostIf)
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: ipNet(inetHostAddr, inetNet.Bits())}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	err = inNetNS(in.path, func() error {
		for _, name := range []string{"lo", "eth0"} {
			l, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			if name == "eth0" {
				if err := netlink.AddrAdd(l, &netlink.Addr{IPNet: ipNet(inetAddr, inetNet.Bits())}); err != nil {
					return err
				}
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("configure internet: %v", err)
	}
	return in
}

// serve listens on addr in the namespace at nsPath ("" = the host's) and
// answers every connection with "<ident> <remote address>\n", then echoes
// lines until the client closes.
func serve(t *testing.T, nsPath, addr, ident string) {
	t.Helper()
	var ln net.Listener
	listen := func() error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}
	var err error
	if nsPath == "" {
		err = listen()
	} else {
		err = inNetNS(nsPath, listen)
	}
	if err != nil {
		t.Fatalf("listen %s: %v", addr, err)
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				fmt.Fprintf(c, "%s %s\n", ident, c.RemoteAddr())
				io.Copy(c, c)
			}()
		}
	}()
}

// conn is a client connection to serve.
type conn struct {
	net.Conn
	r *bufio.Reader
}

// hello is the server's first line: ident and the client address it saw.
func (c *conn) hello() (ident, remote string, err error) {
	line, err := c.r.ReadString('\n')
	if err != nil {
		return "", "", err
	}
	ident, remote, _ = strings.Cut(strings.TrimSpace(line), " ")
	return ident, remote, nil
}

// echo sends a line and checks it comes back within d.
func (c *conn) echo(s string, d time.Duration) error {
	c.SetDeadline(time.Now().Add(d))
	if _, err := fmt.Fprintln(c, s); err != nil {
		return err
	}
	line, err := c.r.ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != s {
		return fmt.Errorf("echo %q, got %q", s, line)
	}
	return nil
}

// dial connects from the namespace at nsPath ("" = the host's).
func dial(nsPath string, addr netip.AddrPort, timeout time.Duration) (*conn, error) {
	var c net.Conn
	d := func() error {
		var err error
		c, err = (&net.Dialer{Timeout: timeout}).Dial("tcp4", addr.String())
		return err
	}
	var err error
	if nsPath == "" {
		err = d()
	} else {
		err = inNetNS(nsPath, d)
	}
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	return &conn{Conn: c, r: bufio.NewReader(c)}, nil
}

// mustReach dials addr from nsPath and returns the server's hello.
func mustReach(t *testing.T, from string, addr netip.AddrPort) (ident, remote string) {
	t.Helper()
	c, err := dial(from, addr, 5*time.Second)
	if err != nil {
		t.Fatalf("%s -> %s: %v", nsLabel(from), addr, err)
	}
	defer c.Close()
	ident, remote, err = c.hello()
	if err != nil {
		t.Fatalf("%s -> %s: read: %v", nsLabel(from), addr, err)
	}
	return ident, remote
}

// mustNotReach checks that no connection (and no byte) gets from nsPath
// to addr.
func mustNotReach(t *testing.T, from string, addr netip.AddrPort) {
	t.Helper()
	c, err := dial(from, addr, 700*time.Millisecond)
	if err != nil {
		t.Logf("%s -> %s blocked: %v", nsLabel(from), addr, err)
		return
	}
	defer c.Close()
	ident, _, _ := c.hello()
	t.Errorf("%s -> %s: connected (server %q), want blocked", nsLabel(from), addr, ident)
}

func nsLabel(path string) string {
	if path == "" {
		return "host"
	}
	return path
}

// leftovers lists what the test pool may have left on the host.
func leftovers(t *testing.T) []string {
	t.Helper()
	var out []string
	ns, err := listNetNS(testName)
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range ns {
		out = append(out, fmt.Sprintf("netns %s-%d", testName, i))
	}
	links, err := hostLinks(Config{VethPrefix: testVeth})
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range links {
		out = append(out, fmt.Sprintf("link %s%d", testVeth, i))
	}
	if hostTableExists(t) {
		out = append(out, "nftables table ip "+testName)
	}
	return out
}

func hostTableExists(t *testing.T) bool {
	t.Helper()
	cc, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tables, err := cc.ListTablesOfFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	for _, tb := range tables {
		if tb.Name == testName {
			return true
		}
	}
	return false
}

// openFDs counts this process's descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	e, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(e)
}

// connectAs runs a process as user uid (and group gid) on the host that
// opens a TCP connection to addr and reads the first line; it returns
// that line or the process's error output. It is how another local user,
// not the agent, would try to reach a guest.
func connectAs(t *testing.T, uid, gid uint32, addr netip.AddrPort) (string, error) {
	t.Helper()
	bash := testenv.RequireCommand(t, "bash")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	script := fmt.Sprintf("exec 3<>/dev/tcp/%s/%d && head -n1 <&3", addr.Addr(), addr.Port())
	cmd := exec.CommandContext(ctx, bash, "-c", script)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%w: %s", err, strings.TrimSpace(string(out)))
	}
	return strings.TrimSpace(string(out)), nil
}
