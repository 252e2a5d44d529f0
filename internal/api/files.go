package api

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/http"
	"path"
	"strconv"
	"time"

	"github.com/capsulehq/capsule/internal/service"
)

// The file routes; their contract is in the package documentation.

type fileInfoJSON struct {
	Path string `json:"path"`
	Size uint64 `json:"size"`
}

type fileEntryJSON struct {
	Name          string    `json:"name"`
	Path          string    `json:"path"`
	Type          string    `json:"type"`
	Size          uint64    `json:"size"`
	Mode          uint32    `json:"mode"`
	ModifiedAt    time.Time `json:"modified_at"`
	SymlinkTarget string    `json:"symlink_target,omitempty"`
}

func fileEntryOf(e service.FileEntry) fileEntryJSON {
	return fileEntryJSON{Name: e.Name, Path: e.Path, Type: e.Type, Size: e.Size, Mode: e.Mode,
		ModifiedAt: e.ModifiedAt.UTC(), SymlinkTarget: e.SymlinkTarget}
}

// uploadFile: PUT …/files?path= streams the raw body into the file; the
// JSON body limit does not apply.
func (s *Server) uploadFile(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, ok := s.pathSandbox(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	fi, err := s.cfg.Sandboxes.WriteFile(r.Context(), p, id, q.Get("path"), q.Get("user"), r.Body, r.ContentLength)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, fileInfoJSON{Path: fi.Path, Size: fi.Size})
}

// uploadFiles: POST …/files?dir= writes each part of a multipart/form-data
// body, as it arrives, to dir/<the part's filename>.
func (s *Server) uploadFiles(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, ok := s.pathSandbox(w, r)
	if !ok {
		return
	}
	mr, err := multipartReader(r)
	if err != nil {
		s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "want a multipart/form-data body"})
		return
	}
	next := func() (string, io.Reader, error) {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			return "", nil, io.EOF
		}
		if err != nil {
			return "", nil, &service.Error{Kind: service.ErrInvalid, Msg: "malformed multipart body", Err: err}
		}
		name, err := partFilename(part)
		if err != nil {
			return "", nil, err
		}
		return name, part, nil
	}
	q := r.URL.Query()
	files, err := s.cfg.Sandboxes.WriteFiles(r.Context(), p, id, q.Get("dir"), q.Get("user"), next)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]fileInfoJSON, len(files))
	for i, f := range files {
		out[i] = fileInfoJSON{Path: f.Path, Size: f.Size}
	}
	writeJSON(w, http.StatusOK, out)
}

// multipartReader is r.MultipartReader reading the body through a 256 KiB
// buffer: mime/multipart's own is 4 KiB, and a part would otherwise cost a
// socket read every 4 KiB.
func multipartReader(r *http.Request) (*multipart.Reader, error) {
	mt, params, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || (mt != "multipart/form-data" && mt != "multipart/mixed") {
		return nil, http.ErrNotMultipart
	}
	if params["boundary"] == "" {
		return nil, http.ErrMissingBoundary
	}
	return multipart.NewReader(bufio.NewReaderSize(r.Body, 256<<10), params["boundary"]), nil
}

// partFilename is a part's filename parameter as sent: unlike
// Part.FileName it keeps the directories, which the service validates.
func partFilename(part *multipart.Part) (string, error) {
	_, params, err := mime.ParseMediaType(part.Header.Get("Content-Disposition"))
	if err != nil || params["filename"] == "" {
		return "", &service.Error{Kind: service.ErrInvalid, Msg: "every part needs a Content-Disposition with a filename"}
	}
	return params["filename"], nil
}

// downloadFile: GET …/files?path= streams the file.
func (s *Server) downloadFile(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, ok := s.pathSandbox(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	f, err := s.cfg.Sandboxes.ReadFile(r.Context(), p, id, q.Get("path"), q.Get("user"))
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer f.Close()
	h := w.Header()
	h.Set("Content-Type", "application/octet-stream")
	if cd := mime.FormatMediaType("attachment", map[string]string{"filename": path.Base(q.Get("path"))}); cd != "" {
		h.Set("Content-Disposition", cd)
	}
	if f.Size >= 0 {
		h.Set("Content-Length", strconv.FormatInt(f.Size, 10))
	}
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return
	}
	if _, err := io.Copy(w, f); err != nil {
		// The status is out: breaking the connection is all that tells
		// the client its copy is short.
		s.log.WarnContext(r.Context(), "download interrupted", "path", r.URL.Path, "err", err)
		panic(http.ErrAbortHandler)
	}
}

// listFiles: GET …/files/list?path=&depth=.
func (s *Server) listFiles(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, ok := s.pathSandbox(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	depth := 0
	if d := q.Get("depth"); d != "" {
		var err error
		if depth, err = strconv.Atoi(d); err != nil {
			s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "depth: want a number"})
			return
		}
	}
	entries, err := s.cfg.Sandboxes.ListDir(r.Context(), p, id, q.Get("path"), q.Get("user"), depth)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	out := make([]fileEntryJSON, len(entries))
	for i, e := range entries {
		out[i] = fileEntryOf(e)
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": out})
}

// mkdirJSON is makeDir's body.
type mkdirJSON struct {
	Path string `json:"path"`
	User string `json:"user"`
}

// makeDir: POST …/files/mkdir {path, user}.
func (s *Server) makeDir(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, ok := s.pathSandbox(w, r)
	if !ok {
		return
	}
	var req mkdirJSON
	if err := decode(r, w, &req); err != nil {
		s.writeError(w, r, err)
		return
	}
	e, err := s.cfg.Sandboxes.MakeDir(r.Context(), p, id, req.Path, req.User)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, fileEntryOf(e))
}

// removeFile: DELETE …/files?path=.
func (s *Server) removeFile(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, ok := s.pathSandbox(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	if err := s.cfg.Sandboxes.RemoveFile(r.Context(), p, id, q.Get("path"), q.Get("user")); err != nil {
		s.writeError(w, r, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// pathSandbox parses the {id} path value, answering the error itself.
func (s *Server) pathSandbox(w http.ResponseWriter, r *http.Request) (service.SandboxID, bool) {
	b, err := sandboxID(r)
	if err != nil {
		s.writeError(w, r, err)
		return service.SandboxID{}, false
	}
	return b, true
}

// fileEventJSON is one line of watchFiles' answer.
type fileEventJSON struct {
	// Type is "create", "write", "remove", "rename" or "chmod", or
	// "keepalive" on a quiet watch (no name).
	Type string `json:"type"`
	Name string `json:"name,omitempty"`
}

// watchKeepalive is how long a quiet watch waits before a keepalive line
// (proxies close connections idle for a minute or more).
const watchKeepalive = 15 * time.Second

// watchFiles streams the changes under a guest directory, one JSON line
// (fileEventJSON) per change (application/x-ndjson), from the moment the
// watch is in place (the answer's headers) until the client leaves or the
// sandbox stops running. ?recursive=true watches the directories below.
func (s *Server) watchFiles(w http.ResponseWriter, r *http.Request, p service.Principal) {
	id, ok := s.pathSandbox(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	recursive := false
	if v := q.Get("recursive"); v != "" {
		var err error
		if recursive, err = strconv.ParseBool(v); err != nil {
			s.writeError(w, r, &service.Error{Kind: service.ErrInvalid, Msg: "recursive: want true or false"})
			return
		}
	}
	watch, err := s.cfg.Sandboxes.WatchDir(r.Context(), p, id, q.Get("path"), q.Get("user"), recursive)
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	defer watch.Close()
	events := make(chan service.FileEvent)
	go func() {
		defer close(events)
		for {
			ev, err := watch.Next()
			if err != nil {
				return
			}
			select {
			case events <- ev:
			case <-r.Context().Done():
				return
			}
		}
	}()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	flush := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	flush()
	enc := json.NewEncoder(w)
	keepalive := time.NewTicker(watchKeepalive)
	defer keepalive.Stop()
	for {
		var line fileEventJSON
		select {
		case <-r.Context().Done():
			return
		case ev, ok := <-events:
			if !ok {
				return // the watch ended: so does the answer
			}
			line = fileEventJSON{Type: ev.Type, Name: ev.Name}
			keepalive.Reset(watchKeepalive)
		case <-keepalive.C:
			line = fileEventJSON{Type: "keepalive"}
		}
		if enc.Encode(line) != nil {
			return
		}
		flush()
	}
}
