package agent

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/image"
	"github.com/capsulehq/capsule/internal/sandbox"
)

var states = map[sandbox.State]pb.SandboxState{
	sandbox.StateStarting: pb.SandboxState_SANDBOX_STATE_STARTING,
	sandbox.StateRunning:  pb.SandboxState_SANDBOX_STATE_RUNNING,
	sandbox.StatePausing:  pb.SandboxState_SANDBOX_STATE_PAUSING,
	sandbox.StatePaused:   pb.SandboxState_SANDBOX_STATE_PAUSED,
	sandbox.StateResuming: pb.SandboxState_SANDBOX_STATE_RESUMING,
	sandbox.StateStopped:  pb.SandboxState_SANDBOX_STATE_STOPPED,
	sandbox.StateError:    pb.SandboxState_SANDBOX_STATE_ERROR,
}

func sandboxToProto(in *sandbox.Info) *pb.Sandbox {
	return &pb.Sandbox{
		Id:           in.ID,
		State:        states[in.State],
		Template:     in.Template,
		Vcpus:        uint32(in.VCPUs),
		MemoryMb:     uint32(in.MemoryMB),
		DiskMb:       uint32(in.DiskMB),
		Egress:       in.Egress,
		Metadata:     in.Metadata,
		CreatedAt:    timestamp(in.CreatedAt),
		LastActiveAt: timestamp(in.LastActive),
		EnvdUrl:      in.EnvdURL,
		HostAddr:     in.HostAddr,
		StateReason:  in.StateReason,
		Network:      rulesToProto(in.Network),
		DiskOnly:     in.DiskOnly,
	}
}

func templateToProto(t *sandbox.Template) *pb.Template {
	out := &pb.Template{
		Name:          t.Name,
		Kind:          pb.TemplateKind_TEMPLATE_KIND_IMAGE,
		DiskSizeBytes: uint64(max(t.RootfsSize, 0)),
		StoredBytes:   diskUsage(t.Dir),
		CreatedAt:     timestamp(t.CreatedAt),
		FromSandbox:   t.FromSandbox,
	}
	if t.Kind == sandbox.KindSnapshot {
		out.Kind = pb.TemplateKind_TEMPLATE_KIND_SNAPSHOT
		out.Vcpus, out.MemoryMb = uint32(t.VCPUs), uint32(t.MemoryMB)
	}
	return out
}

func imageToProto(img *image.Image) *pb.Template {
	var stored uint64
	for _, p := range []string{img.Kernel, img.Initrd, img.Rootfs} {
		stored += diskUsage(p)
	}
	return &pb.Template{
		Name:          img.Template,
		Kind:          pb.TemplateKind_TEMPLATE_KIND_IMAGE,
		Builtin:       true,
		DiskSizeBytes: uint64(max(img.SizeBytes, 0)),
		StoredBytes:   stored,
		CreatedAt:     timestamp(img.Created),
	}
}

func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// duration reads an optional duration; absent or negative is zero.
func duration(d *durationpb.Duration) time.Duration {
	if d == nil {
		return 0
	}
	return max(d.AsDuration(), 0)
}

// diskUsage is the space the files under path take (allocated blocks, so
// that sparse files count for what they hold).
func diskUsage(path string) uint64 {
	if path == "" {
		return 0
	}
	var total uint64
	_ = filepath.WalkDir(path, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			total += uint64(st.Blocks) * 512
		} else if fi.Mode().IsRegular() {
			total += uint64(fi.Size())
		}
		return nil
	})
	return total
}

func hostname() string {
	h, _ := os.Hostname()
	return h
}
