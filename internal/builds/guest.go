package builds

import (
	"context"
	"io"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/wireid"
)

// guest is what a build needs of the sandbox service. serviceGuest is the
// real one; tests that inject faults the real one cannot produce on
// demand (a host that goes away mid-build) use their own.
type guest interface {
	create(ctx context.Context, p service.Principal, req service.CreateSandbox) (pgtype.UUID, error)
	// exec runs cmd to its end, giving its output as it comes; ctx's end
	// kills it.
	exec(ctx context.Context, p service.Principal, id pgtype.UUID, cmd service.ExecCommand, out func(stream string, b []byte)) (service.ExecExit, error)
	writeFile(ctx context.Context, p service.Principal, id pgtype.UUID, path string, r io.Reader) error
	destroy(ctx context.Context, p service.Principal, id pgtype.UUID) error
	publish(ctx context.Context, p service.Principal, req service.PublishTemplate) (pgtype.UUID, error)
	// templateVersion identifies the version of the template a name
	// means ("" unknown: no layer cache).
	templateVersion(ctx context.Context, p service.Principal, name string) (string, error)
	deleteTemplate(ctx context.Context, p service.Principal, name string) error
}

type serviceGuest struct{ s *service.Sandboxes }

func (g serviceGuest) create(ctx context.Context, p service.Principal, req service.CreateSandbox) (pgtype.UUID, error) {
	sb, err := g.s.Create(ctx, p, req)
	return pg(sb.ID), err
}

func (g serviceGuest) exec(ctx context.Context, p service.Principal, id pgtype.UUID, cmd service.ExecCommand, out func(string, []byte)) (service.ExecExit, error) {
	pr, err := g.s.StartExec(ctx, p, idOf[wireid.KindSandbox](id), cmd, false, nil)
	if err != nil {
		return service.ExecExit{}, err
	}
	defer pr.Close()
	for {
		ev, err := pr.Next()
		if err != nil {
			if ctx.Err() != nil {
				return service.ExecExit{}, ctx.Err()
			}
			return service.ExecExit{}, err
		}
		switch {
		case ev.Exit != nil:
			return *ev.Exit, nil
		case ev.Stdout != nil:
			out("stdout", ev.Stdout)
		case ev.Stderr != nil:
			out("stderr", ev.Stderr)
		}
	}
}

func (g serviceGuest) writeFile(ctx context.Context, p service.Principal, id pgtype.UUID, path string, r io.Reader) error {
	_, err := g.s.WriteFile(ctx, p, idOf[wireid.KindSandbox](id), path, "root", r, -1)
	return err
}

func (g serviceGuest) destroy(ctx context.Context, p service.Principal, id pgtype.UUID) error {
	return g.s.Destroy(ctx, p, idOf[wireid.KindSandbox](id))
}

func (g serviceGuest) publish(ctx context.Context, p service.Principal, req service.PublishTemplate) (pgtype.UUID, error) {
	t, err := g.s.PublishTemplate(ctx, p, req)
	return pg(t.ID), err
}

func (g serviceGuest) templateVersion(ctx context.Context, p service.Principal, name string) (string, error) {
	ref, err := g.s.LookupTemplate(ctx, p, name)
	if err != nil {
		return "", err
	}
	if ref.Snapshot != nil {
		return "template:" + ref.Snapshot.ID.String(), nil
	}
	return "builtin:" + name, nil
}

func (g serviceGuest) deleteTemplate(ctx context.Context, p service.Principal, name string) error {
	return g.s.DeleteSnapshot(ctx, p, name)
}
