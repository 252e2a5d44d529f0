package service

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
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
	// Tags are E2B's tags of the new version (none: DefaultTag). With
	// DefaultTag it becomes the template req.Name (replacing the version
	// that was); without, a hidden version only its tags name
	// (TemplateTags).
	Tags []string
	// Layer makes a hidden template that nothing names (a build layer of
	// internal/builds): Name and Tags are ignored, no version is replaced.
	Layer bool
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
	tags, err := publishTags(req)
	if err != nil {
		return Snapshot{}, err
	}
	if !req.Layer {
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
	// The row's name: the template's (its default version), else hidden.
	visible := !req.Layer && slices.Contains(tags, DefaultTag)
	rowName := req.Name
	if !visible {
		rowName = HiddenTemplateName(newID)
	}
	auditEv := AuditEvent{ResourceType: "template", ResourceID: req.Name, Action: "template.build",
		Metadata: map[string]any{"id": agentName, "kind": req.Kind, "build_id": req.BuildID}}
	if req.Layer {
		auditEv.ResourceID, auditEv.Action = rowName, "template.layer"
	} else {
		auditEv.Metadata["tags"] = tags
	}
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
	params := templateParams(p, src, newID, rowName, req.Kind, at, metaJSON)
	var row db.Template
	var gone []db.Template // versions replaced or no longer tagged
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		if _, err := q.LockTeam(ctx, pgUUID(p.TeamID)); err != nil {
			return notFound(err, "team")
		}
		if visible {
			o, hidden, err := s.retireDefault(ctx, q, pgUUID(p.TeamID), req.Name)
			if err != nil {
				return err
			}
			if o != nil {
				auditEv.Metadata["replaced_id"] = TemplateID(o.ID)
				if !hidden {
					gone = append(gone, *o)
				}
			}
		}
		if err := s.checkStoredQuotas(ctx, q, pgUUID(p.TeamID), false, (params.SizeBytes+(1<<20-1))>>20); err != nil {
			return err
		}
		var err error
		if row, err = q.InsertTemplate(ctx, params); err != nil {
			return fmt.Errorf("insert template: %w", err)
		}
		if !visible {
			versionOf := req.Name
			if req.Layer {
				versionOf = ""
			}
			if err := q.SetTemplateHidden(ctx, db.SetTemplateHiddenParams{ID: row.ID, Name: rowName, Hidden: true, VersionOf: versionOf}); err != nil {
				return fmt.Errorf("hide template: %w", err)
			}
			row.Hidden = true
		}
		if src.HostID.Valid {
			if err := q.UpsertHostTemplate(ctx, db.UpsertHostTemplateParams{HostID: src.HostID, TemplateID: row.ID, SizeBytes: row.SizeBytes}); err != nil {
				return fmt.Errorf("record the host's template: %w", err)
			}
		}
		if !req.Layer {
			build, _ := wireid.Parse(wireid.Build, req.BuildID)
			for _, tag := range tags {
				if _, err := q.SetTemplateTag(ctx, db.SetTemplateTagParams{TeamID: pgUUID(p.TeamID), Name: req.Name, Tag: tag,
					TemplateID: row.ID, BuildID: build}); err != nil {
					return fmt.Errorf("tag %s: %w", tag, err)
				}
			}
			untagged, err := q.DeleteUntaggedVersions(ctx, db.DeleteUntaggedVersionsParams{TeamID: pgUUID(p.TeamID), Name: req.Name})
			if err != nil {
				return fmt.Errorf("untagged versions: %w", err)
			}
			gone = append(gone, untagged...)
		}
		return s.audit.Record(ctx, q, p.TeamID, p.Actor(), auditEv)
	})
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err != nil {
		// Nothing refers to the new files: delete them.
		s.deleteAgentTemplate(bg, c, agentName)
		return Snapshot{}, err
	}
	s.deleteTemplateFiles(bg, gone)
	s.log.InfoContext(ctx, "template built", "template", agentName, "name", rowName, "kind", req.Kind,
		"sandbox", ID(src.ID), "team", p.TeamID.String(), "tags", tags, "replaced", len(gone))
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
