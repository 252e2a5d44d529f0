package webui

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/base64"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"regexp"
	"strings"
	"time"
)

// distFS holds the build (dist/.gitkeep keeps the directory, so that a
// clone compiles before a build exists).
//
//go:embed all:dist
var distFS embed.FS

// shell is the app's page for every path that is not a file.
const shell = "index.html"

// Handler serves an app from a file system (the embedded build, or
// another in tests).
type Handler struct {
	files fs.FS
	csp   string
	built bool
}

// New returns the handler of the embedded build.
func New() *Handler {
	sub, err := fs.Sub(distFS, "dist")
	if err != nil {
		panic(err) // a constant path
	}
	return NewFS(sub)
}

// NewFS returns the handler of the app in files (its index.html at the
// root).
func NewFS(files fs.FS) *Handler {
	h := &Handler{files: files}
	page, err := fs.ReadFile(files, shell)
	h.built = err == nil
	h.csp = policy(inlineScriptHashes(page))
	return h
}

// Built reports whether the handler has an app to serve (else it answers
// the how-to-build page).
func (h *Handler) Built() bool { return h.built }

// policy is the Content-Security-Policy with these script hashes allowed.
// Styles may be inline: xterm.js's renderer writes <style> elements and
// style attributes at run time (no nonce option), and a style cannot run
// code; scripts, what an injection would need, stay strict.
func policy(hashes []string) string {
	script := "'self'"
	for _, s := range hashes {
		script += " '" + s + "'"
	}
	return "default-src 'self'; script-src " + script + "; style-src 'self' 'unsafe-inline'; img-src 'self' data:; " +
		"font-src 'self'; connect-src 'self'; worker-src 'self'; object-src 'none'; base-uri 'none'; " +
		"form-action 'self'; frame-ancestors 'none'"
}

var inlineScript = regexp.MustCompile(`(?s)<script(\s[^>]*)?>(.*?)</script>`)

// inlineScriptHashes returns the CSP hashes ("sha256-…") of the inline
// scripts of page (those without a src attribute).
func inlineScriptHashes(page []byte) []string {
	var out []string
	for _, m := range inlineScript.FindAllSubmatch(page, -1) {
		if bytes.Contains(m[1], []byte("src=")) {
			continue
		}
		sum := sha256.Sum256(m[2])
		out = append(out, "sha256-"+base64.StdEncoding.EncodeToString(sum[:]))
	}
	return out
}

func (h *Handler) setHeaders(hd http.Header) {
	hd.Set("Content-Security-Policy", h.csp)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("X-Frame-Options", "DENY")
	hd.Set("Referrer-Policy", "same-origin")
	hd.Set("Cross-Origin-Opener-Policy", "same-origin")
	hd.Set("Cross-Origin-Resource-Policy", "same-origin")
	hd.Set("Permissions-Policy", "camera=(), microphone=(), geolocation=()")
}

// ServeHTTP serves GET and HEAD: a file of the build, else the shell.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.setHeaders(w.Header())
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !h.built {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte(notBuilt))
		return
	}
	name := strings.TrimPrefix(path.Clean("/"+r.URL.Path), "/")
	data, err := fs.ReadFile(h.files, name)
	if name == "" || err != nil {
		name = shell
		if data, err = fs.ReadFile(h.files, shell); err != nil {
			http.Error(w, "dashboard build is incomplete", http.StatusInternalServerError)
			return
		}
	}
	ct := mime.TypeByExtension(path.Ext(name))
	if ct == "" {
		ct = "application/octet-stream"
	}
	w.Header().Set("Content-Type", ct)
	if strings.HasPrefix(name, "_app/immutable/") {
		w.Header().Set("Cache-Control", "public, max-age=31536000, immutable")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(data))
}

// notBuilt is the page of a binary built without the dashboard.
const notBuilt = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Capsule: dashboard not built</title></head>
<body><main><h1>The dashboard is not built into this binary</h1>
<p>This <code>capsule</code> was compiled without the dashboard's assets (a plain <code>go build</code>).
Build them and the binary with <code>make build</code> (it runs <code>scripts/webui.sh</code>, which needs
Node.js and npm: <code>scripts/deps.sh</code> installs them).</p>
<p>The API is served as usual: see <a href="/docs">/docs</a>.</p></main></body></html>
`
