// Package webui is the dashboard: the build of the SvelteKit app in
// web/app (scripts/webui.sh copies it into dist, gitignored), embedded in
// the capsule binary and served by Handler on the API listener, beside
// the API (whose routes keep precedence: internal/api hands it only the
// GET and HEAD requests no route matched, outside /v1).
//
// It is a single-page app: a path that is no file of the build is answered
// with the app's shell (index.html), whose router shows the page. Without a
// build (a plain `go build`, which must never need npm) every path answers
// 503 with a page saying how to build it.
//
// Every answer carries a strict Content-Security-Policy: scripts only from
// this origin, plus the inline boot script of SvelteKit's shell allowed by
// its SHA-256 hash, computed here from the embedded shell (so no build step
// has to keep a list of hashes in sync); styles may be inline (xterm.js
// writes them at run time); nothing may frame the app. The
// app's session is a cookie the API sets (see internal/api's session.go):
// nothing secret is in the pages.
package webui
