package portfwd

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/testenv"
)

const table = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 00000000:C383 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 1500FEA9:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
   3: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
`

const table6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0000000000000000 100 0 0 10 0
`

func TestParseTable(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []string
	}{
		{"ipv4", table, []string{"127.0.0.1:8080", "0.0.0.0:50051", "169.254.0.21:80"}},
		{"ipv6", table6, []string{"[::1]:3000"}},
		{"header only", strings.SplitN(table, "\n", 2)[0] + "\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls, err := parseTable(strings.NewReader(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, l := range ls {
				got = append(got, l.Addr.String())
			}
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := parseTable(strings.NewReader("h\n 0: zz:1 0 0A\n")); err == nil {
		t.Fatal("malformed address accepted")
	}
}

func TestPlan(t *testing.T) {
	ext := netip.MustParseAddr("169.254.0.21")
	ls := func(s ...string) []Listener {
		var out []Listener
		for _, x := range s {
			out = append(out, Listener{netip.MustParseAddrPort(x)})
		}
		return out
	}
	for _, tc := range []struct {
		name string
		ls   []Listener
		want string
	}{
		{"loopback only", ls("127.0.0.1:8080"), "map[169.254.0.21:8080:127.0.0.1:8080]"},
		{"ipv6 loopback only", ls("[::1]:3000"), "map[169.254.0.21:3000:[::1]:3000]"},
		{"both loopbacks prefer v4", ls("[::1]:3000", "127.0.0.1:3000"), "map[169.254.0.21:3000:127.0.0.1:3000]"},
		{"wildcard too", ls("127.0.0.1:8080", "0.0.0.0:8080"), "map[]"},
		{"v6 wildcard too", ls("127.0.0.1:8080", "[::]:8080"), "map[]"},
		{"external bound by someone", ls("127.0.0.1:8080", "169.254.0.21:8080"), "map[]"},
		{"excluded envd port", ls("127.0.0.1:49983"), "map[]"},
		{"nothing", nil, "map[]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := New(Config{Exclude: []uint16{49983}})
			if got := fmt.Sprint(f.plan(tc.ls, []netip.Addr{ext})); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
}

// TestForwardInNetns runs the forwarder for real in a private network
// namespace (so that the host's sockets and addresses are not involved):
// a server on 127.0.0.1 becomes reachable on the namespace's external
// address, half-closes pass through, and the forward goes away with the
// server.
func TestForwardInNetns(t *testing.T) {
	if os.Getenv("PORTFWD_IN_NETNS") == "1" {
		forwardInNetns(t)
		return
	}
	if os.Geteuid() != 0 {
		testenv.Skip(t, "needs root for a network namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		testenv.Skip(t, "needs unshare(1)")
	}
	cmd := exec.Command("unshare", "--net", os.Args[0], "-test.run=^TestForwardInNetns$", "-test.v")
	cmd.Env = append(os.Environ(), "PORTFWD_IN_NETNS=1")
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestForwardInNetns") {
		t.Fatalf("in the namespace: %v\n%s", err, out)
	}
}

func forwardInNetns(t *testing.T) {
	for _, args := range [][]string{
		{"link", "set", "lo", "up"},
		{"link", "add", "ext0", "type", "veth", "peer", "name", "ext1"},
		{"addr", "add", "10.250.0.2/24", "dev", "ext0"},
		{"link", "set", "ext0", "up"},
		{"link", "set", "ext1", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ext := netip.MustParseAddr("10.250.0.2")
	addrs, err := ExternalAddrs()
	if err != nil || len(addrs) != 1 || addrs[0] != ext {
		t.Fatalf("external addresses %v, %v", addrs, err)
	}
	// An upper-casing line server bound to loopback only.
	srv, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(srv.Addr().(*net.TCPAddr).Port)
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				data, _ := io.ReadAll(c) // until the client's half-close
				_, _ = c.Write([]byte(strings.ToUpper(string(data))))
			}()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	f := New(Config{Interval: 50 * time.Millisecond, Exclude: []uint16{49983}})
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	target := netip.AddrPortFrom(ext, port).String()
	var c net.Conn
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err = net.Dial("tcp", target); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never forwarded: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := c.Write([]byte("hello through the forward")); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(bufio.NewReader(c))
	c.Close()
	if err != nil || string(got) != "HELLO THROUGH THE FORWARD" {
		t.Fatalf("reply %q, %v", got, err)
	}
	// The server goes away: so does the forward.
	srv.Close()
	deadline = time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", target)
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("forward still open after its server closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// A server on the wildcard address is not forwarded (it is reachable
	// already) and can bind its port.
	wild, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	defer wild.Close()
	if err := f.Scan(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	n := len(f.forwards)
	f.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d forwards, want none", n)
	}
}
