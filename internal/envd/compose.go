package envd

import (
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
)

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
