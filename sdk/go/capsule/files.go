package capsule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/capsulehq/capsule/sdk/go/capsule/internal/wire"
)

// FileService reads and writes files in running sandboxes
// (Client.Files). Paths are absolute guest paths; user is a guest user
// name ("" : the sandbox's user), who owns what is written and whose
// rights reads are checked against.
type FileService struct{ c *Client }

// FileEntry is an entry of a directory listing.
type FileEntry struct {
	Name string `json:"name"`
	// Path is the absolute guest path.
	Path string `json:"path"`
	// Type is "file", "dir", "symlink" or "other" (a device, socket or
	// pipe).
	Type       string      `json:"type"`
	Size       int64       `json:"size"`
	Mode       os.FileMode `json:"mode"`
	ModifiedAt time.Time   `json:"modified_at"`
	// SymlinkTarget is a symlink's target.
	SymlinkTarget string `json:"symlink_target,omitempty"`
}

// File is an open download: read it, then close it. A download that fails
// once the content has started ends in a read error, never short.
type File struct {
	io.ReadCloser
	// Size is the file's size, or -1 when the platform did not say.
	Size int64
}

// Open streams the file at path out of the sandbox.
func (s *FileService) Open(ctx context.Context, sandboxID, path, user string) (*File, error) {
	resp, err := s.c.wire.DownloadFile(ctx, sandboxID, &wire.DownloadFileParams{Path: path, User: ptrOrNil(user)})
	if err != nil {
		return nil, fmt.Errorf("capsule: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, errorFrom(resp)
	}
	return &File{ReadCloser: resp.Body, Size: resp.ContentLength}, nil
}

// Read returns the whole content of the file at path.
func (s *FileService) Read(ctx context.Context, sandboxID, path, user string) ([]byte, error) {
	f, err := s.Open(ctx, sandboxID, path, user)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("capsule: reading %s: %w", path, err)
	}
	return b, nil
}

// Write streams r into the file at path, which is created or replaced
// (with its missing parent directories), owned by user, and returns the
// number of bytes written. An upload cut short (r fails, ctx ends) leaves
// no partial file in its place.
//
// The upload announces its length when r is a regular *os.File (the rest
// of it from its offset) or one whose length net/http knows (a
// *bytes.Reader, *bytes.Buffer or *strings.Reader): the sandbox then
// moves a large content into the file without copying it.
func (s *FileService) Write(ctx context.Context, sandboxID, path, user string, r io.Reader) (int64, error) {
	var info wire.FileInfo
	var edits []wire.RequestEditorFn
	if n, ok := fileRemaining(r); ok {
		edits = append(edits, func(_ context.Context, req *http.Request) error {
			req.ContentLength = n
			if n == 0 {
				req.Body = http.NoBody // (0 with a body would mean "unknown")
			}
			return nil
		})
	}
	resp, err := s.c.wire.UploadFileWithBody(ctx, sandboxID, &wire.UploadFileParams{Path: path, User: ptrOrNil(user)},
		"application/octet-stream", r, edits...)
	if err := decode(resp, err, http.StatusOK, &info); err != nil {
		return 0, err
	}
	return int64(info.Size), nil
}

// List lists the directory dir, depth levels deep (0: 1).
func (s *FileService) List(ctx context.Context, sandboxID, dir, user string, depth int) ([]FileEntry, error) {
	var out wire.FileList
	resp, err := s.c.wire.ListFiles(ctx, sandboxID, &wire.ListFilesParams{Path: dir, Depth: ptrOrNil(depth), User: ptrOrNil(user)})
	if err := decode(resp, err, http.StatusOK, &out); err != nil {
		return nil, err
	}
	entries := make([]FileEntry, len(out.Entries))
	for i, e := range out.Entries {
		entries[i] = FileEntry{Name: e.Name, Path: e.Path, Type: string(e.Type), Size: int64(e.Size), Mode: os.FileMode(e.Mode),
			ModifiedAt: e.ModifiedAt, SymlinkTarget: deref(e.SymlinkTarget)}
	}
	return entries, nil
}

// MakeDir creates the directory path and its missing parents.
func (s *FileService) MakeDir(ctx context.Context, sandboxID, path, user string) error {
	resp, err := s.c.wire.MakeDir(ctx, sandboxID, wire.MakeDirRequest{Path: path, User: ptrOrNil(user)})
	if err != nil {
		return fmt.Errorf("capsule: %w", err)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusNoContent {
		return errorFrom(resp)
	}
	resp.Body.Close()
	return nil
}

// Remove removes the file or directory (recursively) at path.
func (s *FileService) Remove(ctx context.Context, sandboxID, path, user string) error {
	resp, err := s.c.wire.RemoveFile(ctx, sandboxID, &wire.RemoveFileParams{Path: path, User: ptrOrNil(user)})
	return decode(resp, err, http.StatusNoContent, nil)
}

// FileEvent is one change under a watched directory.
type FileEvent struct {
	// Op is what happened: "create", "write", "remove", "rename" (the
	// old name; the new one comes as a create) or "chmod".
	Op string `json:"type"`
	// Name is the entry's path relative to the watched directory.
	Name string `json:"name"`
}

// WatchOptions tune FileService.Watch.
type WatchOptions struct {
	// Recursive watches the directories below too.
	Recursive bool
	// User is the guest user who watches ("": the sandbox's).
	User string
}

// DirWatcher is a watch of a guest directory (FileService.Watch): read
// its changes with Next, then Close it.
type DirWatcher struct {
	body io.ReadCloser
	dec  *json.Decoder
}

// ErrWatchEnded is Next's error once the watch has ended: the sandbox
// stopped running (a pause ends it too) or the watcher was closed.
var ErrWatchEnded = errors.New("capsule: the watch ended")

// Next blocks for the next change. It returns ErrWatchEnded when the
// watch ends, and ctx's error (from Watch) when that ends first.
func (w *DirWatcher) Next() (FileEvent, error) {
	for {
		var ev FileEvent
		if err := w.dec.Decode(&ev); err != nil {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return FileEvent{}, err
			}
			return FileEvent{}, ErrWatchEnded
		}
		if ev.Op != "keepalive" {
			return ev, nil
		}
	}
}

// Close ends the watch.
func (w *DirWatcher) Close() error { return w.body.Close() }

// Watch watches the guest directory dir of a running sandbox. It returns
// once the watch is in place: every change made after that comes out of
// Next, in order. A watch lasts until ctx ends, Close, or the sandbox
// stops running; it is not activity (it does not hold off the sandbox's
// timeout).
func (s *FileService) Watch(ctx context.Context, sandboxID, dir string, opts WatchOptions) (*DirWatcher, error) {
	p := &wire.WatchFilesParams{Path: dir, User: ptrOrNil(opts.User)}
	if opts.Recursive {
		p.Recursive = &opts.Recursive
	}
	resp, err := s.c.wire.WatchFiles(ctx, sandboxID, p)
	if err != nil {
		return nil, fmt.Errorf("capsule: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, errorFrom(resp)
	}
	return &DirWatcher{body: resp.Body, dec: json.NewDecoder(resp.Body)}, nil
}

// fileRemaining is what is left to read of r when it is a regular file.
func fileRemaining(r io.Reader) (int64, bool) {
	f, ok := r.(*os.File)
	if !ok {
		return 0, false
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		return 0, false
	}
	off, err := f.Seek(0, io.SeekCurrent)
	if err != nil || off > fi.Size() {
		return 0, false
	}
	return fi.Size() - off, true
}
