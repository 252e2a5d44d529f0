package capsule

import (
	"context"
	"encoding/json"
	"fmt"
	"iter"
	"net/http"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// State is a sandbox's lifecycle state.
type State string

// The states of a sandbox.
const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	StatePausing  State = "pausing"
	StatePaused   State = "paused"
	StateResuming State = "resuming"
	StateStopped  State = "stopped"
	StateError    State = "error"
	// StateMissing: its host has not been heard from; it comes back when
	// the host does.
	StateMissing State = "missing"
)

// Sandbox is a sandbox as the platform describes it. Its JSON form (for
// programs that print it) uses the API's field names; Timeout is in
// seconds there.
type Sandbox struct {
	ID          string `json:"id"`
	Template    string `json:"template"`
	State       State  `json:"state"`
	StateReason string `json:"state_reason,omitempty"`
	VCPUs       int    `json:"vcpus"`
	MemoryMB    int    `json:"memory_mb"`
	// Timeout is how long the sandbox may stay idle before it is paused
	// (AutoPause) or destroyed; 0: never.
	Timeout             time.Duration     `json:"-"`
	AllowInternetAccess bool              `json:"allow_internet_access"`
	AllowPublicTraffic  bool              `json:"allow_public_traffic"`
	AutoPause           bool              `json:"auto_pause"`
	AutoPauseMemory     bool              `json:"auto_pause_memory"` // false: the timeout's pause keeps the disk only
	AutoResume          bool              `json:"auto_resume"`
	Metadata            map[string]string `json:"metadata"`
	CreatedAt           time.Time         `json:"created_at"`
	// StartedAt, EndAt, PausedAt and StoppedAt are zero when they do not
	// apply.
	StartedAt time.Time `json:"started_at,omitzero"`
	EndAt     time.Time `json:"end_at,omitzero"`
	PausedAt  time.Time `json:"paused_at,omitzero"`
	StoppedAt time.Time `json:"stopped_at,omitzero"`
	// EnvdAccessToken authenticates to the sandbox's envd directly (E2B's
	// X-Access-Token); TrafficAccessToken opens its non-public ports
	// through the proxy. Both are absent from lists.
	EnvdAccessToken    string `json:"envd_access_token,omitempty"`
	TrafficAccessToken string `json:"traffic_access_token,omitempty"`
}

// MarshalJSON adds timeout_sec (Timeout in seconds).
func (s Sandbox) MarshalJSON() ([]byte, error) {
	type plain Sandbox
	return json.Marshal(struct {
		plain
		TimeoutSec int `json:"timeout_sec"`
	}{plain(s), int(s.Timeout / time.Second)})
}

func sandboxFrom(w wire.Sandbox) Sandbox {
	return Sandbox{
		ID: w.Id, Template: w.Template, State: State(w.State), StateReason: deref(w.StateReason),
		VCPUs: w.Vcpus, MemoryMB: w.MemoryMb, Timeout: time.Duration(w.TimeoutSec) * time.Second,
		AllowInternetAccess: w.AllowInternetAccess, AllowPublicTraffic: w.AllowPublicTraffic,
		AutoPause: w.AutoPause, AutoPauseMemory: w.AutoPauseMemory, AutoResume: w.AutoResume, Metadata: w.Metadata, CreatedAt: w.CreatedAt,
		StartedAt: deref(w.StartedAt), EndAt: deref(w.EndAt), PausedAt: deref(w.PausedAt), StoppedAt: deref(w.StoppedAt),
		EnvdAccessToken: deref(w.EnvdAccessToken), TrafficAccessToken: deref(w.TrafficAccessToken),
	}
}

// CreateOptions are a create's parameters; zero values take the
// platform's defaults.
type CreateOptions struct {
	// Template is a built-in image (`base`, `minimal`) or a snapshot of
	// the team ("" : the platform's default).
	Template string
	VCPUs    int
	MemoryMB int
	// Timeout: idle time before the sandbox is paused (AutoPause) or
	// destroyed (0: the platform's default).
	Timeout  time.Duration
	EnvVars  map[string]string
	Metadata map[string]string
	// AllowInternetAccess: nil lets the platform decide (it allows).
	AllowInternetAccess *bool
	// AllowPublicTraffic opens the sandbox's ports other than envd's to
	// anyone through the proxy.
	AllowPublicTraffic bool
	// AutoPause: at its timeout the sandbox is paused (nil: true), else
	// destroyed.
	AutoPause *bool
	// PauseWithoutMemory: the timeout's pause keeps the disk only (the
	// resume boots cold; E2B's autoPauseMemory false). Not with AutoResume.
	PauseWithoutMemory bool
	// AutoResume: traffic through the proxy resumes the sandbox when it is
	// paused.
	AutoResume bool
}

// SandboxService creates and manages sandboxes (Client.Sandboxes).
type SandboxService struct{ c *Client }

// Create starts a sandbox and returns it running.
func (s *SandboxService) Create(ctx context.Context, opts CreateOptions) (Sandbox, error) {
	req := wire.CreateSandboxRequest{
		Template: ptrOrNil(opts.Template), Vcpus: ptrOrNil(opts.VCPUs), MemoryMb: ptrOrNil(opts.MemoryMB),
		TimeoutSec: ptrOrNil(seconds(opts.Timeout)), AllowInternetAccess: opts.AllowInternetAccess,
		AllowPublicTraffic: ptrOrNil(opts.AllowPublicTraffic), AutoPause: opts.AutoPause, AutoResume: ptrOrNil(opts.AutoResume),
	}
	if opts.PauseWithoutMemory {
		no := false
		req.AutoPauseMemory = &no
	}
	if opts.EnvVars != nil {
		req.EnvVars = &opts.EnvVars
	}
	if opts.Metadata != nil {
		md := wire.Metadata(opts.Metadata)
		req.Metadata = &md
	}
	var out wire.Sandbox
	resp, err := s.c.wire.CreateSandbox(ctx, req)
	if err := decode(resp, err, http.StatusCreated, &out); err != nil {
		return Sandbox{}, err
	}
	return sandboxFrom(out), nil
}

// Get returns the sandbox id of the team.
func (s *SandboxService) Get(ctx context.Context, id string) (Sandbox, error) {
	var out wire.Sandbox
	resp, err := s.c.wire.GetSandbox(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Sandbox{}, err
	}
	return sandboxFrom(out), nil
}

// Connect returns the sandbox id running: a paused one is resumed first.
func (s *SandboxService) Connect(ctx context.Context, id string) (Sandbox, error) {
	sb, err := s.Get(ctx, id)
	if err != nil || sb.State == StateRunning {
		return sb, err
	}
	if sb.State != StatePaused {
		return sb, fmt.Errorf("capsule: sandbox %s is %s: %w", id, sb.State, ErrConflict)
	}
	return s.Resume(ctx, id)
}

// Pause saves the sandbox's memory and disk and stops its VM; Resume
// brings it back as it was.
func (s *SandboxService) Pause(ctx context.Context, id string) (Sandbox, error) {
	return s.pause(ctx, id, true)
}

// PauseFilesystemOnly keeps the sandbox's disk only: its VM is stopped
// after the guest's file systems are synced, and Resume boots it cold from
// the disk (files kept, processes not).
func (s *SandboxService) PauseFilesystemOnly(ctx context.Context, id string) (Sandbox, error) {
	return s.pause(ctx, id, false)
}

func (s *SandboxService) pause(ctx context.Context, id string, memory bool) (Sandbox, error) {
	var out wire.Sandbox
	resp, err := s.c.wire.PauseSandbox(ctx, id, wire.MemoryRequest{Memory: &memory})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Sandbox{}, err
	}
	return sandboxFrom(out), nil
}

// Resume restarts a paused sandbox where it stopped.
func (s *SandboxService) Resume(ctx context.Context, id string) (Sandbox, error) {
	return s.resume(ctx, id, true)
}

// ResumeCold boots a paused sandbox cold from its disk, dropping the
// memory its pause kept (E2B's onResume: 'reboot').
func (s *SandboxService) ResumeCold(ctx context.Context, id string) (Sandbox, error) {
	return s.resume(ctx, id, false)
}

func (s *SandboxService) resume(ctx context.Context, id string, memory bool) (Sandbox, error) {
	var out wire.Sandbox
	resp, err := s.c.wire.ResumeSandbox(ctx, id, wire.MemoryRequest{Memory: &memory})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Sandbox{}, err
	}
	return sandboxFrom(out), nil
}

// Kill destroys the sandbox and its disk. Killing a destroyed sandbox
// again is a no-op; one the team never had is ErrNotFound.
func (s *SandboxService) Kill(ctx context.Context, id string) error {
	resp, err := s.c.wire.DestroySandbox(ctx, id)
	return decode(resp, err, http.StatusNoContent, nil)
}

// SetTimeout sets how long from now the sandbox may stay idle (0: never
// times out).
func (s *SandboxService) SetTimeout(ctx context.Context, id string, d time.Duration) (Sandbox, error) {
	var out wire.Sandbox
	resp, err := s.c.wire.SetSandboxTimeout(ctx, id, wire.SetTimeoutRequest{TimeoutSec: seconds(d)})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Sandbox{}, err
	}
	return sandboxFrom(out), nil
}

// KeepAlive marks the sandbox active: its timeout starts again.
func (s *SandboxService) KeepAlive(ctx context.Context, id string) (Sandbox, error) {
	var out wire.Sandbox
	resp, err := s.c.wire.PingSandbox(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Sandbox{}, err
	}
	return sandboxFrom(out), nil
}

// ListOptions filter a list.
type ListOptions struct {
	// States keeps the sandboxes in any of these states (none: all but
	// stopped ones, as the platform lists them).
	States []State
	// Metadata keeps the sandboxes whose metadata has every entry.
	Metadata map[string]string
	// PageSize is how many sandboxes one request fetches (0: the
	// platform's default).
	PageSize int
}

// Page is one page of a list; Next is "" on the last one.
type Page struct {
	Sandboxes []Sandbox
	Next      string
}

// ListPage returns the page that cursor names ("" : the first), newest
// sandboxes first.
func (s *SandboxService) ListPage(ctx context.Context, opts ListOptions, cursor string) (Page, error) {
	var params wire.ListSandboxesParams
	if len(opts.States) > 0 {
		st := make([]wire.SandboxState, len(opts.States))
		for i, v := range opts.States {
			st[i] = wire.SandboxState(v)
		}
		params.State = &st
	}
	if len(opts.Metadata) > 0 {
		md := make([]string, 0, len(opts.Metadata))
		for k, v := range opts.Metadata {
			md = append(md, k+"="+v)
		}
		params.Metadata = &md
	}
	if opts.PageSize > 0 {
		params.Limit = &opts.PageSize
	}
	if cursor != "" {
		params.Cursor = &cursor
	}
	var out wire.SandboxPage
	resp, err := s.c.wire.ListSandboxes(ctx, &params)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Page{}, err
	}
	p := Page{Sandboxes: make([]Sandbox, len(out.Sandboxes)), Next: out.NextCursor}
	for i, w := range out.Sandboxes {
		p.Sandboxes[i] = sandboxFrom(w)
	}
	return p, nil
}

// List iterates over every sandbox that opts keep, newest first, fetching
// pages as it goes. An error ends the iteration (yielded once).
func (s *SandboxService) List(ctx context.Context, opts ListOptions) iter.Seq2[Sandbox, error] {
	return func(yield func(Sandbox, error) bool) {
		cursor := ""
		for {
			p, err := s.ListPage(ctx, opts, cursor)
			if err != nil {
				yield(Sandbox{}, err)
				return
			}
			for _, sb := range p.Sandboxes {
				if !yield(sb, nil) {
					return
				}
			}
			if p.Next == "" {
				return
			}
			cursor = p.Next
		}
	}
}
