package api

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/capsulehq/capsule/internal/testenv"
)

func getDocs(t *testing.T, e *apiEnv, path string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(e.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

// TestDocsSwaggerUI serves the page and the embedded assets with a CSP
// that allows only this origin. The assets come from scripts/apidocs.sh
// (make build): without them the test is skipped, and fails under
// CAPSULE_TEST_STRICT=1.
func TestDocsSwaggerUI(t *testing.T) {
	if !DocsAssetsPresent() {
		testenv.Skip(t, "the Swagger UI assets are not embedded: run scripts/apidocs.sh (make build) before go test")
	}
	e := newAPI(t, "", "")
	for _, tc := range []struct {
		path, ctype, contains string
	}{
		{"/docs", "text/html; charset=utf-8", `src="/docs/swagger-ui-bundle.js"`},
		{"/docs/", "text/html; charset=utf-8", `src="/docs/capsule-docs.js"`},
		{"/docs/index.html", "text/html; charset=utf-8", `href="/docs/swagger-ui.css"`},
		{"/docs/capsule-docs.js", "text/javascript; charset=utf-8", `url: "/openapi.yaml"`},
		{"/docs/swagger-ui-bundle.js", "text/javascript; charset=utf-8", "SwaggerUIBundle"},
		{"/docs/swagger-ui-standalone-preset.js", "text/javascript; charset=utf-8", "SwaggerUIStandalonePreset"},
		{"/docs/swagger-ui.css", "text/css; charset=utf-8", ".swagger-ui"},
		{"/docs/favicon-32x32.png", "image/png", "PNG"},
	} {
		resp, body := getDocs(t, e, tc.path)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != tc.ctype || !strings.Contains(body, tc.contains) {
			t.Errorf("%s: %d %q, %d bytes, want %q in it", tc.path, resp.StatusCode, resp.Header.Get("Content-Type"), len(body), tc.contains)
		}
		csp := resp.Header.Get("Content-Security-Policy")
		for _, want := range []string{"default-src 'self'", "script-src 'self';", "frame-ancestors 'none'"} {
			if !strings.Contains(csp, want) {
				t.Errorf("%s: CSP %q lacks %q", tc.path, csp, want)
			}
		}
		if strings.Contains(csp, "unsafe-") || strings.Contains(csp, "http") {
			t.Errorf("%s: CSP %q allows more than this origin", tc.path, csp)
		}
		if resp.Header.Get("X-Content-Type-Options") != "nosniff" {
			t.Errorf("%s: no nosniff", tc.path)
		}
	}
	// The page loads nothing from elsewhere.
	_, page := getDocs(t, e, "/docs")
	for _, bad := range []string{"http:", "https:", "//cdn", "<script>"} {
		if strings.Contains(page, bad) {
			t.Errorf("the page contains %q", bad)
		}
	}
	for _, path := range []string{"/docs/.gitkeep", "/docs/swagger-initializer.js", "/docs/LICENSE", "/docs/dist/swagger-ui.css"} {
		if resp, _ := getDocs(t, e, path); resp.StatusCode != 404 {
			t.Errorf("%s: %d, want 404", path, resp.StatusCode)
		}
	}
}

// TestDocsWithoutAssets: a binary built without the assets answers /docs
// with 503 and says why.
func TestDocsWithoutAssets(t *testing.T) {
	e := newAPI(t, "", "")
	without := fstest.MapFS{}
	for _, p := range []string{"apidocs/index.html", "apidocs/capsule-docs.js"} {
		b, err := fs.ReadFile(docsFS, p)
		if err != nil {
			t.Fatal(err)
		}
		without[p] = &fstest.MapFile{Data: b}
	}
	saved := docsRoot
	docsRoot = without
	t.Cleanup(func() { docsRoot = saved })
	for _, path := range []string{"/docs", "/docs/", "/docs/swagger-ui-bundle.js"} {
		resp, body := getDocs(t, e, path)
		var eb errorBody
		if err := json.Unmarshal([]byte(body), &eb); err != nil || resp.StatusCode != 503 || eb.Code != 503 || !strings.Contains(eb.Message, "make build") {
			t.Errorf("%s: %d %s", path, resp.StatusCode, body)
		}
	}
	if resp, _ := getDocs(t, e, "/openapi.yaml"); resp.StatusCode != 200 {
		t.Errorf("/openapi.yaml without the UI assets: %d", resp.StatusCode)
	}
}
