package capsule

import (
	"context"
	"net/http"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// HostService manages the machines sandboxes run on (Client.Hosts): a
// BYOC team's own hosts, or, for platform admins, the platform's. It
// needs a session token (a user's login), not a team API key.
type HostService struct{ c *Client }

// Host is a machine running a Capsule agent.
type Host struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Type is "regular" (the platform's) or "byoc" (a team's own).
	Type   string `json:"type"`
	TeamID string `json:"team_id"`
	// Status is "pending" (not registered yet), "online", "draining",
	// "unreachable" or "offline".
	Status  string   `json:"status"`
	Address string   `json:"address"`
	Arch    string   `json:"arch"`
	Version string   `json:"version"`
	Tags    []string `json:"tags"`
	// Total is what the host offers; Used what its sandboxes reserve.
	Total           HostResources `json:"total"`
	Used            HostResources `json:"used"`
	Sandboxes       int           `json:"sandboxes"`
	Running         int           `json:"running"`
	Paused          int           `json:"paused"`
	LastHeartbeatAt *time.Time    `json:"last_heartbeat_at,omitempty"`
	RegisteredAt    *time.Time    `json:"registered_at,omitempty"`
	CreatedAt       time.Time     `json:"created_at"`
}

// HostResources are vCPUs, memory and disk.
type HostResources struct {
	VCPUs    int `json:"vcpus"`
	MemoryMB int `json:"memory_mb"`
	DiskMB   int `json:"disk_mb"`
}

func hostFrom(w wire.Host) Host {
	return Host{ID: w.Id, Name: w.Name, Type: string(w.Type), TeamID: w.TeamId, Status: string(w.Status), Address: w.Address,
		Arch: w.Arch, Version: w.Version, Tags: w.Tags,
		Total:     HostResources{VCPUs: w.Total.Vcpus, MemoryMB: w.Total.MemoryMb, DiskMB: w.Total.DiskMb},
		Used:      HostResources{VCPUs: w.Used.Vcpus, MemoryMB: w.Used.MemoryMb, DiskMB: w.Used.DiskMb},
		Sandboxes: w.Sandboxes, Running: w.Running, Paused: w.Paused, LastHeartbeatAt: w.LastHeartbeatAt,
		RegisteredAt: w.RegisteredAt, CreatedAt: w.CreatedAt}
}

// List returns the hosts the caller may see: its team's (BYOC), or every
// platform host for an admin.
func (s *HostService) List(ctx context.Context) ([]Host, error) {
	var out wire.HostList
	resp, err := s.c.wire.ListHosts(ctx)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	list := make([]Host, len(out.Hosts))
	for i, w := range out.Hosts {
		list[i] = hostFrom(w)
	}
	return list, nil
}

// Get returns host id.
func (s *HostService) Get(ctx context.Context, id string) (Host, error) {
	var out wire.Host
	resp, err := s.c.wire.GetHost(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Host{}, err
	}
	return hostFrom(out), nil
}

// CreateHostOptions describes a host to add.
type CreateHostOptions struct {
	Name string
	// Type is "byoc" (the team's own) or "regular" (admins only).
	Type string
	// Address is HOST:PORT where the control plane reaches the agent.
	Address string
	Tags    []string
}

// NewHost is a created host and the one-time token its agent registers
// with (`capsule agent --register-token …`).
type NewHost struct {
	Host                       Host      `json:"host"`
	RegistrationToken          string    `json:"registration_token"`
	RegistrationTokenExpiresAt time.Time `json:"registration_token_expires_at"`
}

// Create adds a host; its agent joins with the returned token.
func (s *HostService) Create(ctx context.Context, opts CreateHostOptions) (NewHost, error) {
	body := wire.CreateHostRequest{Name: opts.Name, Type: wire.CreateHostRequestType(opts.Type), Address: opts.Address}
	if opts.Tags != nil {
		body.Tags = &opts.Tags
	}
	var out wire.CreatedHost
	resp, err := s.c.wire.CreateHost(ctx, body)
	if err := decode(resp, err, http.StatusCreated, &out); err != nil {
		return NewHost{}, err
	}
	return NewHost{Host: hostFrom(out.Host), RegistrationToken: out.RegistrationToken,
		RegistrationTokenExpiresAt: out.RegistrationTokenExpiresAt}, nil
}

// Delete removes host id and returns how many of its sandboxes the
// deletion stopped; force destroys them (without it, a host with
// sandboxes is ErrConflict). Its agent destroys what it still has and
// exits at its next heartbeat.
func (s *HostService) Delete(ctx context.Context, id string, force bool) (stopped int, err error) {
	var out wire.HostDeletion
	resp, err := s.c.wire.DeleteHost(ctx, id, &wire.DeleteHostParams{Force: ptrOrNil(force)})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return 0, err
	}
	return len(out.Sandboxes), nil
}
