package service

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Template tags (E2B's): a tag names one version of a team's template.
// The tag DefaultTag names the visible template row called by the
// template's name — what the name alone means everywhere (sandbox
// creation, listings, FROM). Other tags name that row or a hidden one: a
// version built with tags but not DefaultTag, or a former default version
// another tag still names. Hidden rows are called HiddenTemplateName(id),
// a name ValidateSnapshotName never accepts, so no template a user names
// takes it; they count against the stored quotas like every template, and
// one that no tag names any more is deleted (its files too) in the
// transaction that untagged it.

// DefaultTag is the tag of a template's default version.
const DefaultTag = "default"

// MaxTemplateTags bounds the tags of one request.
const MaxTemplateTags = 16

var tagRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidateTemplateTag checks a tag: 1 to 128 letters, digits, '.', '_'
// or '-', starting with a letter or digit.
func ValidateTemplateTag(tag string) error {
	if !tagRe.MatchString(tag) {
		return errorf(ErrInvalid, "tag %q: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit", tag)
	}
	return nil
}

// HiddenTemplateName is the name of a hidden template row (a tagged
// version that is not its template's default, or a build layer).
func HiddenTemplateName(id pgtype.UUID) string { return "v.." + hex.EncodeToString(id.Bytes[:]) }

// publishTags are the checked, de-duplicated tags of a publish (none:
// DefaultTag).
func publishTags(req PublishTemplate) ([]string, error) {
	if req.Layer {
		return nil, nil
	}
	return NormalizeTags(req.Tags)
}

// NormalizeTags checks tags and removes duplicates; none is DefaultTag.
func NormalizeTags(tags []string) ([]string, error) {
	if len(tags) == 0 {
		return []string{DefaultTag}, nil
	}
	if len(tags) > MaxTemplateTags {
		return nil, errorf(ErrInvalid, "tags: at most %d", MaxTemplateTags)
	}
	out := make([]string, 0, len(tags))
	for _, t := range tags {
		if err := ValidateTemplateTag(t); err != nil {
			return nil, err
		}
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out, nil
}

// retireDefault moves the team's template row called name out of the way
// of a new default version: hidden when another tag still names it
// (hidden true), else deleted (its files are the caller's to delete).
// old is nil when the team has no such row.
func (s *Sandboxes) retireDefault(ctx context.Context, q *db.Queries, team pgtype.UUID, name string) (old *db.Template, hidden bool, err error) {
	o, err := q.GetTemplate(ctx, db.GetTemplateParams{TeamID: team, Name: name})
	if errors.Is(err, store.ErrNotFound) || (err == nil && o.TeamID != team) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("replace template: %w", err)
	}
	n, err := q.CountTemplateTagsOf(ctx, db.CountTemplateTagsOfParams{TemplateID: o.ID, ExceptTag: DefaultTag})
	if err != nil {
		return nil, false, fmt.Errorf("replace template: %w", err)
	}
	if n > 0 {
		if err := q.SetTemplateHidden(ctx, db.SetTemplateHiddenParams{ID: o.ID, Name: HiddenTemplateName(o.ID), Hidden: true, VersionOf: name}); err != nil {
			return nil, false, fmt.Errorf("hide the former version: %w", err)
		}
		return &o, true, nil
	}
	if _, err := q.DeleteTemplate(ctx, db.DeleteTemplateParams{TeamID: team, Name: name}); err != nil {
		return nil, false, fmt.Errorf("replace template: %w", err)
	}
	return &o, false, nil
}

// deleteTemplateFiles deletes deleted rows' files on their hosts (a host
// keeps files while sandboxes chain onto them).
func (s *Sandboxes) deleteTemplateFiles(ctx context.Context, rows []db.Template) {
	for _, t := range rows {
		if c, err := s.agentFor(ctx, t.HostID); err == nil {
			s.deleteAgentTemplate(ctx, c, TemplateID(t.ID))
		}
	}
}

// TemplateTag is a tag of a template.
type TemplateTag struct {
	Tag string
	// BuildID is the wire ID of the build that made the version ("" none).
	BuildID   string
	CreatedAt time.Time
}

// TemplateTags lists the tags of p's team's template name; ErrNotFound
// when the team has neither the template nor a tag of it.
func (s *Sandboxes) TemplateTags(ctx context.Context, p Principal, name string) ([]TemplateTag, error) {
	if !templateRe.MatchString(name) {
		return nil, errorf(ErrNotFound, "template %q not found", name)
	}
	rows, err := s.st.Queries().ListTemplateTags(ctx, db.ListTemplateTagsParams{TeamID: pgUUID(p.TeamID), Name: name})
	if err != nil {
		return nil, fmt.Errorf("template tags: %w", err)
	}
	if len(rows) == 0 {
		if _, err := s.LookupTemplate(ctx, p, name); err != nil {
			return nil, err
		}
	}
	out := make([]TemplateTag, len(rows))
	for i, r := range rows {
		out[i] = TemplateTag{Tag: r.Tag, CreatedAt: r.CreatedAt}
		if r.BuildID.Valid {
			out[i].BuildID = wireid.Format(wireid.Build, r.BuildID)
		}
	}
	return out, nil
}

// ResolveTemplateTag is the template name (a row's name, visible or
// hidden) that name:tag means for p's team: name itself for DefaultTag,
// else the version the tag names (the team's, else a public one's).
func (s *Sandboxes) ResolveTemplateTag(ctx context.Context, p Principal, name, tag string) (string, error) {
	if tag == DefaultTag || tag == "" {
		return name, nil
	}
	if !templateRe.MatchString(name) || !tagRe.MatchString(tag) {
		return "", errorf(ErrNotFound, "template %q not found", name+":"+tag)
	}
	t, err := s.st.Queries().GetTaggedTemplate(ctx, db.GetTaggedTemplateParams{TeamID: pgUUID(p.TeamID), Name: name, Tag: tag})
	if errors.Is(err, store.ErrNotFound) {
		return "", errorf(ErrNotFound, "template %q not found", name+":"+tag)
	}
	if err != nil {
		return "", fmt.Errorf("template tag: %w", err)
	}
	return t.Name, nil
}

// TemplateNameExists reports whether p's team can use template name in
// any version (its default, or a tag of it).
func (s *Sandboxes) TemplateNameExists(ctx context.Context, p Principal, name string) (TemplateRef, bool, error) {
	ref, err := s.LookupTemplate(ctx, p, name)
	if err == nil {
		return ref, true, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return TemplateRef{}, false, err
	}
	if !templateRe.MatchString(name) {
		return TemplateRef{}, false, nil
	}
	ok, err := s.st.Queries().TemplateHasTags(ctx, db.TemplateHasTagsParams{TeamID: pgUUID(p.TeamID), Name: name})
	if err != nil {
		return TemplateRef{}, false, fmt.Errorf("template tags: %w", err)
	}
	return TemplateRef{Name: name}, ok, nil
}

// AssignTemplateTags points tags of p's team's template name at the
// version name:from names. Assigning DefaultTag makes that version the
// template's default (the former default is hidden while another tag
// names it, else deleted). It returns the version's build ("" none).
func (s *Sandboxes) AssignTemplateTags(ctx context.Context, p Principal, name, from string, tags []string) (string, error) {
	if from == "" {
		from = DefaultTag
	}
	if len(tags) == 0 {
		return "", errorf(ErrInvalid, "tags: at least one")
	}
	tags, err := NormalizeTags(tags)
	if err != nil {
		return "", err
	}
	if !templateRe.MatchString(name) || !tagRe.MatchString(from) {
		return "", errorf(ErrNotFound, "template %q not found", name+":"+from)
	}
	team := pgUUID(p.TeamID)
	var build string
	var gone []db.Template
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		if _, err := q.LockTeam(ctx, team); err != nil {
			return notFound(err, "team")
		}
		var target db.Template
		var err error
		if from == DefaultTag {
			target, err = q.GetTemplate(ctx, db.GetTemplateParams{TeamID: team, Name: name})
		} else {
			target, err = q.GetTaggedTemplate(ctx, db.GetTaggedTemplateParams{TeamID: team, Name: name, Tag: from})
		}
		if errors.Is(err, store.ErrNotFound) || (err == nil && target.TeamID != team) {
			return errorf(ErrNotFound, "template %q not found", name+":"+from)
		}
		if err != nil {
			return fmt.Errorf("template tag: %w", err)
		}
		var m templateMeta
		_ = json.Unmarshal(target.Metadata, &m)
		build = m.BuildID
		if slices.Contains(tags, DefaultTag) && target.Hidden {
			o, hidden, err := s.retireDefault(ctx, q, team, name)
			if err != nil {
				return err
			}
			if o != nil && !hidden {
				gone = append(gone, *o)
			}
			if err := q.SetTemplateHidden(ctx, db.SetTemplateHiddenParams{ID: target.ID, Name: name, Hidden: false, VersionOf: name}); err != nil {
				return fmt.Errorf("show the version: %w", err)
			}
		}
		bid, _ := wireid.Parse(wireid.Build, build)
		for _, tag := range tags {
			if _, err := q.SetTemplateTag(ctx, db.SetTemplateTagParams{TeamID: team, Name: name, Tag: tag, TemplateID: target.ID, BuildID: bid}); err != nil {
				return fmt.Errorf("tag %s: %w", tag, err)
			}
		}
		untagged, err := q.DeleteUntaggedVersions(ctx, db.DeleteUntaggedVersionsParams{TeamID: team, Name: name})
		if err != nil {
			return fmt.Errorf("untagged versions: %w", err)
		}
		gone = append(gone, untagged...)
		return s.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "template", ResourceID: name,
			Action: "template.tag", Metadata: map[string]any{"from": from, "tags": tags, "id": TemplateID(target.ID)}})
	})
	if err != nil {
		return "", err
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	s.deleteTemplateFiles(bg, gone)
	return build, nil
}

// RemoveTemplateTags removes tags of p's team's template name; a hidden
// version no tag names any more is deleted. DefaultTag cannot be removed
// (delete the template instead); a tag the template lacks is ErrNotFound.
func (s *Sandboxes) RemoveTemplateTags(ctx context.Context, p Principal, name string, tags []string) error {
	if len(tags) == 0 {
		return errorf(ErrInvalid, "tags: at least one")
	}
	tags, err := NormalizeTags(tags)
	if err != nil {
		return err
	}
	if slices.Contains(tags, DefaultTag) {
		return errorf(ErrInvalid, "tags: %q names the template itself: delete the template instead", DefaultTag)
	}
	if !templateRe.MatchString(name) {
		return errorf(ErrNotFound, "template %q not found", name)
	}
	team := pgUUID(p.TeamID)
	var gone []db.Template
	err = s.st.Tx(ctx, func(q *db.Queries) error {
		if _, err := q.LockTeam(ctx, team); err != nil {
			return notFound(err, "team")
		}
		removed, err := q.DeleteTemplateTags(ctx, db.DeleteTemplateTagsParams{TeamID: team, Name: name, Tags: tags})
		if err != nil {
			return fmt.Errorf("remove tags: %w", err)
		}
		if len(removed) != len(tags) {
			return errorf(ErrNotFound, "template %q has no tag among %q", name, tags)
		}
		if gone, err = q.DeleteUntaggedVersions(ctx, db.DeleteUntaggedVersionsParams{TeamID: team, Name: name}); err != nil {
			return fmt.Errorf("untagged versions: %w", err)
		}
		return s.audit.Record(ctx, q, p.TeamID, p.Actor(), AuditEvent{ResourceType: "template", ResourceID: name,
			Action: "template.untag", Metadata: map[string]any{"tags": tags}})
	})
	if err != nil {
		return err
	}
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	s.deleteTemplateFiles(bg, gone)
	return nil
}

// deleteVersions deletes, in q's transaction, every hidden version of p's
// team's template name (the template itself is being deleted); their
// files are the caller's to delete.
func deleteVersions(ctx context.Context, q *db.Queries, team pgtype.UUID, name string) ([]db.Template, error) {
	rows, err := q.DeleteUntaggedVersions(ctx, db.DeleteUntaggedVersionsParams{TeamID: team, Name: name, AllVersions: true})
	if err != nil {
		return nil, fmt.Errorf("template versions: %w", err)
	}
	return rows, nil
}
