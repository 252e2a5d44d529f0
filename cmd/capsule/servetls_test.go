package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/testenv"
)

// TestServeTLSFlags: -tls-cert and -tls-key go together and exclude
// -tls-dev-ca; a certificate that does not cover *.DOMAIN fails the start
// (servetls's tests check the certificates themselves).
func TestServeTLSFlags(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{name: "none: plain HTTP"},
		{name: "development CA from the environment", env: map[string]string{"CAPSULE_TLS_DEV_CA": "true"}},
		{name: "files", args: []string{"-tls-cert", "c.pem", "-tls-key", "k.pem"}},
		{name: "a certificate without its key", args: []string{"-tls-cert", "c.pem"}, wantErr: "go together"},
		{name: "a key without its certificate", env: map[string]string{"CAPSULE_TLS_KEY": "k.pem"}, wantErr: "go together"},
		{name: "files and the development CA", args: []string{"-tls-cert", "c.pem", "-tls-key", "k.pem", "-tls-dev-ca"}, wantErr: "exclude"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseServeFlags(tc.args, func(k string) string { return tc.env[k] }, "")
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("parseServeFlags(%q) = %v, want %q", tc.args, err, tc.wantErr)
			}
		})
	}
}

// TestServeHTTPSDevCA runs the real `capsule serve -tls-dev-ca` (network
// slot pool ctls): it prints the development root and writes it to
// DATA-DIR/tls/dev-ca.crt; a client trusting that root alone reaches the
// API over HTTPS, creates a sandbox through the E2B API and reaches its
// envd at https://49983-{id}.{domain} — the URL the E2B SDK builds, with
// the sandbox domain the API answered — resolved to the sandbox listener
// by the client's dialer; a client without the root, and plain HTTP, are
// refused.
func TestServeHTTPSDevCA(t *testing.T) {
	bin := serveBinary(t)
	d := newServeDirs(t)
	d.pool = hosttest.ServeTLSPool
	d.args = []string{"-tls-dev-ca"}
	p := d.start(t, bin)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	api, _ := url.Parse(p.url)
	sbx, _ := url.Parse(p.sandboxURL)
	rootFile := filepath.Join(d.data, "tls", "dev-ca.crt")

	// Every name goes to this serve: the API's and the sandbox listener's
	// port on loopback, as wildcard DNS would.
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	transport := func(roots *x509.CertPool) *http.Transport {
		return &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots},
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				_, port, err := net.SplitHostPort(addr)
				if err != nil {
					return nil, err
				}
				return dialer.DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
			},
		}
	}
	var client *http.Client
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"serves HTTPS with the printed root", func(t *testing.T) {
			for {
				select {
				case <-p.done:
					t.Fatalf("capsule serve exited during startup (%v):\n%s", p.err, p.logText())
				case <-ctx.Done():
					t.Fatalf("capsule serve did not become healthy over HTTPS:\n%s", p.logText())
				case <-time.After(200 * time.Millisecond):
				}
				root, err := os.ReadFile(rootFile)
				if err != nil {
					continue
				}
				roots := x509.NewCertPool()
				if !roots.AppendCertsFromPEM(root) {
					t.Fatalf("%s holds no certificate", rootFile)
				}
				client = &http.Client{Transport: transport(roots), Timeout: time.Minute}
				resp, err := client.Get(fmt.Sprintf("https://localhost:%s/healthz", api.Port()))
				if err != nil {
					continue
				}
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					if !strings.Contains(p.logText(), strings.TrimSpace(string(root))) || !strings.Contains(p.logText(), "NODE_EXTRA_CA_CERTS="+rootFile) {
						t.Fatalf("serve did not print the root and its file:\n%s", p.logText())
					}
					break
				}
			}
			if fi, err := os.Stat(filepath.Join(d.data, "tls", "dev-ca.key")); err != nil || fi.Mode().Perm() != 0o600 {
				t.Fatalf("the CA key: %v, %v; want mode 0600", fi.Mode(), err)
			}
		}},
		{"without the root, and over plain HTTP, refused", func(t *testing.T) {
			plain := &http.Client{Transport: transport(x509.NewCertPool()), Timeout: 30 * time.Second}
			if resp, err := plain.Get(fmt.Sprintf("https://localhost:%s/healthz", api.Port())); err == nil {
				resp.Body.Close()
				t.Fatal("a client without the development root was served")
			} else if !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("want a certificate error, got %v", err)
			}
			resp, err := http.Get(p.url + "/healthz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					t.Fatal("plain HTTP served the API")
				}
			}
		}},
		{"the E2B SDK's sandbox URL reaches envd over HTTPS", func(t *testing.T) {
			body, _ := json.Marshal(map[string]any{"templateID": "minimal", "timeout": 300})
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("https://api.crash.test:%s/sandboxes", api.Port()), bytes.NewReader(body))
			req.Header.Set("X-API-KEY", d.apiKey(t))
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var sb struct {
				SandboxID string  `json:"sandboxID"`
				Domain    *string `json:"domain"`
			}
			if resp.StatusCode != http.StatusCreated || json.Unmarshal(b, &sb) != nil || sb.Domain == nil {
				t.Fatalf("create: %d %s", resp.StatusCode, b)
			}
			defer func() {
				req, _ := http.NewRequest(http.MethodDelete, fmt.Sprintf("https://api.crash.test:%s/sandboxes/%s", api.Port(), sb.SandboxID), nil)
				req.Header.Set("X-API-KEY", d.apiKey(t))
				if resp, err := client.Do(req); err == nil {
					resp.Body.Close()
				}
			}()
			if want := "crash.test:" + sbx.Port(); *sb.Domain != want {
				t.Fatalf("domain %q, want %q", *sb.Domain, want)
			}
			// The SDK's envd URL outside debug mode.
			resp, err = client.Get("https://49983-" + sb.SandboxID + "." + *sb.Domain + "/health")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNoContent {
				t.Fatalf("envd /health through HTTPS: %d", resp.StatusCode)
			}
			if resp.TLS == nil || resp.TLS.NegotiatedProtocol == "h2" {
				t.Fatalf("sandbox listener: TLS %+v; want HTTP/1.1 over TLS", resp.TLS)
			}
			// An unknown sandbox is E2B's 502, over HTTPS too.
			resp, err = client.Get("https://49983-" + strings.Repeat("0", 32) + "." + *sb.Domain + "/health")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Fatalf("unknown sandbox: %d, want 502", resp.StatusCode)
			}
		}},
	}
	for _, s := range steps {
		if !testenv.Step(&t, s.name, s.run) {
			return
		}
	}
}
