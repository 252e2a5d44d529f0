package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/capsulehq/capsule/internal/bench"
	"github.com/capsulehq/capsule/internal/proxy"
)

// benchFilePath is where the transfer figures put their file in the guest.
const benchFilePath = "/tmp/capsule-bench-transfer.bin"

// transferPath is one way to reach a sandbox's files: the URLs of an
// upload and a download of benchFilePath and how to authorize them.
type transferPath struct {
	name          string
	upload        func(ctx context.Context, body []byte) (*http.Request, error)
	download      func(ctx context.Context) (*http.Request, error)
	uploadAnswers int // the status of a successful upload
}

// fileTransfers measures moving a file of mib MiB into and out of a
// running sandbox on three paths: envd straight at the guest's address,
// envd through the traffic proxy (E2B routing headers) and the /v1 files
// API (through the host agent's stream), each as MiB/s and as a fraction of
// `cat` of the same file on the host (the guest runs under TCG here, so
// these say what the path costs on this machine, not what a KVM host
// reaches). The median of rounds interleaved rounds counts.
func fileTransfers(ctx context.Context, stack *benchStack, b *apiBench, id, envdURL, envdToken string, mib, rounds int) (map[string]any, error) {
	data := make([]byte, mib<<20)
	if _, err := rand.Read(data); err != nil {
		return nil, err
	}
	q := "/files?" + url.Values{"path": {benchFilePath}}.Encode()
	envdReq := func(base string, hdr http.Header) transferPath {
		mk := func(ctx context.Context, method string, body io.Reader) (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, method, base+q, body)
			if err != nil {
				return nil, err
			}
			for k, v := range hdr {
				req.Header[k] = v
			}
			if envdToken != "" {
				req.Header.Set(proxy.HeaderAccessToken, envdToken)
			}
			return req, nil
		}
		return transferPath{
			upload: func(ctx context.Context, body []byte) (*http.Request, error) {
				req, err := mk(ctx, http.MethodPost, bytes.NewReader(body))
				if err == nil {
					req.Header.Set("Content-Type", "application/octet-stream")
				}
				return req, err
			},
			download:      func(ctx context.Context) (*http.Request, error) { return mk(ctx, http.MethodGet, nil) },
			uploadAnswers: http.StatusOK,
		}
	}
	direct := envdReq(envdURL, nil)
	direct.name = "direct"
	proxied := envdReq(stack.sandboxURL, http.Header{
		http.CanonicalHeaderKey(proxy.HeaderSandboxID):   {id},
		http.CanonicalHeaderKey(proxy.HeaderSandboxPort): {"49983"},
	})
	proxied.name = "proxy"
	apiURL := b.url + "/v1/sandboxes/" + id + q
	api := transferPath{
		name: "api",
		upload: func(ctx context.Context, body []byte) (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPut, apiURL, bytes.NewReader(body))
			if err == nil {
				req.Header.Set("X-API-Key", b.key)
				req.Header.Set("Content-Type", "application/octet-stream")
			}
			return req, err
		},
		download: func(ctx context.Context) (*http.Request, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, apiURL, nil)
			if err == nil {
				req.Header.Set("X-API-Key", b.key)
			}
			return req, err
		},
		uploadAnswers: http.StatusOK,
	}

	client := &http.Client{Timeout: 10 * time.Minute, Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	dir, err := os.MkdirTemp("", "capsule-bench-transfer-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		return nil, err
	}

	times := map[string][]time.Duration{}
	for range rounds {
		d, err := bench.TimeCat(ctx, src, filepath.Join(dir, "dst"))
		if err != nil {
			return nil, fmt.Errorf("cat: %w", err)
		}
		times["cat"] = append(times["cat"], d)
		for _, p := range []transferPath{direct, proxied, api} {
			d, err := timeTransfer(ctx, client, func() (*http.Request, error) { return p.upload(ctx, data) }, p.uploadAnswers, nil)
			if err != nil {
				return nil, fmt.Errorf("%s upload: %w", p.name, err)
			}
			times[p.name+"_upload"] = append(times[p.name+"_upload"], d)
			var got bytes.Buffer
			got.Grow(len(data))
			if d, err = timeTransfer(ctx, client, func() (*http.Request, error) { return p.download(ctx) }, http.StatusOK, &got); err != nil {
				return nil, fmt.Errorf("%s download: %w", p.name, err)
			}
			if !bytes.Equal(got.Bytes(), data) {
				return nil, fmt.Errorf("%s download: %d bytes, not the ones uploaded", p.name, got.Len())
			}
			times[p.name+"_download"] = append(times[p.name+"_download"], d)
		}
	}
	med := func(k string) time.Duration { return bench.Median(times[k]) }
	cat := med("cat")
	out := map[string]any{
		"transfer_file_mib":      mib,
		"transfer_cat_mib_per_s": bench.Round3(float64(mib) / cat.Seconds()),
	}
	for _, p := range []string{"direct", "proxy", "api"} {
		for _, dir := range []string{"upload", "download"} {
			d := med(p + "_" + dir)
			out[fmt.Sprintf("%s_%s_mib_per_s", p, dir)] = bench.Round3(float64(mib) / d.Seconds())
			out[fmt.Sprintf("%s_%s_vs_cat_throughput", p, dir)] = bench.Round3(cat.Seconds() / d.Seconds())
		}
	}
	return out, nil
}

// timeTransfer times one request, its answer read to the end (into w when
// not nil), and checks its status.
func timeTransfer(ctx context.Context, client *http.Client, mk func() (*http.Request, error), want int, w io.Writer) (time.Duration, error) {
	if w == nil {
		w = io.Discard
	}
	req, err := mk()
	if err != nil {
		return 0, err
	}
	t0 := time.Now()
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return 0, fmt.Errorf("status %d: %s", resp.StatusCode, msg)
	}
	if _, err := io.CopyBuffer(struct{ io.Writer }{w}, resp.Body, make([]byte, 1<<20)); err != nil {
		return 0, err
	}
	return time.Since(t0), ctx.Err()
}
