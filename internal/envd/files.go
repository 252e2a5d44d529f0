package envd

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	"connectrpc.com/connect"
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
	he := s.logError(r, err)
	writeJSONError(w, he.status, he.msg)
}

// logError classifies err as an *httpError (anything else is an internal
// error) and logs the cause of a server-side failure.
func (s *Server) logError(r *http.Request, err error) *httpError {
	var he *httpError
	if !errors.As(err, &he) {
		he = &httpError{status: http.StatusInternalServerError, msg: "internal error", cause: err}
	}
	if he.status >= http.StatusInternalServerError {
		s.log.ErrorContext(r.Context(), "files request failed",
			"method", r.Method, "url", r.URL.Path, "status", he.status, "err", he.cause)
	}
	return he
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

// copyBufSize is the size of the buffers that stream file bodies.
const copyBufSize = 256 << 10

// copyBufPool holds the buffers that stream file bodies; large buffers keep
// the number of write syscalls (and inotify events) low.
var copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copyBuffered copies src to dst through a pooled buffer. Each write is a
// full buffer (but the last): a request body yields a few KiB a read (a
// TCP segment train, an HTTP chunk, what a multipart part has buffered),
// and writing every such piece at once would cost a syscall (and an
// inotify event) per piece. dst's ReadFrom is not used: it would fall back
// to a 32 KiB buffer for sources that are neither files nor sockets.
func copyBuffered(dst io.Writer, src io.Reader) (int64, error) {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp
	var written int64
	for {
		n, rerr := fill(src, buf)
		if n > 0 {
			w, werr := dst.Write(buf[:n])
			written += int64(w)
			if werr == nil && w != n {
				werr = io.ErrShortWrite
			}
			if werr != nil {
				return written, werr
			}
		}
		if errors.Is(rerr, io.EOF) {
			return written, nil
		}
		if rerr != nil {
			return written, rerr
		}
	}
}

// fill reads into buf until it is full, src ends (io.EOF) or fails.
func fill(src io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := src.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// partReaderPool holds the read buffers multipart uploads are parsed
// from. mime/multipart reads its input through its own 4 KiB buffer: fed
// straight from the request body, every 4 KiB of a part would cost a
// socket read. Behind a large buffer, the socket is read in large pieces
// and multipart's refills are memory copies.
var partReaderPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, copyBufSize) }}
