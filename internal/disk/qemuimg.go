package disk

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"
)

// qemuImg runs qemu-img and returns its standard output; a failure carries
// its standard error.
func qemuImg(ctx context.Context, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "qemu-img", args...)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	slog.DebugContext(ctx, "qemu-img", "args", args, "took", time.Since(start).Round(time.Millisecond), "err", err)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("qemu-img %s: %w", args[0], ctx.Err())
		}
		return nil, fmt.Errorf("qemu-img %s: %w: %s", args[0], err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Info is what qemu-img info reports of a disk image.
type Info struct {
	Format      string `json:"format"`                  // "raw", "qcow2"
	VirtualSize int64  `json:"virtual-size"`            // bytes the guest sees
	ActualSize  int64  `json:"actual-size"`             // bytes allocated on the host
	BackingFile string `json:"backing-filename"`        // overlays only
	BackingFmt  string `json:"backing-filename-format"` // overlays only
}

// Inspect returns qemu-img info of the image at path. It opens the image
// with force-share (-U), so it also works on a disk a VM is using.
func Inspect(ctx context.Context, path string) (*Info, error) {
	out, err := qemuImg(ctx, "info", "-U", "--output=json", path)
	if err != nil {
		return nil, fmt.Errorf("inspect %s: %w", path, err)
	}
	info := &Info{}
	if err := json.Unmarshal(out, info); err != nil {
		return nil, fmt.Errorf("inspect %s: %w", path, err)
	}
	return info, nil
}
