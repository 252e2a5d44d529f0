package service

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/auth"
	"github.com/capsulehq/capsule/internal/hostapi"
	"github.com/capsulehq/capsule/internal/pki"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Host types: a regular host belongs to the platform (store.PlatformTeamID)
// and serves every team; a BYOC host belongs to one team that brought it.
const (
	HostRegular = "regular"
	HostBYOC    = "byoc"
)

// HostsConfig configures NewHosts.
type HostsConfig struct {
	Store *store.Store
	// Agents is the agent pool: a deleted host is evicted from it, and a
	// forced delete destroys the host's sandboxes through it.
	Agents *agentclient.Pool
	// Secret is the server secret: host JWTs are signed with a key
	// derived from it (auth.HostTokens).
	Secret []byte
	// CA issues the hosts' server certificates.
	CA *pki.CA
	// ClientCert is the control plane's client certificate for the agents
	// (Resolve's endpoints, which carry no bearer token: the agents
	// authenticate the control plane by this certificate); a new one from
	// CA when nil.
	ClientCert *pki.ClientCert
	Audit      *Audit
	// RegistrationTTL is the lifetime of a registration token
	// (auth.DefaultHostRegistrationTTL when zero).
	RegistrationTTL time.Duration
	// HeartbeatInterval is the interval the heartbeats' answers ask the
	// agents to beat at (hostapi.HeartbeatInterval when zero; whole
	// seconds).
	HeartbeatInterval time.Duration
	// Now is the clock of token expiry and certificates (time.Now when nil).
	Now func() time.Time
	Log *slog.Logger
}

// Hosts: the host records (created by administrators, registered by
// their agents with a one-time token), the agents' credentials and
// heartbeats (the control-plane side of internal/hostapi).
//
// Who may do what is read from the database on every call: users.is_admin
// (a platform administrator sees and manages every host, and alone creates
// regular ones), the caller's role in the session's team (its owners and
// admins create and manage the team's BYOC hosts when teams.is_byoc, its
// members see them). Another team's host, and a regular host for anyone
// but an administrator, is ErrNotFound.
//
// Deleting a host removes its row (no tombstone): its refresh tokens go
// with it (ON DELETE CASCADE), its sandboxes' records keep their state
// with host_id NULL, and its agent's next heartbeat finds no host: 404,
// whereupon the agent destroys its sandboxes and exits. An agent whose
// access token expired before it beat again gets 401 on refresh (its
// refresh token is gone) and waits for a new registration.
type Hosts struct {
	st         *store.Store
	agents     *agentclient.Pool
	ca         *pki.CA
	clientCert *pki.ClientCert
	tokens     *auth.HostTokens
	audit      *Audit
	regTTL     time.Duration
	beatEvery  time.Duration
	now        func() time.Time
	log        *slog.Logger
}

// NewHosts returns the hosts service.
func NewHosts(cfg HostsConfig) (*Hosts, error) {
	if cfg.Store == nil || cfg.Agents == nil || cfg.CA == nil {
		return nil, errors.New("service: hosts need a store, an agent pool and a CA")
	}
	h := &Hosts{st: cfg.Store, agents: cfg.Agents, ca: cfg.CA, clientCert: cfg.ClientCert,
		audit: cfg.Audit, regTTL: cfg.RegistrationTTL, beatEvery: cfg.HeartbeatInterval, now: cfg.Now, log: cfg.Log}
	if h.now == nil {
		h.now = time.Now
	}
	if h.regTTL == 0 {
		h.regTTL = auth.DefaultHostRegistrationTTL
	}
	if h.beatEvery < time.Second {
		h.beatEvery = hostapi.HeartbeatInterval
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	h.log = h.log.With("component", "hosts")
	if h.audit == nil {
		h.audit = NewAudit(cfg.Store, cfg.Log)
	}
	var err error
	if h.tokens, err = auth.NewHostTokens(auth.HostTokenConfig{Secret: cfg.Secret, AccessTTL: hostapi.AccessTokenTTL,
		RefreshTTL: hostapi.RefreshTokenTTL, RegistrationTTL: h.regTTL, Now: h.now}); err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	if h.clientCert == nil {
		if h.clientCert, err = cfg.CA.NewClientCert(); err != nil {
			return nil, fmt.Errorf("service: %w", err)
		}
	}
	return h, nil
}

// sandboxesOf returns the service's view of sandbox rows.
func sandboxesOf(rows []db.Sandbox) []Sandbox {
	out := make([]Sandbox, len(rows))
	for i, r := range rows {
		out[i] = sandboxOf(r)
	}
	return out
}

// hostWireID returns the wire ID of a host ("host-…").
func hostWireID(id pgtype.UUID) string { return hostIDOf(id).String() }

// Host is a host's record and its type.
type Host struct {
	db.Host
	// Type is HostRegular or HostBYOC.
	Type string
}

func hostView(row db.Host) Host {
	t := HostBYOC
	if row.TeamID == store.PlatformTeamID {
		t = HostRegular
	}
	return Host{Host: row, Type: t}
}

// NewHost is a host with its registration token, shown once.
type NewHost struct {
	Host
	RegistrationToken          string
	RegistrationTokenExpiresAt time.Time
}

// CreateHost is a create request.
type CreateHost struct {
	Name string
	// Type is HostRegular or HostBYOC.
	Type string
	// Address is where the control plane reaches the agent: HOST:PORT,
	// HOST an IP address or a DNS name. The host's certificate names it.
	Address string
	Tags    []string
}

var (
	hostNameRe  = regexp.MustCompile(`^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$`)
	hostLabelRe = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	hostTagRe   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/=-]{0,62}$`)
)

const maxHostTags = 32

func validateHostName(name string) error {
	if !hostNameRe.MatchString(name) {
		return errorf(ErrInvalid, "name: 1 to 253 lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit")
	}
	return nil
}

// validateHostAddress checks HOST:PORT and returns it in canonical form
// (a lowercase name, an IPv6 address in brackets).
func validateHostAddress(addr string) (string, error) {
	bad := errorf(ErrInvalid, "address: want HOST:PORT (an IP address or a DNS name, and a port from 1 to 65535)")
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return "", bad
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != port {
		return "", bad
	}
	if ip := net.ParseIP(host); ip != nil {
		if ip.IsUnspecified() || strings.Contains(host, "%") {
			return "", bad
		}
		return net.JoinHostPort(ip.String(), port), nil
	}
	host = strings.ToLower(host)
	if len(host) > 253 {
		return "", bad
	}
	for _, l := range strings.Split(host, ".") {
		if !hostLabelRe.MatchString(l) {
			return "", bad
		}
	}
	return net.JoinHostPort(host, port), nil
}

// validateTags checks tags and returns them sorted, without duplicates.
func validateTags(tags []string) ([]string, error) {
	if len(tags) > maxHostTags {
		return nil, errorf(ErrInvalid, "tags: at most %d", maxHostTags)
	}
	out := make([]string, 0, len(tags))
	for _, t := range tags {
		if !hostTagRe.MatchString(t) {
			return nil, errorf(ErrInvalid, "tags: %q is not 1 to 63 letters, digits and . _ : / = -", truncate(t, 64))
		}
		out = append(out, t)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// isPlatformAdmin reads users.is_admin (never a token's claim).
func isPlatformAdmin(ctx context.Context, q *db.Queries, user pgtype.UUID) (bool, error) {
	admin, err := q.GetUserIsAdmin(ctx, user)
	if errors.Is(err, store.ErrNotFound) {
		return false, errorf(ErrUnauthorized, "the session's user no longer exists")
	}
	if err != nil {
		return false, fmt.Errorf("read is_admin: %w", err)
	}
	return admin, nil
}

var errHostNotFound = errorf(ErrNotFound, "host not found")

// access returns the host id when p may see it (manage: change it), read
// under its row lock when lockRow.
func (h *Hosts) access(ctx context.Context, q *db.Queries, p Principal, id pgtype.UUID, manage, lockRow bool) (db.Host, error) {
	if err := requireUser(p); err != nil {
		return db.Host{}, err
	}
	get := q.GetHost
	if lockRow {
		get = q.LockHost
	}
	row, err := get(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return db.Host{}, errHostNotFound
	}
	if err != nil {
		return db.Host{}, fmt.Errorf("get host: %w", err)
	}
	admin, err := isPlatformAdmin(ctx, q, pgUUID(p.UserID))
	if err != nil || admin {
		return row, err
	}
	if row.TeamID == store.PlatformTeamID || teamIDOf(row.TeamID) != p.TeamID {
		return db.Host{}, errHostNotFound
	}
	m, err := q.GetMembership(ctx, db.GetMembershipParams{UserID: pgUUID(p.UserID), TeamID: row.TeamID})
	if errors.Is(err, store.ErrNotFound) {
		return db.Host{}, errHostNotFound
	}
	if err != nil {
		return db.Host{}, fmt.Errorf("membership: %w", err)
	}
	if manage && !adminRole(m.Role) {
		return db.Host{}, errorf(ErrForbidden, "managing the team's hosts needs the admin or owner role")
	}
	return row, nil
}

// Create creates a pending host and its one-time registration token.
func (h *Hosts) Create(ctx context.Context, p Principal, req CreateHost) (NewHost, error) {
	if err := requireUser(p); err != nil {
		return NewHost{}, err
	}
	if err := validateHostName(req.Name); err != nil {
		return NewHost{}, err
	}
	addr, err := validateHostAddress(req.Address)
	if err != nil {
		return NewHost{}, err
	}
	tags, err := validateTags(req.Tags)
	if err != nil {
		return NewHost{}, err
	}
	if req.Type != HostRegular && req.Type != HostBYOC {
		return NewHost{}, errorf(ErrInvalid, "type: %q or %q", HostRegular, HostBYOC)
	}
	tok := h.tokens.NewRegistrationToken()
	var row db.Host
	err = h.st.Tx(ctx, func(q *db.Queries) error {
		admin, err := isPlatformAdmin(ctx, q, pgUUID(p.UserID))
		if err != nil {
			return err
		}
		team := store.PlatformTeamID
		if req.Type == HostRegular {
			if !admin {
				return errorf(ErrForbidden, "only platform administrators create regular hosts")
			}
		} else {
			t, err := q.LockTeam(ctx, pgUUID(p.TeamID))
			if errors.Is(err, store.ErrNotFound) {
				return errTeamNotFound
			}
			if err != nil {
				return fmt.Errorf("lock team: %w", err)
			}
			m, err := q.GetMembership(ctx, db.GetMembershipParams{UserID: pgUUID(p.UserID), TeamID: pgUUID(p.TeamID)})
			if errors.Is(err, store.ErrNotFound) {
				return errTeamNotFound
			}
			if err != nil {
				return fmt.Errorf("membership: %w", err)
			}
			if !t.IsBYOC {
				return errorf(ErrForbidden, "the team does not have BYOC (bring your own host) enabled")
			}
			if !adminRole(m.Role) && !admin {
				return errorf(ErrForbidden, "adding a host to the team needs the admin or owner role")
			}
			team = t.ID
		}
		row, err = q.CreateHostRecord(ctx, db.CreateHostRecordParams{TeamID: team, Name: req.Name, Address: addr, Tags: tags,
			TokenHash: tok.Hash, TokenExpiresAt: tok.ExpiresAt, CreatedBy: pgUUID(p.UserID)})
		if errors.Is(err, store.ErrConflict) {
			return errorf(ErrConflict, "a host named %q exists", req.Name)
		}
		if err != nil {
			return fmt.Errorf("create host: %w", err)
		}
		return h.audit.Record(ctx, q, teamIDOf(team), p.Actor(), AuditEvent{ResourceType: "host", ResourceID: hostWireID(row.ID), Action: "host.created",
			Scope: ScopeAdmin, Metadata: map[string]any{"name": row.Name, "type": req.Type, "address": addr}})
	})
	if err != nil {
		return NewHost{}, err
	}
	h.log.InfoContext(ctx, "host created", "host", hostWireID(row.ID), "team", teamID(row.TeamID), "name", row.Name, "address", addr)
	return NewHost{Host: hostView(row), RegistrationToken: tok.Plaintext, RegistrationTokenExpiresAt: row.RegistrationTokenExpiresAt.Time}, nil
}

// RegenerateToken replaces a pending host's registration token (the old
// one stops working); ErrConflict once the host is past pending.
func (h *Hosts) RegenerateToken(ctx context.Context, p Principal, hostID wireid.HostID) (NewHost, error) {
	id := pgUUID(hostID)
	tok := h.tokens.NewRegistrationToken()
	var row db.Host
	err := h.st.Tx(ctx, func(q *db.Queries) error {
		cur, err := h.access(ctx, q, p, id, true, true)
		if err != nil {
			return err
		}
		if cur.Status != store.HostPending {
			return errorf(ErrConflict, "the host is %s: a registration token is only issued while it is pending", cur.Status)
		}
		if row, err = q.SetHostRegistrationToken(ctx, db.SetHostRegistrationTokenParams{ID: id, TokenHash: tok.Hash, TokenExpiresAt: tok.ExpiresAt}); err != nil {
			return fmt.Errorf("set registration token: %w", err)
		}
		return h.audit.Record(ctx, q, teamIDOf(row.TeamID), p.Actor(), AuditEvent{ResourceType: "host", ResourceID: hostWireID(id),
			Action: "host.token_regenerated", Scope: ScopeAdmin})
	})
	if err != nil {
		return NewHost{}, err
	}
	return NewHost{Host: hostView(row), RegistrationToken: tok.Plaintext, RegistrationTokenExpiresAt: row.RegistrationTokenExpiresAt.Time}, nil
}

// List lists the hosts p sees: every host for a platform administrator,
// the session team's BYOC hosts for anyone else.
func (h *Hosts) List(ctx context.Context, p Principal) ([]Host, error) {
	if err := requireUser(p); err != nil {
		return nil, err
	}
	q := h.st.Queries()
	admin, err := isPlatformAdmin(ctx, q, pgUUID(p.UserID))
	if err != nil {
		return nil, err
	}
	var rows []db.Host
	switch {
	case admin:
		rows, err = q.ListAllHosts(ctx)
	case p.TeamID.IsZero() || p.TeamID == teamIDOf(store.PlatformTeamID):
		rows = nil
	default:
		if _, err = q.GetMembership(ctx, db.GetMembershipParams{UserID: pgUUID(p.UserID), TeamID: pgUUID(p.TeamID)}); errors.Is(err, store.ErrNotFound) {
			return []Host{}, nil
		} else if err != nil {
			return nil, fmt.Errorf("membership: %w", err)
		}
		rows, err = q.ListTeamHosts(ctx, pgUUID(p.TeamID))
	}
	if err != nil {
		return nil, fmt.Errorf("list hosts: %w", err)
	}
	out := make([]Host, len(rows))
	for i, r := range rows {
		out[i] = hostView(r)
	}
	return out, nil
}

// Get returns a host p may see.
func (h *Hosts) Get(ctx context.Context, p Principal, hostID wireid.HostID) (Host, error) {
	id := pgUUID(hostID)
	row, err := h.access(ctx, h.st.Queries(), p, id, false, false)
	if err != nil {
		return Host{}, err
	}
	return hostView(row), nil
}

// UpdateHost changes a host; nil fields stay as they are.
type UpdateHost struct {
	Tags *[]string
	// Status: "draining" (no new sandboxes) or "online" (back from
	// draining); the only transitions an administrator makes.
	Status *string
}

// Update changes a host's tags or drains it (and back).
func (h *Hosts) Update(ctx context.Context, p Principal, hostID wireid.HostID, req UpdateHost) (Host, error) {
	id := pgUUID(hostID)
	var tags []string
	if req.Tags != nil {
		var err error
		if tags, err = validateTags(*req.Tags); err != nil {
			return Host{}, err
		}
	}
	if req.Status != nil && *req.Status != store.HostDraining && *req.Status != store.HostOnline {
		return Host{}, errorf(ErrInvalid, "status: %q or %q", store.HostDraining, store.HostOnline)
	}
	var row db.Host
	err := h.st.Tx(ctx, func(q *db.Queries) error {
		cur, err := h.access(ctx, q, p, id, true, true)
		if err != nil {
			return err
		}
		status, action := cur.Status, ""
		if req.Status != nil && *req.Status != cur.Status {
			switch {
			case *req.Status == store.HostDraining && cur.Status == store.HostOnline:
				action = "host.draining"
			case *req.Status == store.HostOnline && cur.Status == store.HostDraining:
				action = "host.undrained"
			default:
				return errorf(ErrConflict, "the host is %s: it cannot be made %s", cur.Status, *req.Status)
			}
			status = *req.Status
		}
		if tags == nil {
			tags = cur.Tags
		}
		if row, err = q.UpdateHostSettings(ctx, db.UpdateHostSettingsParams{ID: id, Tags: tags, Status: status}); err != nil {
			return fmt.Errorf("update host: %w", err)
		}
		if action != "" {
			if err := h.audit.Record(ctx, q, teamIDOf(row.TeamID), p.Actor(), AuditEvent{ResourceType: "host", ResourceID: hostWireID(id), Action: action,
				Scope: ScopeAdmin, Metadata: map[string]any{"from": cur.Status, "to": status}}); err != nil {
				return err
			}
		}
		if req.Tags != nil && !slices.Equal(cur.Tags, row.Tags) {
			return h.audit.Record(ctx, q, teamIDOf(row.TeamID), p.Actor(), AuditEvent{ResourceType: "host", ResourceID: hostWireID(id), Action: "host.updated",
				Scope: ScopeAdmin, Metadata: map[string]any{"tags": row.Tags}})
		}
		return nil
	})
	if err != nil {
		return Host{}, err
	}
	return hostView(row), nil
}

// DeletePreview lists the sandboxes deleting the host would destroy (its
// sandboxes that are not stopped).
func (h *Hosts) DeletePreview(ctx context.Context, p Principal, hostID wireid.HostID) ([]Sandbox, error) {
	id := pgUUID(hostID)
	q := h.st.Queries()
	if _, err := h.access(ctx, q, p, id, true, false); err != nil {
		return nil, err
	}
	rows, err := q.ListHostLiveSandboxes(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("list the host's sandboxes: %w", err)
	}
	return sandboxesOf(rows), nil
}

// HostDeletion is what deleting a host did, or (with ErrConflict) would do.
type HostDeletion struct {
	// Sandboxes are the affected sandboxes (as they were before).
	Sandboxes []Sandbox
	// Destroyed counts those the host's agent destroyed; the others'
	// records were marked stopped without it (it was unreachable).
	Destroyed int
}

// hostDestroyTimeout bounds the agent calls of a forced delete.
const hostDestroyTimeout = 2 * time.Minute

// Delete deletes a host. While it has sandboxes that are not stopped it
// is ErrConflict (with them in HostDeletion) unless force, which first
// drains the host (nothing new lands there), destroys each sandbox on
// the agent (best effort) and marks its record stopped, then deletes the
// row and evicts the agent from the pool. The embedded agent's host
// (LocalHost) cannot be deleted.
func (h *Hosts) Delete(ctx context.Context, p Principal, hostID wireid.HostID, force bool) (HostDeletion, error) {
	id := pgUUID(hostID)
	var res HostDeletion
	var row db.Host
	err := h.st.Tx(ctx, func(q *db.Queries) error {
		var err error
		if row, err = h.access(ctx, q, p, id, true, true); err != nil {
			return err
		}
		if row.Name == LocalHost && row.TeamID == store.PlatformTeamID {
			return errorf(ErrConflict, "the host %q is capsule serve's embedded agent: it cannot be deleted", LocalHost)
		}
		rows, err := q.ListHostLiveSandboxes(ctx, id)
		if err != nil {
			return fmt.Errorf("list the host's sandboxes: %w", err)
		}
		res.Sandboxes = sandboxesOf(rows)
		if len(res.Sandboxes) > 0 && !force {
			return errorf(ErrConflict, "the host has %d sandboxes that are not stopped: delete it with force=true to destroy them", len(res.Sandboxes))
		}
		if len(res.Sandboxes) > 0 && row.Status != store.HostDraining {
			_, err = q.UpdateHostSettings(ctx, db.UpdateHostSettingsParams{ID: id, Tags: row.Tags, Status: store.HostDraining})
			return err
		}
		return nil
	})
	if err != nil {
		return res, err
	}
	log := h.log.With("host", hostWireID(id))
	if len(res.Sandboxes) > 0 {
		// The agent calls and their bookkeeping outlive a client that
		// leaves; the agent calls are bounded, the bookkeeping is not.
		bg := context.WithoutCancel(ctx)
		actx, cancel := context.WithTimeout(bg, hostDestroyTimeout)
		defer cancel()
		c := h.agentOf(actx, row)
		for _, sb := range res.Sandboxes {
			destroyed := false
			if c != nil {
				_, err := c.DestroySandbox(actx, connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: sb.ID.String()}))
				destroyed = err == nil || errors.Is(err, agentclient.ErrNotFound)
				if !destroyed {
					log.WarnContext(bg, "destroy a deleted host's sandbox on its agent", "sandbox", sb.ID.String(), "err", err)
				}
				if errors.Is(err, agentclient.ErrUnavailable) || actx.Err() != nil {
					c = nil // the agent is down: the rest are only marked stopped
				}
			}
			if destroyed {
				res.Destroyed++
			}
			if _, err := h.st.Queries().MarkSandboxStopped(bg, db.MarkSandboxStoppedParams{ID: pgUUID(sb.ID), Reason: "host deleted"}); err != nil && !errors.Is(err, store.ErrNotFound) {
				return res, fmt.Errorf("persist stopped: %w", err)
			}
			h.audit.RecordAfter(bg, sb.TeamID, p.Actor(), AuditEvent{ResourceType: "sandbox", ResourceID: sb.ID.String(), Action: "sandbox.destroy",
				Metadata: map[string]any{"reason": "host deleted", "host": hostWireID(id), "on_host": destroyed}})
		}
		ctx = bg
	}
	err = h.st.Tx(ctx, func(q *db.Queries) error {
		if _, err := q.LockHost(ctx, id); errors.Is(err, store.ErrNotFound) {
			return errHostNotFound // deleted meanwhile
		} else if err != nil {
			return fmt.Errorf("lock host: %w", err)
		}
		// Anything that reached the host since (it was draining): its
		// record follows the host.
		left, err := q.ListHostLiveSandboxes(ctx, id)
		if err != nil {
			return fmt.Errorf("list the host's sandboxes: %w", err)
		}
		if len(left) > 0 && !force {
			res.Sandboxes = sandboxesOf(left)
			return errorf(ErrConflict, "the host has %d sandboxes that are not stopped: delete it with force=true to destroy them", len(left))
		}
		for _, sb := range left {
			if _, err := q.MarkSandboxStopped(ctx, db.MarkSandboxStoppedParams{ID: sb.ID, Reason: "host deleted"}); err != nil && !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("persist stopped: %w", err)
			}
		}
		if _, err := q.DeleteHostRecord(ctx, id); err != nil {
			return fmt.Errorf("delete host: %w", err)
		}
		return h.audit.Record(ctx, q, teamIDOf(row.TeamID), p.Actor(), AuditEvent{ResourceType: "host", ResourceID: hostWireID(id), Action: "host.deleted",
			Scope: ScopeAdmin, Metadata: map[string]any{"name": row.Name, "sandboxes": len(res.Sandboxes) + len(left),
				"destroyed_on_host": res.Destroyed, "force": force}})
	})
	if err != nil {
		return res, err
	}
	h.agents.Evict(hostWireID(id))
	h.agents.Evict(row.Name)
	log.InfoContext(ctx, "host deleted", "team", teamID(row.TeamID), "sandboxes", len(res.Sandboxes), "destroyed", res.Destroyed)
	return res, nil
}

// agentOf returns the pool's client of a host (by wire ID, else by name),
// nil when the pool cannot reach it.
func (h *Hosts) agentOf(ctx context.Context, row db.Host) *agentclient.Client {
	for _, key := range []string{hostWireID(row.ID), row.Name} {
		if c, err := h.agents.Get(ctx, key); err == nil {
			return c
		}
	}
	return nil
}

// Resolve is an agentclient.Resolver over the hosts table: a host (by
// wire ID) is reached at https://ADDRESS, its declared address, with
// mutual TLS from the internal CA (pki.CA.AgentClientTLS).
func (h *Hosts) Resolve(ctx context.Context, hostID string) (agentclient.Endpoint, error) {
	id, err := wireid.Parse(wireid.Host, hostID)
	if err != nil {
		return agentclient.Endpoint{}, fmt.Errorf("%w: %s", agentclient.ErrUnknownHost, hostID)
	}
	row, err := h.st.Queries().GetHost(ctx, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && row.Address == "") {
		return agentclient.Endpoint{}, fmt.Errorf("%w: %s", agentclient.ErrUnknownHost, hostID)
	}
	if err != nil {
		return agentclient.Endpoint{}, fmt.Errorf("get host: %w", err)
	}
	return agentclient.Endpoint{URL: "https://" + row.Address, TLS: h.AgentTLS()}, nil
}

// AgentTLS is the TLS configuration of calls to agents: the internal CA
// as the only root, the control plane's rotating client certificate.
func (h *Hosts) AgentTLS() *tls.Config { return h.ca.AgentClientTLS(h.clientCert) }

// CA is the internal CA.
func (h *Hosts) CA() *pki.CA { return h.ca }

// ---------------------------------------------------------------- agents

var (
	errRegistrationToken = errorf(ErrUnauthorized, "invalid or expired registration token")
	errRefreshToken      = errorf(ErrUnauthorized, "invalid, expired or revoked refresh token")
	errAccessToken       = errorf(ErrUnauthorized, "invalid or expired host access token")
	errHostDeleted       = errorf(ErrNotFound, "the host was deleted")
)

const (
	maxArchLen    = 32
	maxVersionLen = 128
	maxAddressLen = 300
	maxCSRLen     = 16 << 10
)

func validateRegistration(req hostapi.RegisterRequest) error {
	switch {
	case req.Arch == "" || len(req.Arch) > maxArchLen:
		return errorf(ErrInvalid, "arch: 1 to %d characters", maxArchLen)
	case req.VCPUs <= 0 || req.MemoryMB <= 0 || req.DiskMB < 0:
		return errorf(ErrInvalid, "vcpus and memory_mb must be positive, disk_mb not negative")
	case len(req.Version) > maxVersionLen:
		return errorf(ErrInvalid, "version: at most %d characters", maxVersionLen)
	case len(req.Address) > maxAddressLen:
		return errorf(ErrInvalid, "address: at most %d characters", maxAddressLen)
	case req.CSR == "" || len(req.CSR) > maxCSRLen:
		return errorf(ErrInvalid, "csr: a PEM CERTIFICATE REQUEST is required")
	}
	return nil
}

// issueHostCert signs csr for row's declared address.
func (h *Hosts) issueHostCert(row db.Host, csr string) (pki.Issued, error) {
	iss, err := h.ca.IssueHost(csr, row.Address)
	if errors.Is(err, pki.ErrInvalidCSR) {
		return pki.Issued{}, &Error{Kind: ErrInvalid, Msg: "csr: " + strings.TrimPrefix(err.Error(), "pki: "), Err: err}
	}
	if err != nil {
		return pki.Issued{}, fmt.Errorf("issue the host's certificate: %w", err)
	}
	return iss, nil
}

// Register completes a host's registration with its one-time token: the
// token is consumed, what the agent reports is recorded (never its
// address: the declared one stays), its server certificate is issued for
// the declared address, the credentials of any earlier registration are
// revoked, and new ones issued. A used token is ErrConflict; an unknown
// or expired one ErrUnauthorized; bad input ErrInvalid, and then nothing
// is consumed.
func (h *Hosts) Register(ctx context.Context, req hostapi.RegisterRequest) (hostapi.RegisterResponse, error) {
	if auth.ValidateHostRegistrationToken(req.Token) != nil {
		return hostapi.RegisterResponse{}, errRegistrationToken
	}
	if err := validateRegistration(req); err != nil {
		return hostapi.RegisterResponse{}, err
	}
	refresh := h.tokens.NewRefreshToken()
	var row db.Host
	var cert pki.Issued
	var access string
	var claims auth.HostClaims
	err := h.st.Tx(ctx, func(q *db.Queries) error {
		cur, err := q.LockHostByRegistrationToken(ctx, auth.HashToken(req.Token))
		if errors.Is(err, store.ErrNotFound) {
			return errRegistrationToken
		}
		if err != nil {
			return fmt.Errorf("find the registration token: %w", err)
		}
		if cur.RegistrationTokenUsedAt.Valid {
			return errorf(ErrConflict, "the registration token was already used")
		}
		if !cur.RegistrationTokenExpiresAt.Valid || !h.now().Before(cur.RegistrationTokenExpiresAt.Time) {
			return errRegistrationToken
		}
		if cur.Status == store.HostOffline {
			return errorf(ErrForbidden, "the host is offline")
		}
		if cert, err = h.issueHostCert(cur, req.CSR); err != nil {
			return err
		}
		row, err = q.CompleteHostRegistration(ctx, db.CompleteHostRegistrationParams{ID: cur.ID, ClaimedAddress: req.Address,
			Version: req.Version, Arch: req.Arch, TotalVCPUs: req.VCPUs, TotalMemoryMB: req.MemoryMB, TotalDiskMB: req.DiskMB,
			CertSerial: cert.Serial, CertExpiresAt: pgtype.Timestamptz{Time: cert.NotAfter, Valid: true}, RegisteredAt: h.now()})
		if err != nil {
			return fmt.Errorf("complete the registration: %w", err)
		}
		if _, err := q.RevokeHostRefreshTokens(ctx, row.ID); err != nil {
			return fmt.Errorf("revoke earlier credentials: %w", err)
		}
		// The access token is issued here: its "jti" goes with the
		// refresh token (the grace of Refresh).
		if access, claims, err = h.tokens.IssueAccessToken(hostWireID(row.ID)); err != nil {
			return fmt.Errorf("issue the access token: %w", err)
		}
		family := store.NewUUID()
		if _, err := q.InsertHostRefreshToken(ctx, db.InsertHostRefreshTokenParams{HostID: row.ID, TokenHash: refresh.Hash,
			ExpiresAt: refresh.ExpiresAt, FamilyID: family, AccessTokenID: claims.ID}); err != nil {
			return fmt.Errorf("store the refresh token: %w", err)
		}
		return h.audit.Record(ctx, q, teamIDOf(row.TeamID), h.hostActor(row), AuditEvent{ResourceType: "host", ResourceID: hostWireID(row.ID),
			Action: "host.registered", Scope: ScopeAdmin, Metadata: map[string]any{"arch": req.Arch, "vcpus": req.VCPUs,
				"memory_mb": req.MemoryMB, "disk_mb": req.DiskMB, "version": truncate(req.Version, 64),
				"claimed_address": truncate(req.Address, 128), "address": row.Address, "cert_serial": cert.Serial}})
	})
	if err != nil {
		return hostapi.RegisterResponse{}, err
	}
	h.log.InfoContext(ctx, "host registered", "host", hostWireID(row.ID), "team", teamID(row.TeamID), "address", row.Address,
		"claimed_address", req.Address)
	return hostapi.RegisterResponse{
		Credentials: hostapi.Credentials{HostID: hostWireID(row.ID), AccessToken: access, AccessTokenExpiresAt: claims.ExpiresAt,
			RefreshToken: refresh.Plaintext, RefreshTokenExpiresAt: refresh.ExpiresAt.UTC()},
		Address: row.Address, Certificate: cert.PEM, CA: h.ca.CertPEM(),
	}, nil
}

func (h *Hosts) hostActor(row db.Host) Actor {
	return Actor{Type: ActorHost, ID: hostWireID(row.ID), Name: row.Name}
}

// Refresh exchanges a refresh token for new credentials. The new refresh
// token is stored before the old one is revoked (one transaction), so a
// crash never leaves the host without a live token.
//
// The grace (hostapi.Credentials): an agent that died after this answer
// but before it stored it comes back with the previous token. A rotated
// token is accepted once more while nothing of its successor's
// credentials was used (no refresh with the successor, no heartbeat with
// the access token issued with it, whose "jti" the token's row keeps);
// the successor is then revoked in favour of the new token. Any other
// revoked token presented again — a second replay, a replay after the new
// credentials were used — means it leaked: every token of its family is
// revoked and the answer is ErrUnauthorized. The token's row lock
// serialises concurrent replays, so at most one of them succeeds.
func (h *Hosts) Refresh(ctx context.Context, token string) (hostapi.Credentials, error) {
	if auth.ValidateHostRefreshToken(token) != nil {
		return hostapi.Credentials{}, errRefreshToken
	}
	next := h.tokens.NewRefreshToken()
	var row db.Host
	var access string
	var claims auth.HostClaims
	reused := false
	err := h.st.Tx(ctx, func(q *db.Queries) error {
		old, err := q.LockHostRefreshToken(ctx, auth.HashToken(token))
		if errors.Is(err, store.ErrNotFound) {
			return errRefreshToken
		}
		if err != nil {
			return fmt.Errorf("find the refresh token: %w", err)
		}
		if row, err = q.GetHost(ctx, old.HostID); err != nil {
			return notFound(err, "host")
		}
		// Issued here (not used unless this succeeds): its "jti" goes
		// with the new refresh token.
		if access, claims, err = h.tokens.IssueAccessToken(hostWireID(row.ID)); err != nil {
			return fmt.Errorf("issue the access token: %w", err)
		}
		if old.RevokedAt.Valid {
			if ok, err := h.refreshGrace(ctx, q, row, old, next, claims.ID); err != nil || ok {
				return err
			}
			n, err := q.RevokeHostRefreshFamily(ctx, old.FamilyID)
			if err != nil {
				return fmt.Errorf("revoke the token family: %w", err)
			}
			reused = true
			return h.audit.Record(ctx, q, teamIDOf(row.TeamID), h.hostActor(row), AuditEvent{ResourceType: "host", ResourceID: hostWireID(row.ID),
				Action: "host.refresh_token_reused", Scope: ScopeAdmin, Status: AuditWarning, Metadata: map[string]any{"revoked": n}})
		}
		if !h.now().Before(old.ExpiresAt) {
			return errRefreshToken
		}
		if row.Status == store.HostOffline {
			return errorf(ErrForbidden, "the host is offline")
		}
		created, err := q.InsertHostRefreshToken(ctx, db.InsertHostRefreshTokenParams{HostID: row.ID, TokenHash: next.Hash,
			ExpiresAt: next.ExpiresAt, FamilyID: old.FamilyID, AccessTokenID: claims.ID})
		if err != nil {
			return fmt.Errorf("store the refresh token: %w", err)
		}
		if err := q.RevokeHostRefreshToken(ctx, db.RevokeHostRefreshTokenParams{ID: old.ID, ReplacedBy: created.ID}); err != nil {
			return fmt.Errorf("revoke the old refresh token: %w", err)
		}
		return nil
	})
	if err != nil {
		return hostapi.Credentials{}, err
	}
	if reused {
		h.log.WarnContext(ctx, "a revoked host refresh token was presented: its family is revoked", "host", hostWireID(row.ID))
		return hostapi.Credentials{}, errRefreshToken
	}
	return hostapi.Credentials{HostID: hostWireID(row.ID), AccessToken: access, AccessTokenExpiresAt: claims.ExpiresAt,
		RefreshToken: next.Plaintext, RefreshTokenExpiresAt: next.ExpiresAt.UTC()}, nil
}

// refreshGrace accepts old, a rotated refresh token, once more when
// nothing of its successor was used: next is stored, the successor is
// revoked in its favour, and old's grace is spent. It reports whether it
// accepted; false means old is a reuse.
func (h *Hosts) refreshGrace(ctx context.Context, q *db.Queries, row db.Host, old db.HostRefreshToken, next auth.OpaqueToken,
	accessID string) (bool, error) {
	if old.GraceSpentAt.Valid || !old.ReplacedBy.Valid || !h.now().Before(old.ExpiresAt) {
		return false, nil
	}
	succ, err := q.LockHostRefreshTokenByID(ctx, old.ReplacedBy)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("find the successor token: %w", err)
	}
	if succ.RevokedAt.Valid || succ.UsedAt.Valid {
		return false, nil
	}
	if row.Status == store.HostOffline {
		return false, errorf(ErrForbidden, "the host is offline")
	}
	created, err := q.InsertHostRefreshToken(ctx, db.InsertHostRefreshTokenParams{HostID: row.ID, TokenHash: next.Hash,
		ExpiresAt: next.ExpiresAt, FamilyID: old.FamilyID, AccessTokenID: accessID})
	if err != nil {
		return false, fmt.Errorf("store the refresh token: %w", err)
	}
	// The successor is revoked without a grace of its own (whoever holds
	// it now got it from an answer the agent lost), old's grace is spent.
	if err := q.RevokeHostRefreshToken(ctx, db.RevokeHostRefreshTokenParams{ID: succ.ID, ReplacedBy: created.ID}); err != nil {
		return false, fmt.Errorf("revoke the unused successor token: %w", err)
	}
	for _, id := range []pgtype.UUID{succ.ID, old.ID} {
		if err := q.SpendHostRefreshGrace(ctx, db.SpendHostRefreshGraceParams{ID: id, ReplacedBy: created.ID}); err != nil {
			return false, fmt.Errorf("spend the grace: %w", err)
		}
	}
	h.log.InfoContext(ctx, "a rotated host refresh token was replayed before its successor was used: accepted once",
		"host", hostWireID(row.ID))
	return true, h.audit.Record(ctx, q, teamIDOf(row.TeamID), h.hostActor(row), AuditEvent{ResourceType: "host", ResourceID: hostWireID(row.ID),
		Action: "host.refresh_token_replayed", Scope: ScopeAdmin, Status: AuditInfo})
}

// AuthenticateHost verifies a host access JWT (never a user's session:
// another key and audience) and returns the host's ID and the token's
// issue time.
func (h *Hosts) AuthenticateHost(token string) (wireid.HostID, time.Time, error) {
	id, claims, err := h.authenticateHost(token)
	return hostIDOf(id), claims.IssuedAt, err
}

func (h *Hosts) authenticateHost(token string) (pgtype.UUID, auth.HostClaims, error) {
	claims, err := h.tokens.VerifyAccessToken(token)
	if err != nil {
		return pgtype.UUID{}, auth.HostClaims{}, &Error{Kind: ErrUnauthorized, Msg: errAccessToken.Error(), Err: err}
	}
	id, err := wireid.Parse(wireid.Host, claims.HostID)
	if err != nil {
		return pgtype.UUID{}, auth.HostClaims{}, errAccessToken
	}
	return id, claims, nil
}

func validateResources(r hostapi.Resources) bool {
	return r.VCPUs >= 0 && r.MemoryMB >= 0 && r.DiskMB >= 0
}

// Heartbeat records a host's report: a pending host becomes online (an
// unreachable one stays unreachable until the host monitor reconciled it:
// Monitor.Pass; draining stays draining), the used resources and sandbox counts
// are kept, and a CSR gets a new certificate for the declared address. A
// deleted host is ErrNotFound; an offline one ErrForbidden.
func (h *Hosts) Heartbeat(ctx context.Context, accessToken string, hb hostapi.Heartbeat) (hostapi.HeartbeatResponse, error) {
	id, claims, err := h.authenticateHost(accessToken)
	if err != nil {
		return hostapi.HeartbeatResponse{}, err
	}
	issuedAt := claims.IssuedAt
	if !validateResources(hb.Total) || !validateResources(hb.Used) || hb.MaxVCPUs < 0 || hb.Running < 0 || hb.Paused < 0 || hb.Sandboxes < 0 {
		return hostapi.HeartbeatResponse{}, errorf(ErrInvalid, "resources and counts must not be negative")
	}
	if len(hb.Version) > maxVersionLen || len(hb.CSR) > maxCSRLen {
		return hostapi.HeartbeatResponse{}, errorf(ErrInvalid, "version or csr too long")
	}
	var row db.Host
	var cert pki.Issued
	var was string
	err = h.st.Tx(ctx, func(q *db.Queries) error {
		cur, err := q.LockHost(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return errHostDeleted
		}
		if err != nil {
			return fmt.Errorf("lock host: %w", err)
		}
		// A token of an earlier registration of the host is dead (iat
		// has whole seconds).
		if !cur.RegisteredAt.Valid || issuedAt.Before(cur.RegisteredAt.Time.Truncate(time.Second)) {
			return errAccessToken
		}
		if cur.Status == store.HostOffline {
			return errorf(ErrForbidden, "the host is offline")
		}
		was = cur.Status
		// The credentials issued with the refresh token of this access
		// token are in use: its predecessor's grace ends (Refresh).
		if err := q.MarkHostRefreshTokenUsed(ctx, db.MarkHostRefreshTokenUsedParams{HostID: id, AccessTokenID: claims.ID}); err != nil {
			return fmt.Errorf("mark the refresh token used: %w", err)
		}
		if hb.CSR != "" {
			if cert, err = h.issueHostCert(cur, hb.CSR); err != nil {
				return err
			}
			if err := q.SetHostCertificate(ctx, db.SetHostCertificateParams{ID: id, CertSerial: cert.Serial,
				CertExpiresAt: pgtype.Timestamptz{Time: cert.NotAfter, Valid: true}}); err != nil {
				return fmt.Errorf("record the certificate: %w", err)
			}
		}
		row, err = q.RecordHostHeartbeat(ctx, db.RecordHostHeartbeatParams{ID: id, Version: hb.Version,
			TotalVCPUs: hb.Total.VCPUs, MaxVCPUs: hb.MaxVCPUs, TotalMemoryMB: hb.Total.MemoryMB, TotalDiskMB: hb.Total.DiskMB,
			UsedVCPUs: hb.Used.VCPUs, UsedMemoryMB: hb.Used.MemoryMB, UsedDiskMB: hb.Used.DiskMB,
			RunningSandboxes: hb.Running, PausedSandboxes: hb.Paused, SandboxCount: hb.Sandboxes})
		if err != nil {
			return fmt.Errorf("record the heartbeat: %w", err)
		}
		if was == store.HostPending {
			return h.audit.Record(ctx, q, teamIDOf(row.TeamID), h.hostActor(row), AuditEvent{ResourceType: "host", ResourceID: hostWireID(id),
				Action: "host.online", Scope: ScopeAdmin, Status: AuditInfo})
		}
		return nil
	})
	if err != nil {
		return hostapi.HeartbeatResponse{}, err
	}
	if was != row.Status {
		h.log.InfoContext(ctx, "host status", "host", hostWireID(id), "from", was, "to", row.Status)
	}
	resp := hostapi.HeartbeatResponse{Status: row.Status, IntervalSeconds: int(h.beatEvery / time.Second)}
	if cert.PEM != "" {
		resp.Certificate, resp.CA = cert.PEM, h.ca.CertPEM()
	}
	return resp, nil
}
