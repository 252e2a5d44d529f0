package proxy

import (
	"net/http"
	"testing"
)

// TestHardenFileResponse: whatever envd answered, a /files answer leaves
// the proxy as an attachment that a browser neither sniffs nor runs.
func TestHardenFileResponse(t *testing.T) {
	for _, tc := range []struct {
		name, envdDisposition, path, want string
	}{
		{"envd's inline name", "inline; filename=page.html", "/home/user/page.html", "attachment; filename=page.html"},
		{"envd's quoted name", `inline; filename="my file.html"`, "/x", `attachment; filename="my file.html"`},
		{"no header: the path's name", "", "/home/user/evil.svg", "attachment; filename=evil.svg"},
		{"non-ASCII name", "", "/home/user/é.html", "attachment; filename*=utf-8''%C3%A9.html"},
		{"no name at all", "", "", "attachment"},
		{"a directory-like path", "", "/", "attachment"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{"Content-Type": {"text/html"}}
			if tc.envdDisposition != "" {
				h.Set("Content-Disposition", tc.envdDisposition)
			}
			hardenFileResponse(h, tc.path)
			if got := h.Get("Content-Disposition"); got != tc.want {
				t.Errorf("Content-Disposition %q, want %q", got, tc.want)
			}
			if h.Get("X-Content-Type-Options") != "nosniff" || h.Get("Content-Security-Policy") != "sandbox; default-src 'none'" {
				t.Errorf("headers %v", h)
			}
		})
	}
}
