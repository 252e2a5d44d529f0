package service

import (
	"context"
	"encoding/json"
	"fmt"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/store"
)

// TemplateDefaults are what every sandbox created from a built template
// gets: its processes' user, directory and environment (a request's own
// env vars win over these).
type TemplateDefaults struct {
	User    string
	Workdir string
	Env     map[string]string
}

// PublishTemplate asks for a template made of a template build's sandbox
// (internal/builds).
type PublishTemplate struct {
	SandboxID SandboxID
	Name      string
	// Kind is store.TemplateSnapshot (memory and disk: the sandbox's
	// processes are running in every sandbox created from it) or
	// store.TemplateImage (its disk flattened: they boot cold).
	Kind     string
	Defaults TemplateDefaults
	// BuildID is the build's wire ID, kept in the template's metadata.
	BuildID string
}

// PublishTemplate makes the template req.Name of p's team from a running
// sandbox of that team, replacing the team's template of that name (a
// build makes a new version of its template): the new record replaces the
// old one in one transaction, then the old files are deleted on the host,
// which keeps them while sandboxes created from them still run. The
// template's bytes count against the team's stored quota, as a snapshot's.
func (s *Sandboxes) PublishTemplate(ctx context.Context, p Principal, req PublishTemplate) (Snapshot, error) {
	if req.Kind != store.TemplateSnapshot && req.Kind != store.TemplateImage {
		return Snapshot{}, errorf(ErrInvalid, "template kind %q", req.Kind)
	}
	if err := ValidateSnapshotName(req.Name, nil); err != nil {
		return Snapshot{}, err
	}
	builtin, err := s.BuiltinTemplates(ctx)
	if err != nil {
		return Snapshot{}, err
	}
	if err := ValidateSnapshotName(req.Name, builtin); err != nil {
		return Snapshot{}, err
	}
	src, err := s.get(ctx, p, req.SandboxID)
	if err != nil {
		return Snapshot{}, err
	}
	if src.State != store.SandboxRunning {
		return Snapshot{}, errorf(ErrConflict, "the sandbox is %s, not running", src.State)
	}
	// What the recipe does not set comes from the template it started from.
	meta := templateMeta{DefaultUser: req.Defaults.User, DefaultWorkdir: req.Defaults.Workdir, Env: req.Defaults.Env, BuildID: req.BuildID}
	if from, err := s.resolveTemplate(ctx, pgUUID(p.TeamID), src.Template); err == nil {
		if meta.DefaultUser == "" {
			meta.DefaultUser = from.defaultUser
		}
		if meta.DefaultWorkdir == "" {
			meta.DefaultWorkdir = from.workdir
		}
		meta.Env = withTemplateEnv(from.env, meta.Env)
	}
	metaJSON, err := json.Marshal(meta)
	if err != nil {
		return Snapshot{}, fmt.Errorf("template metadata: %w", err)
	}
	if err := s.checkStoredQuotas(ctx, s.st.Queries(), pgUUID(p.TeamID), false, 0); err != nil {
		return Snapshot{}, err
	}
	c, err := s.agentFor(ctx, src.HostID)
	if err != nil {
		return Snapshot{}, err
	}
	newID := store.NewUUID()
	agentName := TemplateID(newID)
	auditEv := AuditEvent{ResourceType: "template", ResourceID: req.Name, Action: "template.build",
		Metadata: map[string]any{"id": agentName, "kind": req.Kind, "build_id": req.BuildID}}
	if pgUUID(p.TeamID) == store.PlatformTeamID {
		auditEv.Scope = ScopeAdmin
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), agentCallTimeout)
	defer cancel()
	var at *pb.Template
	if req.Kind == store.TemplateSnapshot {
		resp, err := c.CreateSnapshot(ctx, connect.NewRequest(&pb.CreateSnapshotRequest{SandboxId: ID(src.ID), Name: agentName}))
		if err != nil {
			return Snapshot{}, agentError(err, "snapshot")
		}
		at = resp.Msg.GetTemplate()
	} else {
		resp, err := c.FlattenRootfs(ctx, connect.NewRequest(&pb.FlattenRootfsRequest{SandboxId: ID(src.ID), Name: agentName}))
		if err != nil {
			return Snapshot{}, agentError(err, "flatten")
		}
		at = resp.Msg.GetTemplate()
	}
	// Both kinds live on the source's host (the scheduler's affinity;
	// other hosts replicate them on demand).
	row, old, err := s.recordTemplate(ctx, p, c, src, newTemplate{id: newID, name: req.Name, kind: req.Kind,
		made: at, meta: metaJSON, replace: true, audit: auditEv})
	if err != nil {
		return Snapshot{}, err
	}
	s.log.InfoContext(ctx, "template built", "template", agentName, "name", req.Name, "kind", req.Kind,
		"sandbox", ID(src.ID), "team", p.TeamID.String(), "replaced", old != nil)
	return snapshotOf(row), nil
}

// withTemplateEnv is a template's environment under a request's own.
func withTemplateEnv(tpl, req map[string]string) map[string]string {
	if len(tpl) == 0 {
		return req
	}
	out := make(map[string]string, len(tpl)+len(req))
	for k, v := range tpl {
		out[k] = v
	}
	for k, v := range req {
		out[k] = v
	}
	return out
}
