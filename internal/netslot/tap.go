package netslot

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const (
	tunDevice = "/dev/net/tun"
	// tapFlags is how the TAP is created and opened: Ethernet frames,
	// without the tun packet-information header (QEMU's -netdev tap,fd=).
	tapFlags = unix.IFF_TAP | unix.IFF_NO_PI
)

// tunAttach opens /dev/net/tun and attaches it to the TAP called name in
// the calling thread's network namespace, creating the device if it does
// not exist. It returns the descriptor and the device's flags.
func tunAttach(name string) (int, uint16, error) {
	fd, err := unix.Open(tunDevice, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, 0, fmt.Errorf("open %s: %w", tunDevice, err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("tap name %q: %w", name, err)
	}
	ifr.SetUint16(tapFlags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("TUNSETIFF %s: %w", name, err)
	}
	if err := unix.IoctlIfreq(fd, unix.TUNGETIFF, ifr); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("TUNGETIFF %s: %w", name, err)
	}
	return fd, ifr.Uint16(), nil
}

// createTap creates a persistent TAP called name in the calling thread's
// namespace. The device outlives the descriptor, so a VM (or a restored
// VM) can attach to it later with openTap.
func createTap(name string) error {
	fd, flags, err := tunAttach(name)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if flags&unix.IFF_PERSIST != 0 {
		return fmt.Errorf("create tap %s: %w", name, os.ErrExist)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fmt.Errorf("TUNSETPERSIST %s: %w", name, err)
	}
	return nil
}

// errNoTap is returned when a slot's TAP has disappeared.
var errNoTap = errors.New("netslot: tap device missing")

// openTap attaches to the existing persistent TAP called name in the
// calling thread's namespace. It never creates one: a device that was
// created by the attach itself is discarded (closing the descriptor
// destroys it) and errNoTap returned.
func openTap(name string) (*os.File, error) {
	fd, flags, err := tunAttach(name)
	if err != nil {
		return nil, err
	}
	if flags&unix.IFF_PERSIST == 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("open tap %s: %w", name, errNoTap)
	}
	return os.NewFile(uintptr(fd), tunDevice+":"+name), nil
}
