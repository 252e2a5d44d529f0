package envd

import (
	"net/http"
	"strings"
)

// Response headers browsers may read: the Connect and gRPC(-Web) ones, plus
// the few REST headers the SDK looks at.
var exposedHeaders = strings.Join([]string{
	"Connect-Protocol-Version", "Connect-Content-Encoding", "Connect-Accept-Encoding",
	"Grpc-Status", "Grpc-Message", "Grpc-Status-Details-Bin", "Grpc-Encoding", "Grpc-Accept-Encoding",
	"Content-Disposition", "Content-Encoding", "Content-Length", "X-Envd-Version",
}, ", ")

// withCORS allows any origin, the usual methods and any request header, as
// E2B's envd does, so that the browser build of the SDK works.
func withCORS(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" {
			next.ServeHTTP(w, r)
			return
		}
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
		h.Set("Access-Control-Expose-Headers", exposedHeaders)
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Set("Access-Control-Allow-Methods", "HEAD, GET, POST, PUT, PATCH, DELETE")
			if req := r.Header.Get("Access-Control-Request-Headers"); req != "" {
				h.Set("Access-Control-Allow-Headers", req)
			}
			h.Set("Access-Control-Max-Age", "7200")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		next.ServeHTTP(w, r)
	})
}
