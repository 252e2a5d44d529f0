package envd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"mime"
	"mime/multipart"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

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
	files, sb, err := s.upload(w, r)
	switch {
	case sb != nil && sb.hijacked() && err != nil:
		he := s.logError(r, err)
		sb.reply(he.status, errorBody(he.status, he.msg), false)
	case sb != nil && sb.hijacked():
		sb.reply(http.StatusOK, files, true)
	case err != nil:
		s.replyError(w, r, err)
	default:
		writeJSON(w, http.StatusOK, files)
	}
}

// upload stores the files of r. A large raw body may be spliced into its
// file (splicedBody); the reply then goes out through the returned body.
func (s *Server) upload(w http.ResponseWriter, r *http.Request) (_ []uploadedFile, sb *splicedBody, _ error) {
	a, err := s.filesUser(r, "write")
	if err != nil {
		return nil, nil, err
	}
	md, err := parseMetadata(r.Header)
	if err != nil {
		return nil, nil, err
	}
	body, err := decodedBody(r)
	if err != nil {
		return nil, nil, err
	}
	u := &uploader{s: s, a: a, md: md, seen: map[string]bool{}}
	target := r.URL.Query().Get("path")
	ct := r.Header.Get("Content-Type")
	mt, params, err := mime.ParseMediaType(ct)
	switch {
	case err == nil && strings.HasPrefix(mt, "multipart/"):
		if params["boundary"] == "" {
			return nil, nil, badRequest("multipart body without boundary")
		}
		br := partReaderPool.Get().(*bufio.Reader)
		br.Reset(body)
		err = u.storeParts(multipart.NewReader(br, params["boundary"]), target)
		br.Reset(nil)
		partReaderPool.Put(br)
	case err == nil && mt == "application/octet-stream":
		if target == "" {
			return nil, nil, badRequest("the path query parameter is required for application/octet-stream uploads")
		}
		if sb = newSplicedBody(w, r); sb != nil {
			body = sb
		}
		err = u.store(target, body)
	default:
		return nil, nil, badRequest("unsupported content type '%s'", ct)
	}
	if err != nil {
		return nil, sb, err
	}
	return u.stored, sb, nil
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
	if err := fillFile(f, src); err != nil {
		return fileError(p, err)
	}
	if err := f.Close(); err != nil {
		return fsHTTPError(err, classifyFSError("write", p, err))
	}
	return nil
}

// fillFile writes src to f: spliced from the socket when src is a
// splicedBody, else through a copy buffer. A failure of src is returned
// as a *bodyFailure.
func fillFile(f *os.File, src io.Reader) error {
	if sb, ok := src.(*splicedBody); ok {
		bodyErr, fileErr := sb.fillFile(f)
		if bodyErr != nil {
			return &bodyFailure{bodyErr}
		}
		return fileErr
	}
	body := &bodyReader{r: src}
	if _, err := copyBuffered(f, body); err != nil {
		if body.err != nil {
			return &bodyFailure{body.err}
		}
		return err
	}
	return nil
}

// bodyFailure is a failed or cut request body.
type bodyFailure struct{ err error }

func (e *bodyFailure) Error() string { return e.err.Error() }

// fileError reports a failure of fillFile on p.
func fileError(p string, err error) error {
	if bf, ok := err.(*bodyFailure); ok {
		return bodyError(bf.err)
	}
	return fsHTTPError(err, classifyFSError("write", p, err))
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
