package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/capsulehq/capsule/internal/agentproxy"
)

// FuzzTarget: whatever Host and routing headers a client sends, target
// either refuses with one of E2B's 400 texts or names a sandbox ID of
// [a-z0-9] and a port in 1..65535.
func FuzzTarget(f *testing.F) {
	for _, s := range [][3]string{
		{"8080-abc123.capsule.test", "", ""}, {"49983-abc123-client.capsule.test:8080", "", ""}, {"localhost:8080", "abc123", "49983"},
		{"[::1]:8080", "abc", "3000"}, {"sandbox.capsule.test", "abc", "+80"}, {"localhost", "abc", ""}, {"x-abc.capsule.test", "", ""},
		{"0-abc.capsule.test", "", ""}, {"65536-abc.capsule.test", "", ""}, {"80-.capsule.test", "", ""}, {"[", "", ""}, {"", "", ""},
		{"80-ABC.d", "", ""}, {"127.0.0.1", "ab_c", "1"},
	} {
		f.Add(s[0], s[1], s[2])
	}
	texts := map[string]bool{"missing header": true, "Invalid sandbox port": true, "Invalid sandbox ID": true, "Invalid host": true}
	idRe := regexp.MustCompile(`^[a-z0-9]+$`)
	f.Fuzz(func(t *testing.T, host, hdrID, hdrPort string) {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.Host = host
		r.Header[HeaderSandboxID] = []string{hdrID}
		r.Header[HeaderSandboxPort] = []string{hdrPort}
		id, port, bad := target(r)
		if bad != "" {
			if !texts[bad] || id != "" || port != 0 {
				t.Fatalf("target(%q, %q, %q) = (%q, %d, %q)", host, hdrID, hdrPort, id, port, bad)
			}
			return
		}
		if !idRe.MatchString(id) || port < 1 || port > 65535 {
			t.Fatalf("target(%q, %q, %q) = (%q, %d)", host, hdrID, hdrPort, id, port)
		}
	})
}

// fuzzResolver knows one private sandbox, "abc123", run by the agent at
// agentURL.
type fuzzResolver struct{ agentURL string }

const (
	fuzzEnvdToken    = "envd-secret-token"
	fuzzTrafficToken = "traffic-secret-token"
	fuzzAPIKey       = "api-key-of-team-a"
)

func (z fuzzResolver) Resolve(_ context.Context, id string) (Route, error) {
	if id != "abc123" {
		return Route{}, ErrNotFound
	}
	return Route{SandboxID: id, AgentURL: z.agentURL, AgentToken: "agent-token", EnvdAccessToken: fuzzEnvdToken,
		TrafficToken: fuzzTrafficToken, Team: "team-a"}, nil
}

func (fuzzResolver) APIKeyTeam(_ context.Context, key string) (string, error) {
	if key == fuzzAPIKey {
		return "team-a", nil
	}
	return "", ErrNotFound
}

func (fuzzResolver) Touch(context.Context, string) {}

func (z fuzzResolver) Wake(ctx context.Context, id string) (Route, error) { return z.Resolve(ctx, id) }

func (fuzzResolver) RunningSandboxes(context.Context) ([]string, error) {
	return []string{"abc123"}, nil
}

func (fuzzResolver) EnvdToken(id string) string {
	if id == "abc123" {
		return fuzzEnvdToken
	}
	return ""
}

// FuzzServeHTTP feeds the proxy requests as a client writes them (any
// method, request target, Host and access headers) and checks what
// reaches the host agent: only a request the access rules let through,
// never one of envd's control-plane routes, never the client's API key;
// and the client never sees a 5xx other than E2B's 502 "not found".
func FuzzServeHTTP(f *testing.F) {
	type seed struct{ method, target, host, sbxID, sbxPort, access, traffic, apiKey string }
	for _, s := range []seed{
		{"GET", "/health", "49983-abc123.capsule.test", "", "", "", "", ""},
		{"GET", "/files?path=/x", "49983-abc123.capsule.test", "", "", fuzzEnvdToken, "", ""},
		{"POST", "/init", "49983-abc123.capsule.test", "", "", fuzzEnvdToken, "", ""},
		{"POST", "//./init/", "49983-abc123.capsule.test", "", "", fuzzEnvdToken, "", ""},
		{"POST", "/%69nit", "localhost", "abc123", "49983", fuzzEnvdToken, "", ""},
		{"GET", "/", "3000-abc123.capsule.test", "", "", "", fuzzTrafficToken, ""},
		{"GET", "/", "3000-abc123.capsule.test", "", "", "", "wrong", ""},
		{"GET", "/", "3000-abc123.capsule.test", "", "", "", "", fuzzAPIKey},
		{"GET", "/files?signature=v1_x&path=/etc/passwd", "localhost", "", "", "", "", ""},
		{"GET", "http://3000-abc123.capsule.test/x", "other", "", "", "", "", ""},
		{"GET", "/", "3000-zzz.capsule.test", "", "", "", "", ""},
		{"OPTIONS", "*", "localhost", "abc123", "3000", "", "", ""},
	} {
		f.Add(s.method, s.target, s.host, s.sbxID, s.sbxPort, s.access, s.traffic, s.apiKey)
	}
	// The agent records what reaches it; the fuzz function checks it.
	var mu sync.Mutex
	var got []*http.Request
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r)
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	}))
	f.Cleanup(upstream.Close)
	h, err := New(Config{Domain: "capsule.test", Resolver: fuzzResolver{upstream.URL},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, target, host, sbxID, sbxPort, access, traffic, apiKey string) {
		var raw strings.Builder
		raw.WriteString(method + " " + target + " HTTP/1.1\r\nHost: " + host + "\r\n")
		for k, v := range map[string]string{HeaderSandboxID: sbxID, HeaderSandboxPort: sbxPort, HeaderAccessToken: access,
			HeaderTrafficToken: traffic, HeaderAPIKey: apiKey} {
			if v != "" {
				raw.WriteString(k + ": " + v + "\r\n")
			}
		}
		raw.WriteString("\r\n")
		r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw.String())))
		if err != nil {
			return // net/http would have refused it before the proxy
		}
		r.RemoteAddr = "192.0.2.1:1234"
		mu.Lock()
		got = nil
		mu.Unlock()
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code >= 500 && (w.Code != http.StatusBadGateway) {
			t.Fatalf("%q: status %d: %s", raw.String(), w.Code, w.Body)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, up := range got {
			port, _ := strconv.Atoi(up.Header.Get(agentproxy.PortHeader))
			p := path.Clean("/" + up.URL.Path)
			switch {
			case up.Header.Get(agentproxy.SandboxHeader) != "abc123":
				t.Fatalf("%q reached the agent for sandbox %q", raw.String(), up.Header.Get(agentproxy.SandboxHeader))
			case up.Header.Get(HeaderAPIKey) != "":
				t.Fatalf("%q: the API key reached the agent", raw.String())
			case port == EnvdPort && internalRoutes[p]:
				t.Fatalf("%q: envd's control-plane route %s reached the agent", raw.String(), up.URL.Path)
			case port == EnvdPort:
				signedFiles := p == "/files" && up.URL.Query().Get("signature") != ""
				if up.Header.Get(HeaderAccessToken) != fuzzEnvdToken && !(up.Method == http.MethodGet && p == "/health") && !signedFiles {
					t.Fatalf("%q reached envd without its access token", raw.String())
				}
			case port < 1 || port > 65535:
				t.Fatalf("%q reached the agent for port %q", raw.String(), up.Header.Get(agentproxy.PortHeader))
			default:
				if up.Header.Get(HeaderTrafficToken) != fuzzTrafficToken && apiKey != fuzzAPIKey {
					t.Fatalf("%q reached port %d without the traffic token or the team's API key", raw.String(), port)
				}
			}
		}
	})
}
