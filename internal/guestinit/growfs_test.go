package guestinit

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/capsulehq/capsule/internal/testenv"
)

func TestExt4Blocks(t *testing.T) {
	mkfs := testenv.RequireCommand(t, "mkfs.ext4")
	tests := []struct {
		name       string
		sizeMiB    int64
		blockSize  string
		wantBlocks uint64
		wantBSize  uint64
	}{
		{"4k blocks", 64, "4096", 64 << 20 / 4096, 4096},
		{"1k blocks", 16, "1024", 16 << 20 / 1024, 1024},
		{"64bit", 128, "4096", 128 << 20 / 4096, 4096},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "fs.img")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(tc.sizeMiB << 20); err != nil {
				t.Fatal(err)
			}
			args := []string{"-q", "-F", "-b", tc.blockSize}
			if tc.name == "64bit" {
				args = append(args, "-O", "64bit")
			}
			if out, err := exec.Command(mkfs, append(args, img)...).CombinedOutput(); err != nil {
				t.Fatalf("mkfs: %v: %s", err, out)
			}
			blocks, bsize, err := ext4Blocks(f)
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
			if blocks != tc.wantBlocks || bsize != tc.wantBSize {
				t.Fatalf("got %d blocks of %d, want %d of %d", blocks, bsize, tc.wantBlocks, tc.wantBSize)
			}
		})
	}
	if _, _, err := ext4Blocks(zeroReader{}); err == nil {
		t.Fatal("a zeroed device was taken for ext4")
	}
}

type zeroReader struct{}

func (zeroReader) ReadAt(p []byte, _ int64) (int, error) {
	clear(p)
	return len(p), nil
}
