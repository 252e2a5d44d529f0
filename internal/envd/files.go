package envd

import (
	"compress/gzip"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"

	"connectrpc.com/connect"
	"golang.org/x/sys/unix"
)

// httpError is a failed REST request: the status and message sent to the
// client, and the cause, which is only logged.
type httpError struct {
	status int
	msg    string
	cause  error
}

func (e *httpError) Error() string {
	if e.cause != nil {
		return e.msg + ": " + e.cause.Error()
	}
	return e.msg
}

func (e *httpError) Unwrap() error { return e.cause }

func badRequest(format string, args ...any) *httpError {
	return &httpError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

// fsStatus maps the Connect codes of classifyFSError to REST statuses.
var fsStatus = map[connect.Code]int{
	connect.CodeNotFound:           http.StatusNotFound,
	connect.CodeInvalidArgument:    http.StatusBadRequest,
	connect.CodeFailedPrecondition: http.StatusBadRequest,
	connect.CodeAlreadyExists:      http.StatusConflict,
	connect.CodePermissionDenied:   http.StatusForbidden,
	connect.CodeResourceExhausted:  http.StatusInsufficientStorage,
}

// fsHTTPError reports a classified filesystem failure over REST.
func fsHTTPError(cause error, c fsFailure) *httpError {
	status, ok := fsStatus[c.code]
	if !ok {
		status = http.StatusInternalServerError
	}
	return &httpError{status: status, msg: c.msg, cause: cause}
}

// replyError writes err as envd's REST error body; causes of server-side
// failures are logged, never sent.
func (s *Server) replyError(w http.ResponseWriter, r *http.Request, err error) {
	var he *httpError
	if !errors.As(err, &he) {
		he = &httpError{status: http.StatusInternalServerError, msg: "internal error", cause: err}
	}
	if he.status >= http.StatusInternalServerError {
		s.log.ErrorContext(r.Context(), "files request failed",
			"method", r.Method, "url", r.URL.Path, "status", he.status, "err", he.cause)
	}
	writeJSONError(w, he.status, he.msg)
}

// filesUser authorizes a /files request for op ("read" or "write") and
// selects its user from the username query.
func (s *Server) filesUser(r *http.Request, op string) (*account, error) {
	if err := s.checkFilesAuth(r, op); err != nil {
		return nil, &httpError{status: http.StatusUnauthorized, msg: err.Error()}
	}
	return s.queryAccount(r.URL.Query().Get("username"))
}

// queryAccount looks up a user named by a REST request; empty means the
// default user.
func (s *Server) queryAccount(name string) (*account, error) {
	if name == "" {
		name, _ = s.defaults()
	}
	a, err := lookupAccount(name)
	if err != nil {
		return nil, &httpError{status: http.StatusUnauthorized, msg: fmt.Sprintf("error looking up user '%s': %v", name, err)}
	}
	return a, nil
}

// filesPath resolves a REST path for the user (spec §5.4).
func (s *Server) filesPath(p string, a *account) (string, error) {
	_, workdir := s.defaults()
	abs, err := resolvePath(p, a, workdir)
	if err != nil {
		return "", badRequest("invalid path '%s': %v", p, err)
	}
	return abs, nil
}

// handleDownload serves GET /files (spec §7.2).
func (s *Server) handleDownload(w http.ResponseWriter, r *http.Request) {
	if err := s.download(w, r); err != nil {
		s.replyError(w, r, err)
	}
}

func (s *Server) download(w http.ResponseWriter, r *http.Request) error {
	a, err := s.filesUser(r, "read")
	if err != nil {
		return err
	}
	p, err := s.filesPath(r.URL.Query().Get("path"), a)
	if err != nil {
		return err
	}
	f, fi, err := openRegular(p)
	if err != nil {
		return err
	}
	defer f.Close()

	coding := responseEncoding(r.Header)
	if coding == "" {
		return &httpError{status: http.StatusNotAcceptable, msg: "no acceptable content encoding: the file can be sent as gzip or identity"}
	}
	name := filepath.Base(p)
	h := w.Header()
	if cd := mime.FormatMediaType("inline", map[string]string{"filename": name}); cd != "" {
		h.Set("Content-Disposition", cd)
	} else {
		h.Set("Content-Disposition", "inline")
	}
	h.Add("Vary", "Accept-Encoding")
	switch {
	case coding == "gzip":
		s.streamFile(w, r, f, name, true)
	case fi.Size() == 0:
		s.streamFile(w, r, f, name, false) // procfs-like: size unknown until EOF
	default:
		http.ServeContent(w, r, name, fi.ModTime(), f)
	}
	return nil
}

// openRegular opens a regular file for reading; directories and special
// files (FIFOs, devices, sockets) are refused before opening, since reading
// them could block or never end.
func openRegular(p string) (*os.File, fs.FileInfo, error) {
	fi, err := os.Stat(p)
	if err == nil {
		err = checkRegular(p, fi)
	}
	if err != nil {
		return nil, nil, downloadError(p, err)
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, nil, downloadError(p, err)
	}
	if fi, err = f.Stat(); err == nil {
		err = checkRegular(p, fi) // replaced between stat and open
	}
	if err != nil {
		f.Close()
		return nil, nil, downloadError(p, err)
	}
	return f, fi, nil
}

func checkRegular(p string, fi fs.FileInfo) error {
	switch {
	case fi.IsDir():
		return badRequest("path '%s' is a directory", p)
	case !fi.Mode().IsRegular():
		return badRequest("path '%s' is not a regular file", p)
	}
	return nil
}

func downloadError(p string, err error) error {
	var he *httpError
	if errors.As(err, &he) {
		return he
	}
	return fsHTTPError(err, classifyFSError("read", p, err))
}

// streamFile sends f to EOF without a Content-Length, gzip-compressed when
// asked. Failures after the header is out can only be logged.
func (s *Server) streamFile(w http.ResponseWriter, r *http.Request, f *os.File, name string, compress bool) {
	w.Header().Set("Content-Type", contentTypeOf(name))
	if compress {
		w.Header().Set("Content-Encoding", "gzip")
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	var dst io.Writer = w
	var zw *gzip.Writer
	if compress {
		zw, _ = gzip.NewWriterLevel(w, gzip.BestSpeed) // valid level: no error
		dst = zw
	}
	_, err := copyBuffered(dst, f)
	if err == nil && zw != nil {
		err = zw.Close()
	}
	if err != nil {
		s.log.WarnContext(r.Context(), "download interrupted", "path", f.Name(), "err", err)
	}
}

func contentTypeOf(name string) string {
	if t := mime.TypeByExtension(filepath.Ext(name)); t != "" {
		return t
	}
	return "application/octet-stream"
}

// responseEncoding chooses the download's content coding from
// Accept-Encoding (spec §7.2): "gzip", "identity", or "" when neither is
// acceptable. The highest q among gzip, identity and * wins (ties keep
// header order; * means identity); Range and conditional requests are
// always served as identity.
func responseEncoding(h http.Header) string {
	for _, k := range []string{"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"} {
		if h.Get(k) != "" {
			return "identity"
		}
	}
	values := h.Values("Accept-Encoding")
	if len(values) == 0 {
		return "identity"
	}
	best, bestQ := "", 0.0
	identityQ, starQ := -1.0, -1.0
	for _, c := range parseAcceptEncoding(strings.Join(values, ",")) {
		switch c.name {
		case "identity":
			identityQ = c.q
		case "*":
			starQ = c.q
		case "gzip":
		default:
			continue
		}
		if c.q > bestQ {
			best, bestQ = c.name, c.q
		}
	}
	switch {
	case best == "gzip":
		return "gzip"
	case best != "":
		return "identity"
	case identityQ == 0, identityQ < 0 && starQ == 0:
		return "" // identity explicitly refused
	default:
		return "identity"
	}
}

type acceptedCoding struct {
	name string
	q    float64
}

// parseAcceptEncoding splits an Accept-Encoding value into codings with
// their q-values (1 when absent; malformed q-values count as 0).
func parseAcceptEncoding(v string) []acceptedCoding {
	var out []acceptedCoding
	for item := range strings.SplitSeq(v, ",") {
		name, params, _ := strings.Cut(item, ";")
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" {
			continue
		}
		c := acceptedCoding{name: name, q: 1}
		for param := range strings.SplitSeq(params, ";") {
			k, val, _ := strings.Cut(param, "=")
			if strings.EqualFold(strings.TrimSpace(k), "q") {
				q, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
				if err != nil || !(q >= 0 && q <= 1) { // NaN too
					q = 0
				}
				c.q = q
			}
		}
		out = append(out, c)
	}
	return out
}

// uploadedFile is one element of the POST /files reply.
type uploadedFile struct {
	Path     string            `json:"path"`
	Name     string            `json:"name"`
	Type     string            `json:"type"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

func newUploadedFile(p string, md map[string]string) uploadedFile {
	return uploadedFile{Path: p, Name: filepath.Base(p), Type: "file", Metadata: md}
}

// handleUpload serves POST /files (spec §7.3).
func (s *Server) handleUpload(w http.ResponseWriter, r *http.Request) {
	files, err := s.upload(r)
	if err != nil {
		s.replyError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, files)
}

func (s *Server) upload(r *http.Request) ([]uploadedFile, error) {
	a, err := s.filesUser(r, "write")
	if err != nil {
		return nil, err
	}
	md, err := parseMetadata(r.Header)
	if err != nil {
		return nil, err
	}
	body, err := decodedBody(r)
	if err != nil {
		return nil, err
	}
	u := &uploader{s: s, a: a, md: md, seen: map[string]bool{}}
	target := r.URL.Query().Get("path")
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	switch {
	case err == nil && strings.HasPrefix(mt, "multipart/"):
		if params["boundary"] == "" {
			return nil, badRequest("multipart body without boundary")
		}
		err = u.storeParts(multipart.NewReader(body, params["boundary"]), target)
	case err == nil && mt == "application/octet-stream":
		if target == "" {
			return nil, badRequest("the path query parameter is required for application/octet-stream uploads")
		}
		err = u.store(target, body)
	default:
		return nil, badRequest("unsupported content type '%s'", ct)
	}
	if err != nil {
		return nil, err
	}
	return u.stored, nil
}

// decodedBody undoes the request's Content-Encoding (gzip or none).
func decodedBody(r *http.Request) (io.Reader, error) {
	switch enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
		return r.Body, nil
	case "gzip":
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, &httpError{status: http.StatusBadRequest, msg: "invalid gzip body", cause: err}
		}
		return zr, nil
	default:
		return nil, badRequest("unsupported content encoding '%s'", enc)
	}
}

// uploader stores the files of one upload request.
type uploader struct {
	s      *Server
	a      *account
	md     map[string]string
	seen   map[string]bool
	stored []uploadedFile
}

// storeParts stores every multipart part named "file", at target when set
// or else at the part's filename taken as a path.
func (u *uploader) storeParts(mr *multipart.Reader, target string) error {
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return bodyError(err)
		}
		if part.FormName() != "file" {
			continue // NextPart discards what is left of it
		}
		p := target
		if p == "" {
			p = rawFilename(part)
		}
		if p == "" {
			return badRequest("file part without a path: set the path query parameter or the part's filename")
		}
		if err := u.store(p, part); err != nil {
			return err
		}
	}
	if len(u.stored) == 0 {
		return badRequest("multipart body contains no part named 'file'")
	}
	return nil
}

// rawFilename is the filename parameter of a part, unlike Part.FileName not
// reduced to its base name: the SDK sends the target path there.
func rawFilename(part *multipart.Part) string {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil {
		return ""
	}
	return params["filename"]
}

// store writes one file of the request.
func (u *uploader) store(rawPath string, src io.Reader) error {
	p, err := u.s.filesPath(rawPath, u.a)
	if err != nil {
		return err
	}
	if u.seen[p] {
		return badRequest("path '%s' is the target of more than one file", p)
	}
	u.seen[p] = true
	if err := writeUserFile(p, u.a, src, u.md); err != nil {
		return err
	}
	u.stored = append(u.stored, newUploadedFile(p, u.md))
	return nil
}

// writeUserFile streams src into p (spec §7.3): missing parents are created
// for the user, the file is created (0666 minus umask) or truncated in
// place, so that watchers see a write, owned by the user, and its metadata
// is replaced by md. A file created here is removed again on failure.
func writeUserFile(p string, a *account, src io.Reader, md map[string]string) (err error) {
	if err := mkdirAllOwned(filepath.Dir(p), a); err != nil {
		return fsHTTPError(err, classifyCreateError("create parent directories of", p, err))
	}
	f, created, owned, err := createOwnedOrTruncate(p, a)
	if err != nil {
		return fsHTTPError(err, classifyCreateError("write", p, err))
	}
	defer func() {
		if err != nil {
			f.Close()
			if created {
				os.Remove(p)
			}
		}
	}()
	if os.Geteuid() == 0 && !owned {
		if err := f.Chown(int(a.UID), int(a.GID)); err != nil {
			return fsHTTPError(err, classifyFSError("change owner of", p, err))
		}
	}
	if err := replaceMetadata(f, md); err != nil {
		return metadataError(p, err)
	}
	body := &bodyReader{r: src}
	if _, err := copyBuffered(f, body); err != nil {
		if body.err != nil {
			return bodyError(body.err)
		}
		return fsHTTPError(err, classifyFSError("write", p, err))
	}
	if err := f.Close(); err != nil {
		return fsHTTPError(err, classifyFSError("write", p, err))
	}
	return nil
}

// createOwnedOrTruncate is createOrTruncate, except that a file it creates
// as root belongs to a from its first instant: it is created with the
// thread's file-system user and group set to a's (setfsuid, on a locked
// thread), so that a watcher that looks at it on its create event never
// sees root as its owner. owned tells whether that was done; when a may
// not create files there (a root-only directory), it is created as root
// and the caller changes the owner, as before.
func createOwnedOrTruncate(p string, a *account) (f *os.File, created, owned bool, err error) {
	if os.Geteuid() == 0 {
		if f, err := createAs(p, a); err == nil {
			return f, true, true, nil
		}
	}
	f, created, err = createOrTruncate(p)
	return f, created, false, err
}

// createAs creates p (O_EXCL) with the file-system identity of a.
func createAs(p string, a *account) (*os.File, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	prevUID, _ := unix.SetfsuidRetUid(int(a.UID))
	prevGID, _ := unix.SetfsgidRetGid(int(a.GID))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	unix.SetfsgidRetGid(prevGID)
	unix.SetfsuidRetUid(prevUID)
	return f, err
}

// createOrTruncate opens p for writing, creating it (reported by created)
// or truncating the existing file.
func createOrTruncate(p string) (f *os.File, created bool, err error) {
	f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
	if err == nil {
		return f, true, nil
	}
	if !errors.Is(err, fs.ErrExist) {
		return nil, false, err
	}
	f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o666)
	return f, false, err
}

// bodyReader remembers the error of the request body, so that a failed
// copy can be blamed on the client or on the disk.
type bodyReader struct {
	r   io.Reader
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && !errors.Is(err, io.EOF) {
		b.err = err
	}
	return n, err
}

func bodyError(err error) error {
	return &httpError{status: http.StatusBadRequest, msg: fmt.Sprintf("cannot read request body: %v", err), cause: err}
}

// copyBufPool holds the buffers that stream file bodies; large buffers keep
// the number of write syscalls (and inotify events) low.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}

// copyBuffered copies src to dst through a pooled buffer.
func copyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	buf := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(buf)
	// Hide dst's ReadFrom, which would fall back to a 32 KiB buffer for
	// sources that are neither files nor sockets.
	return io.CopyBuffer(struct{ io.Writer }{dst}, src, *buf)
}

// Metadata limits (spec §7.3): an xattr name is at most 255 bytes, and ext4
// keeps all of an inode's xattrs in one 4 KiB block.
const (
	maxMetadataKey   = 255 - len(metadataPrefix)
	maxMetadataTotal = 4096
)

// parseMetadata collects X-Metadata-<Key> headers into lower-cased keys
// (first value wins) and validates them.
func parseMetadata(h http.Header) (map[string]string, error) {
	var md map[string]string
	total := 0
	for _, k := range slices.Sorted(maps.Keys(h)) {
		if len(k) < len("X-Metadata-") || !strings.EqualFold(k[:len("X-Metadata-")], "X-Metadata-") || len(h[k]) == 0 {
			continue
		}
		key, val := strings.ToLower(k[len("X-Metadata-"):]), h[k][0]
		if _, dup := md[key]; dup {
			continue
		}
		switch {
		case key == "":
			return nil, badRequest("metadata header '%s' has an empty key", k)
		case !printableASCII(key) || !printableASCII(val):
			return nil, badRequest("metadata '%s': keys and values must be printable ASCII", key)
		case len(key) > maxMetadataKey:
			return nil, badRequest("metadata key '%s' is longer than %d bytes", key, maxMetadataKey)
		}
		total += len(metadataPrefix) + len(key) + len(val)
		if total > maxMetadataTotal {
			return nil, badRequest("metadata is larger than %d bytes", maxMetadataTotal)
		}
		if md == nil {
			md = map[string]string{}
		}
		md[key] = val
	}
	return md, nil
}

func printableASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// replaceMetadata makes md the file's whole user.e2b.* xattr set.
func replaceMetadata(f *os.File, md map[string]string) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var opErr error
	err = rc.Control(func(fd uintptr) { opErr = replaceMetadataFd(int(fd), md) })
	return errors.Join(err, opErr)
}

func replaceMetadataFd(fd int, md map[string]string) error {
	names, err := xattrNames(func(buf []byte) (int, error) { return unix.Flistxattr(fd, buf) })
	if err != nil {
		if errors.Is(err, unix.ENOTSUP) && len(md) == 0 {
			return nil // nothing to clear on a filesystem without xattrs
		}
		return fmt.Errorf("list xattrs: %w", err)
	}
	for _, name := range names {
		key, ok := strings.CutPrefix(name, metadataPrefix)
		if _, keep := md[key]; ok && !keep {
			if err := unix.Fremovexattr(fd, name); err != nil && !errors.Is(err, unix.ENODATA) {
				return fmt.Errorf("remove xattr %s: %w", name, err)
			}
		}
	}
	for k, v := range md {
		if err := unix.Fsetxattr(fd, metadataPrefix+k, []byte(v), 0); err != nil {
			return fmt.Errorf("set xattr %s: %w", metadataPrefix+k, err)
		}
	}
	return nil
}

func metadataError(p string, err error) error {
	if errors.Is(err, unix.ENOTSUP) {
		return &httpError{status: http.StatusInternalServerError,
			msg: fmt.Sprintf("cannot store metadata of '%s': the filesystem does not support extended attributes", p), cause: err}
	}
	return fsHTTPError(err, classifyFSError("store metadata of", p, err))
}

// composeRequest is the body of POST /files/compose.
type composeRequest struct {
	SourcePaths []string `json:"source_paths"`
	Destination string   `json:"destination"`
	Username    string   `json:"username"`
}

// handleCompose serves POST /files/compose (spec §7.1): it concatenates the
// sources into the destination, then deletes the sources.
func (s *Server) handleCompose(w http.ResponseWriter, r *http.Request) {
	f, err := s.compose(r)
	if err != nil {
		s.replyError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, f)
}

func (s *Server) compose(r *http.Request) (*uploadedFile, error) {
	var req composeRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&req); err != nil {
		return nil, &httpError{status: http.StatusBadRequest, msg: "invalid JSON body", cause: err}
	}
	if len(req.SourcePaths) == 0 || req.Destination == "" {
		return nil, badRequest("source_paths and destination are required")
	}
	a, err := s.queryAccount(req.Username)
	if err != nil {
		return nil, err
	}
	dst, err := s.filesPath(req.Destination, a)
	if err != nil {
		return nil, err
	}
	srcs := make([]string, len(req.SourcePaths))
	for i, sp := range req.SourcePaths {
		if srcs[i], err = s.filesPath(sp, a); err != nil {
			return nil, err
		}
	}
	if err := concatInto(dst, srcs, a); err != nil {
		return nil, err
	}
	for _, src := range srcs {
		if src == dst {
			continue
		}
		if err := os.Remove(src); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fsHTTPError(err, classifyFSError("remove", src, err))
		}
	}
	res := newUploadedFile(dst, nil)
	return &res, nil
}

// concatInto writes the sources, in order, to a new file that then
// atomically replaces dst (so dst may also be one of the sources).
func concatInto(dst string, srcs []string, a *account) (err error) {
	if err := mkdirAllOwned(filepath.Dir(dst), a); err != nil {
		return fsHTTPError(err, classifyCreateError("create parent directories of", dst, err))
	}
	tmp, err := createSibling(dst)
	if err != nil {
		return fsHTTPError(err, classifyCreateError("write", dst, err))
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := chownTo(tmp.Name(), a); err != nil {
		return fsHTTPError(err, classifyFSError("change owner of", dst, err))
	}
	for _, src := range srcs {
		if err := appendFile(tmp, dst, src); err != nil {
			return err
		}
	}
	if err := tmp.Close(); err != nil {
		return fsHTTPError(err, classifyFSError("write", dst, err))
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fsHTTPError(err, classifyCreateError("write", dst, err))
	}
	return nil
}

// createSibling creates a new hidden file next to p (0666 minus umask).
func createSibling(p string) (*os.File, error) {
	for {
		name := filepath.Join(filepath.Dir(p), "."+filepath.Base(p)+".compose-"+rand.Text())
		f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o666)
		if !errors.Is(err, fs.ErrExist) {
			return f, err
		}
	}
}

// appendFile copies the regular file src to the end of dst, which is being
// written on behalf of dstPath.
func appendFile(dst *os.File, dstPath, src string) error {
	f, _, err := openRegular(src)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.Copy(dst, f); err != nil { // copy_file_range where possible
		return fsHTTPError(err, classifyFSError("write", dstPath, err))
	}
	return nil
}
