package webui

import (
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/fstest"
)

const bootScript = `
	{ __sveltekit_x = { base: "" }; import("/_app/immutable/entry/start.js"); }
`

var app = fstest.MapFS{
	"index.html":                    {Data: []byte(`<!doctype html><html><head><script type="module" src="/_app/x.js"></script></head><body><script>` + bootScript + `</script></body></html>`)},
	"_app/immutable/entry/start.js": {Data: []byte("export {}")},
	"favicon.svg":                   {Data: []byte("<svg/>")},
	"_app/version.json":             {Data: []byte(`{"version":"1"}`)},
}

func TestHandler(t *testing.T) {
	sum := sha256.Sum256([]byte(bootScript))
	hash := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	h := NewFS(app)
	for _, tc := range []struct {
		name, method, path string
		code               int
		ctype, body, cache string
	}{
		{"root is the shell", "GET", "/", 200, "text/html", "__sveltekit_x", "no-cache"},
		{"an app route falls back to the shell", "GET", "/capsules/abc", 200, "text/html", "__sveltekit_x", "no-cache"},
		{"a file", "GET", "/favicon.svg", 200, "image/svg+xml", "<svg/>", "no-cache"},
		{"an immutable asset", "GET", "/_app/immutable/entry/start.js", 200, "javascript", "export", "immutable"},
		{"dot-dot stays inside", "GET", "/../../etc/passwd", 200, "text/html", "__sveltekit_x", "no-cache"},
		{"HEAD", "HEAD", "/favicon.svg", 200, "image/svg+xml", "", "no-cache"},
		{"unsafe method", "POST", "/", 405, "text/plain", "method not allowed", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(tc.method, tc.path, nil))
			csp := w.Header().Get("Content-Security-Policy")
			switch {
			case w.Code != tc.code:
				t.Fatalf("%s %s: %d, want %d", tc.method, tc.path, w.Code, tc.code)
			case !strings.Contains(w.Header().Get("Content-Type"), tc.ctype):
				t.Fatalf("Content-Type %q, want %q", w.Header().Get("Content-Type"), tc.ctype)
			case !strings.Contains(w.Body.String(), tc.body):
				t.Fatalf("body %q lacks %q", w.Body.String(), tc.body)
			case !strings.Contains(w.Header().Get("Cache-Control"), tc.cache):
				t.Fatalf("Cache-Control %q, want %q", w.Header().Get("Cache-Control"), tc.cache)
			case !strings.Contains(csp, "script-src 'self' "+hash+";"):
				t.Fatalf("CSP %q does not allow exactly the boot script (%s)", csp, hash)
			case strings.Contains(scriptSrc(csp), "unsafe") || !strings.Contains(csp, "default-src 'self';"):
				t.Fatalf("CSP %q allows unsafe scripts", csp)
			case !strings.Contains(csp, "frame-ancestors 'none'") || w.Header().Get("X-Content-Type-Options") != "nosniff":
				t.Fatalf("missing framing or sniffing protection: %v", w.Header())
			}
		})
	}
}

// TestNotBuilt: without a build every path says how to build it.
func TestNotBuilt(t *testing.T) {
	h := NewFS(fstest.MapFS{".gitkeep": {}})
	if h.Built() {
		t.Fatal("an empty build reports itself built")
	}
	for _, p := range []string{"/", "/capsules"} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest("GET", p, nil))
		if w.Code != http.StatusServiceUnavailable || !strings.Contains(w.Body.String(), "make build") {
			t.Fatalf("GET %s without a build: %d %q", p, w.Code, w.Body.String())
		}
	}
}

// scriptSrc is the script-src directive of csp.
func scriptSrc(csp string) string {
	for _, d := range strings.Split(csp, ";") {
		if d = strings.TrimSpace(d); strings.HasPrefix(d, "script-src ") {
			return d
		}
	}
	return ""
}
