package scheduler

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// ID is a host's, team's or template's UUID (its 16 bytes).
type ID = [16]byte

// PlatformTeam is the team of the platform's hosts (store.PlatformTeamID).
var PlatformTeam ID

// Host statuses (hosts.status); only StatusOnline takes sandboxes.
const (
	StatusPending     = "pending"
	StatusOnline      = "online"
	StatusUnreachable = "unreachable"
	StatusDraining    = "draining"
	StatusOffline     = "offline"
)

// Resources are amounts of each scheduled resource. For a host's Total,
// VCPUs are its CPUs (before overcommit).
type Resources struct {
	VCPUs    int64
	MemoryMB int64
	DiskMB   int64
}

func (r Resources) add(o Resources) Resources {
	return Resources{r.VCPUs + o.VCPUs, r.MemoryMB + o.MemoryMB, r.DiskMB + o.DiskMB}
}

// Sandbox states (sandboxes.state), for Reservation.
const (
	stateStarting = "starting"
	stateRunning  = "running"
	statePausing  = "pausing"
	statePaused   = "paused"
	stateResuming = "resuming"
	stateMissing  = "missing"
	stateError    = "error"
)

// FullReservationStates are the sandbox states that reserve vCPUs, memory
// and disk on their host; DiskReservationStates those that reserve disk
// only. db/queries/scheduler.sql sums the same states (a test checks it).
var (
	FullReservationStates = []string{stateStarting, stateRunning, statePausing, stateResuming, stateMissing}
	DiskReservationStates = []string{statePaused, stateError}
)

// Reservation is what a sandbox in state reserves on its host (see the
// package doc): a paused sandbox keeps its disk and its saved memory on
// disk.
func Reservation(state string, vcpus, memoryMB, diskMB int64) Resources {
	switch state {
	case stateStarting, stateRunning, statePausing, stateResuming, stateMissing:
		return Resources{vcpus, memoryMB, diskMB}
	case statePaused:
		return Resources{DiskMB: diskMB + memoryMB}
	case stateError:
		return Resources{DiskMB: diskMB}
	}
	return Resources{}
}

// Host is a candidate host.
type Host struct {
	ID   ID
	Name string
	// Team owns the host: PlatformTeam, or the BYOC team.
	Team          ID
	Status        string
	LastHeartbeat time.Time
	Total         Resources
	// MaxVCPUs, when above 0, is the vCPU capacity the host declares (its
	// agent's -max-vcpus): it replaces Total.VCPUs × the overcommit ratio.
	MaxVCPUs int64
	// Reserved is what the sandboxes recorded on the host reserve.
	Reserved Resources
	// Tags are the host's labels.
	Tags map[string]string
	// Templates are templates the host holds (the candidates query fills
	// in the requested one only, when the host holds it).
	Templates []ID
}

func (h *Host) holds(t ID) bool {
	for _, x := range h.Templates {
		if x == t {
			return true
		}
	}
	return false
}

// Request is a sandbox to place.
type Request struct {
	Team ID
	// BYOC: the team runs on its own hosts (teams.is_byoc).
	BYOC      bool
	Resources Resources
	// Template is the template to start from; HasTemplate false: none
	// whose location matters (a built-in image every host has).
	Template    ID
	HasTemplate bool
	// Tags the host must have (key and value); nil: any host.
	Tags map[string]string
}

// Config tunes the scheduler. The zero value means the defaults.
type Config struct {
	// CPUOvercommit is how many vCPUs each host CPU backs (default 4).
	CPUOvercommit float64
	// AffinityWeight is the load discount of a host that holds the
	// requested template (default 0.25; a negative value means 0, no
	// affinity; ≥ 1: absolute).
	AffinityWeight float64
	// StaleAfter is the age past which a heartbeat is too old to schedule
	// on the host (default 45 s: three missed heartbeats).
	StaleAfter time.Duration
}

// Defaults of Config.
const (
	DefaultCPUOvercommit  = 4.0
	DefaultAffinityWeight = 0.25
	DefaultStaleAfter     = 45 * time.Second
)

func (c Config) withDefaults() Config {
	if c.CPUOvercommit <= 0 || math.IsNaN(c.CPUOvercommit) || math.IsInf(c.CPUOvercommit, 0) {
		c.CPUOvercommit = DefaultCPUOvercommit
	}
	if c.AffinityWeight == 0 {
		c.AffinityWeight = DefaultAffinityWeight
	} else if c.AffinityWeight < 0 || math.IsNaN(c.AffinityWeight) {
		c.AffinityWeight = 0
	}
	if c.StaleAfter <= 0 {
		c.StaleAfter = DefaultStaleAfter
	}
	return c
}

// Scheduler chooses hosts with one configuration.
type Scheduler struct{ cfg Config }

// New returns a scheduler with cfg (zero fields: the defaults).
func New(cfg Config) *Scheduler { return &Scheduler{cfg: cfg.withDefaults()} }

// Config returns the effective configuration.
func (s *Scheduler) Config() Config { return s.cfg }

// Capacity is what h offers: its memory and disk, and the vCPUs it
// declares (MaxVCPUs) or else its CPUs times the overcommit ratio.
func (s *Scheduler) Capacity(h *Host) Resources {
	vcpus := int64(math.Floor(float64(h.Total.VCPUs) * s.cfg.CPUOvercommit))
	if h.MaxVCPUs > 0 {
		vcpus = h.MaxVCPUs
	}
	return Resources{VCPUs: vcpus, MemoryMB: h.Total.MemoryMB, DiskMB: h.Total.DiskMB}
}

// Eligible reports whether h may take req's sandbox at now, whatever its
// load: the team rule, the status, a fresh heartbeat and the tags.
func (s *Scheduler) Eligible(h *Host, req Request, now time.Time) bool {
	return teamAllowed(h, req) && s.live(h, now) && hasTags(h, req.Tags)
}

func teamAllowed(h *Host, req Request) bool {
	if req.BYOC {
		return h.Team == req.Team
	}
	return h.Team == PlatformTeam
}

func (s *Scheduler) live(h *Host, now time.Time) bool {
	return h.Status == StatusOnline && !h.LastHeartbeat.IsZero() && now.Sub(h.LastHeartbeat) < s.cfg.StaleAfter
}

func hasTags(h *Host, want map[string]string) bool {
	for k, v := range want {
		if got, ok := h.Tags[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// shortage is a bit set of the resources a host lacks for a request.
type shortage uint8

const (
	shortCPU shortage = 1 << iota
	shortMemory
	shortDisk
)

func (s *Scheduler) shortage(h *Host, r Resources) shortage {
	c, after := s.Capacity(h), h.Reserved.add(r)
	var sh shortage
	if after.VCPUs > c.VCPUs {
		sh |= shortCPU
	}
	if after.MemoryMB > c.MemoryMB {
		sh |= shortMemory
	}
	if after.DiskMB > c.DiskMB {
		sh |= shortDisk
	}
	return sh
}

// Fits reports whether h has room for r: memory and disk within the
// totals, vCPUs within the overcommitted capacity.
func (s *Scheduler) Fits(h *Host, r Resources) bool { return s.shortage(h, r) == 0 }

// Admissible reports whether h may take req's sandbox at now.
func (s *Scheduler) Admissible(h *Host, req Request, now time.Time) bool {
	return s.Eligible(h, req, now) && s.Fits(h, req.Resources)
}

// Load is h's tightest resource after placing r: the largest of its
// vCPU, memory and disk utilisation, each in [0, 1] when r fits. A
// resource of capacity 0 counts as 0 when nothing uses it and as full
// otherwise.
func (s *Scheduler) Load(h *Host, r Resources) float64 {
	c, after := s.Capacity(h), h.Reserved.add(r)
	return max(ratio(after.VCPUs, c.VCPUs), ratio(after.MemoryMB, c.MemoryMB), ratio(after.DiskMB, c.DiskMB))
}

func ratio(used, capacity int64) float64 {
	if capacity <= 0 {
		if used <= 0 {
			return 0
		}
		return 1
	}
	return float64(max(used, 0)) / float64(capacity)
}

// Score is how Choose ranks an admissible host (lower is better): its
// Load minus AffinityWeight when it holds the requested template.
func (s *Scheduler) Score(h *Host, req Request) float64 {
	sc := s.Load(h, req.Resources)
	if req.HasTemplate && h.holds(req.Template) {
		sc -= s.cfg.AffinityWeight
	}
	return sc
}

// Choice is a chosen host and why.
type Choice struct {
	Host *Host
	// Load is the host's tightest resource after the placement.
	Load float64
	// Affinity: the host holds the requested template.
	Affinity bool
}

// Choose returns the host for req among hosts at now, or a *NoHostError.
// hosts is not modified; the returned Host points into it.
func (s *Scheduler) Choose(hosts []Host, req Request, now time.Time) (Choice, error) {
	var (
		best      Choice
		bestScore float64
		found     bool
	)
	for i := range hosts {
		h := &hosts[i]
		if !s.Admissible(h, req, now) {
			continue
		}
		c := Choice{Host: h, Load: s.Load(h, req.Resources), Affinity: req.HasTemplate && h.holds(req.Template)}
		sc := s.Score(h, req)
		if !found || better(c, sc, best, bestScore) {
			best, bestScore, found = c, sc, true
		}
	}
	if !found {
		return Choice{}, s.explain(hosts, req, now)
	}
	return best, nil
}

// better orders candidates: score, then affinity, then load, then name,
// then ID.
func better(a Choice, as float64, b Choice, bs float64) bool {
	if as != bs {
		return as < bs
	}
	if a.Affinity != b.Affinity {
		return a.Affinity
	}
	if a.Load != b.Load {
		return a.Load < b.Load
	}
	if a.Host.Name != b.Host.Name {
		return a.Host.Name < b.Host.Name
	}
	return bytes.Compare(a.Host.ID[:], b.Host.ID[:]) < 0
}

// ErrNoHost is what every *NoHostError is (errors.Is).
var ErrNoHost = errors.New("no host can take the sandbox")

// Reason says why no host was chosen.
type Reason string

// Reasons of a NoHostError.
const (
	// NoPlatformHost: there is no platform host at all.
	NoPlatformHost Reason = "no_platform_host"
	// NoBYOCHost: the BYOC team has no host of its own.
	NoBYOCHost Reason = "no_byoc_host"
	// NoHostOnline: the team's (or the platform's) hosts exist but none is
	// online with a fresh heartbeat.
	NoHostOnline Reason = "no_host_online"
	// NoHostWithTags: no online host has the requested tags.
	NoHostWithTags Reason = "no_host_with_tags"
	// NotEnoughMemory, NotEnoughDisk, NotEnoughCPU: online hosts exist but
	// this resource is what most of them lack.
	NotEnoughMemory Reason = "not_enough_memory"
	NotEnoughDisk   Reason = "not_enough_disk"
	NotEnoughCPU    Reason = "not_enough_cpu"
)

// NoHostError is Choose's failure: Reason for programs, the message (safe
// to show to the team that asked) for people.
type NoHostError struct {
	Reason Reason
	Msg    string
}

func (e *NoHostError) Error() string { return e.Msg }

// Is makes errors.Is(err, ErrNoHost) hold.
func (e *NoHostError) Is(target error) bool { return target == ErrNoHost }

// explain builds the NoHostError of a request nothing admits. It counts
// only the hosts the team may use, so it reveals nothing of other teams'.
func (s *Scheduler) explain(hosts []Host, req Request, now time.Time) error {
	var teamHosts, online, tagged int
	var shortOn [3]int // hosts short of CPU, memory, disk
	var freeMem, freeDisk, freeCPU int64
	for i := range hosts {
		h := &hosts[i]
		if !teamAllowed(h, req) {
			continue
		}
		teamHosts++
		if !s.live(h, now) {
			continue
		}
		online++
		if !hasTags(h, req.Tags) {
			continue
		}
		tagged++
		c := s.Capacity(h)
		freeCPU = max(freeCPU, c.VCPUs-h.Reserved.VCPUs)
		freeMem = max(freeMem, c.MemoryMB-h.Reserved.MemoryMB)
		freeDisk = max(freeDisk, c.DiskMB-h.Reserved.DiskMB)
		sh := s.shortage(h, req.Resources)
		for i, bit := range []shortage{shortCPU, shortMemory, shortDisk} {
			if sh&bit != 0 {
				shortOn[i]++
			}
		}
	}
	switch {
	case teamHosts == 0 && req.BYOC:
		return &NoHostError{NoBYOCHost, "the team has no host of its own (BYOC): register one"}
	case teamHosts == 0:
		return &NoHostError{NoPlatformHost, "no host is registered"}
	case online == 0:
		return &NoHostError{NoHostOnline, fmt.Sprintf("none of the %d hosts is online", teamHosts)}
	case tagged == 0:
		return &NoHostError{NoHostWithTags, fmt.Sprintf("none of the %d online hosts has the tags %s", online, tagString(req.Tags))}
	}
	// The resource short on the most hosts; ties: memory, disk, CPU.
	r := req.Resources
	type cand struct {
		n      int
		reason Reason
		msg    string
	}
	cands := []cand{
		{shortOn[1], NotEnoughMemory, fmt.Sprintf("not enough memory: %d MiB asked, at most %d MiB free on a host", r.MemoryMB, max(freeMem, 0))},
		{shortOn[2], NotEnoughDisk, fmt.Sprintf("not enough disk: %d MiB asked, at most %d MiB free on a host", r.DiskMB, max(freeDisk, 0))},
		{shortOn[0], NotEnoughCPU, fmt.Sprintf("not enough CPU: %d vCPUs asked, at most %d free on a host", r.VCPUs, max(freeCPU, 0))},
	}
	top := cands[0]
	for _, c := range cands[1:] {
		if c.n > top.n {
			top = c
		}
	}
	return &NoHostError{top.reason, fmt.Sprintf("no host can take the sandbox (%d online): %s", tagged, top.msg)}
}

func tagString(tags map[string]string) string {
	parts := make([]string, 0, len(tags))
	for k, v := range tags {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts) // a stable message
	return strings.Join(parts, ",")
}
