package image

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/testenv"
)

// Tests that build images share, per test binary run, one fresh store in
// a temporary directory (removed at the end) whose cache/ is a link to a
// persistent cache in os.TempDir(): downloaded kernel packages and
// debootstrap tarballs, all keyed by content, survive between runs, so
// only the first run on a machine downloads and debootstraps.

var (
	runDir      string // this run's data directory
	sharedCache = filepath.Join(os.TempDir(), "capsule-image-cache")
)

func TestMain(m *testing.M) {
	sweepStaleRuns()
	code := m.Run()
	if runDir != "" {
		if err := removeTree(runDir); err != nil {
			fmt.Fprintln(os.Stderr, "image tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// runPrefix names the per-run directories; the suffix is the test
// binary's pid.
const runPrefix = "capsule-image-run-"

// sweepStaleRuns removes the run directories of test binaries that died
// without cleaning up.
func sweepStaleRuns() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), runPrefix+"*"))
	for _, d := range dirs {
		pid, err := strconv.Atoi(strings.TrimPrefix(filepath.Base(d), runPrefix))
		if err != nil || processAlive(pid) {
			continue
		}
		_ = removeTree(d)
	}
}

func processAlive(pid int) bool {
	_, err := os.Stat(filepath.Join("/proc", strconv.Itoa(pid)))
	return err == nil
}

var (
	storeOnce sync.Once
	store     *Store
	storeErr  error
)

// testStore returns the run's shared store.
func testStore(t *testing.T) *Store {
	t.Helper()
	storeOnce.Do(func() {
		runDir = filepath.Join(os.TempDir(), runPrefix+strconv.Itoa(os.Getpid()))
		if storeErr = os.MkdirAll(filepath.Join(runDir, "images"), 0o755); storeErr != nil {
			return
		}
		if storeErr = os.MkdirAll(sharedCache, 0o755); storeErr != nil {
			return
		}
		if storeErr = os.Symlink(sharedCache, filepath.Join(runDir, "images", dirCache)); storeErr != nil {
			return
		}
		store, storeErr = Open(runDir, testLogger())
	})
	if storeErr != nil {
		t.Fatal(storeErr)
	}
	return store
}

func testLogger() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var (
	envdOnce sync.Once
	envdPath string
	envdErr  error
)

// testEnvd builds envd (static) from this tree once per run.
func testEnvd(t *testing.T) string {
	t.Helper()
	testenv.RequireCommand(t, "go")
	s := testStore(t)
	envdOnce.Do(func() {
		out := filepath.Join(filepath.Dir(s.Dir()), "bin", "envd")
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "github.com/capsulehq/capsule/cmd/envd")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			envdErr = fmt.Errorf("build envd: %v\n%s", err, b)
			return
		}
		envdPath = out
	})
	if envdErr != nil {
		t.Fatal(envdErr)
	}
	return envdPath
}

// requireImageTools skips unless the tools a full build needs are here.
func requireImageTools(t *testing.T) {
	t.Helper()
	testenv.RequireRoot(t)
	for _, c := range []string{"apt-get", "apt-cache", "dpkg-deb", "mkfs.ext4", "debugfs", "busybox", "tar"} {
		testenv.RequireCommand(t, c)
	}
}

var (
	minimalMu  sync.Mutex
	minimalImg *Image
)

// minimalImage builds (once per run) the minimal image with the test envd.
func minimalImage(t *testing.T) *Image {
	t.Helper()
	requireImageTools(t)
	minimalMu.Lock()
	defer minimalMu.Unlock()
	if minimalImg != nil {
		return minimalImg
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := testStore(t).Build(ctx, BuildOptions{Template: "minimal", EnvdBin: testEnvd(t)})
	if err != nil {
		t.Fatal(err)
	}
	minimalImg = img
	return img
}
