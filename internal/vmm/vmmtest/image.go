package vmmtest

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/testenv"
)

// SharedImageCache is where package image's tests keep what they download
// (kernel packages, debootstrap tarballs), keyed by content; image stores
// made here link to it so that a machine downloads those once.
var SharedImageCache = filepath.Join(os.TempDir(), "capsule-image-cache")

var minimal struct {
	sync.Mutex
	img *image.Image
	err error
}

// MinimalImage builds, once per process, the "minimal" guest image
// (busybox + envd) with an envd built from this source tree, in an image
// store under dataDir (which the caller removes when its tests end). It
// skips (fails under CAPSULE_TEST_STRICT=1) when the build tools are
// missing.
func MinimalImage(t testing.TB, dataDir string) *image.Image {
	t.Helper()
	testenv.RequireRoot(t)
	for _, c := range []string{"go", "apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4", "debugfs", "busybox"} {
		testenv.RequireCommand(t, c)
	}
	minimal.Lock()
	defer minimal.Unlock()
	if minimal.img == nil && minimal.err == nil {
		minimal.img, minimal.err = buildMinimal(dataDir)
	}
	if minimal.err != nil {
		t.Fatal(minimal.err)
	}
	return minimal.img
}

func buildMinimal(dataDir string) (*image.Image, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := os.MkdirAll(filepath.Join(dataDir, "images"), 0o755); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(SharedImageCache, 0o755); err != nil {
		return nil, err
	}
	link := filepath.Join(dataDir, "images", "cache")
	if _, err := os.Lstat(link); os.IsNotExist(err) {
		if err := os.Symlink(SharedImageCache, link); err != nil {
			return nil, err
		}
	}
	envd := filepath.Join(dataDir, "bin", "envd")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", envd, "github.com/capsulehq/capsule/cmd/envd")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("build envd: %w\n%s", err, out)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	store, err := image.Open(dataDir, log)
	if err != nil {
		return nil, err
	}
	img, err := store.Build(ctx, image.BuildOptions{Template: "minimal", EnvdBin: envd})
	if err != nil {
		return nil, fmt.Errorf("build the minimal image: %w", err)
	}
	return img, nil
}
