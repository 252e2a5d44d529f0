package qemu

import (
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The fallocate guard: a VMM whose guest RAM is a snapshot's file mapped
// privately runs with a seccomp filter that fails fallocate(2) with
// EOPNOTSUPP. QEMU 7.2 discards guest RAM (the balloon's inflate queue,
// free-page reports) with ram_block_discard_range, which punches a hole
// in the RAM's file whenever it has one, even a MAP_PRIVATE one, and only
// then drops the mapping's pages: the hole would zero the pages of that
// file under every other machine restored from it (a template's clones).
// With the filter the punch fails, QEMU gives up the discard (it logs
// "Failed to fallocate" and skips the madvise), and the file stays as it
// is. The guest keeps the pages it reported; nothing else changes for it.
//
// QEMU's disks lose fallocate too: their discards (EOPNOTSUPP reads as
// "not supported", which the block layer ignores) and write-zeroes
// requests (which fall back to writing zeros) still complete.
//
// A seccomp filter is inherited across fork and execve and cannot be
// removed, and Go has no hook between the two. So the filter is installed
// on one OS thread, locked to a goroutine that lives as long as the
// process, and every guarded QEMU is started from that thread: clone(2)
// copies the calling thread's filter into the child. The thread never
// exits, which also keeps Options.DieWithParent (a parent-death signal
// sent when the starting thread exits) from killing those VMMs.

// Starter threads. The same thread trick sets a VMM's priority from its
// first instruction: a prepared machine's QEMU (prepared.go) is started
// from a thread whose nice value is preparedNice, which the child
// inherits, so that its start-up only takes CPU the running guests leave.
// Each kind of start (guarded or not, nice value) has its own thread, set
// up once and never unlocked.

// starterKind is how a starter thread is set up.
type starterKind struct {
	guard bool // the fallocate filter
	nice  int  // the thread's nice value
}

// startRequest is a request to a starter thread.
type startRequest struct {
	cmd  *exec.Cmd
	done chan error
}

type starter struct {
	err  error // the thread could not be set up
	reqs chan startRequest
}

var (
	startersMu sync.Mutex
	starters   = map[starterKind]*starter{}
)

// startGuarded starts cmd with fallocate(2) denied (see above).
func startGuarded(cmd *exec.Cmd) error { return startFrom(starterKind{guard: true}, cmd) }

// startFrom starts cmd from the starter thread of kind, made on first use.
func startFrom(kind starterKind, cmd *exec.Cmd) error {
	startersMu.Lock()
	s := starters[kind]
	if s == nil {
		s = &starter{reqs: make(chan startRequest)}
		ready := make(chan error)
		go s.run(kind, ready)
		s.err = <-ready
		starters[kind] = s
	}
	startersMu.Unlock()
	if s.err != nil {
		return fmt.Errorf("starter thread %+v: %w", kind, s.err)
	}
	req := startRequest{cmd: cmd, done: make(chan error, 1)}
	s.reqs <- req
	return <-req.done
}

// run sets up its own thread as kind says and starts what it is asked
// to, for ever. When the set-up fails the locked goroutine returns and
// its thread exits with it.
func (s *starter) run(kind starterKind, ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread is set up for good
	if kind.guard {
		if err := denyFallocate(); err != nil {
			ready <- err
			return
		}
	}
	if kind.nice != 0 {
		// PRIO_PROCESS with who 0 is the calling thread on Linux.
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, kind.nice); err != nil {
			ready <- fmt.Errorf("nice %d: %w", kind.nice, err)
			return
		}
	}
	close(ready)
	for req := range s.reqs {
		req.done <- req.cmd.Start()
	}
}

// auditArch is the AUDIT_ARCH_* value of the architectures the guard
// knows, for the filter's architecture check.
var auditArch = map[string]uint32{
	"amd64": 0xc000003e, // AUDIT_ARCH_X86_64
	"arm64": 0xc00000b7, // AUDIT_ARCH_AARCH64
}

// denyFallocate installs, on the calling thread only, a seccomp filter
// under which fallocate(2) fails with EOPNOTSUPP. System calls of another
// architecture than the host's fail with ENOSYS.
func denyFallocate() error {
	arch, ok := auditArch[runtime.GOARCH]
	if !ok {
		return fmt.Errorf("no seccomp filter for %s", runtime.GOARCH)
	}
	const (
		offNr   = 0 // struct seccomp_data: nr, arch, …
		offArch = 4
		ldW     = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeqK    = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		andK    = unix.BPF_ALU | unix.BPF_AND | unix.BPF_K
		retK    = unix.BPF_RET | unix.BPF_K
		x32Bit  = 0x40000000 // __X32_SYSCALL_BIT: x32 numbers are amd64's with it set
	)
	prog := []unix.SockFilter{
		{Code: ldW, K: offArch},
		{Code: jeqK, Jt: 1, Jf: 0, K: arch},
		{Code: retK, K: unix.SECCOMP_RET_ERRNO | uint32(unix.ENOSYS)},
		{Code: ldW, K: offNr},
		{Code: andK, K: ^uint32(x32Bit)},
		{Code: jeqK, Jt: 0, Jf: 1, K: uint32(unix.SYS_FALLOCATE)},
		{Code: retK, K: unix.SECCOMP_RET_ERRNO | uint32(unix.EOPNOTSUPP)},
		{Code: retK, K: unix.SECCOMP_RET_ALLOW},
	}
	if runtime.GOARCH != "amd64" {
		prog[4] = unix.SockFilter{Code: andK, K: ^uint32(0)} // no x32 elsewhere
	}
	// Needed to install a filter without CAP_SYS_ADMIN; QEMU's own
	// -sandbox sets it as well.
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("PR_SET_NO_NEW_PRIVS: %w", err)
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	// seccomp(SECCOMP_SET_MODE_FILTER, 0, &fprog): no TSYNC, this thread only.
	if _, _, errno := unix.Syscall(unix.SYS_SECCOMP, 1, 0, uintptr(unsafe.Pointer(&fprog))); errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	runtime.KeepAlive(prog)
	return nil
}
