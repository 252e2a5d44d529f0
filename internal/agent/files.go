package agent

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math"

	"connectrpc.com/connect"

	fspb "github.com/capsulehq/capsule/gen/envd/filesystem"
	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/envdclient"
)

// readChunk is the size of ReadFile's messages.
const readChunk = 256 << 10

// errUploadStopped ends the upload of a WriteFile whose caller failed.
var errUploadStopped = errors.New("upload stopped")

func (s *service) WriteFile(ctx context.Context, stream *connect.ClientStream[pb.WriteFileRequest]) (*connect.Response[pb.WriteFileResponse], error) {
	if !stream.Receive() {
		if err := stream.Err(); err != nil {
			return nil, s.a.failState(ctx, err)
		}
		return nil, s.a.failState(ctx, invalid("empty stream: the first message must be the header"))
	}
	h := stream.Msg().GetHeader()
	if h == nil {
		return nil, s.a.failState(ctx, invalid("the first message must be the header"))
	}
	if h.GetPath() == "" {
		return nil, s.a.failState(ctx, invalid("path is required"))
	}
	c, err := s.envd(ctx, h.GetSandboxId())
	if err != nil {
		return nil, err
	}

	// The content flows from the stream to envd's upload through a pipe:
	// nothing is buffered beyond one chunk. This goroutine reads the
	// stream (it must not be read once the handler returns); the upload
	// runs beside it.
	uctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	type result struct {
		path string
		err  error
	}
	done := make(chan result, 1)
	// A known size goes to envd as the upload's length (it then splices a
	// large one into the file); the stream must carry exactly that. As
	// envd completes the file with its last byte, the chunk that reaches
	// the size is held back until the stream has ended (pending), so a
	// stream longer than its size completes nothing. (An empty upload
	// goes out chunked: its end then waits for the stream's too.)
	size := int64(-1)
	if h.Size != nil {
		if h.GetSize() > math.MaxInt64 {
			return nil, s.a.failState(ctx, invalid("size %d: too large", h.GetSize()))
		}
		size = int64(h.GetSize())
	}
	announced := size
	if size == 0 {
		announced = -1
	}
	go func() {
		path, err := c.UploadSized(uctx, h.GetPath(), h.GetUser(), pr, announced)
		// Unblock the writer if envd answered before reading everything.
		_ = pr.CloseWithError(errUploadStopped)
		done <- result{path, err}
	}()
	var written uint64
	var recvErr error
	var pending []byte
	stopped := false // the upload ended before the stream
	for stream.Receive() {
		msg := stream.Msg()
		if msg.GetHeader() != nil {
			recvErr = invalid("the header must come once, first")
			break
		}
		chunk := msg.GetChunk()
		if len(chunk) == 0 {
			continue
		}
		if size >= 0 && (pending != nil || written+uint64(len(chunk)) > uint64(size)) {
			recvErr = invalid("the content is longer than its size, %d bytes", size)
			break
		}
		if size > 0 && written+uint64(len(chunk)) == uint64(size) {
			pending = bytes.Clone(chunk)
			continue
		}
		if _, err := pw.Write(chunk); err != nil {
			stopped = true // its result says why
			break
		}
		written += uint64(len(chunk))
	}
	if recvErr == nil {
		recvErr = stream.Err()
	}
	if recvErr == nil && !stopped && size >= 0 && written+uint64(len(pending)) != uint64(size) {
		recvErr = invalid("the content ended after %d of its %d bytes", written, size)
	}
	if recvErr == nil && pending != nil {
		if _, err := pw.Write(pending); err == nil {
			written += uint64(len(pending))
		}
	}
	if recvErr != nil {
		_ = pw.CloseWithError(recvErr)
		cancel()
		<-done
		return nil, s.a.failState(ctx, recvErr)
	}
	_ = pw.Close()
	res := <-done
	if res.err != nil {
		return nil, s.a.failState(ctx, res.err)
	}
	return connect.NewResponse(&pb.WriteFileResponse{Path: res.path, BytesWritten: written}), nil
}

func (s *service) ReadFile(ctx context.Context, req *connect.Request[pb.ReadFileRequest], stream *connect.ServerStream[pb.ReadFileResponse]) error {
	m := req.Msg
	if m.GetPath() == "" {
		return s.a.failState(ctx, invalid("path is required"))
	}
	c, err := s.envd(ctx, m.GetSandboxId())
	if err != nil {
		return err
	}
	rc, size, err := c.Open(ctx, m.GetPath(), m.GetUser())
	if err != nil {
		return s.a.failState(ctx, err)
	}
	defer rc.Close()
	buf := make([]byte, readChunk)
	first := true
	for {
		n, err := fill(rc, buf)
		if n > 0 || (first && size >= 0 && errors.Is(err, io.EOF)) {
			// Send marshals at once: buf can be reused.
			msg := &pb.ReadFileResponse{Chunk: buf[:n]}
			if first && size >= 0 {
				sz := uint64(size)
				msg.Size = &sz
			}
			first = false
			if err := stream.Send(msg); err != nil {
				return err
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return s.a.failState(ctx, err)
		}
	}
}

// fill reads into buf until it is full or the reader ends (io.EOF) or
// fails. Unlike io.ReadFull it tells a clean end from a truncated one.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// maxListDepth bounds ListDir's depth.
const maxListDepth = 32

// fsRequest is an envd filesystem request acting as user (empty: the
// sandbox's default user).
func fsRequest[T any](msg *T, user string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	if user != "" {
		req.Header().Set("Authorization", envdclient.UserAuthorization(user))
	}
	return req
}

func (s *service) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	m := req.Msg
	if m.GetPath() == "" {
		return nil, s.a.failState(ctx, invalid("path is required"))
	}
	if m.GetDepth() > maxListDepth {
		return nil, s.a.failState(ctx, invalid("depth: at most %d", maxListDepth))
	}
	c, err := s.envd(ctx, m.GetSandboxId())
	if err != nil {
		return nil, err
	}
	res, err := c.Filesystem().ListDir(ctx, fsRequest(&fspb.ListDirRequest{Path: m.GetPath(), Depth: max(m.GetDepth(), 1)}, m.GetUser()))
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	out := &pb.ListDirResponse{Entries: make([]*pb.FileEntry, len(res.Msg.GetEntries()))}
	for i, e := range res.Msg.GetEntries() {
		out.Entries[i] = fileEntry(e)
	}
	return connect.NewResponse(out), nil
}

func (s *service) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	m := req.Msg
	if m.GetPath() == "" {
		return nil, s.a.failState(ctx, invalid("path is required"))
	}
	c, err := s.envd(ctx, m.GetSandboxId())
	if err != nil {
		return nil, err
	}
	res, err := c.Filesystem().MakeDir(ctx, fsRequest(&fspb.MakeDirRequest{Path: m.GetPath()}, m.GetUser()))
	if err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.MakeDirResponse{Entry: fileEntry(res.Msg.GetEntry())}), nil
}

// Remove checks that the path exists (envd's Remove does not say), then
// removes it.
func (s *service) Remove(ctx context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	m := req.Msg
	if m.GetPath() == "" {
		return nil, s.a.failState(ctx, invalid("path is required"))
	}
	c, err := s.envd(ctx, m.GetSandboxId())
	if err != nil {
		return nil, err
	}
	if _, err := c.Filesystem().Stat(ctx, fsRequest(&fspb.StatRequest{Path: m.GetPath()}, m.GetUser())); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	if _, err := c.Filesystem().Remove(ctx, fsRequest(&fspb.RemoveRequest{Path: m.GetPath()}, m.GetUser())); err != nil {
		return nil, s.a.failState(ctx, err)
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}

var fileTypes = map[fspb.FileType]pb.FileType{
	fspb.FileType_FILE_TYPE_FILE:      pb.FileType_FILE_TYPE_FILE,
	fspb.FileType_FILE_TYPE_DIRECTORY: pb.FileType_FILE_TYPE_DIRECTORY,
	fspb.FileType_FILE_TYPE_SYMLINK:   pb.FileType_FILE_TYPE_SYMLINK,
}

// fileEntry converts envd's entry. envd reports a symlink by its target's
// type and sets symlink_target; here a symlink is a symlink.
func fileEntry(e *fspb.EntryInfo) *pb.FileEntry {
	if e == nil {
		return nil
	}
	out := &pb.FileEntry{
		Name: e.GetName(), Path: e.GetPath(), Type: fileTypes[e.GetType()], Size: uint64(max(e.GetSize(), 0)),
		Mode: e.GetMode(), ModifiedAt: e.GetModifiedTime(), Owner: e.GetOwner(), Group: e.GetGroup(),
	}
	if e.SymlinkTarget != nil {
		out.Type = pb.FileType_FILE_TYPE_SYMLINK
		out.SymlinkTarget = e.GetSymlinkTarget()
	}
	return out
}

// WatchDir relays envd's watch of a guest directory: its start, then its
// events (envd's keepalives stay between envd and the agent; the control
// plane keeps its own clients' connections alive).
func (s *service) WatchDir(ctx context.Context, req *connect.Request[pb.WatchDirRequest], stream *connect.ServerStream[pb.WatchDirResponse]) error {
	m := req.Msg
	if m.GetPath() == "" {
		return s.a.failState(ctx, invalid("path is required"))
	}
	c, err := s.envd(ctx, m.GetSandboxId())
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w, err := c.Filesystem().WatchDir(ctx, fsRequest(&fspb.WatchDirRequest{Path: m.GetPath(), Recursive: m.GetRecursive()}, m.GetUser()))
	if err != nil {
		return s.a.failState(ctx, err)
	}
	defer w.Close()
	for w.Receive() {
		var out *pb.WatchDirResponse
		switch ev := w.Msg().GetEvent().(type) {
		case *fspb.WatchDirResponse_Start:
			out = &pb.WatchDirResponse{Started: true}
		case *fspb.WatchDirResponse_Filesystem:
			t, ok := fileEventTypes[ev.Filesystem.GetType()]
			if !ok {
				continue
			}
			out = &pb.WatchDirResponse{Event: &pb.FileEvent{Name: ev.Filesystem.GetName(), Type: t}}
		default: // keepalive
			continue
		}
		if err := stream.Send(out); err != nil {
			return err
		}
	}
	if err := w.Err(); err != nil && ctx.Err() == nil {
		return s.a.failState(ctx, err)
	}
	return nil
}

// fileEventTypes maps envd's event types to the contract's.
var fileEventTypes = map[fspb.EventType]pb.FileEventType{
	fspb.EventType_EVENT_TYPE_CREATE: pb.FileEventType_FILE_EVENT_TYPE_CREATE,
	fspb.EventType_EVENT_TYPE_WRITE:  pb.FileEventType_FILE_EVENT_TYPE_WRITE,
	fspb.EventType_EVENT_TYPE_REMOVE: pb.FileEventType_FILE_EVENT_TYPE_REMOVE,
	fspb.EventType_EVENT_TYPE_RENAME: pb.FileEventType_FILE_EVENT_TYPE_RENAME,
	fspb.EventType_EVENT_TYPE_CHMOD:  pb.FileEventType_FILE_EVENT_TYPE_CHMOD,
}
