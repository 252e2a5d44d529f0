package image

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"time"
)

// runCommand runs an external tool and returns its standard output. A
// failure carries the tail of the tool's standard error.
func runCommand(ctx context.Context, log *slog.Logger, dir string, name string, args ...string) ([]byte, error) {
	return runCmd(ctx, log, exec.CommandContext(ctx, name, args...), dir)
}

// runCmd runs a prepared command (see runCommand).
func runCmd(ctx context.Context, log *slog.Logger, cmd *exec.Cmd, dir string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd.Dir = dir
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	log.DebugContext(ctx, "command", "cmd", cmd.String(), "took", time.Since(start).Round(time.Millisecond), "err", err)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%s: %w", cmd.Path, ctx.Err())
		}
		return nil, fmt.Errorf("%s: %w: %s", cmd.String(), err, tail(stderr.String(), 800))
	}
	return stdout.Bytes(), nil
}

// tail returns the last n bytes of s, trimmed.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "…" + s[len(s)-n:]
	}
	return s
}
