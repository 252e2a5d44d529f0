package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"
	"unicode/utf8"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentclient"
)

// Limits of file operations.
const (
	// MaxListDepth bounds ListDir's depth.
	MaxListDepth = 32
	// uploadChunk is the size of the pieces an upload travels in to the
	// agent: an upload of any size holds at most one in memory.
	uploadChunk = 1 << 20
)

// FileInfo is a file written.
type FileInfo struct {
	Path string
	Size uint64
}

// File types of FileEntry.
const (
	FileTypeFile    = "file"
	FileTypeDir     = "dir"
	FileTypeSymlink = "symlink"
	// FileTypeOther: a device, socket or pipe.
	FileTypeOther = "other"
)

// FileEntry describes a guest file.
type FileEntry struct {
	Name, Path string
	// Type is one of the FileType… constants.
	Type string
	Size uint64
	// Mode holds the permission bits (of its target for a symlink).
	Mode          uint32
	ModifiedAt    time.Time
	SymlinkTarget string
}

var fileTypeNames = map[pb.FileType]string{
	pb.FileType_FILE_TYPE_FILE:      FileTypeFile,
	pb.FileType_FILE_TYPE_DIRECTORY: FileTypeDir,
	pb.FileType_FILE_TYPE_SYMLINK:   FileTypeSymlink,
}

func fileEntryOf(e *pb.FileEntry) FileEntry {
	t, ok := fileTypeNames[e.GetType()]
	if !ok {
		t = FileTypeOther
	}
	return FileEntry{
		Name: e.GetName(), Path: e.GetPath(), Type: t, Size: e.GetSize(), Mode: e.GetMode(),
		ModifiedAt: e.GetModifiedAt().AsTime(), SymlinkTarget: e.GetSymlinkTarget(),
	}
}

// fileArgs validates a guest path and a user.
func fileArgs(p, user string) (string, error) {
	if err := validateUser(user); err != nil {
		return "", err
	}
	return GuestPath(p)
}

// WriteFile streams r into the file at the absolute guest path p of a
// running sandbox of p's team (created or replaced, parents created),
// owned by user (empty: the sandbox's default user). size is r's length
// when known (-1: unknown; a request's ContentLength): the guest then
// moves a large content into the file without copying it (see the
// agent's WriteFileHeader.size), and r must hold exactly size bytes.
func (s *Sandboxes) WriteFile(ctx context.Context, p Principal, id SandboxID, filePath, user string, r io.Reader, size int64) (FileInfo, error) {
	filePath, err := fileArgs(filePath, user)
	if err != nil {
		return FileInfo{}, err
	}
	_, c, err := s.running(ctx, p, id)
	if err != nil {
		return FileInfo{}, err
	}
	return writeFile(ctx, c, id.String(), filePath, user, r, size, make([]byte, uploadChunk))
}

// FilePart is the next file of a multi-file upload: its name relative to
// the target directory and its content. io.EOF ends the upload.
type FilePart func() (name string, content io.Reader, err error)

// WriteFiles writes the files next yields, one after the other, below the
// absolute guest directory dir. A part's name must be relative and stay
// below dir (no ".." element). The first failure stops the upload; the
// files written before it stay.
func (s *Sandboxes) WriteFiles(ctx context.Context, p Principal, id SandboxID, dir, user string, next FilePart) ([]FileInfo, error) {
	dir, err := fileArgs(dir, user)
	if err != nil {
		return nil, fmt.Errorf("dir: %w", err)
	}
	_, c, err := s.running(ctx, p, id)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, uploadChunk)
	out := []FileInfo{}
	for {
		name, content, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		rel, err := relativeName(name)
		if err != nil {
			return nil, err
		}
		fi, err := writeFile(ctx, c, id.String(), path.Join(dir, rel), user, content, -1, buf)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", rel, err)
		}
		out = append(out, fi)
	}
	if len(out) == 0 {
		return nil, errorf(ErrInvalid, "no file in the upload")
	}
	return out, nil
}

// relativeName validates a file name relative to an upload's directory.
func relativeName(name string) (string, error) {
	bad := func(why string) (string, error) {
		return "", errorf(ErrInvalid, "file name %q: %s", truncate(strings.ToValidUTF8(name, "?"), 256), why)
	}
	switch {
	case name == "":
		return bad("a file name is required")
	case len(name) > maxGuestPath:
		return bad("too long")
	case strings.ContainsRune(name, 0) || !utf8.ValidString(name):
		return bad("must be UTF-8 without NUL bytes")
	case path.IsAbs(name):
		return bad("must be relative to the directory")
	}
	for _, el := range strings.Split(name, "/") {
		if el == ".." {
			return bad(`must not contain ".."`)
		}
	}
	rel := path.Clean(name)
	if rel == "." {
		return bad("names no file")
	}
	return rel, nil
}

func writeFile(ctx context.Context, c *agentclient.Client, sandboxID, filePath, user string, r io.Reader, size int64, buf []byte) (FileInfo, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := c.WriteFile(wctx)
	h := &pb.WriteFileHeader{SandboxId: sandboxID, Path: filePath, User: user}
	if size >= 0 {
		n := uint64(size)
		h.Size = &n
	}
	sendErr := st.Send(&pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Header{Header: h}})
	for sendErr == nil {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			// Send marshals at once: buf can be reused.
			sendErr = st.Send(&pb.WriteFileRequest{Msg: &pb.WriteFileRequest_Chunk{Chunk: buf[:n]}})
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			// The upload stops: the agent sees the stream fail and does not
			// complete the file.
			cancel()
			_, _ = st.CloseAndReceive()
			return FileInfo{}, &Error{Kind: ErrInvalid, Msg: "the upload was interrupted", Err: rerr}
		}
	}
	// A failed Send's cause comes with the answer.
	res, err := st.CloseAndReceive()
	if err != nil {
		return FileInfo{}, guestError(err, "write file")
	}
	return FileInfo{Path: res.Msg.GetPath(), Size: res.Msg.GetBytesWritten()}, nil
}

// FileReader streams a guest file; Close it.
type FileReader struct {
	// Size is the file's size in bytes, -1 when unknown.
	Size   int64
	stream *connect.ServerStreamForClient[pb.ReadFileResponse]
	cancel context.CancelFunc
	buf    []byte
	done   bool
}

func (f *FileReader) Read(p []byte) (int, error) {
	for len(f.buf) == 0 {
		if f.done {
			return 0, io.EOF
		}
		if !f.stream.Receive() {
			f.done = true
			if err := f.stream.Err(); err != nil {
				return 0, guestError(err, "read file")
			}
			return 0, io.EOF
		}
		f.buf = f.stream.Msg().GetChunk()
	}
	n := copy(p, f.buf)
	f.buf = f.buf[n:]
	return n, nil
}

// WriteTo writes the rest of the file to w a message at a time (256 KiB),
// without the copy and the 32 KiB writes of io.Copy's buffer.
func (f *FileReader) WriteTo(w io.Writer) (int64, error) {
	var written int64
	for {
		if len(f.buf) > 0 {
			n, err := w.Write(f.buf)
			written += int64(n)
			f.buf = f.buf[n:]
			if err != nil {
				return written, err
			}
		}
		if _, err := f.Read(nil); err != nil { // the next message
			if errors.Is(err, io.EOF) {
				return written, nil
			}
			return written, err
		}
	}
}

// Close ends the download.
func (f *FileReader) Close() error {
	f.cancel()
	return f.stream.Close()
}

// ReadFile opens the file at the absolute guest path filePath of a running
// sandbox of p's team, read as user (empty: the sandbox's default user).
// A missing file is ErrNotFound, a directory ErrInvalid, before any byte.
func (s *Sandboxes) ReadFile(ctx context.Context, p Principal, id SandboxID, filePath, user string) (*FileReader, error) {
	filePath, err := fileArgs(filePath, user)
	if err != nil {
		return nil, err
	}
	_, c, err := s.running(ctx, p, id)
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	st, err := c.ReadFile(rctx, connect.NewRequest(&pb.ReadFileRequest{SandboxId: id.String(), Path: filePath, User: user}))
	if err != nil {
		cancel()
		return nil, guestError(err, "read file")
	}
	f := &FileReader{Size: -1, stream: st, cancel: cancel}
	// The first message tells whether the file can be read, and its size.
	if !st.Receive() {
		err := st.Err()
		if err != nil {
			_ = f.Close()
			return nil, guestError(err, "read file")
		}
		f.done, f.Size = true, 0
		return f, nil
	}
	if sz := st.Msg().Size; sz != nil {
		f.Size = int64(*sz)
	}
	f.buf = st.Msg().GetChunk()
	return f, nil
}

// ListDir lists the guest directory dirPath of a running sandbox of p's
// team, depth levels deep (0: 1; at most MaxListDepth), as user.
func (s *Sandboxes) ListDir(ctx context.Context, p Principal, id SandboxID, dirPath, user string, depth int) ([]FileEntry, error) {
	dirPath, err := fileArgs(dirPath, user)
	if err != nil {
		return nil, err
	}
	if depth < 0 || depth > MaxListDepth {
		return nil, errorf(ErrInvalid, "depth: 1 to %d", MaxListDepth)
	}
	_, c, err := s.running(ctx, p, id)
	if err != nil {
		return nil, err
	}
	res, err := c.ListDir(ctx, connect.NewRequest(&pb.ListDirRequest{SandboxId: id.String(), Path: dirPath, Depth: uint32(max(depth, 1)), User: user}))
	if errors.Is(err, agentclient.ErrCapacity) {
		// The answer exceeds the agent's message size.
		return nil, &Error{Kind: ErrInvalid, Msg: "the listing is too large: list fewer levels", Err: err}
	}
	if err != nil {
		return nil, guestError(err, "list directory")
	}
	out := make([]FileEntry, len(res.Msg.GetEntries()))
	for i, e := range res.Msg.GetEntries() {
		out[i] = fileEntryOf(e)
	}
	return out, nil
}

// MakeDir creates the guest directory dirPath and its missing parents in a
// running sandbox of p's team, owned by user. An existing directory is
// ErrConflict; an existing file ErrInvalid.
func (s *Sandboxes) MakeDir(ctx context.Context, p Principal, id SandboxID, dirPath, user string) (FileEntry, error) {
	dirPath, err := fileArgs(dirPath, user)
	if err != nil {
		return FileEntry{}, err
	}
	_, c, err := s.running(ctx, p, id)
	if err != nil {
		return FileEntry{}, err
	}
	res, err := c.MakeDir(ctx, connect.NewRequest(&pb.MakeDirRequest{SandboxId: id.String(), Path: dirPath, User: user}))
	if err != nil {
		return FileEntry{}, guestError(err, "make directory")
	}
	return fileEntryOf(res.Msg.GetEntry()), nil
}

// RemoveFile removes the guest file or directory (recursively) at
// filePath of a running sandbox of p's team. Nothing there is ErrNotFound;
// "/" cannot be removed.
func (s *Sandboxes) RemoveFile(ctx context.Context, p Principal, id SandboxID, filePath, user string) error {
	filePath, err := fileArgs(filePath, user)
	if err != nil {
		return err
	}
	if filePath == "/" {
		return errorf(ErrInvalid, "path: / cannot be removed")
	}
	_, c, err := s.running(ctx, p, id)
	if err != nil {
		return err
	}
	if _, err := c.Remove(ctx, connect.NewRequest(&pb.RemoveRequest{SandboxId: id.String(), Path: filePath, User: user})); err != nil {
		return guestError(err, "remove")
	}
	return nil
}

// FileEvent is one change under a watched guest directory.
type FileEvent struct {
	// Name is the changed entry's path relative to the watched directory.
	Name string
	// Type is what happened: FileCreated, FileWritten, FileRemoved,
	// FileRenamed or FileChmod.
	Type string
}

// The types of FileEvent.
const (
	FileCreated = "create"
	FileWritten = "write"
	FileRemoved = "remove"
	FileRenamed = "rename"
	FileChmod   = "chmod"
)

var fileEventNames = map[pb.FileEventType]string{
	pb.FileEventType_FILE_EVENT_TYPE_CREATE: FileCreated,
	pb.FileEventType_FILE_EVENT_TYPE_WRITE:  FileWritten,
	pb.FileEventType_FILE_EVENT_TYPE_REMOVE: FileRemoved,
	pb.FileEventType_FILE_EVENT_TYPE_RENAME: FileRenamed,
	pb.FileEventType_FILE_EVENT_TYPE_CHMOD:  FileChmod,
}

// DirWatch is a watch of a guest directory, in place when WatchDir
// returns it; Close it.
type DirWatch struct {
	stream *connect.ServerStreamForClient[pb.WatchDirResponse]
	cancel context.CancelFunc
}

// Next blocks for the next change. io.EOF: the watch ended (the sandbox
// stopped running, or the caller's context ended).
func (w *DirWatch) Next() (FileEvent, error) {
	for w.stream.Receive() {
		ev := w.stream.Msg().GetEvent()
		if t, ok := fileEventNames[ev.GetType()]; ok {
			return FileEvent{Name: ev.GetName(), Type: t}, nil
		}
	}
	if err := w.stream.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return FileEvent{}, guestError(err, "watch directory")
	}
	return FileEvent{}, io.EOF
}

// Close ends the watch.
func (w *DirWatch) Close() error {
	w.cancel()
	return w.stream.Close()
}

// WatchDir watches the guest directory dirPath of a running sandbox of p's
// team (and the directories below it when recursive), as user. It returns
// once the watch is in place: a change made after that is seen. A missing
// directory is ErrNotFound, a file ErrInvalid.
func (s *Sandboxes) WatchDir(ctx context.Context, p Principal, id SandboxID, dirPath, user string, recursive bool) (*DirWatch, error) {
	dirPath, err := fileArgs(dirPath, user)
	if err != nil {
		return nil, err
	}
	_, c, err := s.running(ctx, p, id)
	if err != nil {
		return nil, err
	}
	wctx, cancel := context.WithCancel(ctx)
	st, err := c.WatchDir(wctx, connect.NewRequest(&pb.WatchDirRequest{SandboxId: id.String(), Path: dirPath, Recursive: recursive, User: user}))
	if err != nil {
		cancel()
		return nil, guestError(err, "watch directory")
	}
	w := &DirWatch{stream: st, cancel: cancel}
	// The first message says the watch is in place, or why not.
	if !st.Receive() || !st.Msg().GetStarted() {
		err := st.Err()
		_ = w.Close()
		if err == nil {
			err = errors.New("the agent's watch ended before it started")
		}
		return nil, guestError(err, "watch directory")
	}
	return w, nil
}
