package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Templates (snapshots) are team-scoped by name in the database; the host
// agent, which keys templates by name alone, knows each one by its row's
// wire ID (TemplateID: "tpl-" and 32 hex digits), so two teams' "my-snap"
// never meet there. Public templates belong to store.PlatformTeamID.

// TemplateID returns the wire ID of a template, which is also its name on
// the host agent.
func TemplateID(id pgtype.UUID) string { return wireid.Format(wireid.Template, id) }

// resolvedTemplate is what a sandbox's template name means for a team.
type resolvedTemplate struct {
	// agentName names it on the agent.
	agentName string
	// defaultUser runs processes when a request names none.
	defaultUser string
	// env is set in every sandbox created from it, and its processes start
	// in workdir by default (a built template's).
	env     map[string]string
	workdir string
	// row is the template's record (nil for a built-in image).
	row *db.Template
}

// templateMeta is what templates.metadata holds for a snapshot.
type templateMeta struct {
	DefaultUser string `json:"default_user,omitempty"`
	// A built template's (PublishTemplate): its default directory, its
	// environment and the build that made it.
	DefaultWorkdir string            `json:"default_workdir,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	BuildID        string            `json:"build_id,omitempty"`
}

// BuiltinTemplates returns the names of the host's built-in images, which
// every team can create sandboxes from: what the host agent reports
// (GetHostInfo.builtin_templates), asked once and kept. ErrUnavailable
// while the agent cannot be asked.
func (s *Sandboxes) BuiltinTemplates(ctx context.Context) ([]string, error) {
	s.builtinMu.Lock()
	defer s.builtinMu.Unlock()
	if s.builtin != nil {
		return s.builtin, nil
	}
	c, err := s.anyAgent(ctx)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, builtinAskTimeout)
	defer cancel()
	r, err := c.GetHostInfo(actx, connect.NewRequest(&pb.GetHostInfoRequest{}))
	if err != nil {
		return nil, agentError(err, "host info")
	}
	s.builtin = append([]string{}, r.Msg.GetBuiltinTemplates()...)
	return s.builtin, nil
}

// builtinAskTimeout bounds BuiltinTemplates' question to the agent.
const builtinAskTimeout = 30 * time.Second

// isBuiltinTemplate reports whether name is one of the host's built-in
// images ("base", "minimal"; BuiltinTemplates).
func (s *Sandboxes) isBuiltinTemplate(ctx context.Context, name string) (bool, error) {
	names, err := s.BuiltinTemplates(ctx)
	if err != nil {
		return false, err
	}
	return slices.Contains(names, name), nil
}

// resolveTemplate finds what team means by name: its own template, else a
// public one, else a built-in image; ErrNotFound otherwise.
func (s *Sandboxes) resolveTemplate(ctx context.Context, team pgtype.UUID, name string) (resolvedTemplate, error) {
	t, err := s.st.Queries().GetTemplate(ctx, db.GetTemplateParams{TeamID: team, Name: name})
	if err == nil {
		var m templateMeta
		_ = json.Unmarshal(t.Metadata, &m) // written by CreateSnapshot; absent keys are fine
		return resolvedTemplate{agentName: TemplateID(t.ID), defaultUser: m.DefaultUser, env: m.Env, workdir: m.DefaultWorkdir, row: &t}, nil
	}
	if !errors.Is(err, store.ErrNotFound) {
		return resolvedTemplate{}, fmt.Errorf("template %s: %w", name, err)
	}
	builtin, err := s.isBuiltinTemplate(ctx, name)
	if err != nil {
		return resolvedTemplate{}, err
	}
	if builtin {
		user := ""
		if name == DefaultTemplate {
			user = BaseTemplateUser
		}
		return resolvedTemplate{agentName: name, defaultUser: user}, nil
	}
	return resolvedTemplate{}, errorf(ErrNotFound, "template %q not found", name)
}

// ValidateSnapshotName checks a snapshot's name: the templates table's
// pattern (1 to 128 letters, digits, '.', '_' and '-', starting with a
// letter or digit) and nothing path-like. builtin are the host's built-in
// images (BuiltinTemplates), whose names no snapshot may take.
func ValidateSnapshotName(name string, builtin []string) error {
	switch {
	case name == "":
		return errorf(ErrInvalid, "name: required")
	case strings.ContainsAny(name, "/\\\x00") || strings.Contains(name, ".."):
		return errorf(ErrInvalid, "name: must not contain '/', '\\', '..' or NUL")
	case !templateRe.MatchString(name):
		return errorf(ErrInvalid, "name: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit")
	case slices.Contains(builtin, strings.ToLower(name)):
		return errorf(ErrInvalid, "name: %q is a built-in template", name)
	}
	return nil
}

// Snapshot is a template as a team sees it.
type Snapshot struct {
	ID     wireid.TemplateID
	TeamID TeamID
	Name   string
	Kind   string
	// The resources a sandbox of the snapshot gets.
	VCPUs, MemoryMB, DiskMB int32
	SizeBytes               int64
	// HostID is the host holding the snapshot's files.
	HostID          wireid.HostID
	SourceSandboxID SandboxID
	// Metadata is the snapshot's metadata (a JSON object).
	Metadata  json.RawMessage
	CreatedBy UserID
	CreatedAt time.Time
	UpdatedAt time.Time
	// Public: a platform template every team can use (and none delete).
	Public bool
}

func snapshotOf(t db.Template) Snapshot {
	return Snapshot{
		ID: wireid.FromUUID[wireid.KindTemplate](t.ID.Bytes, t.ID.Valid), TeamID: teamIDOf(t.TeamID),
		Name: t.Name, Kind: t.Kind, VCPUs: t.VCPUs, MemoryMB: t.MemoryMB, DiskMB: t.DiskMB, SizeBytes: t.SizeBytes,
		HostID: hostIDOf(t.HostID), SourceSandboxID: sandboxIDOf(t.SourceSandboxID), Metadata: t.Metadata,
		CreatedBy: userIDOf(t.CreatedBy), CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt,
		Public: t.TeamID == store.PlatformTeamID,
	}
}

// CreateSnapshotRequest asks for a snapshot template of a running sandbox.
type CreateSnapshotRequest struct {
	SandboxID SandboxID
	Name      string
	// Overwrite replaces the team's snapshot of that name (else it is a
	// conflict).
	Overwrite bool
}

// CreateSnapshot makes a snapshot template (memory and disk) named
// req.Name of a running sandbox of p's team, which goes on running. Its
// bytes count against the team's stored quota (ErrQuota: refused before
// the host writes when the team is at it, and the new files deleted when
// they would take it over).
// replaced tells that it took the place of the team's snapshot of that
// name (req.Overwrite): the new record replaces the old one in one
// transaction, then the old files are deleted on the host, which keeps
// them while sandboxes created from them still run.
func (s *Sandboxes) CreateSnapshot(ctx context.Context, p Principal, req CreateSnapshotRequest) (snap Snapshot, replaced bool, err error) {
	// The pattern first, refused before any agent call; then the host's
	// built-in names.
	if err := ValidateSnapshotName(req.Name, nil); err != nil {
		return Snapshot{}, false, err
	}
	builtin, err := s.BuiltinTemplates(ctx)
	if err != nil {
		return Snapshot{}, false, err
	}
	if err := ValidateSnapshotName(req.Name, builtin); err != nil {
		return Snapshot{}, false, err
	}
	src, err := s.get(ctx, p, req.SandboxID)
	if err != nil {
		return Snapshot{}, false, err
	}
	if src.State != store.SandboxRunning {
		return Snapshot{}, false, errorf(ErrConflict, "the sandbox is %s, not running", src.State)
	}
	q := s.st.Queries()
	cur, err := q.GetTemplate(ctx, db.GetTemplateParams{TeamID: pgUUID(p.TeamID), Name: req.Name})
	switch {
	case err == nil && teamIDOf(cur.TeamID) == p.TeamID && !req.Overwrite:
		return Snapshot{}, false, errorf(ErrConflict, "a snapshot named %q exists: set overwrite to replace it", req.Name)
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return Snapshot{}, false, fmt.Errorf("snapshot %s: %w", req.Name, err)
	}
	// Sandboxes created from the snapshot run as the source did.
	var meta templateMeta
	if t, err := s.resolveTemplate(ctx, pgUUID(p.TeamID), src.Template); err == nil {
		meta.DefaultUser = t.defaultUser
	}
	metaJSON, err := json.Marshal(meta)
	if err != nil {
		return Snapshot{}, false, fmt.Errorf("snapshot metadata: %w", err)
	}
	// A team at its stored quota is refused before the host writes
	// anything; the new snapshot's own size is checked once known, below.
	if err := s.checkStoredQuotas(ctx, s.st.Queries(), pgUUID(p.TeamID), false, 0); err != nil {
		return Snapshot{}, false, err
	}
	c, err := s.agentFor(ctx, src.HostID)
	if err != nil {
		return Snapshot{}, false, err
	}
	newID := store.NewUUID()
	agentName := TemplateID(newID)
	auditEv := AuditEvent{ResourceType: "snapshot", ResourceID: req.Name, Action: "snapshot.create",
		Metadata: map[string]any{"id": agentName, "sandbox_id": ID(src.ID)}}
	// The snapshot and its bookkeeping outlive a client that leaves.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), agentCallTimeout)
	defer cancel()
	resp, err := c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: ID(src.ID), Name: agentName}))
	if err != nil {
		err = agentError(err, "snapshot")
		auditEv.Status, auditEv.Metadata["error"] = AuditError, PublicText(err)
		s.audit.RecordAfter(ctx, p.TeamID, p.Actor(), auditEv)
		return Snapshot{}, false, err
	}
	if terr := s.touch(ctx, src.ID); terr != nil {
		s.log.WarnContext(ctx, "sandbox activity", "sandbox", ID(src.ID), "err", terr)
	}
	row, old, err := s.recordTemplate(ctx, p, c, src, newTemplate{id: newID, name: req.Name, kind: store.TemplateSnapshot,
		made: resp.Msg.GetTemplate(), meta: metaJSON, replace: req.Overwrite, audit: auditEv, replaceAction: "snapshot.overwrite"})
	if errors.Is(err, store.ErrConflict) {
		return Snapshot{}, false, &Error{Kind: ErrConflict, Msg: fmt.Sprintf("a snapshot named %q exists: set overwrite to replace it", req.Name), Err: err}
	}
	if err != nil {
		return Snapshot{}, false, err
	}
	s.log.InfoContext(ctx, "snapshot created", "snapshot", agentName, "name", req.Name, "sandbox", ID(src.ID),
		"team", p.TeamID.String(), "replaced", old != nil)
	return snapshotOf(row), old != nil, nil
}

// newTemplate is a template a host just made from a sandbox, to record.
type newTemplate struct {
	id         pgtype.UUID
	name, kind string
	// made is what the agent answered (sizes, and the machine shape of a
	// snapshot); meta the template's metadata (templateMeta as JSON).
	made *pb.Template
	meta []byte
	// replace deletes the team's template of the same name in the same
	// transaction (otherwise the name in use is store.ErrConflict).
	replace bool
	// audit is recorded with the row; when a template is replaced its ID
	// goes under "replaced_id", and its action becomes replaceAction when
	// set.
	audit         AuditEvent
	replaceAction string
}

// recordTemplate records t, made on src's host from src, in one
// transaction: the team locked, the template of the same name replaced
// (t.replace), the stored quotas checked with t's size, the row inserted,
// its host's copy recorded (the scheduler's affinity) and the audit event
// written. On error the host's new files are deleted (nothing refers to
// them); after a replace, the old template's files are deleted on the host
// that holds them. old is the replaced template.
func (s *Sandboxes) recordTemplate(ctx context.Context, p Principal, c *agentclient.Client, src db.Sandbox, t newTemplate) (db.Template, *db.Template, error) {
	params := templateParams(p, src, t.id, t.name, t.kind, t.made, t.meta)
	ev := t.audit
	var row db.Template
	var old *db.Template
	err := s.st.Tx(ctx, func(q *db.Queries) error {
		if _, err := q.LockTeam(ctx, pgUUID(p.TeamID)); err != nil {
			return notFound(err, "team")
		}
		if t.replace {
			o, err := q.DeleteTemplate(ctx, db.DeleteTemplateParams{TeamID: pgUUID(p.TeamID), Name: t.name})
			switch {
			case err == nil:
				old = &o
				ev.Metadata["replaced_id"] = TemplateID(o.ID)
				if t.replaceAction != "" {
					ev.Action = t.replaceAction
				}
			case !errors.Is(err, store.ErrNotFound):
				return fmt.Errorf("replace template %s: %w", t.name, err)
			}
		}
		if err := s.checkStoredQuotas(ctx, q, pgUUID(p.TeamID), false, (params.SizeBytes+(1<<20-1))>>20); err != nil {
			return err
		}
		var err error
		if row, err = q.InsertTemplate(ctx, params); err != nil {
			return fmt.Errorf("insert template %s: %w", t.name, err)
		}
		if src.HostID.Valid {
			if err := q.UpsertHostTemplate(ctx, db.UpsertHostTemplateParams{HostID: src.HostID, TemplateID: row.ID, SizeBytes: row.SizeBytes}); err != nil {
				return fmt.Errorf("record the host's template: %w", err)
			}
		}
		return s.audit.Record(ctx, q, p.TeamID, p.Actor(), ev)
	})
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err != nil {
		s.deleteAgentTemplate(bg, c, TemplateID(t.id))
		return db.Template{}, nil, err
	}
	if old != nil {
		if oc, err := s.agentFor(bg, old.HostID); err == nil {
			s.deleteAgentTemplate(bg, oc, TemplateID(old.ID))
		}
	}
	return row, old, nil
}

// templateParams is the row of a template made on src's host from src:
// the agent's answer made gives its sizes (and a snapshot's machine
// shape, which may differ from the record's).
func templateParams(p Principal, src db.Sandbox, id pgtype.UUID, name, kind string, made *pb.Template, meta []byte) db.InsertTemplateParams {
	params := db.InsertTemplateParams{
		ID: id, TeamID: pgUUID(p.TeamID), Name: name, Kind: kind,
		VCPUs: src.VCPUs, MemoryMB: src.MemoryMB, DiskMB: int32((made.GetDiskSizeBytes() + 1<<20 - 1) >> 20),
		SizeBytes: int64(made.GetStoredBytes()), HostID: src.HostID, SourceSandboxID: src.ID, Metadata: meta,
		CreatedBy: pgUUID(p.UserID),
	}
	if v := made.GetVcpus(); v > 0 {
		params.VCPUs = int32(v)
	}
	if m := made.GetMemoryMb(); m > 0 {
		params.MemoryMB = int32(m)
	}
	return params
}

// deleteAgentTemplate deletes a template's files on the host, logging a
// failure (the record is gone already; the files are only space).
func (s *Sandboxes) deleteAgentTemplate(ctx context.Context, c *agentclient.Client, name string) {
	if _, err := c.DeleteTemplate(ctx, connect.NewRequest(&pb.DeleteTemplateRequest{Name: name})); err != nil && !errors.Is(err, agentclient.ErrNotFound) {
		s.log.ErrorContext(ctx, "delete a template on the host", "snapshot", name, "err", err)
	}
}

// ListSnapshots lists p's team's templates and the public ones by name
// (the team's first when both have a name).
func (s *Sandboxes) ListSnapshots(ctx context.Context, p Principal) ([]Snapshot, error) {
	rows, err := s.st.Queries().ListTemplates(ctx, pgUUID(p.TeamID))
	if err != nil {
		return nil, fmt.Errorf("list snapshots: %w", err)
	}
	out := make([]Snapshot, len(rows))
	for i, r := range rows {
		out[i] = snapshotOf(r)
	}
	return out, nil
}

// GetSnapshot returns the template p's team means by name: its own, else
// a public one.
func (s *Sandboxes) GetSnapshot(ctx context.Context, p Principal, name string) (Snapshot, error) {
	if !templateRe.MatchString(name) {
		return Snapshot{}, errorf(ErrNotFound, "snapshot not found")
	}
	t, err := s.st.Queries().GetTemplate(ctx, db.GetTemplateParams{TeamID: pgUUID(p.TeamID), Name: name})
	if err != nil {
		return Snapshot{}, notFound(err, "snapshot")
	}
	return snapshotOf(t), nil
}

// DeleteSnapshot deletes p's team's template of that name, on the host
// too (sandboxes created from it keep running). A public template cannot
// be deleted by a team: ErrForbidden (it is visible to every team, so
// saying so leaks nothing); a name the team cannot see is ErrNotFound.
func (s *Sandboxes) DeleteSnapshot(ctx context.Context, p Principal, name string) error {
	if !templateRe.MatchString(name) {
		return errorf(ErrNotFound, "snapshot not found")
	}
	var holders []pgtype.UUID
	return s.st.Tx(ctx, func(q *db.Queries) error {
		if t, err := q.GetTemplate(ctx, db.GetTemplateParams{TeamID: pgUUID(p.TeamID), Name: name}); err == nil && t.TeamID == pgUUID(p.TeamID) {
			// The hosts that hold its files, read before the delete
			// takes their host_templates rows with it.
			holders, err = q.ListTemplateHosts(ctx, t.ID)
			if err != nil {
				return fmt.Errorf("the template's hosts: %w", err)
			}
		}
		row, err := q.DeleteTemplate(ctx, db.DeleteTemplateParams{TeamID: pgUUID(p.TeamID), Name: name})
		if errors.Is(err, store.ErrNotFound) {
			if t, gerr := q.GetTemplate(ctx, db.GetTemplateParams{TeamID: pgUUID(p.TeamID), Name: name}); gerr == nil && t.TeamID == store.PlatformTeamID {
				return errorf(ErrForbidden, "%q is a public snapshot: it cannot be deleted", name)
			}
			return notFound(err, "snapshot")
		}
		if err != nil {
			return fmt.Errorf("delete snapshot: %w", err)
		}
		if err := s.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "snapshot", ResourceID: name,
			Action: "snapshot.delete", Metadata: map[string]any{"id": TemplateID(row.ID)}}); err != nil {
			return err
		}
		// Its home host first, in the transaction: if it cannot delete,
		// the record stays and the caller can try again. The other
		// holders' copies are then deleted as well as they can be (a copy
		// left behind is an orphan the host's reconciliation deletes).
		c, err := s.agentFor(ctx, row.HostID)
		if err != nil && row.HostID.Valid {
			return err
		}
		if c != nil {
			if _, err := c.DeleteTemplate(ctx, connect.NewRequest(&pb.DeleteTemplateRequest{Name: TemplateID(row.ID)})); err != nil &&
				!errors.Is(err, agentclient.ErrNotFound) {
				return agentError(err, "delete template")
			}
		}
		for _, h := range holders {
			if h == row.HostID {
				continue
			}
			if hc, err := s.agentFor(ctx, h); err == nil {
				if _, err := hc.DeleteTemplate(ctx, connect.NewRequest(&pb.DeleteTemplateRequest{Name: TemplateID(row.ID)})); err != nil &&
					!errors.Is(err, agentclient.ErrNotFound) {
					s.log.WarnContext(ctx, "delete a template's copy", "host", hostWireID(h), "template", TemplateID(row.ID), "err", err)
				}
			}
		}
		// Its hidden tagged versions go with it (templatetags.go).
		versions, err := deleteVersions(ctx, q, pgUUID(p.TeamID), name)
		if err != nil {
			return err
		}
		s.deleteTemplateFiles(ctx, versions)
		s.log.InfoContext(ctx, "snapshot deleted", "snapshot", TemplateID(row.ID), "name", name, "team", p.TeamID.String())
		return nil
	})
}

// TemplateRef is what a template name means for a team (resolveTemplate's
// order: its own template, a public one, a built-in image).
type TemplateRef struct {
	Name string
	// Public: a platform template or a built-in image.
	Public bool
	// Snapshot is the template's record (nil for a built-in image).
	Snapshot *Snapshot
}

// LookupTemplate tells what p's team means by a template name; a name it
// cannot create sandboxes from is ErrNotFound.
func (s *Sandboxes) LookupTemplate(ctx context.Context, p Principal, name string) (TemplateRef, error) {
	if !templateRe.MatchString(name) {
		return TemplateRef{}, errorf(ErrNotFound, "template %q not found", name)
	}
	t, err := s.resolveTemplate(ctx, pgUUID(p.TeamID), name)
	if err != nil {
		return TemplateRef{}, err
	}
	if t.row == nil {
		return TemplateRef{Name: name, Public: true}, nil
	}
	snap := snapshotOf(*t.row)
	return TemplateRef{Name: name, Public: snap.Public, Snapshot: &snap}, nil
}
