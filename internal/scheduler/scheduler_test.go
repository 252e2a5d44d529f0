package scheduler

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

var now = time.Date(2026, 12, 7, 6, 0, 0, 0, time.UTC)

func id(b byte) ID { return ID{15: b} }

var (
	teamA = id(0xa1) // a regular team
	teamB = id(0xb1) // a BYOC team
	teamC = id(0xc1) // another BYOC team
	tplX  = id(0x71)
)

// host is an online platform host with a fresh heartbeat: 4 CPUs (16 vCPUs
// at the default overcommit), 8192 MiB, 10240 MiB of disk, nothing reserved.
func host(name string, opts ...func(*Host)) Host {
	h := Host{ID: id(name[len(name)-1]), Name: name, Team: PlatformTeam, Status: StatusOnline,
		LastHeartbeat: now.Add(-5 * time.Second), Total: Resources{4, 8192, 10240}}
	for _, o := range opts {
		o(&h)
	}
	return h
}

func reserved(cpu, mem, disk int64) func(*Host) {
	return func(h *Host) { h.Reserved = Resources{cpu, mem, disk} }
}
func team(t ID) func(*Host)       { return func(h *Host) { h.Team = t } }
func status(s string) func(*Host) { return func(h *Host) { h.Status = s } }
func beat(ago time.Duration) func(*Host) {
	return func(h *Host) { h.LastHeartbeat = now.Add(-ago) }
}
func holds(t ID) func(*Host)                { return func(h *Host) { h.Templates = append(h.Templates, t) } }
func tags(kv map[string]string) func(*Host) { return func(h *Host) { h.Tags = kv } }
func hid(b byte) func(*Host)                { return func(h *Host) { h.ID = id(b) } }
func maxVCPUs(n int64) func(*Host)          { return func(h *Host) { h.MaxVCPUs = n } }

func req(cpu, mem, disk int64) Request {
	return Request{Team: teamA, Resources: Resources{cpu, mem, disk}}
}

func byoc(r Request, t ID) Request { r.Team, r.BYOC = t, true; return r }
func withTpl(r Request) Request    { r.Template, r.HasTemplate = tplX, true; return r }

func TestChoose(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    Config
		hosts  []Host
		req    Request
		want   string // the chosen host's name; "" with reason
		reason Reason
		msg    string // in the error's message
	}{
		// Team rules.
		{name: "regular team on a platform host", hosts: []Host{host("p1")}, req: req(1, 512, 0), want: "p1"},
		{name: "regular team never on a BYOC host even when the platform host is busier",
			hosts: []Host{host("b1", team(teamB)), host("p1", reserved(8, 4096, 0))}, req: req(1, 512, 0), want: "p1"},
		{name: "regular team with only BYOC hosts", hosts: []Host{host("b1", team(teamB))}, req: req(1, 512, 0),
			reason: NoPlatformHost},
		{name: "BYOC team on its own host even when a platform host is emptier",
			hosts: []Host{host("p1"), host("b1", team(teamB), reserved(8, 4096, 0))}, req: byoc(req(1, 512, 0), teamB), want: "b1"},
		{name: "BYOC team never on another BYOC team's host",
			hosts: []Host{host("c1", team(teamC)), host("b1", team(teamB), reserved(8, 4096, 0))}, req: byoc(req(1, 512, 0), teamB), want: "b1"},
		{name: "BYOC team without a host of its own", hosts: []Host{host("p1"), host("c1", team(teamC))},
			req: byoc(req(1, 512, 0), teamB), reason: NoBYOCHost},
		{name: "BYOC team whose host is full does not spill onto the platform",
			hosts: []Host{host("p1"), host("b1", team(teamB), reserved(0, 8192, 0))}, req: byoc(req(1, 512, 0), teamB),
			reason: NotEnoughMemory},

		// Status and heartbeat.
		{name: "draining host excluded", hosts: []Host{host("p1", status(StatusDraining)), host("p2", reserved(8, 4096, 0))},
			req: req(1, 512, 0), want: "p2"},
		{name: "unreachable host excluded", hosts: []Host{host("p1", status(StatusUnreachable)), host("p2", reserved(8, 4096, 0))},
			req: req(1, 512, 0), want: "p2"},
		{name: "pending host excluded", hosts: []Host{host("p1", status(StatusPending)), host("p2", reserved(8, 4096, 0))},
			req: req(1, 512, 0), want: "p2"},
		{name: "offline host excluded", hosts: []Host{host("p1", status(StatusOffline)), host("p2", reserved(8, 4096, 0))},
			req: req(1, 512, 0), want: "p2"},
		{name: "online host with a stale heartbeat excluded", hosts: []Host{host("p1", beat(46*time.Second)), host("p2", reserved(8, 4096, 0))},
			req: req(1, 512, 0), want: "p2"},
		{name: "online host that never beat excluded", hosts: []Host{host("p1", func(h *Host) { h.LastHeartbeat = time.Time{} })},
			req: req(1, 512, 0), reason: NoHostOnline},
		{name: "stale-after is configurable", cfg: Config{StaleAfter: 2 * time.Minute},
			hosts: []Host{host("p1", beat(90*time.Second)), host("p2", reserved(8, 4096, 0))}, req: req(1, 512, 0), want: "p1"},
		{name: "no host online", hosts: []Host{host("p1", status(StatusDraining)), host("p2", beat(time.Hour))},
			req: req(1, 512, 0), reason: NoHostOnline, msg: "none of the 2 hosts is online"},
		{name: "no host at all", req: req(1, 512, 0), reason: NoPlatformHost},

		// Tags.
		{name: "tags select the host", hosts: []Host{host("p1"), host("p2", reserved(8, 4096, 0), tags(map[string]string{"gpu": "a100", "zone": "x"}))},
			req: func() Request { r := req(1, 512, 0); r.Tags = map[string]string{"gpu": "a100"}; return r }(), want: "p2"},
		{name: "a tag with another value does not match", hosts: []Host{host("p1", tags(map[string]string{"gpu": "t4"}))},
			req:    func() Request { r := req(1, 512, 0); r.Tags = map[string]string{"gpu": "a100"}; return r }(),
			reason: NoHostWithTags, msg: "gpu=a100"},

		// Admission.
		{name: "memory is never overcommitted", hosts: []Host{host("p1", reserved(0, 7800, 0))}, req: req(1, 512, 0),
			reason: NotEnoughMemory, msg: "512 MiB asked, at most 392 MiB free"},
		{name: "memory exactly full fits", hosts: []Host{host("p1", reserved(0, 7680, 0))}, req: req(1, 512, 0), want: "p1"},
		{name: "disk is never overcommitted", hosts: []Host{host("p1", reserved(0, 0, 10000))}, req: req(1, 512, 1024),
			reason: NotEnoughDisk},
		{name: "disk exactly full fits", hosts: []Host{host("p1", reserved(0, 0, 9216))}, req: req(1, 512, 1024), want: "p1"},
		{name: "vCPUs overcommitted 4x by default", hosts: []Host{host("p1", reserved(15, 0, 0))}, req: req(1, 512, 0), want: "p1"},
		{name: "vCPUs beyond the overcommit refused", hosts: []Host{host("p1", reserved(16, 0, 0))}, req: req(1, 512, 0),
			reason: NotEnoughCPU},
		{name: "overcommit ratio is configurable", cfg: Config{CPUOvercommit: 1}, hosts: []Host{host("p1", reserved(4, 0, 0))},
			req: req(1, 512, 0), reason: NotEnoughCPU},
		{name: "fractional overcommit rounds the capacity down", cfg: Config{CPUOvercommit: 1.6},
			hosts: []Host{host("p1", reserved(6, 0, 0))}, req: req(1, 512, 0), reason: NotEnoughCPU},
		{name: "a declared vCPU capacity above the overcommit is placed", cfg: Config{CPUOvercommit: 1},
			hosts: []Host{host("p1", reserved(15, 0, 0), maxVCPUs(16))}, req: req(1, 512, 0), want: "p1"},
		{name: "a declared vCPU capacity below the overcommit is not exceeded",
			hosts: []Host{host("p1", reserved(6, 0, 0), maxVCPUs(6)), host("p2", reserved(15, 0, 0))}, req: req(1, 512, 0), want: "p2"},
		{name: "a full declared vCPU capacity is refused", hosts: []Host{host("p1", reserved(6, 0, 0), maxVCPUs(6))},
			req: req(1, 512, 0), reason: NotEnoughCPU},
		{name: "the reason is what most hosts lack",
			hosts: []Host{host("p1", reserved(16, 0, 0)), host("p2", reserved(0, 8000, 0)), host("p3", reserved(0, 8000, 0))},
			req:   req(1, 512, 0), reason: NotEnoughMemory},
		{name: "a request larger than any host", hosts: []Host{host("p1"), host("p2")}, req: req(1, 16384, 0), reason: NotEnoughMemory},

		// Load: the tightest resource after placement.
		{name: "least loaded by the tightest resource, not the sum",
			// p1: cpu 9/16, mem 1024/8192 → 0.5625+; p2: mem 4608/8192 → 0.5625+
			// after 1 vCPU / 512 MiB: p1 max(10/16, 1536/8192) = 0.625; p2 max(1/16, 4608/8192) = 0.5625.
			hosts: []Host{host("p1", reserved(9, 1024, 0)), host("p2", reserved(0, 4096, 0))}, req: req(1, 512, 0), want: "p2"},
		{name: "disk is a resource too",
			hosts: []Host{host("p1", reserved(0, 0, 9000)), host("p2", reserved(4, 2048, 0))}, req: req(1, 512, 0), want: "p2"},
		{name: "load is relative to each host's size",
			hosts: []Host{host("p1", reserved(0, 4096, 0)), host("p2", reserved(0, 6144, 0), func(h *Host) { h.Total.MemoryMB = 32768 })},
			req:   req(1, 512, 0), want: "p2"},

		// Template affinity.
		{name: "affinity wins over a slightly emptier host",
			hosts: []Host{host("p1"), host("p2", reserved(0, 1536, 0), holds(tplX))}, req: withTpl(req(1, 512, 0)), want: "p2"},
		{name: "affinity loses to a much emptier host (more than the weight)",
			hosts: []Host{host("p1"), host("p2", reserved(0, 4096, 0), holds(tplX))}, req: withTpl(req(1, 512, 0)), want: "p1"},
		{name: "equal score goes to the holder",
			// p1 load 0.3125 (2048+512)/8192; p2 load 0.5625 - 0.25 = 0.3125.
			hosts: []Host{host("p1", reserved(0, 2048, 0)), host("p2", reserved(0, 4096, 0), holds(tplX))}, req: withTpl(req(1, 512, 0)), want: "p2"},
		{name: "weight >= 1 makes affinity absolute", cfg: Config{AffinityWeight: 1},
			hosts: []Host{host("p1"), host("p2", reserved(0, 7168, 0), holds(tplX))}, req: withTpl(req(1, 512, 0)), want: "p2"},
		{name: "negative weight turns affinity off", cfg: Config{AffinityWeight: -1},
			hosts: []Host{host("p1", reserved(0, 512, 0)), host("p2", reserved(0, 1024, 0), holds(tplX))}, req: withTpl(req(1, 512, 0)), want: "p1"},
		{name: "affinity never admits a full host",
			hosts: []Host{host("p1", reserved(0, 6000, 0)), host("p2", reserved(0, 8000, 0), holds(tplX))}, req: withTpl(req(1, 512, 0)), want: "p1"},
		{name: "a request without template ignores what hosts hold",
			hosts: []Host{host("p1", reserved(0, 512, 0)), host("p2", reserved(0, 1024, 0), holds(tplX))}, req: req(1, 512, 0), want: "p1"},
		{name: "a draining holder is not chosen",
			hosts: []Host{host("p1", reserved(0, 4096, 0)), host("p2", status(StatusDraining), holds(tplX))}, req: withTpl(req(1, 512, 0)), want: "p1"},

		// Deterministic tie-break.
		{name: "equal load: the smaller name", hosts: []Host{host("p2"), host("p1"), host("p3")}, req: req(1, 512, 0), want: "p1"},
		{name: "equal load and name: the smaller ID",
			hosts: []Host{host("same", hid(9)), host("same", hid(3)), host("same", hid(7))}, req: req(1, 512, 0), want: "same#3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hosts := append([]Host(nil), tc.hosts...)
			got, err := New(tc.cfg).Choose(hosts, tc.req, now)
			if tc.want == "" {
				var nh *NoHostError
				if !errors.As(err, &nh) || !errors.Is(err, ErrNoHost) {
					t.Fatalf("Choose = %+v, %v; want a NoHostError %s", got, err, tc.reason)
				}
				if nh.Reason != tc.reason || !strings.Contains(nh.Error(), tc.msg) {
					t.Fatalf("Choose error = %s %q; want reason %s with %q", nh.Reason, nh.Error(), tc.reason, tc.msg)
				}
				return
			}
			if err != nil {
				t.Fatalf("Choose: %v; want host %s", err, tc.want)
			}
			name := got.Host.Name
			if strings.Contains(tc.want, "#") {
				name = fmt.Sprintf("%s#%d", name, got.Host.ID[15])
			}
			if name != tc.want {
				t.Fatalf("Choose = %s (load %.4f, affinity %v); want %s", name, got.Load, got.Affinity, tc.want)
			}
		})
	}
}

func TestReservation(t *testing.T) {
	for _, tc := range []struct {
		state string
		want  Resources
	}{
		{"starting", Resources{2, 1024, 100}},
		{"running", Resources{2, 1024, 100}},
		{"pausing", Resources{2, 1024, 100}},
		{"resuming", Resources{2, 1024, 100}},
		{"missing", Resources{2, 1024, 100}},
		{"paused", Resources{0, 0, 1124}}, // disk + the saved memory
		{"error", Resources{0, 0, 100}},
		{"stopped", Resources{}},
	} {
		t.Run(tc.state, func(t *testing.T) {
			if got := Reservation(tc.state, 2, 1024, 100); got != tc.want {
				t.Fatalf("Reservation(%s) = %+v; want %+v", tc.state, got, tc.want)
			}
		})
	}
}

func TestNoHostErrorRevealsNothingOfOtherTeams(t *testing.T) {
	// Ten hosts of another BYOC team are not counted in the message.
	var hosts []Host
	for i := range 10 {
		hosts = append(hosts, host(fmt.Sprintf("c%d", i), team(teamC)))
	}
	hosts = append(hosts, host("b1", team(teamB), status(StatusOffline)))
	_, err := New(Config{}).Choose(hosts, byoc(req(1, 512, 0), teamB), now)
	if err == nil || !strings.Contains(err.Error(), "none of the 1 hosts") {
		t.Fatalf("Choose error = %v; want it to count the team's 1 host only", err)
	}
}

// TestChooseProperties checks Choose on random fleets: the chosen host is
// admissible; no admissible host has a strictly lower load with the same
// affinity, nor a strictly lower score; and Choose fails only when no host
// is admissible.
func TestChooseProperties(t *testing.T) {
	teams := []ID{PlatformTeam, teamB, teamC}
	statuses := []string{StatusOnline, StatusOnline, StatusOnline, StatusDraining, StatusUnreachable, StatusPending, StatusOffline}
	for seed := range uint64(500) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x5ced))
			cfg := Config{CPUOvercommit: []float64{1, 2, 4, 2.5}[rng.IntN(4)], AffinityWeight: []float64{0, 0.1, 0.25, 1, -1}[rng.IntN(5)]}
			s := New(cfg)
			hosts := make([]Host, rng.IntN(30))
			for i := range hosts {
				total := Resources{int64(1 + rng.IntN(16)), int64(1024 * (1 + rng.IntN(64))), int64(1024 * rng.IntN(200))}
				res := Resources{rng.Int64N(total.VCPUs*4 + 1), rng.Int64N(total.MemoryMB + 1), rng.Int64N(total.DiskMB + 1)}
				hosts[i] = Host{ID: ID{0: byte(i), 15: byte(rng.IntN(3))}, Name: fmt.Sprintf("h%d", rng.IntN(10)),
					Team: teams[rng.IntN(len(teams))], Status: statuses[rng.IntN(len(statuses))],
					LastHeartbeat: now.Add(-time.Duration(rng.IntN(60)) * time.Second), Total: total, Reserved: res}
				if rng.IntN(3) == 0 {
					hosts[i].Templates = []ID{tplX}
				}
				if rng.IntN(4) == 0 {
					hosts[i].Tags = map[string]string{"zone": []string{"a", "b"}[rng.IntN(2)]}
				}
			}
			r := Request{Team: teams[rng.IntN(len(teams))], Resources: Resources{int64(1 + rng.IntN(8)), int64(128 * (1 + rng.IntN(64))), int64(512 * rng.IntN(8))},
				HasTemplate: rng.IntN(2) == 0, Template: tplX}
			r.BYOC = r.Team != PlatformTeam
			if rng.IntN(5) == 0 {
				r.Tags = map[string]string{"zone": "a"}
			}
			got, err := s.Choose(hosts, r, now)
			anyAdmissible := false
			for i := range hosts {
				anyAdmissible = anyAdmissible || s.Admissible(&hosts[i], r, now)
			}
			if err != nil {
				if anyAdmissible || !errors.Is(err, ErrNoHost) {
					t.Fatalf("Choose failed (%v) with an admissible host", err)
				}
				return
			}
			h := got.Host
			if !s.Admissible(h, r, now) {
				t.Fatalf("chose %s, which is not admissible", h.Name)
			}
			if r.BYOC && h.Team != r.Team || !r.BYOC && h.Team != PlatformTeam {
				t.Fatalf("chose %s of team %x for team %x (BYOC %v)", h.Name, h.Team, r.Team, r.BYOC)
			}
			c := s.Capacity(h)
			if h.Reserved.MemoryMB+r.Resources.MemoryMB > h.Total.MemoryMB || h.Reserved.DiskMB+r.Resources.DiskMB > h.Total.DiskMB ||
				h.Reserved.VCPUs+r.Resources.VCPUs > c.VCPUs {
				t.Fatalf("chose %s, which overcommits: reserved %+v + %+v > %+v", h.Name, h.Reserved, r.Resources, c)
			}
			for i := range hosts {
				o := &hosts[i]
				if !s.Admissible(o, r, now) {
					continue
				}
				aff := r.HasTemplate && o.holds(r.Template)
				if aff == got.Affinity && s.Load(o, r.Resources) < got.Load {
					t.Fatalf("chose %s (load %v, affinity %v) but %s has load %v with the same affinity",
						h.Name, got.Load, got.Affinity, o.Name, s.Load(o, r.Resources))
				}
				if s.Score(o, r) < s.Score(h, r) {
					t.Fatalf("chose %s (score %v) but %s scores %v", h.Name, s.Score(h, r), o.Name, s.Score(o, r))
				}
			}
			// Deterministic: the same fleet in reverse order gives the same host.
			rev := append([]Host(nil), hosts...)
			for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
				rev[i], rev[j] = rev[j], rev[i]
			}
			again, err := s.Choose(rev, r, now)
			if err != nil || again.Host.ID != h.ID || again.Host.Name != h.Name {
				t.Fatalf("Choose on the reversed fleet = %v, %v; want %s", again.Host, err, h.Name)
			}
		})
	}
}
