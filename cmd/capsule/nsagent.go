package main

import (
	"bytes"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// nsAgent is a `capsule agent` process in a network namespace of its own,
// linked to the machine by a veth pair (a /30: the machine's end is where
// the agent reaches the control plane, the agent's end its declared
// address), with its own data directory and network slot pool: one host
// of a cluster simulated on one machine (`capsule bench hosts` and the
// cluster test).
type nsAgent struct {
	n        int
	ns       string
	hostVeth string
	peerVeth string
	hostIP   netip.Addr // the machine's end of the link
	ip       netip.Addr // the agent's end: its declared address
	data     string
	slots    nsSlotNet

	mu   sync.Mutex
	cmd  *exec.Cmd
	log  *bytes.Buffer
	done chan struct{}
}

// nsSlotNet is an agent's network slot pool (its -net-* flags).
type nsSlotNet struct {
	name               string
	hostCIDR, linkCIDR netip.Prefix
}

// newNSAgent makes agent n's namespace (nsPrefix+n) and link (vethPrefix+n
// "h" and "a", the n-th /30 of links), removing leftovers of a crashed run
// first. Its data directory is root/agentN.
func newNSAgent(root string, n int, links netip.Prefix, nsPrefix, vethPrefix string, slots nsSlotNet) (*nsAgent, error) {
	base := links.Addr().As4()
	base[3] = byte(4 * n)
	net30 := netip.AddrFrom4(base)
	a := &nsAgent{n: n, ns: fmt.Sprintf("%s%d", nsPrefix, n), hostVeth: fmt.Sprintf("%s%dh", vethPrefix, n),
		peerVeth: fmt.Sprintf("%s%da", vethPrefix, n), hostIP: net30.Next(), ip: net30.Next().Next(),
		data: filepath.Join(root, fmt.Sprintf("agent%d", n)), slots: slots}
	a.remove()
	steps := [][]string{
		{"netns", "add", a.ns},
		{"link", "add", a.hostVeth, "type", "veth", "peer", "name", a.peerVeth},
		{"link", "set", a.peerVeth, "netns", a.ns},
		{"addr", "add", a.hostIP.String() + "/30", "dev", a.hostVeth},
		{"link", "set", a.hostVeth, "up"},
		{"-n", a.ns, "addr", "add", a.ip.String() + "/30", "dev", a.peerVeth},
		{"-n", a.ns, "link", "set", a.peerVeth, "up"},
		{"-n", a.ns, "link", "set", "lo", "up"},
		{"-n", a.ns, "route", "add", "default", "via", a.hostIP.String()},
	}
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			a.remove()
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return a, nil
}

// address is the agent's declared HOST:PORT.
func (a *nsAgent) address() string { return a.ip.String() + ":7070" }

// remove deletes the link and the namespace (stop the agent first).
func (a *nsAgent) remove() {
	_ = exec.Command("ip", "link", "del", a.hostVeth).Run()
	_ = exec.Command("ip", "netns", "del", a.ns).Run()
	// An agent killed last (SIGKILL) left its slots' namespaces, which
	// its next start would have cleaned.
	if out, err := exec.Command("ip", "netns", "list").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			if name, _, _ := strings.Cut(line, " "); strings.HasPrefix(name, a.slots.name+"-") {
				_ = exec.Command("ip", "netns", "del", name).Run()
			}
		}
	}
}

// setLink takes the link to the machine up or down (down: the control
// plane and the agent cannot reach each other).
func (a *nsAgent) setLink(up bool) error {
	state := "down"
	if up {
		state = "up"
	}
	if out, err := exec.Command("ip", "link", "set", a.hostVeth, state).CombinedOutput(); err != nil {
		return fmt.Errorf("ip link set %s %s: %v: %s", a.hostVeth, state, err, out)
	}
	return nil
}

// start runs `capsule agent` (bin) in the namespace against the control
// plane at cpURL, registering with token unless it is empty; extra are
// more agent flags. The agent joins the namespace with nsenter (setns,
// then exec: the process is the agent's), keeping the machine's mount
// namespace: the slot namespaces it bind-mounts outlive it, so that an
// agent started again after a SIGKILL finds its sandboxes' networks (`ip
// netns exec` would give each agent process a mount namespace of its own,
// whose mounts die with it).
func (a *nsAgent) start(bin, cpURL, token, imagesDir string, extra ...string) error {
	args := []string{"--net=/run/netns/" + a.ns, bin, "agent", "--control-plane", cpURL, "--address", a.address(),
		"--data-dir", a.data, "--run-dir", a.data + "-run", "--images-dir", imagesDir,
		"--net-name", a.slots.name, "--net-host-cidr", a.slots.hostCIDR.String(), "--net-link-cidr", a.slots.linkCIDR.String()}
	if token != "" {
		args = append(args, "--register", token)
	}
	args = append(args, extra...)
	cmd := exec.Command("nsenter", args...)
	cmd.Env = os.Environ()
	log := &bytes.Buffer{}
	w := &lockedBuffer{mu: &a.mu, b: log}
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	a.mu.Lock()
	a.cmd, a.log, a.done = cmd, log, done
	a.mu.Unlock()
	return nil
}

// lockedBuffer is a writer into b under mu.
type lockedBuffer struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// logText is what the running (or last) agent process wrote.
func (a *nsAgent) logText() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.log == nil {
		return ""
	}
	return a.log.String()
}

// exited returns a channel closed when the agent process exits.
func (a *nsAgent) exited() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.done
}

// exitCode is the exited process's status (-1 while it runs).
func (a *nsAgent) exitCode() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.cmd == nil || a.cmd.ProcessState == nil {
		return -1
	}
	return a.cmd.ProcessState.ExitCode()
}

// kill sends SIGKILL to the agent and waits for it.
func (a *nsAgent) kill() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop stops the agent as an operator does (SIGTERM: it pauses its
// sandboxes), SIGKILL after two minutes.
func (a *nsAgent) stop() {
	a.mu.Lock()
	cmd, done := a.cmd, a.done
	a.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		a.kill()
	}
}
