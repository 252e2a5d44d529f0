package envd

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// spliceMinSize is the smallest raw upload whose body is moved from the
// socket to its file by splice(2) (see splicedBody).
const spliceMinSize = 1 << 20

// splicedBody is the body of a large raw upload of announced length over
// plain HTTP/1.x: once its file is open, the connection is taken over
// (hijacked) and the rest of the body is spliced from the socket into the
// file (os.File.ReadFrom of a *net.TCPConn), so it is copied once, in the
// kernel, instead of into envd's memory and out again. The reply then goes
// out on the raw connection, which is closed after it (Connection: close):
// the HTTP server no longer knows where the next request would start.
//
// Until fillFile runs, nothing is taken over and the request is answered
// the usual way (errors that come before the body, small bodies).
type splicedBody struct {
	w    http.ResponseWriter
	r    *http.Request
	size int64

	conn net.Conn          // set once hijacked
	br   *bufio.ReadWriter // the server's buffers of conn
}

// newSplicedBody returns the splicing body of r, or nil when r's body must
// be read through the server (unknown or small length, a content coding,
// HTTP/2, TLS, or a writer that cannot be taken over).
func newSplicedBody(w http.ResponseWriter, r *http.Request) *splicedBody {
	if r.ProtoMajor != 1 || r.TLS != nil || r.ContentLength < spliceMinSize || len(r.TransferEncoding) > 0 {
		return nil
	}
	if enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding"))); enc != "" && enc != "identity" {
		return nil
	}
	if _, ok := r.Context().Value(http.LocalAddrContextKey).(*net.TCPAddr); !ok {
		return nil
	}
	if _, ok := w.(http.Hijacker); !ok {
		return nil
	}
	return &splicedBody{w: w, r: r, size: r.ContentLength}
}

// Read serves the body through the server, for the paths that do not
// splice.
func (b *splicedBody) Read(p []byte) (int, error) { return b.r.Body.Read(p) }

// hijacked tells whether the reply must go out on the raw connection.
func (b *splicedBody) hijacked() bool { return b.conn != nil }

// fillFile writes the whole body to f. bodyErr is a failure (or early end)
// of the body, fileErr one of f.
func (b *splicedBody) fillFile(f *os.File) (bodyErr, fileErr error) {
	// The first read goes through the server: it answers an Expect:
	// 100-continue and empties the server's read buffer (a read larger
	// than that buffer takes what it holds, or reads the socket directly).
	bp := copyBufPool.Get().(*[]byte)
	n, err := b.r.Body.Read(*bp)
	if n > 0 {
		if _, werr := f.Write((*bp)[:n]); werr != nil {
			copyBufPool.Put(bp)
			return nil, werr
		}
	}
	copyBufPool.Put(bp)
	if errors.Is(err, io.EOF) && int64(n) == b.size {
		return nil, nil // all of it in the first read
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return err, nil
	}
	left := b.size - int64(n)
	conn, brw, err := http.NewResponseController(b.w).Hijack()
	if err != nil {
		// Not taken over: the server reads the rest.
		body := &bodyReader{r: b.r.Body}
		if _, err := copyBuffered(f, body); err != nil {
			return body.err, err
		}
		return nil, nil
	}
	b.conn, b.br = conn, brw
	// What the server had buffered beyond the first read, then the socket.
	if k := min(int64(brw.Reader.Buffered()), left); k > 0 {
		m, err := io.CopyN(f, brw.Reader, k)
		left -= m
		if err != nil {
			return nil, err
		}
	}
	_ = conn.SetReadDeadline(time.Time{})
	var m int64
	if tc, ok := conn.(*net.TCPConn); ok {
		// os.File.ReadFrom splices from an io.LimitedReader of a TCP conn.
		m, err = f.ReadFrom(&io.LimitedReader{R: tc, N: left})
		if err != nil {
			// splice does not say which side failed: a connection's
			// failure is the client's, anything else the file's.
			if errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, net.ErrClosed) {
				return err, nil
			}
			return nil, err
		}
	} else {
		src := &bodyReader{r: io.LimitReader(conn, left)}
		if m, err = copyBuffered(f, src); err != nil {
			return src.err, err
		}
	}
	if m < left {
		return io.ErrUnexpectedEOF, nil
	}
	return nil, nil
}

// reply writes the answer to a hijacked upload, v as JSON, and closes
// the connection. Headers set on the ResponseWriter before (CORS) go out
// with it. When the body was not read to its end (a failure), the client
// may still be sending: the connection is half-closed and what arrives is
// discarded for a moment, so that closing it does not reset the
// connection before the client has read the answer.
func (b *splicedBody) reply(status int, v any, bodyDone bool) {
	defer b.conn.Close()
	var body bytes.Buffer
	_ = json.NewEncoder(&body).Encode(v)
	h := b.w.Header().Clone()
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(body.Len()))
	h.Set("Connection", "close")
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	bw := b.br.Writer
	fmt.Fprintf(bw, "HTTP/1.1 %d %s\r\n", status, http.StatusText(status))
	_ = h.Write(bw)
	bw.WriteString("\r\n")
	bw.Write(body.Bytes())
	_ = b.conn.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := bw.Flush(); err != nil || bodyDone {
		return
	}
	if cw, ok := b.conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_ = b.conn.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = io.Copy(io.Discard, io.LimitReader(b.conn, 64<<20))
}
