package agent

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/gen/hostagent/v1/hostagentv1connect"
	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/sandbox"
	"github.com/capsulehq/capsule/internal/sandbox/metrics"
)

// service implements the HostAgent handlers.
type service struct {
	a *Agent
}

var _ hostagentv1connect.HostAgentHandler = (*service)(nil)

// builtinTemplates are the image store's templates (image.Templates),
// which cannot be deleted through the API; GetHostInfo tells them to the
// control plane.
var builtinTemplates = image.Templates()

func (s *service) GetHostInfo(ctx context.Context, _ *connect.Request[pb.GetHostInfoRequest]) (*connect.Response[pb.GetHostInfoResponse], error) {
	a := s.a
	c := a.cfg.Capacity
	out := &pb.GetHostInfoResponse{
		AgentVersion:     a.cfg.Version,
		Revision:         Revision,
		EnvdVersion:      envdapi.Version,
		Hostname:         hostname(),
		Capacity:         &pb.Resources{Vcpus: uint32(c.VCPUs), MemoryMb: uint64(c.MemoryMB), DiskMb: uint64(c.DiskMB)},
		Used:             &pb.Resources{},
		StartedAt:        timestamp(a.started),
		BuiltinTemplates: builtinTemplates,
		Sampler:          a.samplerCost(),
	}
	if d := a.cfg.Driver; d != nil {
		out.Vmm, out.Accel = d.Name(), string(d.Accel())
	}
	// The same accounting as the manager's: CPU and memory for machines
	// that run or are on their way, disk for every sandbox.
	for _, in := range a.mgr.List() {
		out.Used.DiskMb += uint64(in.DiskMB)
		if in.State == sandbox.StatePaused || in.State == sandbox.StateStopped || in.State == sandbox.StateError {
			out.PausedSandboxes++ // no machine: disk only
			continue
		}
		out.RunningSandboxes++
		out.Used.Vcpus += uint32(in.VCPUs)
		out.Used.MemoryMb += uint64(in.MemoryMB)
	}
	return connect.NewResponse(out), nil
}

func (s *service) CreateSandbox(ctx context.Context, req *connect.Request[pb.CreateSandboxRequest]) (*connect.Response[pb.CreateSandboxResponse], error) {
	m := req.Msg
	info, err := s.a.mgr.Create(ctx, sandbox.CreateOptions{
		ID:             m.GetSandboxId(),
		Template:       m.GetTemplate(),
		VCPUs:          int(m.GetVcpus()),
		MemoryMB:       int(m.GetMemoryMb()),
		DiskMB:         int(m.GetDiskMb()),
		Egress:         m.GetEgress(),
		Network:        createRules(m),
		AccessToken:    m.GetAccessToken(),
		DefaultUser:    m.GetDefaultUser(),
		DefaultWorkdir: m.GetDefaultWorkdir(),
		EnvVars:        m.GetEnvVars(),
		Metadata:       m.GetMetadata(),
		Timeout:        duration(m.GetTimeout()),
	})
	if err != nil {
		return nil, s.a.fail(ctx, err, connect.CodeAlreadyExists)
	}
	out := &pb.CreateSandboxResponse{Sandbox: sandboxToProto(info)}
	for _, p := range info.Phases {
		out.Phases = append(out.Phases, &pb.CreatePhase{Name: p.Name, Took: durationpb.New(p.Took)})
	}
	return connect.NewResponse(out), nil
}

func (s *service) DestroySandbox(ctx context.Context, req *connect.Request[pb.DestroySandboxRequest]) (*connect.Response[pb.DestroySandboxResponse], error) {
	// The history is taken before the sandbox goes and read after: its
	// last samples are in the answer (the control plane keeps the 24 h
	// tier).
	series, _ := s.a.mgr.Metrics(req.Msg.GetSandboxId())
	// So is the console's tail (revision 8): the destroy deletes the log.
	console, truncated, cerr := s.a.mgr.ConsoleTail(req.Msg.GetSandboxId(), sandbox.DefaultConsoleTail)
	if err := s.a.mgr.Destroy(ctx, req.Msg.GetSandboxId()); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	s.a.proxying.end(req.Msg.GetSandboxId())
	out := &pb.DestroySandboxResponse{}
	if series != nil {
		out.Metrics = seriesToProto(series, metrics.Tier24h, time.Time{}, time.Time{})
	}
	if cerr == nil {
		out.Console = &pb.ConsoleTail{Data: console, Truncated: truncated}
	}
	return connect.NewResponse(out), nil
}

func (s *service) PauseSandbox(ctx context.Context, req *connect.Request[pb.PauseSandboxRequest]) (*connect.Response[pb.PauseSandboxResponse], error) {
	id := req.Msg.GetSandboxId()
	pause := s.a.mgr.Pause
	if req.Msg.GetFilesystemOnly() {
		pause = s.a.mgr.PauseFilesystem
	}
	if err := pause(ctx, id); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	s.a.proxying.end(id)
	info, err := s.a.mgr.Get(id)
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	out := &pb.PauseSandboxResponse{Sandbox: sandboxToProto(info)}
	if series, err := s.a.mgr.Metrics(id); err == nil {
		out.Metrics = allTiers(series)
	}
	return connect.NewResponse(out), nil
}

func (s *service) ResumeSandbox(ctx context.Context, req *connect.Request[pb.ResumeSandboxRequest]) (*connect.Response[pb.ResumeSandboxResponse], error) {
	id := req.Msg.GetSandboxId()
	if n := req.Msg.GetNetwork(); n != nil {
		if err := s.a.mgr.SetNetwork(ctx, id, rulesFromProto(n)); err != nil {
			return nil, s.a.failState(ctx, err)
		}
	}
	resume := s.a.mgr.Resume
	if req.Msg.GetCold() {
		resume = s.a.mgr.ResumeCold
	}
	info, err := resume(ctx, id)
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	if req.Msg.Timeout != nil {
		if err := s.a.mgr.SetTimeout(id, duration(req.Msg.Timeout)); err != nil {
			return nil, s.a.failState(ctx, err)
		}
		if info, err = s.a.mgr.Get(id); err != nil {
			return nil, s.a.failState(ctx, err)
		}
	}
	return connect.NewResponse(&pb.ResumeSandboxResponse{Sandbox: sandboxToProto(info)}), nil
}

func (s *service) GetSandbox(ctx context.Context, req *connect.Request[pb.GetSandboxRequest]) (*connect.Response[pb.GetSandboxResponse], error) {
	info, err := s.a.mgr.Get(req.Msg.GetSandboxId())
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.GetSandboxResponse{Sandbox: sandboxToProto(info)}), nil
}

func (s *service) ListSandboxes(ctx context.Context, _ *connect.Request[pb.ListSandboxesRequest]) (*connect.Response[pb.ListSandboxesResponse], error) {
	list := s.a.mgr.List()
	out := &pb.ListSandboxesResponse{Sandboxes: make([]*pb.Sandbox, 0, len(list))}
	for _, in := range list {
		out.Sandboxes = append(out.Sandboxes, sandboxToProto(in))
	}
	return connect.NewResponse(out), nil
}

func (s *service) PingSandbox(ctx context.Context, req *connect.Request[pb.PingSandboxRequest]) (*connect.Response[pb.PingSandboxResponse], error) {
	if err := s.a.mgr.Ping(req.Msg.GetSandboxId()); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.PingSandboxResponse{}), nil
}

func (s *service) SetSandboxTimeout(ctx context.Context, req *connect.Request[pb.SetSandboxTimeoutRequest]) (*connect.Response[pb.SetSandboxTimeoutResponse], error) {
	if err := s.a.mgr.SetTimeout(req.Msg.GetSandboxId(), duration(req.Msg.GetTimeout())); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.SetSandboxTimeoutResponse{}), nil
}

func (s *service) CreateSnapshot(ctx context.Context, req *connect.Request[pb.CreateSnapshotRequest]) (*connect.Response[pb.CreateSnapshotResponse], error) {
	save := s.a.mgr.CreateSnapshot
	if req.Msg.GetDiskOnly() {
		save = s.a.mgr.SaveDisk
	}
	t, err := save(ctx, req.Msg.GetSandboxId(), req.Msg.GetName())
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.CreateSnapshotResponse{Template: templateToProto(t)}), nil
}

func (s *service) FlattenRootfs(ctx context.Context, req *connect.Request[pb.FlattenRootfsRequest]) (*connect.Response[pb.FlattenRootfsResponse], error) {
	t, err := s.a.mgr.FlattenRootfs(ctx, req.Msg.GetSandboxId(), req.Msg.GetName())
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.FlattenRootfsResponse{Template: templateToProto(t)}), nil
}

func (s *service) DeleteTemplate(ctx context.Context, req *connect.Request[pb.DeleteTemplateRequest]) (*connect.Response[pb.DeleteTemplateResponse], error) {
	name := req.Msg.GetName()
	if slices.Contains(builtinTemplates, name) {
		return nil, s.a.failState(ctx, connect.NewError(connect.CodeFailedPrecondition,
			fmt.Errorf("template %s is a built-in image of the host", name)))
	}
	if err := s.a.mgr.DeleteTemplate(name); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.DeleteTemplateResponse{}), nil
}

func (s *service) ListTemplates(ctx context.Context, _ *connect.Request[pb.ListTemplatesRequest]) (*connect.Response[pb.ListTemplatesResponse], error) {
	saved, err := s.a.mgr.Templates()
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	out := &pb.ListTemplatesResponse{}
	for _, t := range saved {
		out.Templates = append(out.Templates, templateToProto(t))
	}
	if s.a.cfg.Images != nil {
		// The newest image of each built-in template is what a create
		// would use.
		for _, name := range builtinTemplates {
			img, err := s.a.cfg.Images.Get(ctx, name)
			if err != nil {
				continue // not built on this host
			}
			out.Templates = append(out.Templates, imageToProto(img))
		}
	}
	slices.SortFunc(out.Templates, func(x, y *pb.Template) int { return strings.Compare(x.Name, y.Name) })
	return connect.NewResponse(out), nil
}
