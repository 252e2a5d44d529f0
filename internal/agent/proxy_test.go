package agent_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"

	pb "github.com/capsulehq/capsule/gen/hostagent/v1"
	"github.com/capsulehq/capsule/internal/agentproxy"
)

// TestAgentProxy: sandbox traffic through the agent's proxy reaches a
// server in the guest that listens on 127.0.0.1 only (envd's loopback
// forwarder), bodies stream both ways, and the E2B error bodies come back
// for a closed port, an unknown sandbox and a paused one; the proxy token
// is required and never reaches the guest.
func TestAgentProxy(t *testing.T) {
	e := newEnv(t)
	c := e.client
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	id := "prx" + fmt.Sprint(time.Now().UnixNano()%1e9)
	must(c.CreateSandbox(ctx, connect.NewRequest(&pb.CreateSandboxRequest{SandboxId: id, Template: "minimal", MemoryMb: 256})))(t, "create")
	defer c.DestroySandbox(context.Background(), connect.NewRequest(&pb.DestroySandboxRequest{SandboxId: id}))
	shell(t, ctx, c, id, `mkdir -p /tmp/www/cgi-bin && echo hello-from-guest > /tmp/www/index.html &&
printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "auth=$HTTP_AUTHORIZATION proxy=$HTTP_CAPSULE_PROXY_AUTHORIZATION host=$HTTP_HOST"\ncat\n' > /tmp/www/cgi-bin/echo &&
chmod +x /tmp/www/cgi-bin/echo &&
printf '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho started\nsleep 300\n' > /tmp/www/cgi-bin/hang &&
chmod +x /tmp/www/cgi-bin/hang && busybox httpd -p 127.0.0.1:8080 -h /tmp/www`)

	do := func(method, path, port, sandbox, token string, body io.Reader) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, method, e.url+path, body)
		req.Host = port + "-" + sandbox + ".capsule.test"
		req.Header.Set(agentproxy.SandboxHeader, sandbox)
		req.Header.Set(agentproxy.PortHeader, port)
		req.Header.Set("Authorization", "Bearer client-own-token")
		if token != "" {
			req.Header.Set(agentproxy.TokenHeader, "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	// The forwarder scans once a second: wait for the forward.
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, body := do("GET", "/", "8080", id, token, nil)
		if resp.StatusCode == 200 && body == "hello-from-guest\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET / through the proxy: %d %q", resp.StatusCode, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	payload := strings.Repeat("0123456789abcdef", 64<<10) // 1 MiB
	resp, body := do("POST", "/cgi-bin/echo", "8080", id, token, strings.NewReader(payload))
	wantHead := "auth=Bearer client-own-token proxy= host=8080-" + id + ".capsule.test\n"
	if resp.StatusCode != 200 || !strings.HasPrefix(body, wantHead) || body[len(wantHead):] != payload {
		t.Fatalf("POST through the proxy: %d, head %q, %d bytes", resp.StatusCode, body[:min(len(body), 120)], len(body))
	}
	// Parallel requests.
	var wg sync.WaitGroup
	errs := make(chan string, 32)
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if resp, body := do("GET", "/", "8080", id, token, nil); resp.StatusCode != 200 || body != "hello-from-guest\n" {
				errs <- fmt.Sprintf("%d %q", resp.StatusCode, body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("parallel GET: %s", e)
	}

	type errBody struct {
		SandboxID string `json:"sandboxId"`
		Message   string `json:"message"`
		Port      int    `json:"port"`
		Code      int    `json:"code"`
	}
	check := func(what string, resp *http.Response, body string, status int, want errBody) {
		t.Helper()
		var got errBody
		if resp.StatusCode != status || json.Unmarshal([]byte(body), &got) != nil || got != want {
			t.Fatalf("%s: %d %s, want %d %+v", what, resp.StatusCode, body, status, want)
		}
	}
	resp, body = do("GET", "/", "8081", id, token, nil)
	check("closed port", resp, body, 502, errBody{id, agentproxy.MsgPortClosed, 8081, 502})
	resp, body = do("GET", "/", "8080", "nosuchsandbox", token, nil)
	check("unknown sandbox", resp, body, 502, errBody{"nosuchsandbox", agentproxy.MsgSandboxNotFound, 0, 502})
	resp, body = do("GET", "/", "8080", id, "", nil)
	check("no proxy token", resp, body, 401, errBody{"", "unauthenticated", 0, 401})
	resp, body = do("GET", "/", "8080", id, token+"x", nil)
	check("wrong proxy token", resp, body, 401, errBody{"", "unauthenticated", 0, 401})
	resp, body = do("GET", "/", "99999", id, token, nil)
	check("bad port", resp, body, 400, errBody{id, "Invalid sandbox port", 0, 400})

	// A request in flight (a response that never ends) is ended when the
	// sandbox stops: its machine would never close the connection.
	hreq, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/cgi-bin/hang", nil)
	hreq.Header.Set(agentproxy.SandboxHeader, id)
	hreq.Header.Set(agentproxy.PortHeader, "8080")
	hreq.Header.Set(agentproxy.TokenHeader, "Bearer "+token)
	hresp, err := http.DefaultClient.Do(hreq)
	if err != nil || hresp.StatusCode != 200 {
		t.Fatalf("hanging request: %v %v", hresp, err)
	}
	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(io.Discard, hresp.Body)
		hresp.Body.Close()
		ended <- err
	}()

	must(c.PauseSandbox(ctx, connect.NewRequest(&pb.PauseSandboxRequest{SandboxId: id})))(t, "pause")
	select {
	case <-ended:
	case <-time.After(10 * time.Second):
		t.Fatal("a proxied response of the paused sandbox is still open")
	}
	resp, body = do("GET", "/", "8080", id, token, nil)
	check("paused sandbox", resp, body, 502, errBody{id, agentproxy.MsgSandboxNotFound, 0, 502})
}
