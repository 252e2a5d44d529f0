package guestinit

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ext4IocResizeFS is EXT4_IOC_RESIZE_FS, _IOW('f', 16, __u64): grow a
// mounted ext4 filesystem to the given number of blocks (online resize).
const ext4IocResizeFS = 0x40086610

// GrowExt4 grows the ext4 filesystem mounted at mountpoint to fill its
// block device, online, and returns by how many bytes it grew (0 when it
// already filled the device).
func GrowExt4(device, mountpoint string) (int64, error) {
	dev, err := os.Open(device)
	if err != nil {
		return 0, fmt.Errorf("grow ext4: %w", err)
	}
	defer dev.Close()
	var devSize uint64
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, dev.Fd(), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&devSize))); errno != 0 {
		return 0, fmt.Errorf("grow ext4: size of %s: %w", device, errno)
	}
	blocks, bsize, err := ext4Blocks(dev)
	if err != nil {
		return 0, fmt.Errorf("grow ext4: %s: %w", device, err)
	}
	want := devSize / bsize
	if want <= blocks {
		return 0, nil
	}
	root, err := os.Open(mountpoint)
	if err != nil {
		return 0, fmt.Errorf("grow ext4: %w", err)
	}
	defer root.Close()
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, root.Fd(), ext4IocResizeFS, uintptr(unsafe.Pointer(&want))); errno != 0 {
		return 0, fmt.Errorf("grow ext4 %s to %d blocks: %w", mountpoint, want, errno)
	}
	return int64((want - blocks) * bsize), nil
}

// ext4Blocks reads the block count and block size from an ext4
// superblock (1024 bytes in; little-endian).
func ext4Blocks(r io.ReaderAt) (blocks, blockSize uint64, err error) {
	sb := make([]byte, 1024)
	if _, err := r.ReadAt(sb, 1024); err != nil {
		return 0, 0, fmt.Errorf("read superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint16(sb[0x38:]) != 0xEF53 {
		return 0, 0, errors.New("no ext4 superblock")
	}
	blocks = uint64(le.Uint32(sb[0x04:]))
	if le.Uint32(sb[0x60:])&0x80 != 0 { // INCOMPAT_64BIT
		blocks |= uint64(le.Uint32(sb[0x150:])) << 32
	}
	return blocks, 1024 << le.Uint32(sb[0x18:]), nil
}
