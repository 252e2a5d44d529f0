package envd

import (
	"compress/gzip"
	"errors"
	"io"
	"io/fs"
	"mime"
	"net/http"
	"os"
	"path/filepath"
)

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
