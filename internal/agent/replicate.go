package agent

import (
	"context"
	"errors"
	"io"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/sandbox"
)

// ExportTemplate streams a template to the control plane, which relays it
// to another host's ImportTemplate (revision 9; sandbox.ExportTemplate).
func (s *service) ExportTemplate(ctx context.Context, req *connect.Request[pb.ExportTemplateRequest], stream *connect.ServerStream[pb.ExportTemplateResponse]) error {
	err := s.a.mgr.ExportTemplate(ctx, req.Msg.GetName(),
		func(m *sandbox.TemplateManifest) error {
			return stream.Send(&pb.ExportTemplateResponse{Part: &pb.ExportTemplateResponse_Manifest{Manifest: manifestToProto(m)}})
		},
		func(c *sandbox.TemplateChunk) error {
			return stream.Send(&pb.ExportTemplateResponse{Part: &pb.ExportTemplateResponse_Chunk{Chunk: &pb.TemplateChunk{
				File: uint32(c.File), Offset: uint64(c.Offset), Data: c.Data, Sha256: c.SHA256}}})
		})
	if err != nil {
		return s.a.failState(ctx, err)
	}
	return nil
}

// ImportTemplate writes a template relayed from another host's
// ExportTemplate (revision 9; sandbox.ImportTemplate).
func (s *service) ImportTemplate(ctx context.Context, stream *connect.ClientStream[pb.ImportTemplateRequest]) (*connect.Response[pb.ImportTemplateResponse], error) {
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, s.a.failState(ctx, err)
		}
		return nil, s.a.failState(ctx, invalid("empty stream: the first message must be the manifest"))
	}
	pm := stream.Msg().GetManifest()
	if pm == nil {
		return nil, s.a.failState(ctx, invalid("the first message must be the manifest"))
	}
	man := manifestFromProto(pm)
	next := func() (*sandbox.TemplateChunk, error) {
		if !stream.Receive() {
			if err := stream.Err(); err != nil {
				return nil, err
			}
			return nil, io.EOF
		}
		c := stream.Msg().GetChunk()
		if c == nil {
			return nil, invalid("a manifest after the first message")
		}
		return &sandbox.TemplateChunk{File: int(c.GetFile()), Offset: int64(c.GetOffset()), Data: c.GetData(), SHA256: c.GetSha256()}, nil
	}
	// A failed import must not leave the stream half read: the error is
	// the answer, whatever follows.
	t, n, evicted, err := s.a.mgr.ImportTemplate(ctx, man, next)
	if err != nil {
		var ce *connect.Error
		if errors.As(err, &ce) {
			return nil, ce
		}
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.ImportTemplateResponse{Template: templateToProto(t), Bytes: uint64(n), Evicted: evicted}), nil
}

func manifestToProto(m *sandbox.TemplateManifest) *pb.TemplateManifest {
	out := &pb.TemplateManifest{
		Name: m.Name, Kind: pb.TemplateKind_TEMPLATE_KIND_IMAGE, ImageId: m.ImageID, DiskSizeBytes: uint64(m.DiskSize),
		Vcpus: uint32(m.VCPUs), MemoryMb: uint32(m.MemoryMB), CreatedAt: timestamp(m.CreatedAt), FromSandbox: m.FromSandbox,
		EnvdToken: m.EnvdToken, Rootfs: m.Rootfs, Snapshot: m.Snapshot,
	}
	if m.Kind == sandbox.KindSnapshot {
		out.Kind = pb.TemplateKind_TEMPLATE_KIND_SNAPSHOT
	}
	for _, f := range m.Files {
		out.Files = append(out.Files, &pb.TemplateFile{Path: f.Path, Size: uint64(f.Size), Allocated: uint64(f.Allocated),
			Backing: f.Backing, BackingImage: f.BackingImage})
	}
	return out
}

func manifestFromProto(m *pb.TemplateManifest) *sandbox.TemplateManifest {
	out := &sandbox.TemplateManifest{
		Name: m.GetName(), ImageID: m.GetImageId(), DiskSize: clampInt64(m.GetDiskSizeBytes()),
		VCPUs: int(m.GetVcpus()), MemoryMB: int(m.GetMemoryMb()), FromSandbox: m.GetFromSandbox(),
		EnvdToken: m.GetEnvdToken(), Rootfs: m.GetRootfs(), Snapshot: m.GetSnapshot(),
	}
	if m.GetCreatedAt() != nil {
		out.CreatedAt = m.GetCreatedAt().AsTime()
	} else {
		out.CreatedAt = time.Now().UTC()
	}
	switch m.GetKind() {
	case pb.TemplateKind_TEMPLATE_KIND_SNAPSHOT:
		out.Kind = sandbox.KindSnapshot
	case pb.TemplateKind_TEMPLATE_KIND_IMAGE:
		out.Kind = sandbox.KindImage
	}
	for _, f := range m.GetFiles() {
		out.Files = append(out.Files, sandbox.TemplateFile{Path: f.GetPath(), Size: clampInt64(f.GetSize()),
			Allocated: clampInt64(f.GetAllocated()), Backing: f.GetBacking(), BackingImage: f.GetBackingImage()})
	}
	return out
}

// clampInt64 converts a wire size; one beyond int64 becomes -1, which the
// manifest's validation refuses.
func clampInt64(v uint64) int64 {
	if v > 1<<62 {
		return -1
	}
	return int64(v)
}
