package qemu

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/capsulehq/capsule/internal/vmm"
)

// DefaultBinary is the QEMU system emulator the driver runs.
const DefaultBinary = "qemu-system-x86_64"

// DefaultTBSizeMB is the TCG translation cache's default size (MiB); see
// the package documentation (Memory) for how it was fitted.
var DefaultTBSizeMB = 32

// EnvdPort is the guest port that user-mode networking forwards to.
const EnvdPort = 49983

// Options configure a Driver.
type Options struct {
	// Binary is the QEMU executable; default DefaultBinary on PATH.
	Binary string
	// Accel forces the accelerator; empty means CAPSULE_ACCEL, else
	// detection (see DetectAccel).
	Accel vmm.Accel
	// ProbeKernel is the kernel that a KVM probe boots. Detection needs
	// it only on hosts where KVM looks usable.
	ProbeKernel string
	// ProbeTimeout bounds the probe boot; default DefaultProbeTimeout.
	ProbeTimeout time.Duration
	// UserNet lets machines whose NetAttachment has no Tap use QEMU's
	// user-mode network (slirp, restricted: no way out) with envd's port
	// forwarded from a free port on 127.0.0.1 (Machine.HostForward). It is
	// meant for tests and development hosts without network slots.
	UserNet bool
	// DieWithParent makes the kernel kill each VMM when the thread that
	// started it exits (PR_SET_PDEATHSIG). Off by default: machines are
	// meant to outlive an agent restart (see Adopt). Only for tests, and
	// only when no goroutine of the process exits while locked to its
	// thread.
	DieWithParent bool
	// TBSizeMB is the size of TCG's translation cache in MiB (-accel
	// tcg,tb-size=): 0 means DefaultTBSizeMB, a negative value QEMU's own
	// default (1 GiB on QEMU 7.2). Unused under KVM.
	TBSizeMB int
	// NoBalloon boots machines without the virtio-balloon device, whose
	// free-page reporting hands the pages a guest frees back to the host
	// (see the package documentation, Memory). Restores follow their
	// snapshot.
	NoBalloon bool
	// Logger receives the driver's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Driver runs QEMU microvm machines. It is safe for concurrent use.
type Driver struct {
	binary      string
	version     string
	accel       vmm.Accel
	accelReason string
	userNet     bool
	pdeathsig   bool
	tbSizeMB    int
	noBalloon   bool
	// unguarded starts VMMs with private RAM without the fallocate guard
	// (guard.go): only for the test that shows what the guard prevents.
	unguarded bool
	log       *slog.Logger

	// streamSnapshots makes snapshots use a migration stream instead of
	// device state alone: set when QEMU lacks the command, or by tests.
	streamSnapshots atomic.Bool
}

var (
	_ vmm.Driver  = (*Driver)(nil)
	_ vmm.Adopter = (*Driver)(nil)
)

// New returns a driver after checking the QEMU binary and deciding the
// accelerator.
func New(ctx context.Context, opts Options) (*Driver, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	bin := opts.Binary
	if bin == "" {
		bin = DefaultBinary
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	version, err := qemuVersion(ctx, path)
	if err != nil {
		return nil, err
	}
	d := &Driver{binary: path, version: version, userNet: opts.UserNet, pdeathsig: opts.DieWithParent, noBalloon: opts.NoBalloon, log: log.With("vmm", "qemu")}
	switch {
	case opts.TBSizeMB == 0:
		d.tbSizeMB = DefaultTBSizeMB
	case opts.TBSizeMB > 0:
		d.tbSizeMB = opts.TBSizeMB
	}
	if opts.Accel != "" {
		if d.accel, err = parseAccel(string(opts.Accel)); err != nil {
			return nil, fmt.Errorf("qemu: %w", err)
		}
		d.accelReason = "configured"
	} else if d.accel, d.accelReason, err = DetectAccel(ctx, d.log, path, opts.ProbeKernel, opts.ProbeTimeout); err != nil {
		return nil, fmt.Errorf("qemu: %w", err)
	}
	return d, nil
}

var versionRE = regexp.MustCompile(`version (\d+\.\d+(?:\.\d+)?)`)

func qemuVersion(ctx context.Context, path string) (string, error) {
	out, err := exec.CommandContext(ctx, path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("qemu: %s --version: %w", path, err)
	}
	m := versionRE.FindSubmatch(out)
	if m == nil {
		return "", fmt.Errorf("qemu: cannot read the version of %s: %q", path, out)
	}
	return string(m[1]), nil
}

// Name is "qemu".
func (d *Driver) Name() string { return "qemu" }

// Accel is the accelerator every machine of this driver uses.
func (d *Driver) Accel() vmm.Accel { return d.accel }

// AccelReason says why Accel was chosen.
func (d *Driver) AccelReason() string { return d.accelReason }

// Version is the QEMU version (major.minor.patch).
func (d *Driver) Version() string { return d.version }

// Boot cold-boots a machine.
func (d *Driver) Boot(ctx context.Context, spec vmm.Spec) (vmm.Machine, error) {
	spec = ownSpec(spec)
	if err := d.checkSpec(&spec, true); err != nil {
		return nil, err
	}
	mem, err := newMemfd("capsule-"+spec.ID, int64(spec.MemoryMB)<<20)
	if err != nil {
		return nil, fmt.Errorf("qemu: boot %s: %w", spec.ID, err)
	}
	m, err := d.launch(ctx, launchConfig{spec: spec, memfd: mem})
	if err != nil {
		return nil, fmt.Errorf("qemu: boot %s: %w", spec.ID, err)
	}
	return m, nil
}

// Restore starts a machine from a snapshot (see package doc).
func (d *Driver) Restore(ctx context.Context, spec vmm.Spec, snap vmm.Snapshot) (vmm.Machine, error) {
	start := time.Now()
	cfg, err := d.restoreConfig(spec, snap)
	if err != nil {
		return nil, err
	}
	defer cfg.incoming.Close()
	m, err := d.launch(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("qemu: restore %s: %w", cfg.spec.ID, err)
	}
	d.log.Info("machine restored", "machine", cfg.spec.ID, "snapshot", snap.Dir, "copyMemory", cfg.spec.CopyMemory, "took", time.Since(start).Round(time.Millisecond))
	return m, nil
}

// restoreConfig checks a restore of snap for spec and opens what it needs:
// the state file (the caller closes cfg.incoming once the VMM started)
// and, with CopyMemory, a memfd holding the snapshot's memory.
func (d *Driver) restoreConfig(spec vmm.Spec, snap vmm.Snapshot) (cfg launchConfig, err error) {
	spec = ownSpec(spec)
	meta, err := readSnapshotMeta(snap.Dir)
	if err != nil {
		return cfg, fmt.Errorf("qemu: restore %s: %w", spec.ID, err)
	}
	if err := d.checkRestore(&spec, meta); err != nil {
		return cfg, fmt.Errorf("qemu: restore %s from %s: %w", spec.ID, snap.Dir, err)
	}
	if err := d.checkSpec(&spec, false); err != nil {
		return cfg, err
	}
	state, err := os.Open(filepath.Join(snap.Dir, meta.State))
	if err != nil {
		return cfg, fmt.Errorf("qemu: restore %s: %w", spec.ID, err)
	}
	cfg = launchConfig{spec: spec, incoming: state, meta: meta}
	memPath := filepath.Join(snap.Dir, meta.Memory)
	if spec.CopyMemory {
		src, err := os.Open(memPath)
		if err != nil {
			state.Close()
			return cfg, fmt.Errorf("qemu: restore %s: %w", spec.ID, err)
		}
		mem, err := newMemfd("capsule-"+spec.ID, int64(spec.MemoryMB)<<20)
		if err == nil {
			_, err = copySparse(mem, src, int64(spec.MemoryMB)<<20)
			if err != nil {
				mem.Close()
			}
		}
		src.Close()
		if err != nil {
			state.Close()
			return cfg, fmt.Errorf("qemu: restore %s: copy memory: %w", spec.ID, err)
		}
		cfg.memfd = mem
	} else {
		abs, err := filepath.Abs(memPath)
		if err != nil {
			state.Close()
			return cfg, fmt.Errorf("qemu: restore %s: %w", spec.ID, err)
		}
		cfg.privateMem = abs
	}
	return cfg, nil
}

// ownSpec copies what spec points to that the driver fills in, so that
// the caller's values stay as they are.
func ownSpec(spec vmm.Spec) vmm.Spec {
	spec.Disks = append([]vmm.Disk(nil), spec.Disks...)
	if spec.Net != nil {
		n := *spec.Net
		spec.Net = &n
	}
	return spec
}

// checkSpec validates spec and fills in defaults.
func (d *Driver) checkSpec(spec *vmm.Spec, boot bool) error {
	if spec.ID == "" || spec.Dir == "" {
		return errors.New("qemu: spec needs an ID and a Dir")
	}
	if boot && spec.Kernel == "" {
		return fmt.Errorf("qemu: boot %s: no kernel", spec.ID)
	}
	if spec.VCPUs <= 0 {
		spec.VCPUs = 1
	}
	if spec.MemoryMB <= 0 {
		spec.MemoryMB = 256
	}
	for i, dk := range spec.Disks {
		switch dk.Format {
		case "":
			spec.Disks[i].Format = "raw"
		case "raw", "qcow2":
		default:
			return fmt.Errorf("qemu: %s: disk %d: unsupported format %q", spec.ID, i, dk.Format)
		}
		if dk.Path == "" {
			return fmt.Errorf("qemu: %s: disk %d has no path", spec.ID, i)
		}
	}
	if spec.Net != nil {
		if spec.Net.Tap == nil && !d.userNet {
			return fmt.Errorf("qemu: %s: network attachment without a TAP (user-mode networking is off)", spec.ID)
		}
		if spec.Net.MAC == "" {
			spec.Net.MAC = macFor(spec.ID)
		} else if _, err := net.ParseMAC(spec.Net.MAC); err != nil {
			return fmt.Errorf("qemu: %s: %w", spec.ID, err)
		}
	}
	// QEMU runs in spec.Dir: every path it gets must be absolute.
	if spec.ConsoleLog == "" {
		spec.ConsoleLog = filepath.Join(spec.Dir, consoleFile)
	}
	if spec.ConsoleLogMax < 0 {
		return fmt.Errorf("qemu: %s: negative console log cap %d", spec.ID, spec.ConsoleLogMax)
	}
	paths := []*string{&spec.Dir, &spec.ConsoleLog}
	if boot {
		paths = append(paths, &spec.Kernel)
		if spec.Initrd != "" {
			paths = append(paths, &spec.Initrd)
		}
	}
	for i := range spec.Disks {
		paths = append(paths, &spec.Disks[i].Path)
	}
	for _, p := range paths {
		abs, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("qemu: %s: %w", spec.ID, err)
		}
		*p = abs
	}
	return nil
}

// checkRestore matches spec against the saved machine.
func (d *Driver) checkRestore(spec *vmm.Spec, meta *snapshotMeta) error {
	if meta.Accel != d.accel {
		return fmt.Errorf("snapshot was taken under %s, this driver runs %s", meta.Accel, d.accel)
	}
	if meta.QEMUVersion != d.version {
		d.log.Warn("restoring a snapshot of another QEMU version", "snapshot", meta.QEMUVersion, "qemu", d.version)
	}
	if spec.MemoryMB == 0 {
		spec.MemoryMB = meta.MemoryMB
	}
	if spec.VCPUs == 0 {
		spec.VCPUs = meta.VCPUs
	}
	if spec.MemoryMB != meta.MemoryMB || spec.VCPUs != meta.VCPUs {
		return fmt.Errorf("spec has %d MiB and %d vCPUs, the snapshot %d MiB and %d vCPUs", spec.MemoryMB, spec.VCPUs, meta.MemoryMB, meta.VCPUs)
	}
	if len(spec.Disks) != len(meta.Disks) {
		return fmt.Errorf("spec has %d disks, the snapshot %d", len(spec.Disks), len(meta.Disks))
	}
	for i, dk := range spec.Disks {
		if dk.ReadOnly != meta.Disks[i].ReadOnly {
			return fmt.Errorf("disk %d: read-only %v, the snapshot's %v", i, dk.ReadOnly, meta.Disks[i].ReadOnly)
		}
	}
	if kind := netKind(spec.Net); kind != meta.Net {
		if kind == "" || meta.Net == "" {
			return fmt.Errorf("spec network %q, the snapshot's %q", kind, meta.Net)
		}
		// The virtio-net features a guest negotiated depend on the
		// backend (a TAP offers offloads, user-mode networking does not);
		// QEMU refuses the state when they do not fit.
		d.log.Warn("restoring with another network backend", "snapshot", meta.Net, "spec", kind)
	}
	if spec.Net != nil && spec.Net.MAC == "" {
		spec.Net.MAC = meta.MAC
	}
	return nil
}

// netKind names a network attachment's backend.
func netKind(n *vmm.NetAttachment) string {
	switch {
	case n == nil:
		return ""
	case n.Tap != nil:
		return "tap"
	default:
		return "user"
	}
}

// macFor derives a stable, locally administered unicast MAC from an ID.
func macFor(id string) string {
	h := sha256.Sum256([]byte(id))
	return fmt.Sprintf("02:%02x:%02x:%02x:%02x:%02x", h[0], h[1], h[2], h[3], h[4])
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// optEscape escapes a value for a QEMU option list (commas double).
func optEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// kernelCmdline is the guest's command line: the driver's parameters, then
// the spec's.
func (d *Driver) kernelCmdline(spec vmm.Spec) string {
	parts := []string{"console=ttyS0", "panic=-1", timerCmdline(d.accel)}
	if spec.Cmdline != "" {
		parts = append(parts, spec.Cmdline)
	}
	return strings.Join(strings.Fields(strings.Join(parts, " ")), " ")
}

// cpuModel is the -cpu argument: the host CPU under KVM; under TCG "max"
// ("host" needs KVM, and max is the full feature set TCG emulates).
func cpuModel(a vmm.Accel) string {
	if a == vmm.AccelKVM {
		return "host"
	}
	return "max"
}

// itoa is strconv.Itoa, shorter.
func itoa(i int) string { return strconv.Itoa(i) }
