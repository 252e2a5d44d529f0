package main

import (
	"net/http"

	"github.com/capsulehq/capsule/internal/e2bapi"
	"github.com/capsulehq/capsule/internal/proxy"
)

// rootHandler sends sandbox traffic to the proxy, E2B's control-plane
// paths to the E2B facade, and the rest to the native API.
func rootHandler(px *proxy.Handler, e2b *e2bapi.Handler, api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case px.Matches(r):
			px.ServeHTTP(w, r)
		case e2b.Matches(r):
			e2b.ServeHTTP(w, r)
		default:
			api.ServeHTTP(w, r)
		}
	})
}
