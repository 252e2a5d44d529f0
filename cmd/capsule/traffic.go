package main

import (
	"net/http"

	"github.com/capsulehq/capsule/internal/proxy"
)

// rootHandler sends sandbox traffic to the proxy and the rest to the API.
func rootHandler(px *proxy.Handler, api http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if px.Matches(r) {
			px.ServeHTTP(w, r)
			return
		}
		api.ServeHTTP(w, r)
	})
}
