package bench

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/envd/process"
	"github.com/capsulehq/capsule/gen/envd/process/processconnect"
)

// EnvdOptions configures the envd benchmark.
type EnvdOptions struct {
	// EnvdBin is the envd binary to start on a free loopback port.
	EnvdBin string
	// Runs is the number of samples for each latency figure.
	Runs int
	// BigFileMiB is the size of the throughput file.
	BigFileMiB int
	// Dir holds the benchmark's files; empty means a temporary directory.
	Dir string
}

// Envd measures envd on the host: the round trip of running `true`, a
// 1 KiB file write + read, and upload/download throughput of a large file
// against `cat` of the same file into the same directory.
func Envd(ctx context.Context, o EnvdOptions) (map[string]any, error) {
	if o.Runs <= 0 {
		o.Runs = 200
	}
	if o.BigFileMiB <= 0 {
		o.BigFileMiB = 256
	}
	dir := o.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "capsule-bench-envd-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	base, stop, err := startEnvd(ctx, o.EnvdBin)
	if err != nil {
		return nil, err
	}
	defer stop()

	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 8, DisableCompression: true}}
	out := map[string]any{}

	rt, err := commandRoundTrips(ctx, hc, base, o.Runs)
	if err != nil {
		return nil, fmt.Errorf("command round trip: %w", err)
	}
	out["command_round_trip"] = rt

	small, err := smallFileRoundTrips(ctx, hc, base, dir, o.Runs)
	if err != nil {
		return nil, fmt.Errorf("1 KiB file: %w", err)
	}
	out["file_write_read_1kib"] = small

	tp, err := throughput(ctx, hc, base, dir, o.BigFileMiB)
	if err != nil {
		return nil, fmt.Errorf("throughput: %w", err)
	}
	for k, v := range tp {
		out[k] = v
	}
	return out, nil
}

// startEnvd runs envd on a free loopback port and waits for /health.
func startEnvd(ctx context.Context, bin string) (string, func(), error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	cmd := exec.CommandContext(ctx, bin, "-addr", "127.0.0.1", "-port", strconv.Itoa(port))
	cmd.Stderr = io.Discard
	if err := cmd.Start(); err != nil {
		return "", nil, fmt.Errorf("start %s: %w", bin, err)
	}
	stop := func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusNoContent {
				return base, stop, nil
			}
		}
		if time.Now().After(deadline) {
			stop()
			return "", nil, errors.New("envd did not become healthy within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func commandRoundTrips(ctx context.Context, hc *http.Client, base string, n int) (Timing, error) {
	client := processconnect.NewProcessClient(hc, base)
	run := func() error {
		s, err := client.Start(ctx, connect.NewRequest(&pb.StartRequest{Process: &pb.ProcessConfig{Cmd: "true"}}))
		if err != nil {
			return err
		}
		defer s.Close()
		var end *pb.ProcessEvent_EndEvent
		for s.Receive() {
			if e := s.Msg().GetEvent().GetEnd(); e != nil {
				end = e
			}
		}
		if err := s.Err(); err != nil {
			return err
		}
		if end == nil || end.ExitCode != 0 {
			return fmt.Errorf("unexpected end %v", end)
		}
		return nil
	}
	return sample(n, run)
}

func smallFileRoundTrips(ctx context.Context, hc *http.Client, base, dir string, n int) (Timing, error) {
	payload := make([]byte, 1024)
	if _, err := rand.Read(payload); err != nil {
		return Timing{}, err
	}
	path := filepath.Join(dir, "small.bin")
	return sample(n, func() error {
		if err := upload(ctx, hc, base, path, bytes.NewReader(payload)); err != nil {
			return err
		}
		var got bytes.Buffer
		if err := download(ctx, hc, base, path, &got, nil); err != nil {
			return err
		}
		if !bytes.Equal(got.Bytes(), payload) {
			return errors.New("read back different bytes")
		}
		return nil
	})
}

// throughputRounds is the number of interleaved rounds of the throughput
// figures; the median of each is reported.
const throughputRounds = 5

// throughput compares moving a big file through envd with `cat` of it
// into the same directory. Neither side syncs: envd's upload, like E2B's,
// ends when the file is written (to the page cache), and GNU cat copies
// with copy_file_range(2), the kernel's fastest file-to-file copy. The
// client is net/http as any Go program would use it: an upload of known
// length (the transport sends the file with sendfile(2); envd splices it
// into the file), an upload of unknown length (chunked, as the host
// agent's streamed uploads are: read through envd's 256 KiB buffers), and
// a download (envd sends it with sendfile(2)) written through a 1 MiB
// buffer. The net/http client copies what it receives twice (socket to
// buffer, buffer to file); the download_spliced figures take the same
// download with a client that splices the body from its socket into the
// file, as envd does with uploads: what envd's side allows.
func throughput(ctx context.Context, hc *http.Client, base, dir string, mib int) (map[string]any, error) {
	src := filepath.Join(dir, "big.src")
	if err := writeRandomFile(src, int64(mib)<<20); err != nil {
		return nil, err
	}
	size := float64(int64(mib) << 20)
	rate := func(d time.Duration) float64 { return size / (1 << 20) / d.Seconds() }

	// Interleaved rounds; the median of each is reported, so that a
	// one-off stall (writeback, another process) does not decide the ratio.
	var catT, upT, chunkedT, downT, splicedT []time.Duration
	for range throughputRounds {
		d, err := TimeCat(ctx, src, filepath.Join(dir, "big.cat"))
		if err != nil {
			return nil, fmt.Errorf("cat: %w", err)
		}
		catT = append(catT, d)
		if d, err = timeUpload(ctx, hc, base, src, filepath.Join(dir, "big.up"), int64(size)); err != nil {
			return nil, fmt.Errorf("upload: %w", err)
		}
		upT = append(upT, d)
		if d, err = timeUpload(ctx, hc, base, src, filepath.Join(dir, "big.chunked"), -1); err != nil {
			return nil, fmt.Errorf("chunked upload: %w", err)
		}
		chunkedT = append(chunkedT, d)
		if d, err = timeDownload(ctx, hc, base, src, filepath.Join(dir, "big.down"), int64(size)); err != nil {
			return nil, fmt.Errorf("download: %w", err)
		}
		downT = append(downT, d)
		if d, err = timeSplicedDownload(ctx, base, src, filepath.Join(dir, "big.spliced"), int64(size)); err != nil {
			return nil, fmt.Errorf("spliced download: %w", err)
		}
		splicedT = append(splicedT, d)
	}
	catTime, upTime, chunkedTime, downTime := Median(catT), Median(upT), Median(chunkedT), Median(downT)
	splicedTime := Median(splicedT)

	return map[string]any{
		"file_size_mib":                      mib,
		"cat_mib_per_s":                      Round3(rate(catTime)),
		"upload_mib_per_s":                   Round3(rate(upTime)),
		"upload_chunked_mib_per_s":           Round3(rate(chunkedTime)),
		"download_mib_per_s":                 Round3(rate(downTime)),
		"upload_vs_cat_throughput":           Round3(catTime.Seconds() / upTime.Seconds()),
		"upload_chunked_vs_cat_throughput":   Round3(catTime.Seconds() / chunkedTime.Seconds()),
		"download_vs_cat_throughput":         Round3(catTime.Seconds() / downTime.Seconds()),
		"download_spliced_mib_per_s":         Round3(rate(splicedTime)),
		"download_spliced_vs_cat_throughput": Round3(catTime.Seconds() / splicedTime.Seconds()),
	}, nil
}

// TimeCat times `cat src > dst` (the reference of the transfer figures)
// and removes dst.
func TimeCat(ctx context.Context, src, dst string) (time.Duration, error) {
	defer os.Remove(dst)
	return timed(func() error {
		return exec.CommandContext(ctx, "sh", "-c", `cat "$1" > "$2"`, "sh", src, dst).Run()
	})
}

// timeUpload uploads src to dst, announcing its length, or chunked when
// size is -1 (the file is then read through a 256 KiB buffer, as the host
// agent sends its streams).
func timeUpload(ctx context.Context, hc *http.Client, base, src, dst string, size int64) (time.Duration, error) {
	defer os.Remove(dst)
	d, err := timed(func() error {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		if size < 0 {
			return upload(ctx, hc, base, dst, bufio.NewReaderSize(struct{ io.Reader }{f}, 256<<10))
		}
		return uploadSized(ctx, hc, base, dst, f, size)
	})
	if err != nil {
		return 0, err
	}
	fi, err := os.Stat(src)
	if err != nil {
		return 0, err
	}
	return d, checkSize(dst, fi.Size())
}

func timeDownload(ctx context.Context, hc *http.Client, base, src, dst string, size int64) (time.Duration, error) {
	defer os.Remove(dst)
	d, err := timed(func() error {
		f, err := os.Create(dst)
		if err != nil {
			return err
		}
		defer f.Close()
		// A file takes what it is given in one write each: through a
		// 1 MiB buffer rather than its ReadFrom's 32 KiB one.
		return download(ctx, hc, base, src, struct{ io.Writer }{f}, make([]byte, 1<<20))
	})
	if err != nil {
		return 0, err
	}
	return d, checkSize(dst, size)
}

// timeSplicedDownload downloads src into dst over a connection of its own,
// splicing the body from the socket into the file (os.File.ReadFrom of a
// TCP connection).
func timeSplicedDownload(ctx context.Context, base, src, dst string, size int64) (time.Duration, error) {
	defer os.Remove(dst)
	u, err := url.Parse(base)
	if err != nil {
		return 0, err
	}
	d, err := timed(func() error {
		var dialer net.Dialer
		conn, err := dialer.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return err
		}
		defer conn.Close()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/files?path="+url.QueryEscape(src), nil)
		if err != nil {
			return err
		}
		req.Close = true
		if err := req.Write(conn); err != nil {
			return err
		}
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, req)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || resp.ContentLength != size || len(resp.TransferEncoding) > 0 {
			return fmt.Errorf("download: HTTP %d, length %d, transfer encoding %v", resp.StatusCode, resp.ContentLength, resp.TransferEncoding)
		}
		f, err := os.Create(dst)
		if err != nil {
			return err
		}
		defer f.Close()
		buffered := int64(br.Buffered())
		if _, err := io.CopyN(f, br, buffered); err != nil {
			return err
		}
		_, err = f.ReadFrom(&io.LimitedReader{R: conn.(*net.TCPConn), N: size - buffered})
		return err
	})
	if err != nil {
		return 0, err
	}
	return d, checkSize(dst, size)
}

func checkSize(path string, want int64) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() != want {
		return fmt.Errorf("%s has %d bytes, want %d", path, fi.Size(), want)
	}
	return nil
}

// Median is the median of d (d is not reordered).
func Median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func upload(ctx context.Context, hc *http.Client, base, path string, body io.Reader) error {
	return uploadSized(ctx, hc, base, path, body, -1)
}

func uploadSized(ctx context.Context, hc *http.Client, base, path string, body io.Reader, size int64) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/files?path="+url.QueryEscape(path), body)
	if err != nil {
		return err
	}
	if size >= 0 {
		req.ContentLength = size
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("upload: HTTP %d", resp.StatusCode)
	}
	return nil
}

// download copies path's content to w, through buf when not nil.
func download(ctx context.Context, hc *http.Client, base, path string, w io.Writer, buf []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/files?path="+url.QueryEscape(path), nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("download: HTTP %d", resp.StatusCode)
	}
	_, err = io.CopyBuffer(w, resp.Body, buf)
	return err
}

func writeRandomFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, size); err != nil {
		return err
	}
	return f.Sync()
}

func timed(fn func() error) (time.Duration, error) {
	t0 := time.Now()
	err := fn()
	return time.Since(t0), err
}

// sample runs fn n times (after a few warm-up runs) and summarizes.
func sample(n int, fn func() error) (Timing, error) {
	for range 5 {
		if err := fn(); err != nil {
			return Timing{}, err
		}
	}
	d := make([]time.Duration, 0, n)
	for range n {
		t, err := timed(fn)
		if err != nil {
			return Timing{}, err
		}
		d = append(d, t)
	}
	return Summarize(d), nil
}
