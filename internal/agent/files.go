package agent

import (
	"context"
	"errors"
	"io"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
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
	go func() {
		path, err := c.Upload(uctx, h.GetPath(), h.GetUser(), pr)
		// Unblock the writer if envd answered before reading everything.
		_ = pr.CloseWithError(errUploadStopped)
		done <- result{path, err}
	}()
	var written uint64
	var recvErr error
	for stream.Receive() {
		msg := stream.Msg()
		if msg.GetHeader() != nil {
			recvErr = invalid("the header must come once, first")
			break
		}
		chunk := msg.GetChunk()
		if _, err := pw.Write(chunk); err != nil {
			break // the upload ended early; its result says why
		}
		written += uint64(len(chunk))
	}
	if recvErr == nil {
		recvErr = stream.Err()
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
	rc, err := c.Download(ctx, m.GetPath(), m.GetUser())
	if err != nil {
		return s.a.failState(ctx, err)
	}
	defer rc.Close()
	buf := make([]byte, readChunk)
	for {
		n, err := fill(rc, buf)
		if n > 0 {
			// Send marshals at once: buf can be reused.
			if err := stream.Send(&pb.ReadFileResponse{Chunk: buf[:n]}); err != nil {
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
