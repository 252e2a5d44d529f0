package guestinit

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Exit is a child that the reaper waited for.
type Exit struct {
	Pid    int
	Status unix.WaitStatus
}

// Reaper waits for the zombie children of this process that nobody else
// will wait for: orphans re-parented to PID 1 (or to a child subreaper),
// without stealing the exit status of the children that envd started itself
// and waits for through os/exec. See the package documentation for the
// design; in short:
//
//   - Start and Done bracket the life of every child envd spawns (Start
//     registers the pid while holding a lock that excludes reaping, so no
//     reap can fall between fork and registration). They implement
//     envd.ChildTracker.
//   - A reap pass peeks at zombies with waitid(WNOWAIT), which leaves them
//     waitable, and calls wait4 only for a pid that is neither registered
//     nor referenced by a pidfd that this process holds (Go's os.StartProcess
//     keeps one per child until Wait) — the second check protects os/exec
//     children that were started without Start.
//
// The zero value is not usable; call NewReaper.
type Reaper struct {
	log *slog.Logger

	// spawnMu is held shared by Start around fork+registration and
	// exclusively by a reap pass.
	spawnMu sync.RWMutex

	mu      sync.Mutex
	owned   map[int]int // pid -> number of Start calls not yet Done
	onExit  func(Exit)  // tests observe reaped orphans here
	kick    chan struct{}
	sweep   time.Duration
	selfPid int
}

// NewReaper returns a reaper for the children of this process. It reaps
// nothing until Run or Reap is called.
func NewReaper(log *slog.Logger) *Reaper {
	if log == nil {
		log = slog.Default()
	}
	return &Reaper{
		log:     log,
		owned:   map[int]int{},
		kick:    make(chan struct{}, 1),
		sweep:   10 * time.Second,
		selfPid: os.Getpid(),
	}
}

// Start calls spawn, which must create exactly one child process and return
// its pid, and registers that pid as owned so that the reaper never waits
// for it. Reaping is held off while spawn runs, so a child that exits at
// once is still left to its owner. Every successful Start must be paired
// with a Done after the owner has waited for the child.
//
// Start implements envd.ChildTracker.
func (r *Reaper) Start(spawn func() (pid int, err error)) error {
	r.spawnMu.RLock()
	defer r.spawnMu.RUnlock()
	pid, err := spawn()
	if err != nil {
		return err
	}
	if pid > 0 {
		r.mu.Lock()
		r.owned[pid]++
		r.mu.Unlock()
	}
	return nil
}

// Done ends the ownership that Start registered for pid; call it after the
// child was waited for (exec.Cmd.Wait returned). It triggers a reap pass,
// since an orphan may have been skipped while it held a recycled pid.
//
// Done implements envd.ChildTracker.
func (r *Reaper) Done(pid int) {
	r.mu.Lock()
	if n := r.owned[pid]; n > 1 {
		r.owned[pid] = n - 1
	} else {
		delete(r.owned, pid)
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// StartCmd starts cmd as an owned child (cmd.Start inside Start). The
// caller must call Done(cmd.Process.Pid) after cmd.Wait returns.
func (r *Reaper) StartCmd(cmd *exec.Cmd) error {
	return r.Start(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
}

// Owned reports whether pid is registered through Start and not yet Done.
func (r *Reaper) Owned(pid int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.owned[pid] > 0
}

// Run reaps on every SIGCHLD, after every Done, and every few seconds as a
// safety net, until ctx is done.
func (r *Reaper) Run(ctx context.Context) {
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, unix.SIGCHLD)
	defer signal.Stop(sigc)
	t := time.NewTicker(r.sweep)
	defer t.Stop()
	for {
		r.Reap()
		select {
		case <-ctx.Done():
			return
		case <-sigc:
		case <-r.kick:
		case <-t.C:
		}
	}
}

// Reap runs one pass: it waits for every zombie child that is not owned
// and returns what it reaped.
func (r *Reaper) Reap() []Exit { return r.reap(false) }

// reap runs one pass; with all set it also reaps owned children (used at
// shutdown, when nothing will wait for them any more).
func (r *Reaper) reap(all bool) []Exit {
	r.spawnMu.Lock()
	defer r.spawnMu.Unlock()

	var exits []Exit
	var pidfds map[int]bool // loaded at most once per pass
	owned := func(pid int) bool {
		if all {
			return false
		}
		if r.Owned(pid) {
			return true
		}
		if pidfds == nil {
			pidfds = pidfdTargets()
		}
		return pidfds[pid]
	}
	reaped := map[int]bool{}
	reapOne := func(pid int) bool {
		var ws unix.WaitStatus
		got, err := wait4NoHang(pid, &ws)
		if err != nil || got != pid {
			return false
		}
		reaped[pid] = true
		e := Exit{Pid: pid, Status: ws}
		exits = append(exits, e)
		r.log.Debug("reaped orphan", "pid", pid, "status", describeStatus(ws))
		if r.onExit != nil {
			r.onExit(e)
		}
		return true
	}

	// Fast path: waitid(P_ALL, WNOWAIT) names one zombie without reaping
	// it. It keeps naming the same zombie until that one is reaped, so
	// the loop stops at the first owned one (or a failure) and falls back
	// to scanning /proc for the zombies behind it.
	hidden := false
	for {
		pid, err := peekZombie()
		if err != nil || pid == 0 {
			break
		}
		if owned(pid) || !reapOne(pid) {
			hidden = true
			break
		}
	}
	if hidden {
		for _, pid := range zombieChildren(r.selfPid) {
			if !reaped[pid] && !owned(pid) {
				reapOne(pid)
			}
		}
	}
	return exits
}

// peekZombie returns the pid of a waitable zombie child without reaping
// it, 0 when children exist but none has exited, and an error (ECHILD)
// when there are no children.
func peekZombie() (int, error) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT|unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		return siginfoPid(&info), nil
	}
}

// siginfoPid reads si_pid of a SIGCHLD siginfo: the _sigchld member of the
// union follows si_signo, si_errno and si_code, aligned to the pointer size.
func siginfoPid(info *unix.Siginfo) int {
	off := (12 + unsafe.Sizeof(uintptr(0)) - 1) &^ (unsafe.Sizeof(uintptr(0)) - 1)
	return int(*(*int32)(unsafe.Add(unsafe.Pointer(info), off)))
}

func wait4NoHang(pid int, ws *unix.WaitStatus) (int, error) {
	for {
		got, err := unix.Wait4(pid, ws, unix.WNOHANG|unix.WALL, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return got, err
	}
}

// zombieChildren lists the zombie processes whose parent is ppid, from
// /proc/<pid>/stat.
func zombieChildren(ppid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		data, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		state, parent, ok := parseStat(data)
		if ok && state == 'Z' && parent == ppid {
			out = append(out, pid)
		}
	}
	return out
}

// parseStat extracts the state and the parent pid from /proc/<pid>/stat
// ("pid (comm) S ppid ..."; comm may itself contain spaces and parens).
func parseStat(data []byte) (state byte, ppid int, ok bool) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, 0, false
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 2 || len(f[0]) != 1 {
		return 0, 0, false
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	return f[0][0], ppid, true
}

// pidfdTargets returns the pids that the pidfds open in this process refer
// to (from /proc/self/fdinfo's "Pid:" line).
func pidfdTargets() map[int]bool {
	out := map[int]bool{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return out
	}
	for _, e := range ents {
		link, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || !(link == "anon_inode:[pidfd]" || strings.HasPrefix(link, "pidfd:")) {
			continue
		}
		data, err := os.ReadFile("/proc/self/fdinfo/" + e.Name())
		if err != nil {
			continue
		}
		if pid, ok := fdinfoPid(data); ok {
			out[pid] = true
		}
	}
	return out
}

// fdinfoPid parses the "Pid:" line of a pidfd's fdinfo.
func fdinfoPid(data []byte) (int, bool) {
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "Pid:"); ok {
			pid, err := strconv.Atoi(strings.TrimSpace(v))
			return pid, err == nil && pid > 0
		}
	}
	return 0, false
}

func describeStatus(ws unix.WaitStatus) string {
	switch {
	case ws.Exited():
		return "exit " + strconv.Itoa(ws.ExitStatus())
	case ws.Signaled():
		return "signal " + ws.Signal().String()
	}
	return "status " + strconv.Itoa(int(ws))
}
