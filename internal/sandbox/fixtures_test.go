package sandbox_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/vmm"
	"github.com/capsulehq/capsule/internal/vmm/qemu"
)

var (
	imagesOnce sync.Once
	images     *image.Store
	imagesErr  error
)

// testImages is an image store shared by all tests of this package (and by
// later runs: it is content-addressed, so an unchanged envd reuses
// everything) holding the minimal template built from this tree's envd.
func testImages(t *testing.T) *image.Store {
	t.Helper()
	imagesOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		bin := filepath.Join(os.TempDir(), "capsule-sandbox-test-envd")
		build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, "github.com/capsulehq/capsule/cmd/envd")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			imagesErr = err
			t.Logf("build envd: %s", out)
			return
		}
		images, imagesErr = image.Open(filepath.Join(os.TempDir(), "capsule-test-store"), nil)
		if imagesErr != nil {
			return
		}
		_, imagesErr = images.Build(ctx, image.BuildOptions{Template: "minimal", EnvdBin: bin})
	})
	if imagesErr != nil {
		t.Fatalf("test images: %v", imagesErr)
	}
	return images
}

var (
	driverOnce sync.Once
	driver     vmm.Driver
	driverErr  error
)

func testDriver(t *testing.T) vmm.Driver {
	t.Helper()
	testenv.RequireCommand(t, "qemu-system-x86_64")
	img, err := testImages(t).Get(context.Background(), "minimal")
	if err != nil {
		t.Fatal(err)
	}
	driverOnce.Do(func() {
		driver, driverErr = qemu.New(context.Background(), qemu.Options{ProbeKernel: img.Kernel})
	})
	if driverErr != nil {
		t.Fatalf("qemu driver: %v", driverErr)
	}
	return driver
}
