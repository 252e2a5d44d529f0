package capsule

import (
	"context"
	"io"
	"iter"
	"net/http"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// AdminService is the platform administration (Client.Admin): every team,
// user and host, the platform-wide audit log, the platform team's
// sandboxes and the public templates' builds. It needs a platform admin's
// session token: anyone else's is ErrForbidden, no credentials
// ErrUnauthorized.
type AdminService struct{ c *Client }

// PageOptions sizes the pages of a listing.
type PageOptions struct {
	// PageSize is the items per request (0: the server's default).
	PageSize int
}

// AdminTeam is a team as platform admins see it.
type AdminTeam struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Slug string `json:"slug"`
	// BYOC: the team brings its own sandbox hosts.
	BYOC    bool `json:"is_byoc"`
	Members int  `json:"member_count"`
	// Sandboxes counts the team's sandboxes that are not stopped.
	Sandboxes int       `json:"sandbox_count"`
	CreatedAt time.Time `json:"created_at"`
}

// Teams iterates over every live team, newest first.
func (s *AdminService) Teams(ctx context.Context, opts PageOptions) iter.Seq2[AdminTeam, error] {
	params := wire.AdminListTeamsParams{Limit: ptrOrNil(opts.PageSize)}
	return paginate(func(cursor string) ([]AdminTeam, string, error) {
		params.Cursor = ptrOrNil(cursor)
		var out wire.AdminTeamPage
		resp, err := s.c.wire.AdminListTeams(ctx, &params)
		if err := decode(resp, err, http.StatusOK, &out); err != nil {
			return nil, "", err
		}
		list := make([]AdminTeam, len(out.Teams))
		for i, w := range out.Teams {
			list[i] = AdminTeam{ID: w.Id, Name: w.Name, Slug: w.Slug, BYOC: w.IsByoc, Members: w.MemberCount,
				Sandboxes: w.SandboxCount, CreatedAt: w.CreatedAt}
		}
		return list, out.NextCursor, nil
	})
}

// TeamBYOC is a team's bring-your-own-compute flag.
type TeamBYOC struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	BYOC bool   `json:"is_byoc"`
}

// SetBYOC lets team id register its own sandbox hosts, or stops it
// (idempotent; the platform team is ErrInvalid).
func (s *AdminService) SetBYOC(ctx context.Context, id string, enabled bool) (TeamBYOC, error) {
	var out wire.TeamBYOC
	resp, err := s.c.wire.AdminSetTeamBYOC(ctx, id, wire.SetTeamBYOCRequest{Enabled: enabled})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return TeamBYOC{}, err
	}
	return TeamBYOC{ID: out.Id, Name: out.Name, BYOC: out.IsByoc}, nil
}

// DeleteTeam deletes any team (the admin need not be a member) and
// destroys its sandboxes; the platform team is ErrForbidden.
func (s *AdminService) DeleteTeam(ctx context.Context, id string) (TeamDeletion, error) {
	var out wire.TeamDeletion
	resp, err := s.c.wire.AdminDeleteTeam(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return TeamDeletion{}, err
	}
	return deletionFrom(out), nil
}

// AdminUser is a user as platform admins see it.
type AdminUser struct {
	ID    string `json:"id"`
	Email string `json:"email"`
	Name  string `json:"name"`
	// Admin: a platform admin.
	Admin      bool       `json:"is_admin"`
	Disabled   bool       `json:"disabled"`
	DisabledAt *time.Time `json:"disabled_at,omitempty"`
	// Teams counts the user's live teams. (The answer of
	// SetUserDisabled has no Name, Teams nor CreatedAt.)
	Teams     int       `json:"team_count"`
	CreatedAt time.Time `json:"created_at,omitzero"`
}

// UserListOptions filters the users.
type UserListOptions struct {
	// EmailPrefix keeps the users whose address starts with it
	// (case-insensitively; "" all).
	EmailPrefix string
	PageSize    int
}

// Users iterates over the users by e-mail address.
func (s *AdminService) Users(ctx context.Context, opts UserListOptions) iter.Seq2[AdminUser, error] {
	params := wire.AdminListUsersParams{Limit: ptrOrNil(opts.PageSize), EmailPrefix: ptrOrNil(opts.EmailPrefix)}
	return paginate(func(cursor string) ([]AdminUser, string, error) {
		params.Cursor = ptrOrNil(cursor)
		var out wire.AdminUserPage
		resp, err := s.c.wire.AdminListUsers(ctx, &params)
		if err := decode(resp, err, http.StatusOK, &out); err != nil {
			return nil, "", err
		}
		list := make([]AdminUser, len(out.Users))
		for i, w := range out.Users {
			list[i] = AdminUser{ID: w.Id, Email: string(w.Email), Name: w.Name, Admin: w.IsAdmin, Disabled: w.Disabled,
				DisabledAt: w.DisabledAt, Teams: w.TeamCount, CreatedAt: w.CreatedAt}
		}
		return list, out.NextCursor, nil
	})
}

// SetUserDisabled disables user id (no login; its sessions and the API
// keys it made are refused from the next call on) or re-enables it.
// Idempotent; the admin's own account and the last active platform admin
// are ErrConflict.
func (s *AdminService) SetUserDisabled(ctx context.Context, id string, disabled bool) (AdminUser, error) {
	var out wire.UserState
	resp, err := s.c.wire.AdminSetUserDisabled(ctx, id, wire.SetUserDisabledRequest{Disabled: disabled})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return AdminUser{}, err
	}
	return AdminUser{ID: out.Id, Email: string(out.Email), Admin: out.IsAdmin, Disabled: out.Disabled, DisabledAt: out.DisabledAt}, nil
}

// AdminHost is a sandbox host with its team, as platform admins see it.
type AdminHost struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	TeamID string `json:"team_id"`
	// TeamName is the owning team's ("Platform" for the platform's
	// hosts).
	TeamName string `json:"team_name"`
	// BYOC: a team's own host.
	BYOC    bool   `json:"byoc"`
	Address string `json:"address"`
	// Status is "pending", "online", "unreachable", "draining" or
	// "offline".
	Status  string        `json:"status"`
	Version string        `json:"version"`
	Arch    string        `json:"arch"`
	Total   HostResources `json:"total"`
	// Sandboxes counts the host's sandboxes that are not stopped.
	Sandboxes       int        `json:"sandbox_count"`
	LastHeartbeatAt *time.Time `json:"last_heartbeat_at,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
}

// Hosts iterates over every sandbox host (the platform's and every BYOC
// team's), newest first.
func (s *AdminService) Hosts(ctx context.Context, opts PageOptions) iter.Seq2[AdminHost, error] {
	params := wire.AdminListHostsParams{Limit: ptrOrNil(opts.PageSize)}
	return paginate(func(cursor string) ([]AdminHost, string, error) {
		params.Cursor = ptrOrNil(cursor)
		var out wire.AdminHostPage
		resp, err := s.c.wire.AdminListHosts(ctx, &params)
		if err := decode(resp, err, http.StatusOK, &out); err != nil {
			return nil, "", err
		}
		list := make([]AdminHost, len(out.Hosts))
		for i, w := range out.Hosts {
			list[i] = AdminHost{ID: w.Id, Name: w.Name, TeamID: w.TeamId, TeamName: w.TeamName, BYOC: w.Byoc, Address: w.Address,
				Status: string(w.Status), Version: w.Version, Arch: w.Arch,
				Total:     HostResources{VCPUs: w.TotalVcpus, MemoryMB: w.TotalMemoryMb, DiskMB: w.TotalDiskMb},
				Sandboxes: w.SandboxCount, LastHeartbeatAt: w.LastHeartbeatAt, CreatedAt: w.CreatedAt}
		}
		return list, out.NextCursor, nil
	})
}

// AdminAuditLogOptions filters the platform-wide audit log.
type AdminAuditLogOptions struct {
	AuditLogOptions
	// TeamID keeps one team's events ("" every team's, deleted ones
	// included).
	TeamID string
}

// AuditLog iterates over the platform-wide audit log, newest first, each
// event with its TeamID.
func (s *AdminService) AuditLog(ctx context.Context, opts AdminAuditLogOptions) iter.Seq2[AuditEvent, error] {
	params := wire.AdminListAuditLogsParams{TeamId: ptrOrNil(opts.TeamID), Limit: ptrOrNil(opts.PageSize),
		ResourceType: words(opts.ResourceTypes), Action: words(opts.Actions)}
	return paginate(func(cursor string) ([]AuditEvent, string, error) {
		params.Cursor = ptrOrNil(cursor)
		var out wire.AdminAuditLogPage
		resp, err := s.c.wire.AdminListAuditLogs(ctx, &params)
		if err := decode(resp, err, http.StatusOK, &out); err != nil {
			return nil, "", err
		}
		list := make([]AuditEvent, len(out.AuditLogs))
		for i, w := range out.AuditLogs {
			list[i] = AuditEvent{ID: w.Id, TeamID: w.TeamId, ActorType: string(w.ActorType), ActorID: w.ActorId,
				ActorName: w.ActorName, ResourceType: w.ResourceType, ResourceID: w.ResourceId, Action: w.Action,
				Scope: string(w.Scope), Status: string(w.Status), Metadata: w.Metadata, CreatedAt: w.CreatedAt}
		}
		return list, out.NextCursor, nil
	})
}

// Sandboxes iterates over the platform team's sandboxes that opts keep,
// newest first.
func (s *AdminService) Sandboxes(ctx context.Context, opts ListOptions) iter.Seq2[Sandbox, error] {
	params := wire.AdminListSandboxesParams{Limit: ptrOrNil(opts.PageSize)}
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
	return paginate(func(cursor string) ([]Sandbox, string, error) {
		params.Cursor = ptrOrNil(cursor)
		var out wire.SandboxPage
		resp, err := s.c.wire.AdminListSandboxes(ctx, &params)
		if err := decode(resp, err, http.StatusOK, &out); err != nil {
			return nil, "", err
		}
		list := make([]Sandbox, len(out.Sandboxes))
		for i, w := range out.Sandboxes {
			list[i] = sandboxFrom(w)
		}
		return list, out.NextCursor, nil
	})
}

// Build queues a build of the public template name (the platform team's,
// which every team can use), as TemplateService.Build does for a team's.
func (s *AdminService) Build(ctx context.Context, name string, opts BuildOptions) (Build, error) {
	return submitBuild(opts, name,
		func(body wire.CreateBuildRequest) (*http.Response, error) {
			return s.c.wire.AdminCreateBuild(ctx, body)
		},
		func(contentType string, body io.Reader) (*http.Response, error) {
			return s.c.wire.AdminCreateBuildWithBody(ctx, contentType, body)
		})
}

// GetBuild returns the public templates' build id.
func (s *AdminService) GetBuild(ctx context.Context, id string) (Build, error) {
	var out wire.Build
	resp, err := s.c.wire.AdminGetBuild(ctx, id)
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return Build{}, err
	}
	return buildFrom(out), nil
}

// defaultBuildPage is the platform's page of builds when none is asked.
const defaultBuildPage = 100

// Builds iterates over the public templates' builds, newest first.
func (s *AdminService) Builds(ctx context.Context, opts PageOptions) iter.Seq2[Build, error] {
	size := opts.PageSize
	if size <= 0 {
		size = defaultBuildPage
	}
	return paginate(func(before string) ([]Build, string, error) {
		var out wire.BuildList
		resp, err := s.c.wire.AdminListBuilds(ctx, &wire.AdminListBuildsParams{Limit: &size, Before: ptrOrNil(before)})
		if err := decode(resp, err, http.StatusOK, &out); err != nil {
			return nil, "", err
		}
		list := make([]Build, len(out.Builds))
		for i, w := range out.Builds {
			list[i] = buildFrom(w)
		}
		// The next page starts after the last build of a full one.
		next := ""
		if len(list) == size {
			next = list[len(list)-1].ID
		}
		return list, next, nil
	})
}

// CancelBuild cancels the public templates' build id (one that has ended
// stays as it is).
func (s *AdminService) CancelBuild(ctx context.Context, id string) (Build, error) {
	var out wire.Build
	resp, err := s.c.wire.AdminCancelBuild(ctx, id)
	if err := decode(resp, err, http.StatusAccepted, &out); err != nil {
		return Build{}, err
	}
	return buildFrom(out), nil
}

// BuildLogPage is a part of a build's log.
type BuildLogPage struct {
	Lines []BuildLogLine `json:"lines"`
	// Next is the offset to read on from.
	Next int `json:"next"`
	// Status is the build's at the time of the read.
	Status string `json:"status"`
}

// BuildLog returns the lines of build id's log after offset (0: from the
// start), at most limit of them (0: the server's default).
func (s *AdminService) BuildLog(ctx context.Context, id string, offset, limit int) (BuildLogPage, error) {
	var out wire.BuildLogs
	resp, err := s.c.wire.AdminGetBuildLogs(ctx, id, &wire.AdminGetBuildLogsParams{Offset: ptrOrNil(offset), Limit: ptrOrNil(limit)})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return BuildLogPage{}, err
	}
	p := BuildLogPage{Lines: make([]BuildLogLine, len(out.Lines)), Next: out.Next, Status: string(out.Status)}
	for i, l := range out.Lines {
		p.Lines[i] = BuildLogLine{Offset: l.Offset, Step: l.Step, Stream: string(l.Stream), Line: l.Line, Time: l.Time}
	}
	return p, nil
}
