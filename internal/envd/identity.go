package envd

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/guestinit"
)

// A guest restored from a snapshot (a template's clone, a fork, a resumed
// pause) wakes up with what was saved: the kernel's RNG state and the
// hostname of the machine the snapshot was taken of. /init gives it its
// own (Capsule's fields of envdapi.InitRequest, applied only in a guest).

// reseedRNG mixes seed into the guest kernel's input pool, credited
// (RNDADDENTROPY), and makes the kernel's generator reseed from it at once
// (RNDRESEEDCRNG): two guests restored from one snapshot and given
// different seeds no longer produce the same random bytes. Both ioctls
// need CAP_SYS_ADMIN (envd is PID 1, root).
func reseedRNG(seed []byte) error {
	if len(seed) == 0 {
		return nil
	}
	if len(seed) > envdapi.MaxInitEntropyBytes {
		return fmt.Errorf("entropy: %d bytes, at most %d", len(seed), envdapi.MaxInitEntropyBytes)
	}
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	// struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
	info := make([]byte, 8+(len(seed)+3)&^3)
	binary.NativeEndian.PutUint32(info[0:], uint32(len(seed)*8))
	binary.NativeEndian.PutUint32(info[4:], uint32(len(seed)))
	copy(info[8:], seed)
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDADDENTROPY, uintptr(unsafe.Pointer(&info[0]))); e != 0 {
		return fmt.Errorf("RNDADDENTROPY: %w", e)
	}
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), unix.RNDRESEEDCRNG, 0); e != 0 {
		return fmt.Errorf("RNDRESEEDCRNG: %w", e)
	}
	return nil
}

// setHostname makes h the guest's hostname (kernel, /etc/hostname and
// /etc/hosts) unless it is already.
func setHostname(h string) error {
	if cur, err := os.Hostname(); err == nil && cur == h {
		return nil
	}
	return guestinit.SetHostname(h)
}
