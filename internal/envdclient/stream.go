package envdclient

// Streaming access for the host agent (package agent): the authenticated
// process service client, and file transfers that neither buffer whole
// files nor lose envd's HTTP status.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/capsulehq/capsule/gen/envd/filesystem/filesystemconnect"
	"github.com/capsulehq/capsule/gen/envd/process/processconnect"
)

// Process is the envd process service, authenticated with the sandbox's
// access token. A request runs as envd's default user unless its
// Authorization header names another (UserAuthorization).
func (c *Client) Process() processconnect.ProcessClient { return c.proc }

// Filesystem is the envd filesystem service, authenticated like Process
// (the Authorization header selects the user).
func (c *Client) Filesystem() filesystemconnect.FilesystemClient { return c.fs }

// UserAuthorization is the Authorization header value by which envd's RPCs
// select the user to act as.
func UserAuthorization(user string) string { return basicAuth(user) }

// StatusError is an envd /files answer other than success.
type StatusError struct {
	Op     string // "read" or "write"
	Path   string
	Status int    // HTTP status
	Msg    string // envd's message
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("%s %s: HTTP %d: %s", e.Op, e.Path, e.Status, e.Msg)
}

// Upload writes data to path as user (empty: the default user) and returns
// the absolute path envd wrote.
func (c *Client) Upload(ctx context.Context, path, user string, data io.Reader) (string, error) {
	return c.UploadSized(ctx, path, user, data, -1)
}

// UploadSized is Upload of data whose length is size bytes (-1: unknown).
// A known length goes out as the request's Content-Length, which lets
// envd splice a large content from its socket into the file; data must
// then hold exactly size bytes (fewer fail the upload).
func (c *Client) UploadSized(ctx context.Context, path, user string, data io.Reader, size int64) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.filesURL(path, user), data)
	if err != nil {
		return "", err
	}
	switch {
	case size >= 0:
		req.ContentLength = size
		if size == 0 {
			req.Body = http.NoBody
		} else if req.GetBody == nil {
			req.Body = io.NopCloser(bulkReader{data})
		}
	case req.GetBody == nil && req.Body != nil && req.Body != http.NoBody:
		// A stream of unknown length goes out chunked, a chunk per
		// io.Copy buffer (32 KiB) unless the body copies itself.
		req.Body = io.NopCloser(bulkReader{data})
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	c.auth(req)
	resp, err := c.hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", statusError("write", path, resp)
	}
	var entries []struct {
		Path string `json:"path"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&entries); err != nil || len(entries) == 0 {
		return path, nil // written; the answer only names it
	}
	return entries[0].Path, nil
}

// Download opens path for reading as user (empty: the default user). The
// caller closes the reader.
func (c *Client) Download(ctx context.Context, path, user string) (io.ReadCloser, error) {
	rc, _, err := c.Open(ctx, path, user)
	return rc, err
}

// Open is Download that also returns the file's size as envd announced it
// (-1 when unknown). The caller closes the reader.
func (c *Client) Open(ctx context.Context, path, user string) (io.ReadCloser, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.filesURL(path, user), nil)
	if err != nil {
		return nil, 0, err
	}
	c.auth(req)
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, 0, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, 0, statusError("read", path, resp)
	}
	size := resp.ContentLength
	if resp.Uncompressed || resp.Header.Get("Content-Encoding") != "" {
		size = -1
	}
	return resp.Body, size, nil
}

func (c *Client) filesURL(path, user string) string {
	q := url.Values{"path": {path}}
	if user != "" {
		q.Set("username", user)
	}
	return c.base + "/files?" + q.Encode()
}

func statusError(op, path string, resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	msg := strings.TrimSpace(string(b))
	var body struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(b, &body) == nil && body.Message != "" {
		msg = body.Message
	}
	return &StatusError{Op: op, Path: path, Status: resp.StatusCode, Msg: msg}
}

// uploadBufSize is the chunk size of uploads of unknown length.
const uploadBufSize = 256 << 10

// bulkReader sends an upload body in full 256 KiB chunks: the transport
// copies a body with WriteTo when it has one, and with a 32 KiB buffer
// (a chunk header and a write each) otherwise.
type bulkReader struct{ r io.Reader }

func (b bulkReader) Read(p []byte) (int, error) { return b.r.Read(p) }

func (b bulkReader) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, uploadBufSize)
	var written int64
	for {
		n, rerr := fill(b.r, buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			written += int64(m)
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

// fill reads into buf until it is full, r ends (io.EOF) or fails; unlike
// io.ReadFull it tells a clean end from a failure.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
