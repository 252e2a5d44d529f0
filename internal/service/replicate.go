package service

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5/pgtype"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/store"
	"github.com/capsulehq/capsule/internal/store/db"
	"github.com/capsulehq/capsule/internal/wireid"
)

// Templates across hosts (issue 11.6).
//
// A snapshot template (or a team's image template, which a build
// flattened on one host) lives as files on the hosts that hold it: its
// home host (templates.host_id) and those that host_templates lists. The
// scheduler prefers them (affinity) but may choose any host; a create on
// a host that lacks the template first replicates it there
// (ensureTemplate): the control plane streams the holder's
// ExportTemplate into the target's ImportTemplate (hostagent.v1 revision
// 9). The agents never talk to each other: each one only trusts the
// control plane's client certificate, and the relay needs no new trust
// between hosts. The importing agent verifies every file against the
// exporter's SHA-256 and publishes the copy only when all of it is in
// place (package sandbox, replicate.go); the control plane then records
// the copy in host_templates. Concurrent creates of one template on one
// host share one replication (singleflight), which runs to its end even
// if the request that started it goes away. An import that needs room
// evicts the host's least recently used replicas (never one a sandbox
// reads through); the agent names them and their host_templates rows go.
// Deleting a template reaches every holder (DeleteSnapshot).

// replicateTimeout bounds one replication (a template of many GiB over a
// slow link takes minutes).
const replicateTimeout = 30 * time.Minute

// needsFiles reports whether tpl's files live on some hosts only (else
// every host has them: a built-in image, or no template row).
func (tpl resolvedTemplate) needsFiles() bool {
	t := tpl.row
	return t != nil && (t.Kind == store.TemplateSnapshot || t.HostID.Valid)
}

// ensureTemplate makes sure host holds tpl's files, replicating them from
// a holder when it does not.
func (s *Sandboxes) ensureTemplate(ctx context.Context, host pgtype.UUID, tpl resolvedTemplate) error {
	if !tpl.needsFiles() || tpl.row.HostID == host {
		return nil
	}
	holders, err := s.st.Queries().ListTemplateHosts(ctx, tpl.row.ID)
	if err != nil {
		return fmt.Errorf("the template's hosts: %w", err)
	}
	if slices.Contains(holders, host) {
		return nil
	}
	return s.replicate(ctx, host, tpl)
}

// replicate copies tpl's files to host from one of its holders (its home
// host first), once however many creates ask at the same time.
func (s *Sandboxes) replicate(ctx context.Context, host pgtype.UUID, tpl resolvedTemplate) error {
	key := hostWireID(host) + "/" + tpl.agentName
	ch := s.replications.DoChan(key, func() (any, error) {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), replicateTimeout)
		defer cancel()
		return nil, s.replicateFrom(rctx, host, tpl)
	})
	select {
	case r := <-ch:
		return r.Err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// replicateFrom tries the holders of tpl in turn until one copy to host
// succeeds, and records it.
func (s *Sandboxes) replicateFrom(ctx context.Context, host pgtype.UUID, tpl resolvedTemplate) error {
	t := tpl.row
	holders, err := s.st.Queries().ListTemplateHosts(ctx, t.ID)
	if err != nil {
		return fmt.Errorf("the template's hosts: %w", err)
	}
	if slices.Contains(holders, host) {
		return nil // a replication that finished just before this one
	}
	var sources []pgtype.UUID
	if t.HostID.Valid {
		sources = append(sources, t.HostID)
	}
	for _, h := range holders {
		if h != host && h != t.HostID {
			sources = append(sources, h)
		}
	}
	log := s.log.With("host", s.hostKey(host), "template", tpl.agentName)
	var errs []error
	for _, src := range sources {
		start := time.Now()
		resp, err := s.relayTemplate(ctx, src, host, tpl.agentName)
		if err != nil {
			log.WarnContext(ctx, "template replication failed", "from", s.hostKey(src), "err", err)
			errs = append(errs, fmt.Errorf("from %s: %w", s.hostKey(src), err))
			continue
		}
		s.forgetEvicted(ctx, host, resp.GetEvicted())
		s.noteTemplate(ctx, host, t.ID, int64(resp.GetTemplate().GetStoredBytes()))
		log.InfoContext(ctx, "template replicated", "from", s.hostKey(src), "bytes", resp.GetBytes(),
			"took", time.Since(start).Round(time.Millisecond), "evicted", len(resp.GetEvicted()))
		return nil
	}
	if len(errs) == 0 {
		return errorf(ErrUnavailable, "template %q: no host holds its files", t.Name)
	}
	return &Error{Kind: ErrUnavailable, Msg: fmt.Sprintf("template %q could not be copied to the sandbox's host", t.Name), Err: errors.Join(errs...)}
}

// relayTemplate streams template name from host src's ExportTemplate into
// host dst's ImportTemplate. A failure on either side fails the import,
// which then leaves nothing on dst.
func (s *Sandboxes) relayTemplate(ctx context.Context, src, dst pgtype.UUID, name string) (*pb.ImportTemplateResponse, error) {
	sc, err := s.agentFor(ctx, src)
	if err != nil {
		return nil, err
	}
	dc, err := s.agentFor(ctx, dst)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	exp, err := sc.ExportTemplate(ctx, connect.NewRequest(&pb.ExportTemplateRequest{Name: name}))
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	defer exp.Close()
	imp := dc.ImportTemplate(ctx)
	for exp.Receive() {
		req := &pb.ImportTemplateRequest{}
		switch p := exp.Msg().GetPart().(type) {
		case *pb.ExportTemplateResponse_Manifest:
			req.Part = &pb.ImportTemplateRequest_Manifest{Manifest: p.Manifest}
		case *pb.ExportTemplateResponse_Chunk:
			req.Part = &pb.ImportTemplateRequest_Chunk{Chunk: p.Chunk}
		}
		if hook := relayHook; hook != nil {
			hook(req)
		}
		if err := imp.Send(req); err != nil {
			break // the importer answered already: CloseAndReceive has it
		}
	}
	if err := exp.Err(); err != nil {
		cancel() // the import must not see a clean end
		_, _ = imp.CloseAndReceive()
		return nil, fmt.Errorf("export: %w", err)
	}
	resp, err := imp.CloseAndReceive()
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	return resp.Msg, nil
}

// relayHook, when set (by tests only: nothing in production code or
// configuration sets it), sees every relayed message before it is sent:
// the fault-injection point of a corrupted transfer.
var relayHook func(*pb.ImportTemplateRequest)

// forgetEvicted drops the host_templates rows of the templates host
// evicted (agent names, "tpl-…").
func (s *Sandboxes) forgetEvicted(ctx context.Context, host pgtype.UUID, names []string) {
	for _, n := range names {
		id, err := wireid.Parse(wireid.Template, n)
		if err != nil {
			continue
		}
		if _, err := s.st.Queries().DeleteHostTemplate(ctx, db.DeleteHostTemplateParams{HostID: host, TemplateID: id}); err != nil {
			s.log.WarnContext(ctx, "forget an evicted template", "host", s.hostKey(host), "template", n, "err", err)
		}
	}
}

// forgetTemplate drops host's host_templates row of tpl (its agent no
// longer has the files).
func (s *Sandboxes) forgetTemplate(ctx context.Context, host pgtype.UUID, tpl resolvedTemplate) {
	if _, err := s.st.Queries().DeleteHostTemplate(ctx, db.DeleteHostTemplateParams{HostID: host, TemplateID: tpl.row.ID}); err != nil {
		s.log.WarnContext(ctx, "forget a template copy", "host", s.hostKey(host), "template", tpl.agentName, "err", err)
	}
}

// Replication is what ReplicateTemplate copied.
type Replication struct {
	// Bytes is the file data sent.
	Bytes int64
	// Evicted counts the target's replicas evicted to make room.
	Evicted int
}

// ReplicateTemplate copies p's team's template name from its home host to
// host, replacing a copy host may hold (the on-demand path,
// ensureTemplate, copies only what is missing). It is what `capsule bench
// hosts` times; ErrInvalid for a template every host has (a built-in
// image), ErrNotFound for an unknown name.
func (s *Sandboxes) ReplicateTemplate(ctx context.Context, p Principal, name string, host pgtype.UUID) (Replication, error) {
	tpl, err := s.resolveTemplate(ctx, pgUUID(p.TeamID), name)
	if err != nil {
		return Replication{}, err
	}
	if !tpl.needsFiles() || !tpl.row.HostID.Valid {
		return Replication{}, errorf(ErrInvalid, "template %q is on every host", name)
	}
	if tpl.row.HostID == host {
		return Replication{}, errorf(ErrInvalid, "template %q was made on that host", name)
	}
	resp, err := s.relayTemplate(ctx, tpl.row.HostID, host, tpl.agentName)
	if err != nil {
		return Replication{}, err
	}
	s.forgetEvicted(ctx, host, resp.GetEvicted())
	s.noteTemplate(ctx, host, tpl.row.ID, int64(resp.GetTemplate().GetStoredBytes()))
	return Replication{Bytes: int64(resp.GetBytes()), Evicted: len(resp.GetEvicted())}, nil
}
