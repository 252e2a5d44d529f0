package builds

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/recipe"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// The layer cache. After its steps succeed, a build snapshots its
// sandbox (memory and disk, its own files removed: service.PublishTemplate
// with Layer) as a hidden snapshot template, recorded in build_layers
// under the hash of its step prefix: the FROM template's version (a
// template's row ID, which every rebuild changes; a built-in image's
// name), the build's shape (a snapshot restores with its own) and,
// chained step by step, each step's kind, text and context (user,
// directory, environment) and, for a COPY, the sha256 of its archive. A
// later build of the same team computes the hash of each of its prefixes
// and starts from the deepest one cached: its build sandbox is restored
// from that layer, in the state the cached steps left (files and running
// processes alike), and those steps are skipped.
//
// Soundness: a layer is keyed by its team (another team's build never
// looks it up, so no file of one team reaches another's template); a FROM
// template rebuilt or replaced has a new row ID, so its old layers are
// never hit again and age out; the build's archive content is in the hash
// of every COPY. Concurrency: two builds may save the same prefix; the
// first insert wins and the other deletes its own copy. A layer evicted
// while a build starts from it makes that create fail as not found: the
// build then starts from FROM. Each team keeps LayerKeep layers, least
// recently used evicted; they count against its stored quotas (a layer
// that does not fit is not saved, the build goes on).

// LayerKeep is how many layers a team keeps.
const LayerKeep = 4

// layerHashes are the hashes of the prefixes of r's steps: [k-1] is FROM
// and steps 1..k. nil: no caching (the FROM version is unknown).
func (a *attempt) layerHashes(ctx context.Context, r *recipe.Recipe) ([][]byte, error) {
	from, err := a.s.guest.templateVersion(ctx, a.p, r.From)
	if err != nil || from == "" {
		return nil, err
	}
	h := sha256.Sum256(fmt.Appendf(nil, "capsule-layer-v2\x00%s\x00%d\x00%d", from, a.b.VCPUs, a.b.MemoryMB))
	prev := h[:]
	out := make([][]byte, 0, len(r.Steps))
	for i, st := range r.Steps {
		d := sha256.New()
		d.Write(prev)
		field := func(s string) {
			var n [8]byte
			binary.BigEndian.PutUint64(n[:], uint64(len(s)))
			d.Write(n[:])
			io.WriteString(d, s)
		}
		field(string(st.Kind))
		field(st.Text)
		field(st.Ctx.User)
		field(st.Ctx.Workdir)
		env := envMap(st.Ctx.Env)
		keys := make([]string, 0, len(env))
		for k := range env {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			field(k + "=" + env[k])
		}
		if st.Kind == recipe.Copy {
			arc, ok := copyArchive(a.b, i+1)
			if !ok {
				arc = a.b.ArchiveID
			}
			sum, err := a.archiveSum(ctx, arc)
			if err != nil {
				return nil, err
			}
			field(string(sum))
		}
		prev = d.Sum(nil)
		out = append(out, prev)
	}
	return out, nil
}

func (a *attempt) archiveSum(ctx context.Context, id pgtype.UUID) ([]byte, error) {
	if !id.Valid {
		return nil, nil
	}
	arc, err := a.s.st.Queries().GetBuildArchive(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("builds: archive: %w", err)
	}
	return arc.Sha256, nil
}

// cachedLayer is the deepest cached prefix of hashes for the build's team
// (steps 0: none).
func (a *attempt) cachedLayer(ctx context.Context, hashes [][]byte) (steps int, template string, err error) {
	if len(hashes) == 0 {
		return 0, "", nil
	}
	l, err := a.s.st.Queries().FindBuildLayer(ctx, db.FindBuildLayerParams{TeamID: a.b.TeamID, Hashes: hashes})
	if errors.Is(err, store.ErrNotFound) {
		return 0, "", nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("builds: layer cache: %w", err)
	}
	_ = a.s.st.Queries().TouchBuildLayer(ctx, db.TouchBuildLayerParams{TeamID: a.b.TeamID, PrefixHash: l.PrefixHash})
	return int(l.Steps), l.TemplateName, nil
}

// saveLayer snapshots the sandbox after steps as the layer of
// hashes[steps-1], and evicts the team's least recently used layers over
// LayerKeep. A failure is logged: the build goes on without it.
func (a *attempt) saveLayer(ctx context.Context, hashes [][]byte, steps int) {
	s := a.s
	// A cancel met on the way still records or drops what was made.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	log := s.log.With("build", ID(a.b.ID), "team", wireid.Format(wireid.Team, a.b.TeamID))
	tpl, err := s.guest.publish(ctx, a.p, service.PublishTemplate{SandboxID: idOf[wireid.KindSandbox](a.sbx), Kind: store.TemplateSnapshot,
		Layer: true, BuildID: ID(a.b.ID)})
	if err != nil {
		log.WarnContext(ctx, "layer not cached", "err", err)
		a.logs.system(steps, "the layer of steps 1-%d was not cached: %s", steps, service.PublicText(err))
		return
	}
	q := s.st.Queries()
	n, err := q.InsertBuildLayer(ctx, db.InsertBuildLayerParams{TeamID: a.b.TeamID, PrefixHash: hashes[steps-1], Steps: int32(steps), TemplateID: tpl})
	if err != nil || n == 0 {
		// A concurrent build cached this prefix first (or the insert
		// failed): this copy goes.
		if err != nil {
			log.WarnContext(ctx, "layer not recorded", "err", err)
		}
		a.dropLayer(ctx, service.HiddenTemplateName(tpl))
		return
	}
	a.logs.system(steps, "cached the layer of steps 1-%d", steps)
	old, err := q.EvictableBuildLayers(ctx, db.EvictableBuildLayersParams{TeamID: a.b.TeamID, Keep: LayerKeep})
	if err != nil {
		log.WarnContext(ctx, "layer eviction", "err", err)
		return
	}
	// Layers whose build died between the template and its record.
	orphans, err := q.OrphanLayerTemplates(ctx, db.OrphanLayerTemplatesParams{TeamID: a.b.TeamID,
		Before: s.now().Add(-time.Hour)})
	if err != nil {
		log.WarnContext(ctx, "orphan layers", "err", err)
	}
	for _, t := range append(old, orphans...) {
		a.dropLayer(ctx, t.Name)
	}
}

// dropLayer deletes a layer's hidden template (its build_layers row goes
// with it).
func (a *attempt) dropLayer(ctx context.Context, name string) {
	if err := a.s.guest.deleteTemplate(ctx, a.p, name); err != nil && !errors.Is(err, service.ErrNotFound) {
		a.s.log.WarnContext(ctx, "delete a layer", "build", ID(a.b.ID), "template", name, "err", err)
	}
}
