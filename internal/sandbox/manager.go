package sandbox

import (
	"context"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/capsulehq/capsule/internal/disk"
	"github.com/capsulehq/capsule/internal/egress"
	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/envdclient"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/netslot"
	"github.com/capsulehq/capsule/internal/phase"
	"github.com/capsulehq/capsule/internal/sandbox/metrics"
	"github.com/capsulehq/capsule/internal/vmm"
)

// Config configures a Manager.
type Config struct {
	// DataDir holds sandboxes/ and templates/ (default /var/lib/capsule).
	DataDir string
	// RunDir holds the VMMs' runtime directories (default /run/capsule).
	RunDir string

	Driver vmm.Driver
	Images *image.Store
	Slots  *netslot.Pool

	Capacity Capacity
	// DiskHeadroomMB is the free space (MiB) the data directory's
	// filesystem keeps: creates, pauses and snapshots that would leave
	// less are refused with ErrNoSpace (capacity.go). 0: no check.
	DiskHeadroomMB int64
	// Defaults for requests that leave them out.
	DefaultVCPUs    int // 1
	DefaultMemoryMB int // 256
	// BootTimeout bounds a cold boot or restore until envd answers
	// (default 90 s: TCG is slow).
	BootTimeout time.Duration
	// KernelArgs are appended to every guest command line.
	KernelArgs string
	// WarmImages keeps hidden snapshot templates of the image templates
	// per machine shape, so that creates restore instead of booting
	// (warm.go).
	WarmImages bool
	// PreparedVMMs is how many VMMs the manager keeps started, for each
	// snapshot template and machine shape created from in the last ten
	// minutes, waiting to restore it (prepared.go); 0: none. It needs a
	// driver that is a vmm.Preparer.
	PreparedVMMs int
	// MetricsInterval is the sampling interval of the running sandboxes'
	// metrics (default 500 ms; metrics.go).
	MetricsInterval time.Duration
	// ConsoleLogMax caps each sandbox's console log (console.log in its
	// directory, rotated into console.log.1); 0 means
	// vmm.DefaultConsoleLogMax.
	ConsoleLogMax int64

	Log *slog.Logger
	Now func() time.Time
}

// Manager runs the sandboxes of one host. It is safe for concurrent use;
// operations on one sandbox are serialized, different sandboxes proceed in
// parallel.
type Manager struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	key cipher.AEAD // seals secrets at rest (seal.go)

	mu    sync.Mutex
	boxes map[string]*box
	used  usage

	// gcMu guards orphans: template directories given up (deleted or
	// replaced templates) that something still backed onto when they were
	// (collectTemplates).
	gcMu    sync.Mutex
	orphans map[string]bool
	// headroomMB is Config.DiskHeadroomMB (tests change it on the fly).
	headroomMB atomic.Int64

	stopReaper context.CancelFunc
	reaperDone chan struct{}
	warm       *warmer
	prepared   *preparedPool

	sampler     *metrics.Sampler
	stopSampler func()

	// overlays makes the sandboxes' disks (a copy of the first overlay
	// of each template instead of a qemu-img run per create).
	overlays disk.Overlays
}

// box is one sandbox: its persisted record and, while it runs, its machine.
type box struct {
	op sync.Mutex // serializes lifecycle operations on this sandbox

	mu         sync.Mutex // guards the fields below
	rec        *record
	machine    vmm.Machine
	slot       *netslot.Slot
	client     *envdclient.Client
	lastActive time.Time
	gone       bool // destroyed; the entry is being removed
	// series is the sandbox's metrics history (metrics.go).
	series *metrics.Series
}

// New creates a Manager and recovers the sandboxes found in DataDir.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Driver == nil || cfg.Images == nil || cfg.Slots == nil {
		return nil, errors.New("sandbox: Driver, Images and Slots are required")
	}
	if cfg.PreparedVMMs < 0 {
		return nil, fmt.Errorf("sandbox: negative number of prepared VMMs %d", cfg.PreparedVMMs)
	}
	if cfg.ConsoleLogMax < 0 {
		return nil, fmt.Errorf("sandbox: negative console log cap %d", cfg.ConsoleLogMax)
	}
	if cfg.DataDir == "" {
		cfg.DataDir = "/var/lib/capsule"
	}
	if cfg.RunDir == "" {
		cfg.RunDir = "/run/capsule"
	}
	if cfg.DefaultVCPUs == 0 {
		cfg.DefaultVCPUs = 1
	}
	if cfg.DefaultMemoryMB == 0 {
		cfg.DefaultMemoryMB = 256
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = 90 * time.Second
	}
	// Absolute, so that template directories compare equal to the paths
	// disks record as their backing files.
	dataDir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	cfg.DataDir = dataDir
	m := &Manager{cfg: cfg, log: cfg.Log, now: cfg.Now, boxes: map[string]*box{}, orphans: map[string]bool{}, warm: newWarmer()}
	m.prepared = newPreparedPool(m, cfg.PreparedVMMs)
	m.headroomMB.Store(cfg.DiskHeadroomMB)
	if m.log == nil {
		m.log = slog.Default()
	}
	m.log = m.log.With("component", "sandbox")
	if m.now == nil {
		m.now = time.Now
	}
	for _, d := range []string{m.sandboxesDir(), m.templatesDir(), cfg.RunDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
	}
	key, err := loadKey(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("sandbox: secrets key: %w", err)
	}
	m.key = key
	m.startSampler()
	if err := m.recover(ctx); err != nil {
		m.stopSampler()
		return nil, err
	}
	// Fork templates a crashed manager left indexed are of no use.
	m.dropForkTemplates()
	// Warm-up sandboxes a crashed manager left are of no use.
	for _, in := range m.List() {
		if strings.HasPrefix(in.ID, warmSandboxPrefix) {
			if err := m.Destroy(ctx, in.ID); err != nil {
				m.log.WarnContext(ctx, "destroy a leftover warm-up sandbox", "sandbox", in.ID, "err", err)
			}
		}
	}
	rctx, cancel := context.WithCancel(context.Background())
	m.stopReaper, m.reaperDone = cancel, make(chan struct{})
	go m.reap(rctx)
	return m, nil
}

func (m *Manager) sandboxesDir() string        { return filepath.Join(m.cfg.DataDir, "sandboxes") }
func (m *Manager) templatesDir() string        { return filepath.Join(m.cfg.DataDir, "templates") }
func (m *Manager) sandboxDir(id string) string { return filepath.Join(m.sandboxesDir(), id) }
func (m *Manager) runDir(id string) string     { return filepath.Join(m.cfg.RunDir, id) }

// CreateOptions describe a new sandbox.
type CreateOptions struct {
	// ID is the sandbox ID ([a-z0-9]+); empty generates one.
	ID string
	// Template is a snapshot template or an image template (by name or
	// image ID).
	Template    string
	VCPUs       int
	MemoryMB    int
	DiskMB      int // 0: the template's size
	Egress      bool
	AccessToken string
	DefaultUser string
	// DefaultWorkdir is where processes start by default ("": home).
	DefaultWorkdir string
	EnvVars        map[string]string
	Metadata       map[string]string
	// Timeout is the idle time after which the sandbox is paused (0: never).
	Timeout time.Duration

	// Network, when set, are the sandbox's egress rules (Egress is then
	// ignored); nil: egress.Open() when Egress, else egress.Closed().
	Network *egress.Rules

	// Hostname, when set, is the guest's hostname, set by /init (forks get
	// their own; others keep their root filesystem's).
	Hostname string

	// noWarm: a warm-up build's own sandbox (boots cold, starts no build).
	noWarm bool
	// from: a fork's hidden template (fork.go), restored instead of
	// resolving Template, which then only names the source's template.
	from *Template
}

// Info describes a sandbox.
type Info struct {
	ID         string            `json:"id"`
	State      State             `json:"state"`
	Template   string            `json:"template"`
	VCPUs      int               `json:"vcpus"`
	MemoryMB   int               `json:"memoryMB"`
	DiskMB     int               `json:"diskMB"`
	Egress     bool              `json:"egress"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	CreatedAt  time.Time         `json:"createdAt"`
	LastActive time.Time         `json:"lastActive"`
	// EnvdURL reaches the sandbox's envd from the host while it runs.
	EnvdURL string `json:"envdUrl,omitempty"`
	// HostAddr is the address by which the host reaches the guest.
	HostAddr string `json:"hostAddr,omitempty"`
	// RestoredFrom names the snapshot template the sandbox was created
	// from ("" for a cold boot; a warm snapshot for a restored image).
	RestoredFrom string `json:"restoredFrom,omitempty"`
	VMMPid       int    `json:"vmmPid,omitempty"`
	// StateReason says why a sandbox is stopped or in error.
	StateReason string `json:"stateReason,omitempty"`
	// DiskOnly: paused without its memory (PauseFilesystem); resuming it
	// boots it cold.
	DiskOnly bool `json:"diskOnly,omitempty"`

	// Network are the sandbox's egress rules.
	Network egress.Rules `json:"network"`

	// Phases are the steps of the create that returned this Info and
	// their durations (phases.go); empty elsewhere.
	Phases []Phase `json:"-"`
	// Prepared says that the create that returned this Info took a VMM
	// prepared ahead (prepared.go).
	Prepared bool `json:"-"`
}

var idRe = regexp.MustCompile(`^[a-z0-9]{1,63}$`)

// NewID returns a fresh sandbox ID: "i" and 20 characters of [a-z0-9].
func NewID() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 20)
	_, _ = rand.Read(b)
	for i := range b {
		b[i] = alphabet[int(b[i])%len(alphabet)]
	}
	return "i" + string(b)
}

// Create starts a sandbox and returns once its envd has been initialized.
func (m *Manager) Create(ctx context.Context, o CreateOptions) (info *Info, err error) {
	clock := phase.Start()
	if o.ID == "" {
		o.ID = NewID()
	}
	if !idRe.MatchString(o.ID) {
		return nil, fmt.Errorf("%w: sandbox ID %q must match [a-z0-9]{1,63}", ErrInvalid, o.ID)
	}
	if err := checkRules(o.Network); err != nil {
		return nil, err
	}
	if o.Network != nil {
		o.Egress = o.Network.AllowInternet
	}
	if strings.HasPrefix(o.ID, warmSandboxPrefix) && !o.noWarm {
		return nil, fmt.Errorf("%w: sandbox IDs starting with %q are reserved", ErrInvalid, warmSandboxPrefix)
	}
	tpl := o.from
	if tpl == nil {
		if tpl, err = m.resolveTemplate(ctx, o.Template); err != nil {
			return nil, err
		}
	}
	m.touchTemplate(tpl)
	rec := &record{
		ID: o.ID, State: StateStarting, Template: tpl.Name, ImageID: tpl.ImageID,
		Kernel: tpl.Kernel, Initrd: tpl.Initrd,
		VCPUs: o.VCPUs, MemoryMB: o.MemoryMB, DiskMB: o.DiskMB, Egress: o.Egress,
		Network:     cloneRules(o.Network),
		AccessToken: o.AccessToken, DefaultUser: o.DefaultUser, DefaultWorkdir: o.DefaultWorkdir,
		EnvVars: maps.Clone(o.EnvVars), Metadata: maps.Clone(o.Metadata),
		TimeoutSec: int(o.Timeout / time.Second), CreatedAt: m.now().UTC(), Hostname: o.Hostname,
	}
	if o.from != nil {
		rec.Template = o.Template // the source's, as E2B_TEMPLATE_ID
	}
	if rec.VCPUs == 0 {
		rec.VCPUs = m.cfg.DefaultVCPUs
	}
	if rec.MemoryMB == 0 {
		rec.MemoryMB = m.cfg.DefaultMemoryMB
	}
	if tpl.isSnapshot() {
		// A snapshot's machine shape is fixed.
		if (o.VCPUs != 0 && o.VCPUs != tpl.VCPUs) || (o.MemoryMB != 0 && o.MemoryMB != tpl.MemoryMB) {
			return nil, fmt.Errorf("%w: snapshot template %s has %d vCPUs and %d MiB", ErrInvalid, tpl.Name, tpl.VCPUs, tpl.MemoryMB)
		}
		rec.VCPUs, rec.MemoryMB = tpl.VCPUs, tpl.MemoryMB
	}
	if rec.VCPUs < 1 || rec.VCPUs > 64 || rec.MemoryMB < 64 || rec.MemoryMB > 1<<20 {
		return nil, fmt.Errorf("%w: vcpus must be 1..64 and memory_mb 64..1048576", ErrInvalid)
	}
	// An image template with a warm snapshot of this shape restores from
	// it; without one, it boots cold and a warm snapshot is built for next
	// time.
	image := tpl
	if !o.noWarm && o.from == nil {
		if w := m.warmTemplate(tpl, o, rec.VCPUs, rec.MemoryMB); w != nil {
			tpl = w
		} else {
			defer func() {
				if err == nil {
					m.startWarming(image, rec.VCPUs, rec.MemoryMB)
				}
			}()
		}
	}
	baseMB := tpl.diskMB()
	if rec.DiskMB == 0 {
		rec.DiskMB = baseMB
	}
	if rec.DiskMB < baseMB {
		return nil, fmt.Errorf("%w: disk_mb %d is smaller than the template's %d MiB", ErrInvalid, rec.DiskMB, baseMB)
	}

	if err := m.checkDisk("create", 0); err != nil {
		return nil, err
	}
	b := &box{rec: rec, lastActive: m.now()}
	b.op.Lock()
	defer b.op.Unlock()
	if err := m.admit(o.ID, b); err != nil {
		return nil, err
	}
	var undo rollback
	defer func() {
		if err != nil {
			undo.run(m.log)
			m.forget(o.ID, b)
		}
	}()
	undo.add("release capacity", func() error { m.release(rec, true); return nil })

	dir := m.sandboxDir(o.ID)
	var pv *preparedVM
	if tpl.isSnapshot() && m.preparer() != nil && o.from == nil {
		// (A fork's template serves its forks once: no pool.)
		key := m.preparedKey(tpl, rec.VCPUs, rec.MemoryMB, rec.DiskMB)
		pv = m.prepared.take(key)
		defer m.prepared.fill(key)
	}
	if pv != nil {
		// Its overlay's directory becomes the sandbox's.
		if err := os.Rename(pv.dir, dir); err != nil {
			m.prepared.discard(pv)
			return nil, fmt.Errorf("sandbox dir: %w", err)
		}
		pv.dir = dir
		undo.add("remove sandbox dir", func() error { return os.RemoveAll(dir) })
		undo.add("discard the prepared VMM", func() error {
			if pv.started {
				return nil // start's own steps undo it
			}
			m.prepared.discard(pv)
			return nil
		})
	} else {
		if err := os.Mkdir(dir, 0o700); err != nil {
			return nil, fmt.Errorf("sandbox dir: %w", err)
		}
		undo.add("remove sandbox dir", func() error { return os.RemoveAll(dir) })
		if err := m.overlays.Create(ctx, tpl.Rootfs, m.diskPath(o.ID), int64(rec.DiskMB)<<20); err != nil {
			return nil, err
		}
	}
	if err := m.writeRecord(dir, rec); err != nil {
		return nil, err
	}
	crashPoint("create-recorded")
	var snap *vmm.Snapshot
	if tpl.isSnapshot() {
		snap = &vmm.Snapshot{Dir: tpl.Snapshot, VCPUs: tpl.VCPUs, MemoryMB: tpl.MemoryMB}
		rec.RestoredFrom = tpl.Name
	}
	clock.Mark("prepare")
	if err := m.start(ctx, b, snap, tpl.EnvdToken, &undo, clock, pv); err != nil {
		return nil, err
	}
	m.log.InfoContext(ctx, "sandbox created", "sandbox", o.ID, "template", tpl.Name, "restored", snap != nil, "prepared", pv != nil)
	info = m.info(b)
	info.Phases, info.Prepared = clock.Phases(), pv != nil
	return info, nil
}

// start boots or restores the machine of b, waits for envd and sends
// /init; on success the sandbox is running and persisted. heldToken is the
// access token a restored envd still holds (it must be presented to
// replace it). clock, when not nil, records the phases. Called with b.op
// held.
func (m *Manager) start(ctx context.Context, b *box, snap *vmm.Snapshot, heldToken string, undo *rollback, clock *phase.Clock, pv *preparedVM) error {
	rec := b.snapshotRecord()
	var slot *netslot.Slot
	if pv != nil {
		slot, pv.started = pv.slot, true
	} else {
		var err error
		slot, err = m.cfg.Slots.Acquire(ctx)
		for errors.Is(err, netslot.ErrExhausted) && m.prepared.evictOne() {
			// Prepared VMMs never keep a sandbox from a slot.
			slot, err = m.cfg.Slots.Acquire(ctx)
		}
		if err != nil {
			return fmt.Errorf("%w: network slot: %v", ErrCapacity, err)
		}
	}
	undo.add("release network slot", func() error { return m.cfg.Slots.Release(context.Background(), slot) })
	if pv != nil {
		// Before the slot's release, which fails while a VMM holds its TAP.
		undo.add("discard the prepared VMM", func() error {
			err := pv.p.Discard(context.Background())
			return errors.Join(err, os.RemoveAll(m.runDir(pv.id))) // unless Start moved it
		})
	}
	// The slot is recorded before the machine starts: an agent that dies
	// from here on finds it again with the machine (recover adopts both).
	b.mu.Lock()
	b.rec.SlotIndex = slot.Index
	withSlot := *b.rec
	b.mu.Unlock()
	undo.add("forget network slot", func() error {
		b.mu.Lock()
		b.rec.SlotIndex = 0
		b.mu.Unlock()
		return nil
	})
	if err := m.writeRecord(m.sandboxDir(rec.ID), &withSlot); err != nil {
		return err
	}
	if err := slot.SetRules(ctx, rec.rules()); err != nil {
		return err
	}
	rd := m.runDir(rec.ID)
	// A prepared VMM's runtime directory is renamed to rd by its Start.
	undo.add("remove run dir", func() error { return os.RemoveAll(rd) })
	spec := vmm.Spec{
		ID:            rec.ID,
		Dir:           rd,
		Kernel:        rec.Kernel,
		Initrd:        rec.Initrd,
		Cmdline:       m.cmdline(rec, slot),
		VCPUs:         rec.VCPUs,
		MemoryMB:      rec.MemoryMB,
		Disks:         []vmm.Disk{{Path: m.diskPath(rec.ID), Format: "qcow2"}},
		Net:           &vmm.NetAttachment{MAC: slot.MAC}, // the TAP: below
		ConsoleLog:    filepath.Join(m.sandboxDir(rec.ID), "console.log"),
		ConsoleLogMax: m.cfg.ConsoleLogMax,
		// A resumed sandbox gets its own copy of its memory: its next
		// pause then saves cheaply. Clones of a template map it lazily.
		CopyMemory: snap != nil && rec.State == StateResuming,
	}
	bctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	clock.Mark("slot")
	var machine vmm.Machine
	var err error
	if pv != nil {
		// Its VMM has the slot's TAP already.
		machine, err = pv.p.Start(bctx, spec)
		if err != nil && snap != nil && bctx.Err() == nil {
			// Its VMM is gone (it exited, or its snapshot was replaced):
			// restore the usual way, in the same slot.
			m.log.WarnContext(ctx, "the prepared VMM did not start; restoring afresh", "sandbox", rec.ID, "err", err)
			_ = os.RemoveAll(m.runDir(pv.id))
			machine, err = nil, nil
		}
	}
	if machine == nil && err == nil {
		var tap *os.File
		if tap, err = slot.OpenTap(); err != nil {
			return err
		}
		defer tap.Close()
		if err := os.MkdirAll(rd, 0o700); err != nil {
			return err
		}
		spec.Net.Tap = tap
		if snap != nil {
			machine, err = m.cfg.Driver.Restore(bctx, spec, *snap)
		} else {
			machine, err = m.cfg.Driver.Boot(bctx, spec)
		}
	}
	if snap != nil {
		clock.Mark("restore")
	} else {
		clock.Mark("boot")
	}
	if err != nil {
		return fmt.Errorf("start machine: %w", err)
	}
	undo.add("kill machine", func() error { return machine.Kill(context.Background()) })
	switch rec.State {
	case StateStarting:
		crashPoint("create-machine-started")
	case StateResuming:
		crashPoint("resume-machine-started")
	}

	base := "http://" + netip.AddrPortFrom(slot.HostAddr, envdapi.DefaultPort).String()
	client := envdclient.New(base, rec.AccessToken)
	initClient := client
	if heldToken != rec.AccessToken {
		initClient = client.WithToken(heldToken)
	}
	// Under TCG a restored guest answers its first request only after
	// ≈ 0.15 s of work of its own (measured): /health is polled through
	// that, so that /init, sent to a guest that answers, is quick and
	// sets its clock on time (sending /init first was measured no
	// faster: it waits as long and then needs a second /init for the
	// clock).
	if err := client.WaitHealthy(bctx, machine.Done()); err != nil {
		return fmt.Errorf("%w (console: %s)", err, spec.ConsoleLog)
	}
	clock.Mark("envd")
	ictx, stop := contextUntil(bctx, machine.Done())
	err = m.initEnvd(ictx, initClient, &rec)
	stop()
	if err != nil {
		if machineExited(machine) {
			return fmt.Errorf("the machine exited before envd answered (console: %s)", spec.ConsoleLog)
		}
		return fmt.Errorf("%w (console: %s)", err, spec.ConsoleLog)
	}
	clock.Mark("init")

	b.mu.Lock()
	b.machine, b.slot, b.client = machine, slot, client
	b.rec.State, b.rec.VMMPid, b.rec.SlotIndex, b.rec.StateReason = StateRunning, machine.PID(), slot.Index, ""
	b.lastActive = m.now()
	rec = *b.rec
	b.mu.Unlock()
	if err := m.writeRecord(m.sandboxDir(rec.ID), &rec); err != nil {
		return err
	}
	clock.Mark("commit")
	m.running(b, machine)
	return nil
}

// contextUntil is ctx, also cancelled when done closes; stop releases it.
func contextUntil(ctx context.Context, done <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// machineExited reports whether machine's VMM has exited.
func machineExited(machine vmm.Machine) bool {
	select {
	case <-machine.Done():
		return true
	default:
		return false
	}
}

// initEnvd sends envd its /init: the sandbox's environment, access token
// and the time. Sending it again is harmless (an adopted machine whose
// resume was interrupted gets it again).
//
// The guest sets its clock to the request's time when it handles it, so
// its clock ends behind by however long the request took to get there: on
// a freshly restored guest under TCG on a busy host, hundreds of
// milliseconds. When the call took longer than clockSlack the time is sent
// again (up to twice), to a guest that now answers quickly; envd steps its
// clock only forward for a small difference, never back.
func (m *Manager) initEnvd(ctx context.Context, c *envdclient.Client, rec *record) error {
	env := maps.Clone(rec.EnvVars)
	if env == nil {
		env = map[string]string{}
	}
	env["E2B_SANDBOX_ID"] = rec.ID
	env["E2B_TEMPLATE_ID"] = rec.Template
	tok := rec.AccessToken
	send := func(c *envdclient.Client) (time.Duration, error) {
		// Fresh entropy every time: a guest restored from a snapshot (a
		// template's clone, a fork, a resumed pause) starts with the RNG
		// state that was saved, which every other restore of it shares;
		// envd mixes this in and reseeds the kernel's generator.
		seed := make([]byte, envdapi.InitEntropyBytes)
		if _, err := rand.Read(seed); err != nil {
			return 0, fmt.Errorf("entropy for /init: %w", err)
		}
		now := m.now().UTC()
		began := time.Now()
		err := c.Init(ctx, envdapi.InitRequest{
			EnvVars: env, AccessToken: &tok, Timestamp: &now, DefaultUser: rec.DefaultUser, DefaultWorkdir: rec.DefaultWorkdir,
			Hostname: rec.Hostname, Entropy: seed,
		})
		return time.Since(began), err
	}
	took, err := send(c)
	m.log.DebugContext(ctx, "envd init", "sandbox", rec.ID, "took", took, "err", err)
	if err != nil || took <= clockSlack {
		return err
	}
	// Again with the token the first /init set, on the same connection
	// (a restored guest's first request is the slow one: TCG translates
	// the code it runs); best effort: the sandbox runs, only its clock
	// may be a little late.
	again := c.WithToken(tok)
	for range 2 {
		took, err = send(again)
		m.log.DebugContext(ctx, "envd init again", "sandbox", rec.ID, "took", took, "err", err)
		if err != nil {
			m.log.WarnContext(ctx, "set the guest's clock again", "sandbox", rec.ID, "err", err)
			return nil
		}
		if took <= clockSlack {
			break
		}
	}
	return nil
}

// clockSlack is how late a guest's clock may be set by /init before it is
// sent again (initEnvd).
const clockSlack = 100 * time.Millisecond

// resyncClock sets the clock of a guest that goes on after a snapshot
// (Machine.Snapshot with keepRunning): its clocks stood still while it was
// saved, so its wall clock lags the host's by the guest's pause (seconds
// with much memory in use) and nothing else would ever set it again. A
// failure is logged, not returned: the snapshot is complete and the
// sandbox runs; only its clock is late.
func (m *Manager) resyncClock(ctx context.Context, b *box, rec *record) {
	b.mu.Lock()
	client := b.client
	b.mu.Unlock()
	if client == nil {
		return
	}
	if err := m.initEnvd(ctx, client, rec); err != nil {
		m.log.WarnContext(ctx, "set the clock of a sandbox after its snapshot", "sandbox", rec.ID, "err", err)
	}
}

// cmdline is the guest kernel command line of a sandbox.
func (m *Manager) cmdline(rec record, slot *netslot.Slot) string {
	parts := []string{
		"root=/dev/vda", "rw", slot.KernelIPParam(),
		"capsule.sandbox_id=" + rec.ID, "capsule.template_id=" + rec.Template,
	}
	if m.cfg.KernelArgs != "" {
		parts = append(parts, m.cfg.KernelArgs)
	}
	return strings.Join(parts, " ")
}

// diskFile is a sandbox's disk in its directory.
const diskFile = "rootfs.qcow2"

func (m *Manager) diskPath(id string) string { return filepath.Join(m.sandboxDir(id), diskFile) }

// watchMachine notices a VMM that exits on its own (guest poweroff, VMM
// crash or kill) and releases what the machine held; the sandbox stays,
// stopped, with its disk (Resume boots it cold, Destroy removes it).
func (m *Manager) watchMachine(b *box, machine vmm.Machine) {
	<-machine.Done()
	b.op.Lock()
	defer b.op.Unlock()
	b.mu.Lock()
	current := b.machine == machine && b.rec.State == StateRunning && !b.gone
	b.mu.Unlock()
	if !current {
		return // paused, destroyed or replaced: the operation cleaned up
	}
	reason := "its machine exited unexpectedly"
	if err := vmmErr(machine); err != nil {
		reason += ": " + err.Error()
	}
	m.log.Warn("sandbox machine exited unexpectedly; sandbox stopped, disk kept", "sandbox", b.id(), "reason", reason)
	m.stopLocked(context.Background(), b, reason)
}

// vmmErr is the exit error of a machine that reports one.
func vmmErr(machine vmm.Machine) error {
	if e, ok := machine.(interface{ Err() error }); ok {
		return e.Err()
	}
	return nil
}

// stopLocked releases the machine of b (which has exited or must go) and
// records the sandbox as stopped with reason; its disk stays. Called with
// b.op held.
func (m *Manager) stopLocked(ctx context.Context, b *box, reason string) {
	b.mu.Lock()
	machine, slot, client := b.machine, b.slot, b.client
	b.machine, b.slot, b.client = nil, nil, nil
	b.rec.State, b.rec.StateReason, b.rec.VMMPid, b.rec.SlotIndex, b.rec.PendingSnapshot = StateStopped, reason, 0, 0, ""
	rec := *b.rec
	b.mu.Unlock()
	m.sampler.Remove(rec.ID)
	if machine != nil {
		_ = machine.Kill(ctx)
		m.release(&rec, false)
	}
	if client != nil {
		client.Close()
	}
	if slot != nil {
		if err := m.cfg.Slots.Release(ctx, slot); err != nil {
			m.log.ErrorContext(ctx, "release network slot", "sandbox", rec.ID, "err", err)
		}
	}
	_ = os.RemoveAll(m.runDir(rec.ID))
	if err := m.writeRecord(m.sandboxDir(rec.ID), &rec); err != nil {
		m.log.ErrorContext(ctx, "persist a stopped sandbox", "sandbox", rec.ID, "err", err)
	}
}

// admit registers a new sandbox and reserves its resources.
func (m *Manager) admit(id string, b *box) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.boxes[id]; ok {
		return fmt.Errorf("%w: sandbox %s already exists", ErrConflict, id)
	}
	if err := m.used.reserve(m.cfg.Capacity, b.rec.VCPUs, b.rec.MemoryMB, b.rec.DiskMB); err != nil {
		return err
	}
	m.boxes[id] = b
	return nil
}

func (m *Manager) forget(id string, b *box) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.boxes[id] == b {
		delete(m.boxes, id)
	}
}

// release gives back a sandbox's CPU and memory (and disk with withDisk).
func (m *Manager) release(rec *record, withDisk bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := 0
	if withDisk {
		d = rec.DiskMB
	}
	m.used.release(rec.VCPUs, rec.MemoryMB, d)
}

func (m *Manager) get(id string) (*box, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boxes[id]
	if !ok {
		return nil, fmt.Errorf("%w: sandbox %s", ErrNotFound, id)
	}
	return b, nil
}

// lock takes the operation lock of a live sandbox.
func (m *Manager) lock(id string) (*box, error) {
	b, err := m.get(id)
	if err != nil {
		return nil, err
	}
	b.op.Lock()
	if b.isGone() {
		b.op.Unlock()
		return nil, fmt.Errorf("%w: sandbox %s", ErrNotFound, id)
	}
	return b, nil
}

// Get describes a sandbox.
func (m *Manager) Get(id string) (*Info, error) {
	b, err := m.get(id)
	if err != nil {
		return nil, err
	}
	return m.info(b), nil
}

// List describes every sandbox, ordered by ID.
func (m *Manager) List() []*Info {
	m.mu.Lock()
	boxes := slices.Collect(maps.Values(m.boxes))
	m.mu.Unlock()
	out := make([]*Info, 0, len(boxes))
	for _, b := range boxes {
		out = append(out, m.info(b))
	}
	slices.SortFunc(out, func(a, b *Info) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Client returns the envd client of a running sandbox.
func (m *Manager) Client(id string) (*envdclient.Client, error) {
	b, err := m.get(id)
	if err != nil {
		return nil, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.rec.State != StateRunning || b.client == nil {
		return nil, fmt.Errorf("%w: sandbox %s is %s", ErrConflict, id, b.rec.State)
	}
	return b.client, nil
}

// Ping marks a sandbox active (it resets the idle timeout).
func (m *Manager) Ping(id string) error {
	b, err := m.get(id)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.lastActive = m.now()
	b.mu.Unlock()
	return nil
}

// SetTimeout changes the idle timeout of a sandbox (0: never pause).
func (m *Manager) SetTimeout(id string, d time.Duration) error {
	b, err := m.get(id)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.rec.TimeoutSec = int(d / time.Second)
	b.lastActive = m.now()
	rec := *b.rec
	b.mu.Unlock()
	return m.writeRecord(m.sandboxDir(id), &rec)
}

func (m *Manager) info(b *box) *Info {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := b.rec
	in := &Info{
		ID: r.ID, State: r.State, Template: r.Template, VCPUs: r.VCPUs, MemoryMB: r.MemoryMB,
		DiskMB: r.DiskMB, Egress: r.Egress, Network: r.rules(), Metadata: maps.Clone(r.Metadata),
		CreatedAt: r.CreatedAt, LastActive: b.lastActive, RestoredFrom: r.RestoredFrom,
		StateReason: r.StateReason, DiskOnly: r.State == StatePaused && r.DiskOnly,
	}
	if r.State == StateRunning && b.slot != nil {
		in.HostAddr = b.slot.HostAddr.String()
		in.EnvdURL = b.client.Base()
		in.VMMPid = b.machine.PID()
	}
	return in
}

func (b *box) id() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.rec.ID
}

func (b *box) isGone() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.gone
}

func (b *box) snapshotRecord() record {
	b.mu.Lock()
	defer b.mu.Unlock()
	return *b.rec
}

func (b *box) setState(s State) {
	b.mu.Lock()
	b.rec.State = s
	b.mu.Unlock()
}

// rollback runs undo steps in reverse order.
type rollback struct {
	steps []undoStep
}

type undoStep struct {
	name string
	fn   func() error
}

func (r *rollback) add(name string, fn func() error) { r.steps = append(r.steps, undoStep{name, fn}) }

func (r *rollback) run(log *slog.Logger) {
	for i := len(r.steps) - 1; i >= 0; i-- {
		if err := r.steps[i].fn(); err != nil {
			log.Error("rollback step failed", "step", r.steps[i].name, "err", err)
		}
	}
	r.steps = nil
}

// generationDir names the directory of a sandbox's n-th pause snapshot.
func generationDir(dir string, n int) string {
	return filepath.Join(dir, "snapshot-"+strconv.Itoa(n))
}
