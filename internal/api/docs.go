package api

import (
	"bytes"
	"embed"
	"encoding/json"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"gopkg.in/yaml.v3"
)

// openAPIYAML is the API's OpenAPI 3.1 document: every route registered
// through Server.handle is documented there (TestOpenAPICoversRoutes).
//
//go:embed openapi.yaml
var openAPIYAML []byte

// docsFS holds the Swagger UI page: our index.html and capsule-docs.js,
// committed, and in apidocs/dist the assets of npm swagger-ui-dist that
// scripts/apidocs.sh copies at build time (gitignored; a .gitkeep keeps
// the directory, so a clone builds before they exist).
//
//go:embed all:apidocs
var docsFS embed.FS

// docsRoot is what /docs serves from (a test swaps it).
var docsRoot fs.FS = docsFS

// docsFiles are the files /docs serves, by name, from docsFS.
var docsFiles = map[string]string{
	"index.html":                      "apidocs/index.html",
	"capsule-docs.js":                 "apidocs/capsule-docs.js",
	"swagger-ui.css":                  "apidocs/dist/swagger-ui.css",
	"swagger-ui-bundle.js":            "apidocs/dist/swagger-ui-bundle.js",
	"swagger-ui-standalone-preset.js": "apidocs/dist/swagger-ui-standalone-preset.js",
	"favicon-32x32.png":               "apidocs/dist/favicon-32x32.png",
	"favicon-16x16.png":               "apidocs/dist/favicon-16x16.png",
}

// DocsAssetsPresent reports whether this binary embeds the Swagger UI
// assets (without them /docs answers 503).
func DocsAssetsPresent() bool {
	for _, p := range docsFiles {
		if _, err := fs.Stat(docsRoot, p); err != nil {
			return false
		}
	}
	return true
}

// docsCSP allows only this origin (images also as data: URIs, which
// Swagger UI's stylesheet uses for its icons).
const docsCSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

func setDocsHeaders(h http.Header) {
	h.Set("Content-Security-Policy", docsCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	h.Set("Cross-Origin-Resource-Policy", "same-origin")
}

var docsTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".png":  "image/png",
}

// serveDocs serves GET /docs, /docs/ (the page) and /docs/{file}.
func (s *Server) serveDocs(w http.ResponseWriter, r *http.Request) {
	setDocsHeaders(w.Header())
	name := r.PathValue("file")
	if name == "" {
		name = "index.html"
	}
	p, ok := docsFiles[name]
	if !ok {
		writeProblem(w, http.StatusNotFound, "no such file")
		return
	}
	if !DocsAssetsPresent() {
		writeProblem(w, http.StatusServiceUnavailable,
			"the API documentation is unavailable: this binary was built without the Swagger UI assets (build it with `make build`, which runs scripts/apidocs.sh); the document itself is at /openapi.yaml")
		return
	}
	b, err := fs.ReadFile(docsRoot, p)
	if err != nil {
		s.writeError(w, r, fmt.Errorf("docs: %w", err))
		return
	}
	w.Header().Set("Content-Type", docsTypes[path.Ext(p)])
	if strings.HasPrefix(p, "apidocs/dist/") {
		// Pinned by package-lock.json: the same name is the same bytes
		// within one binary.
		w.Header().Set("Cache-Control", "public, max-age=3600")
	} else {
		w.Header().Set("Cache-Control", "no-cache")
	}
	http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(b))
}

func serveOpenAPIYAML(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/yaml")
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "openapi.yaml", time.Time{}, bytes.NewReader(openAPIYAML))
}

// openAPIJSON converts the document to JSON once.
var openAPIJSON = sync.OnceValues(func() ([]byte, error) {
	var doc any
	if err := yaml.Unmarshal(openAPIYAML, &doc); err != nil {
		return nil, fmt.Errorf("openapi.yaml: %w", err)
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("openapi.yaml as JSON: %w", err)
	}
	return b, nil
})

func (s *Server) serveOpenAPIJSON(w http.ResponseWriter, r *http.Request) {
	b, err := openAPIJSON()
	if err != nil {
		s.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "openapi.json", time.Time{}, bytes.NewReader(b))
}
