package envd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/types/known/timestamppb"

	pb "github.com/capsulehq/capsule/gen/envd/filesystem"
)

// filesystemService implements filesystem.Filesystem (spec §6.2, §6.5).
// Every path is resolved for the selected user (§5.4); envd itself runs as
// root in a guest, so access is not checked against that user, but what it
// creates is owned by them.
type filesystemService struct {
	s *Server
}

// resolve selects the user of an RPC and resolves p for them.
func (f *filesystemService) resolve(h http.Header, p string) (*account, string, error) {
	a, err := f.s.rpcAccount(h)
	if err != nil {
		return nil, "", err
	}
	abs, err := f.s.rpcPath(p, a)
	if err != nil {
		return nil, "", err
	}
	return a, abs, nil
}

// Stat describes the resolved path without following a final symlink.
func (f *filesystemService) Stat(ctx context.Context, req *connect.Request[pb.StatRequest]) (*connect.Response[pb.StatResponse], error) {
	_, p, err := f.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	e, err := statEntry(p, newOwnerNames())
	if err != nil {
		return nil, f.fsError(ctx, "stat", p, err)
	}
	return connect.NewResponse(&pb.StatResponse{Entry: e}), nil
}

// MakeDir creates a directory and its missing parents, owned by the user.
func (f *filesystemService) MakeDir(ctx context.Context, req *connect.Request[pb.MakeDirRequest]) (*connect.Response[pb.MakeDirResponse], error) {
	a, p, err := f.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	switch fi, err := os.Stat(p); {
	case err == nil && fi.IsDir():
		return nil, connect.NewError(connect.CodeAlreadyExists, fmt.Errorf("directory '%s' already exists", p))
	case err == nil:
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path '%s' already exists and is not a directory", p))
	case !errors.Is(err, fs.ErrNotExist):
		return nil, f.createError(ctx, "make directory", p, err)
	}
	if err := mkdirAllOwned(p, a); err != nil {
		return nil, f.createError(ctx, "make directory", p, err)
	}
	return entryResponse(ctx, f, p, func(e *pb.EntryInfo) *pb.MakeDirResponse { return &pb.MakeDirResponse{Entry: e} })
}

// Move renames source to destination, creating the destination's parents.
func (f *filesystemService) Move(ctx context.Context, req *connect.Request[pb.MoveRequest]) (*connect.Response[pb.MoveResponse], error) {
	a, src, err := f.resolve(req.Header(), req.Msg.GetSource())
	if err != nil {
		return nil, err
	}
	dst, err := f.s.rpcPath(req.Msg.GetDestination(), a)
	if err != nil {
		return nil, err
	}
	if _, err := os.Lstat(src); err != nil {
		return nil, f.fsError(ctx, "move", src, err)
	}
	if err := mkdirAllOwned(filepath.Dir(dst), a); err != nil {
		return nil, f.createError(ctx, "move to", dst, err)
	}
	if err := os.Rename(src, dst); err != nil {
		return nil, f.createError(ctx, "move to", dst, err)
	}
	return entryResponse(ctx, f, dst, func(e *pb.EntryInfo) *pb.MoveResponse { return &pb.MoveResponse{Entry: e} })
}

// entryResponse stats p and wraps its entry into a response message.
func entryResponse[T any](ctx context.Context, f *filesystemService, p string, wrap func(*pb.EntryInfo) *T) (*connect.Response[T], error) {
	e, err := statEntry(p, newOwnerNames())
	if err != nil {
		return nil, f.fsError(ctx, "stat", p, err)
	}
	return connect.NewResponse(wrap(e)), nil
}

// ListDir lists the directory the path resolves to, up to depth levels
// below it, in lexical walk order.
func (f *filesystemService) ListDir(ctx context.Context, req *connect.Request[pb.ListDirRequest]) (*connect.Response[pb.ListDirResponse], error) {
	_, p, err := f.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	resolved, err := f.resolveDir(ctx, p)
	if err != nil {
		return nil, err
	}
	depth := max(int(req.Msg.GetDepth()), 1)
	entries, err := listTree(ctx, p, resolved, depth)
	if err != nil {
		return nil, f.fsError(ctx, "list", p, err)
	}
	return connect.NewResponse(&pb.ListDirResponse{Entries: entries}), nil
}

// resolveDir follows the symlinks of p and requires a directory.
func (f *filesystemService) resolveDir(ctx context.Context, p string) (string, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return "", f.fsError(ctx, "stat", p, err)
	}
	if !fi.IsDir() {
		return "", connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path '%s' is not a directory", p))
	}
	resolved, err := filepath.EvalSymlinks(p)
	if err != nil {
		return "", f.fsError(ctx, "resolve", p, err)
	}
	return resolved, nil
}

// listTree walks resolved (the symlink-free form of shown) without following
// symlinks and describes every entry below it, at most depth levels deep.
// Entries are reported under shown. Entries that vanish during the walk are
// skipped.
func listTree(ctx context.Context, shown, resolved string, depth int) ([]*pb.EntryInfo, error) {
	names := newOwnerNames()
	var out []*pb.EntryInfo
	err := filepath.WalkDir(resolved, func(path string, d fs.DirEntry, err error) error {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if err != nil {
			if path != resolved && vanished(err) {
				return skipEntry(d)
			}
			return err
		}
		if path == resolved {
			return nil
		}
		rel, err := filepath.Rel(resolved, path)
		if err != nil {
			return err
		}
		e, err := statEntry(filepath.Join(shown, rel), names)
		if vanished(err) {
			return skipEntry(d)
		}
		if err != nil {
			return err
		}
		out = append(out, e)
		if d.IsDir() && strings.Count(rel, string(filepath.Separator))+1 >= depth {
			return filepath.SkipDir
		}
		return nil
	})
	return out, err
}

// vanished reports whether err means an entry disappeared (or was replaced
// by a non-directory) while it was being looked at.
func vanished(err error) bool {
	return errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func skipEntry(d fs.DirEntry) error {
	if d != nil && d.IsDir() {
		return filepath.SkipDir
	}
	return nil
}

// Remove deletes a path recursively; a missing path is not an error.
func (f *filesystemService) Remove(ctx context.Context, req *connect.Request[pb.RemoveRequest]) (*connect.Response[pb.RemoveResponse], error) {
	_, p, err := f.resolve(req.Header(), req.Msg.GetPath())
	if err != nil {
		return nil, err
	}
	if err := os.RemoveAll(p); err != nil {
		f.s.log.ErrorContext(ctx, "remove", "path", p, "err", err)
		return nil, connect.NewError(connect.CodeInternal, fmt.Errorf("cannot remove '%s'", p))
	}
	return connect.NewResponse(&pb.RemoveResponse{}), nil
}

// WatchDir streams start{}, then the directory's events, with a keepalive
// whenever the Keepalive-Ping-Interval passes without an event. It ends when
// the client goes away or the deadline passes.
func (f *filesystemService) WatchDir(ctx context.Context, req *connect.Request[pb.WatchDirRequest], stream *connect.ServerStream[pb.WatchDirResponse]) error {
	w, err := f.openWatch(ctx, req.Header(), req.Msg)
	if err != nil {
		return err
	}
	defer f.s.watchers.release(w)

	if err := stream.Send(&pb.WatchDirResponse{Event: &pb.WatchDirResponse_Start{Start: &pb.WatchDirResponse_StartEvent{}}}); err != nil {
		return err
	}
	interval := keepaliveInterval(req.Header())
	timer := time.NewTimer(interval)
	defer timer.Stop()
	for {
		var msg *pb.WatchDirResponse
		select {
		case <-ctx.Done():
			return streamContextError(ctx)
		case ev, ok := <-w.events():
			if !ok {
				return f.watcherFailure(ctx, w)
			}
			msg = &pb.WatchDirResponse{Event: &pb.WatchDirResponse_Filesystem{Filesystem: ev}}
		case <-timer.C:
			msg = &pb.WatchDirResponse{Event: &pb.WatchDirResponse_Keepalive{Keepalive: &pb.WatchDirResponse_KeepAlive{}}}
		}
		if err := stream.Send(msg); err != nil {
			return err
		}
		timer.Reset(interval)
	}
}

// streamContextError reports why a stream's context ended.
func streamContextError(ctx context.Context) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return connect.NewError(connect.CodeDeadlineExceeded, errors.New("watch deadline exceeded"))
	}
	return connect.NewError(connect.CodeCanceled, errors.New("watch canceled"))
}

// watcherFailure converts the reason a watcher stopped into a Connect error.
func (f *filesystemService) watcherFailure(ctx context.Context, w *dirWatcher) error {
	err := w.err()
	if errors.Is(err, errWatcherClosed) {
		return connect.NewError(connect.CodeUnavailable, errors.New("watcher stopped: envd is shutting down"))
	}
	f.s.log.ErrorContext(ctx, "directory watcher failed", "path", w.root, "err", err)
	return connect.NewError(connect.CodeInternal, fmt.Errorf("watching '%s' failed", w.root))
}

// CreateWatcher starts a watcher whose events are buffered until polled.
func (f *filesystemService) CreateWatcher(ctx context.Context, req *connect.Request[pb.CreateWatcherRequest]) (*connect.Response[pb.CreateWatcherResponse], error) {
	w, err := f.openWatch(ctx, req.Header(), req.Msg)
	if err != nil {
		return nil, err
	}
	id, err := f.s.watchers.addPolling(w)
	if err != nil {
		f.s.watchers.release(w)
		f.s.log.ErrorContext(ctx, "create watcher", "err", err)
		return nil, connect.NewError(connect.CodeInternal, errors.New("cannot create watcher"))
	}
	return connect.NewResponse(&pb.CreateWatcherResponse{WatcherId: id}), nil
}

// GetWatcherEvents returns and clears a polling watcher's buffer.
func (f *filesystemService) GetWatcherEvents(ctx context.Context, req *connect.Request[pb.GetWatcherEventsRequest]) (*connect.Response[pb.GetWatcherEventsResponse], error) {
	pw := f.s.watchers.polling(req.Msg.GetWatcherId())
	if pw == nil {
		return nil, watcherNotFound(req.Msg.GetWatcherId())
	}
	events, failed := pw.drain()
	if failed {
		return nil, f.watcherFailure(ctx, pw.w)
	}
	return connect.NewResponse(&pb.GetWatcherEventsResponse{Events: events}), nil
}

// RemoveWatcher stops and forgets a polling watcher.
func (f *filesystemService) RemoveWatcher(_ context.Context, req *connect.Request[pb.RemoveWatcherRequest]) (*connect.Response[pb.RemoveWatcherResponse], error) {
	if !f.s.watchers.removePolling(req.Msg.GetWatcherId()) {
		return nil, watcherNotFound(req.Msg.GetWatcherId())
	}
	return connect.NewResponse(&pb.RemoveWatcherResponse{}), nil
}

func watcherNotFound(id string) error {
	return connect.NewError(connect.CodeNotFound, fmt.Errorf("watcher '%s' not found", id))
}

// watchRequest is what WatchDirRequest and CreateWatcherRequest share.
type watchRequest interface {
	GetPath() string
	GetRecursive() bool
	GetIncludeEntry() bool
	GetAllowNetworkMounts() bool
}

// openWatch validates a watch request and starts a registered watcher.
func (f *filesystemService) openWatch(ctx context.Context, h http.Header, r watchRequest) (*dirWatcher, error) {
	_, p, err := f.resolve(h, r.GetPath())
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		return nil, f.fsError(ctx, "watch", p, err)
	}
	if !fi.IsDir() {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("path '%s' is not a directory", p))
	}
	if !r.GetAllowNetworkMounts() {
		if kind, err := networkFilesystem(p); err != nil {
			return nil, f.fsError(ctx, "watch", p, err)
		} else if kind != "" {
			return nil, connect.NewError(connect.CodeInvalidArgument,
				fmt.Errorf("path '%s' is on a network filesystem (%s); set allowNetworkMounts to watch it", p, kind))
		}
	}
	w, err := f.s.watchers.open(p, r.GetRecursive(), r.GetIncludeEntry(), f.s.log)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EMFILE) {
		// inotify's per-user limits, not the disk, are exhausted.
		f.s.log.WarnContext(ctx, "inotify limit reached", "path", p, "err", err)
		return nil, connect.NewError(connect.CodeInternal,
			fmt.Errorf("cannot watch '%s': inotify limit reached (fs.inotify.max_user_watches / max_user_instances)", p))
	}
	if err != nil {
		return nil, f.fsError(ctx, "watch", p, err)
	}
	return w, nil
}

// networkFilesystems maps statfs magic numbers of filesystems on which
// inotify misses remote changes to a display name.
var networkFilesystems = map[uint32]string{
	unix.NFS_SUPER_MAGIC:  "NFS",
	unix.CIFS_SUPER_MAGIC: "CIFS",
	unix.SMB_SUPER_MAGIC:  "SMB",
	unix.SMB2_SUPER_MAGIC: "SMB2",
	unix.FUSE_SUPER_MAGIC: "FUSE",
}

// networkFilesystem names the network filesystem p lives on, or "".
func networkFilesystem(p string) (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(p, &st); err != nil {
		return "", &fs.PathError{Op: "statfs", Path: p, Err: err}
	}
	return networkFilesystems[uint32(st.Type)], nil
}

// fsError converts a filesystem error about path into a Connect error whose
// message carries no more than the path; unexpected errors are logged.
func (f *filesystemService) fsError(ctx context.Context, op, path string, err error) error {
	return f.connectError(ctx, err, classifyFSError(op, path, err))
}

// createError is fsError for operations that create path.
func (f *filesystemService) createError(ctx context.Context, op, path string, err error) error {
	return f.connectError(ctx, err, classifyCreateError(op, path, err))
}

func (f *filesystemService) connectError(ctx context.Context, cause error, c fsFailure) error {
	if c.code == connect.CodeInternal {
		f.s.log.ErrorContext(ctx, "filesystem operation failed", "err", cause)
	}
	return connect.NewError(c.code, errors.New(c.msg))
}

// fsFailure is how a filesystem error is reported: a Connect code (REST
// handlers derive their status from it) and a message fit for clients.
type fsFailure struct {
	code connect.Code
	msg  string
}

// classifyFSError describes a failed operation op on path. The message
// names the path and the kind of failure, never internal details.
func classifyFSError(op, path string, err error) fsFailure {
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fsFailure{connect.CodeOf(err), fmt.Sprintf("cannot %s '%s': %v", op, path, err)}
	case vanished(err):
		return fsFailure{connect.CodeNotFound, fmt.Sprintf("path '%s' does not exist", path)}
	case errors.Is(err, syscall.ELOOP):
		return fsFailure{connect.CodeFailedPrecondition, fmt.Sprintf("path '%s' contains a symlink loop", path)}
	case errors.Is(err, fs.ErrExist), errors.Is(err, syscall.ENOTEMPTY):
		return fsFailure{connect.CodeAlreadyExists, fmt.Sprintf("cannot %s '%s': destination exists", op, path)}
	case errors.Is(err, syscall.EISDIR):
		return fsFailure{connect.CodeInvalidArgument, fmt.Sprintf("path '%s' is a directory", path)}
	case errors.Is(err, syscall.EINVAL), errors.Is(err, syscall.ENAMETOOLONG):
		return fsFailure{connect.CodeInvalidArgument, fmt.Sprintf("cannot %s '%s': invalid path", op, path)}
	case errors.Is(err, fs.ErrPermission):
		return fsFailure{connect.CodePermissionDenied, fmt.Sprintf("cannot %s '%s': permission denied", op, path)}
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fsFailure{connect.CodeResourceExhausted, "not enough disk space available"}
	default:
		return fsFailure{connect.CodeInternal, fmt.Sprintf("cannot %s '%s'", op, path)}
	}
}

// classifyCreateError is classifyFSError for operations that create path:
// there a non-directory in the way is the caller's mistake, not a missing
// path.
func classifyCreateError(op, path string, err error) fsFailure {
	if errors.Is(err, syscall.ENOTDIR) {
		return fsFailure{connect.CodeInvalidArgument, fmt.Sprintf("cannot %s '%s': a path component is not a directory", op, path)}
	}
	return classifyFSError(op, path, err)
}

// statEntry describes path as EntryInfo (spec §6.5): lstat data, with the
// type and permission bits of the target for symlinks.
func statEntry(path string, names *ownerNames) (*pb.EntryInfo, error) {
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	mode := fi.Mode()
	e := &pb.EntryInfo{
		Name:         filepath.Base(path),
		Type:         fileType(mode),
		Path:         path,
		Size:         fi.Size(),
		Mode:         uint32(mode.Perm()),
		Permissions:  mode.String(),
		ModifiedTime: timestamppb.New(fi.ModTime()),
		Metadata:     readMetadata(path),
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		e.Owner, e.Group = names.user(st.Uid), names.group(st.Gid)
	}
	if mode&fs.ModeSymlink != 0 {
		describeLinkTarget(e, path)
	}
	return e, nil
}

// describeLinkTarget fills in what a symlink points to: the fully resolved
// target (the link itself when unresolvable) and the target's type and
// permission bits (UNSPECIFIED when dangling).
func describeLinkTarget(e *pb.EntryInfo, link string) {
	target, err := filepath.EvalSymlinks(link)
	if err != nil {
		target = link
	}
	e.SymlinkTarget = &target
	e.Type = pb.FileType_FILE_TYPE_UNSPECIFIED
	if ti, err := os.Stat(link); err == nil {
		e.Type = fileType(ti.Mode())
		e.Mode = uint32(ti.Mode().Perm())
	}
}

func fileType(m fs.FileMode) pb.FileType {
	switch {
	case m.IsRegular():
		return pb.FileType_FILE_TYPE_FILE
	case m.IsDir():
		return pb.FileType_FILE_TYPE_DIRECTORY
	default:
		return pb.FileType_FILE_TYPE_UNSPECIFIED
	}
}

// ownerNames caches uid/gid → name lookups for the duration of one request
// (a listing would otherwise parse /etc/passwd once per entry).
type ownerNames struct {
	users, groups map[uint32]string
}

func newOwnerNames() *ownerNames {
	return &ownerNames{users: map[uint32]string{}, groups: map[uint32]string{}}
}

func (n *ownerNames) user(uid uint32) string {
	return cachedName(n.users, uid, func(id string) (string, error) {
		u, err := user.LookupId(id)
		if err != nil {
			return "", err
		}
		return u.Username, nil
	})
}

func (n *ownerNames) group(gid uint32) string {
	return cachedName(n.groups, gid, func(id string) (string, error) {
		g, err := user.LookupGroupId(id)
		if err != nil {
			return "", err
		}
		return g.Name, nil
	})
}

// cachedName looks id up once; unknown ids are named by their number.
func cachedName(cache map[uint32]string, id uint32, lookup func(string) (string, error)) string {
	if name, ok := cache[id]; ok {
		return name
	}
	s := strconv.FormatUint(uint64(id), 10)
	name, err := lookup(s)
	if err != nil || name == "" {
		name = s
	}
	cache[id] = name
	return name
}

// metadataPrefix is the xattr namespace of file metadata (spec §7.3).
const metadataPrefix = "user.e2b."

// readMetadata returns path's user.e2b.* xattrs with the prefix stripped,
// or nil when there are none (or the filesystem has no xattrs).
func readMetadata(path string) map[string]string {
	names, err := xattrNames(func(buf []byte) (int, error) { return unix.Llistxattr(path, buf) })
	if err != nil {
		return nil
	}
	var md map[string]string
	for _, name := range names {
		key, ok := strings.CutPrefix(name, metadataPrefix)
		if !ok {
			continue
		}
		val, err := xattrValue(path, name)
		if err != nil {
			continue
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = val
	}
	return md
}

// xattrNames calls a listxattr-like function with a growing buffer and
// splits the NUL-separated result.
func xattrNames(list func([]byte) (int, error)) ([]string, error) {
	for {
		n, err := list(nil)
		if err != nil || n == 0 {
			return nil, err
		}
		buf := make([]byte, n)
		n, err = list(buf)
		if errors.Is(err, unix.ERANGE) {
			continue // grew between the two calls
		}
		if err != nil {
			return nil, err
		}
		return strings.FieldsFunc(string(buf[:n]), func(r rune) bool { return r == 0 }), nil
	}
}

// xattrValue reads one xattr of path (not following a final symlink).
func xattrValue(path, name string) (string, error) {
	for {
		n, err := unix.Lgetxattr(path, name, nil)
		if err != nil {
			return "", err
		}
		buf := make([]byte, n)
		n, err = unix.Lgetxattr(path, name, buf)
		if errors.Is(err, unix.ERANGE) {
			continue
		}
		if err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
}

// chownTo hands path to the account when envd runs as root (as it does in a
// guest); otherwise files stay owned by envd's own user.
func chownTo(path string, a *account) error {
	if os.Geteuid() != 0 {
		return nil
	}
	return os.Lchown(path, int(a.UID), int(a.GID))
}

// mkdirAllOwned creates dir and its missing parents (mode 0755 minus the
// umask), each owned by the account. Existing directories are left alone.
func mkdirAllOwned(dir string, a *account) error {
	fi, err := os.Stat(dir)
	if err == nil {
		if fi.IsDir() {
			return nil
		}
		return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if parent := filepath.Dir(dir); parent != dir {
		if err := mkdirAllOwned(parent, a); err != nil {
			return err
		}
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if fi, serr := os.Stat(dir); serr == nil && fi.IsDir() {
			return nil // created concurrently
		}
		return err
	}
	return chownTo(dir, a)
}
