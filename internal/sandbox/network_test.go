package sandbox_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/egress"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/testenv"
)

// The egress test's internet: namespace cegr-inet behind the host's veth
// cegrinet (198.19.4.1 host, 198.19.4.2 there), with the "public"
// addresses of 198.19.5.0/24 and a private one (192.168.252.1) on its
// loopback, routed from the host. Every address answers HTTP on :80 with
// "web-<addr> <Host>", greets with "web-<addr>" on :81 and echoes lines on
// :82; 198.19.4.2:53 is a DNS server that knows eNames.
const (
	eInetNS   = "cegrx-inet"
	eInetIf   = "cegrinet"
	eHostSide = "198.19.4.1"
	eDNS      = "198.19.4.2"
	eAllowed  = "198.19.5.1" // allowed.test
	eDenied   = "198.19.5.2" // denied.test
	eCIDR     = "198.19.5.3" // no name
	ePrivate  = "192.168.252.1"
)

var eNames = map[string]string{"allowed.test": eAllowed, "denied.test": eDenied}

// inNS runs fn on a thread in the named namespace; sockets it opens stay
// there.
func inNS(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func startEgressInternet(t *testing.T) {
	t.Helper()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	_ = exec.Command("ip", "link", "del", eInetIf).Run()
	_ = exec.Command("ip", "netns", "del", eInetNS).Run()
	run("ip", "netns", "add", eInetNS)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", eInetIf).Run()
		_ = exec.Command("ip", "netns", "del", eInetNS).Run()
	})
	run("ip", "link", "add", eInetIf, "type", "veth", "peer", "name", "eth0", "netns", eInetNS)
	run("ip", "addr", "add", eHostSide+"/30", "dev", eInetIf)
	run("ip", "link", "set", eInetIf, "up")
	run("ip", "-n", eInetNS, "addr", "add", eDNS+"/30", "dev", "eth0")
	run("ip", "-n", eInetNS, "link", "set", "eth0", "up")
	run("ip", "-n", eInetNS, "link", "set", "lo", "up")
	webs := []string{eAllowed, eDenied, eCIDR, ePrivate}
	for _, a := range webs {
		run("ip", "-n", eInetNS, "addr", "add", a+"/32", "dev", "lo")
	}
	run("ip", "route", "add", "198.19.5.0/24", "via", eDNS, "dev", eInetIf)
	run("ip", "route", "add", ePrivate+"/32", "via", eDNS, "dev", eInetIf)

	var (
		lns []io.Closer
		wg  sync.WaitGroup
	)
	t.Cleanup(func() {
		for _, l := range lns {
			l.Close()
		}
		wg.Wait()
	})
	serveTCP := func(addr string, handle func(net.Conn)) {
		var ln net.Listener
		if err := inNS(eInetNS, func() (err error) { ln, err = net.Listen("tcp4", addr); return err }); err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		wg.Go(func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Go(func() {
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(time.Minute))
					handle(c)
				})
			}
		})
	}
	for _, a := range webs {
		serveTCP(a+":80", func(c net.Conn) {
			req, err := http.ReadRequest(bufio.NewReader(c))
			if err != nil {
				return
			}
			body := fmt.Sprintf("web-%s %s\n", a, req.Host)
			fmt.Fprintf(c, "HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		})
		serveTCP(a+":81", func(c net.Conn) { fmt.Fprintf(c, "web-%s\n", a) })
		serveTCP(a+":82", func(c net.Conn) { _, _ = io.Copy(c, c) })
	}
	var uc *net.UDPConn
	if err := inNS(eInetNS, func() (err error) {
		uc, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(eDNS), Port: 53})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	lns = append(lns, uc)
	wg.Go(func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := uc.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if out := dnsAnswer(buf[:n]); out != nil {
				_, _ = uc.WriteToUDPAddrPort(out, from)
			}
		}
	})
}

// dnsAnswer answers A queries for eNames, NXDOMAIN for other names.
func dnsAnswer(q []byte) []byte {
	var p dnsmessage.Parser
	h, err := p.Start(q)
	if err != nil {
		return nil
	}
	qs, err := p.AllQuestions()
	if err != nil || len(qs) != 1 {
		return nil
	}
	a, ok := eNames[egress.Canonical(qs[0].Name.String())]
	rh := dnsmessage.Header{ID: h.ID, Response: true, Authoritative: true, RecursionDesired: h.RecursionDesired, RecursionAvailable: true}
	if !ok {
		rh.RCode = dnsmessage.RCodeNameError
	}
	b := dnsmessage.NewBuilder(nil, rh)
	_ = b.StartQuestions()
	_ = b.Question(qs[0])
	if ok && qs[0].Type == dnsmessage.TypeA {
		_ = b.StartAnswers()
		_ = b.AResource(dnsmessage.ResourceHeader{Name: qs[0].Name, Class: dnsmessage.ClassINET, TTL: 300},
			dnsmessage.AResource{A: netip.MustParseAddr(a).As4()})
	}
	out, _ := b.Finish()
	return out
}

// Egress rules in a real sandbox (minimal: busybox nslookup and nc): names
// and CIDRs, a guest asking resolvers of its own, raw IPs, a live change
// that cuts an open connection within 2 s, pause and resume, and private
// ranges and the host closed whatever the rules.
func TestEgressRulesInSandbox(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "qemu-system-x86_64")
	testenv.RequireCommand(t, "qemu-img")
	testenv.RequireCommand(t, "ip")
	startEgressInternet(t)
	p := hosttest.EgressPool
	p.MaxSlots = 4
	p.DNSUpstream = []netip.AddrPort{netip.MustParseAddrPort(eDNS + ":53")}
	e := &env{t: t, dataDir: t.TempDir(), runDir: t.TempDir()}
	e.pool = hosttest.NewSlots(t, p, nil)
	e.mgr = e.manager(t)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := e.mgr.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := e.pool.Close(ctx); err != nil {
			t.Errorf("close pool: %v", err)
		}
		hosttest.AssertNoVMM(t, e.runDir, e.dataDir)
		hosttest.AssertNoSlots(t, p)
	})
	ctx := testCtx(t, 8*time.Minute)
	info, c := e.create(ctx, sandbox.CreateOptions{Network: &egress.Rules{AllowOut: []string{"allowed.test", eCIDR}}})
	if info.Network.AllowInternet || len(info.Network.AllowOut) != 2 {
		t.Fatalf("created with rules %+v", info.Network)
	}
	run := func(t *testing.T, script string) (string, int) {
		t.Helper()
		res, err := c.Shell(ctx, script)
		if err != nil {
			t.Fatalf("run %q: %v", script, err)
		}
		return string(res.Stdout) + string(res.Stderr), res.ExitCode
	}
	reach := func(t *testing.T, addr string, want bool) {
		t.Helper()
		out, _ := run(t, "nc -w 3 "+addr+" 81 </dev/null")
		if got := strings.Contains(out, "web-"+addr); got != want {
			t.Fatalf("guest -> %s:81: %q, want reached %t", addr, out, want)
		}
	}
	// reachHTTP sends an HTTP request naming host to addr:80.
	reachHTTP := func(t *testing.T, addr, host string, want bool) {
		t.Helper()
		out, _ := run(t, `printf 'GET / HTTP/1.0\r\nHost: `+host+`\r\n\r\n' | nc -w 3 `+addr+` 80`)
		if got := strings.Contains(out, "web-"+addr+" "+host); got != want {
			t.Fatalf("guest -> http://%s (Host %s): %q, want reached %t", addr, host, out, want)
		}
	}
	resolves := func(t *testing.T, name, server string, want bool) {
		t.Helper()
		out, code := run(t, "nslookup "+name+" "+server)
		got := code == 0 && strings.Contains(out, eNames[name])
		if got != want {
			t.Fatalf("nslookup %s %s: exit %d %q, want resolved %t", name, server, code, out, want)
		}
	}

	steps := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"an allowed name resolves and is reachable", func(t *testing.T) {
			reach(t, eAllowed, false) // not before the guest resolves it
			resolves(t, "allowed.test", eDNS, true)
			reach(t, eAllowed, true)
			reach(t, eCIDR, true)
			reachHTTP(t, eAllowed, "allowed.test", true)
		}},
		{"HTTP naming a denied host at an allowed address is refused", func(t *testing.T) {
			reachHTTP(t, eAllowed, "denied.test", false) // a CDN serving both
			reachHTTP(t, eDenied, "allowed.test", false)
		}},
		{"a denied name does not resolve, whatever server the guest asks", func(t *testing.T) {
			resolves(t, "denied.test", eDNS, false)
			resolves(t, "denied.test", "1.1.1.1", false)
			resolves(t, "denied.test", eCIDR, false) // an allowed address
		}},
		{"the raw IP of a denied name is blocked", func(t *testing.T) {
			reach(t, eDenied, false)
		}},
		{"a change cuts an open connection within 2 s", func(t *testing.T) {
			run(t, "rm -f /tmp/echo /tmp/ncdone; setsid sh -c 'while sleep 0.2; do echo x; done | nc "+eAllowed+" 82 >/tmp/echo; echo done >/tmp/ncdone' >/dev/null 2>&1 </dev/null &")
			if out, code := run(t, "for i in $(seq 50); do [ -s /tmp/echo ] && break; sleep 0.1; done; wc -c </tmp/echo"); code != 0 || strings.TrimSpace(out) == "0" {
				t.Fatalf("the connection echoes nothing: %q", out)
			}
			if err := e.mgr.SetNetwork(ctx, info.ID, egress.Rules{AllowOut: []string{eCIDR}}); err != nil {
				t.Fatal(err)
			}
			if out, _ := run(t, "for i in $(seq 20); do [ -e /tmp/ncdone ] && break; sleep 0.1; done; cat /tmp/ncdone"); !strings.Contains(out, "done") {
				t.Fatalf("the denied connection is still open 2 s after the change")
			}
			reach(t, eAllowed, false)
			reach(t, eCIDR, true)
		}},
		{"the rules survive pause and resume", func(t *testing.T) {
			if err := e.mgr.Pause(ctx, info.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := e.mgr.Resume(ctx, info.ID); err != nil {
				t.Fatal(err)
			}
			var err error
			if c, err = e.mgr.Client(info.ID); err != nil {
				t.Fatal(err)
			}
			reach(t, eCIDR, true)
			reach(t, eAllowed, false)
			resolves(t, "allowed.test", eDNS, false)
		}},
		{"private ranges and the host stay closed whatever the rules", func(t *testing.T) {
			if err := e.mgr.SetNetwork(ctx, info.ID, egress.Rules{AllowInternet: true, AllowOut: []string{egress.AllTraffic}}); err != nil {
				t.Fatal(err)
			}
			reach(t, eDenied, true)
			reach(t, ePrivate, false)
			hostLn := listenHost(t) // "198.19.2.1 <port>": also an address of the host
			port := hostLn[strings.LastIndex(hostLn, " ")+1:]
			for _, target := range []string{eHostSide + " " + port, "169.254.169.254 80", "10.0.0.1 80"} {
				if out, _ := run(t, "nc -w 3 "+target+" </dev/null; echo rc=$?"); !strings.Contains(out, "rc=1") {
					t.Fatalf("guest -> %s: %q", target, out)
				}
			}
		}},
		{"bad rules are refused and change nothing", func(t *testing.T) {
			err := e.mgr.SetNetwork(ctx, info.ID, egress.Rules{DenyOut: []string{"300.1.1.1"}})
			if !errors.Is(err, sandbox.ErrInvalid) {
				t.Fatalf("SetNetwork with a bad entry: %v", err)
			}
			got, err := e.mgr.Get(info.ID)
			if err != nil || !got.Network.AllowInternet {
				t.Fatalf("rules after a refused change: %+v %v", got, err)
			}
			reach(t, eDenied, true)
		}},
	}
	for _, st := range steps {
		if !e.step(st.name, st.fn) {
			return
		}
	}
}
