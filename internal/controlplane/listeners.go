package controlplane

import (
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"strconv"

	"github.com/capsulehq/capsule/internal/e2bapi"
	"github.com/capsulehq/capsule/internal/logctx"
	"github.com/capsulehq/capsule/internal/proxy"
)

// capsule serve has two listeners, so that no byte a sandbox produces is
// ever served on the origin of the API (and of a dashboard served with
// it): a session token in that origin's URL fragment or storage stays out
// of reach of pages a sandbox serves.
//
//   - the API listener (apiHandler): the native /v1 API, E2B's
//     control-plane facade, the docs. Requests that are sandbox traffic
//     (E2B's routing headers, a {port}-{id}.{domain} host, a signed /files
//     URL) are refused with 421 Misdirected Request, naming the sandbox
//     listener: nothing is forwarded to a sandbox from here.
//   - the sandbox listener (sandboxHandler): the traffic proxy alone.

// apiHandler serves the API listener: E2B's control-plane paths to the
// E2B facade, the rest to the native API; sandbox traffic is refused. Every
// response, the refusals too, carries the request's X-Request-Id (logctx).
func apiHandler(px *proxy.Handler, e2b *e2bapi.Handler, api http.Handler, sandboxDomain string) http.Handler {
	return logctx.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case px.Matches(r):
			w.Header().Set("Content-Type", "application/json; charset=utf-8")
			w.Header().Set("X-Content-Type-Options", "nosniff")
			w.WriteHeader(http.StatusMisdirectedRequest)
			_ = json.NewEncoder(w).Encode(map[string]any{"code": http.StatusMisdirectedRequest,
				"message": "sandbox traffic is not served on the API's address: send it to the sandbox listener " +
					"(capsule serve -sandbox-listen; {port}-{sandbox-id}." + sandboxDomain + ", or E2B_SANDBOX_URL set to its address)"})
		case e2b.Matches(r):
			e2b.ServeHTTP(w, r)
		default:
			api.ServeHTTP(w, r)
		}
	}))
}

// sandboxHandler serves the sandbox listener: the proxy and nothing else.
func sandboxHandler(px *proxy.Handler) http.Handler { return px }

// bareDomain is the sandbox domain without a port.
func bareDomain(domain string) string {
	if h, _, err := net.SplitHostPort(domain); err == nil {
		return h
	}
	return domain
}

// advertisedDomain is the sandbox domain the E2B facade answers to the
// SDKs, whose getHost(port) is "{port}-{id}.DOMAIN": the -domain setting as
// is when it names a port, else with the sandbox listener's port unless
// that is 80 or 443 (then a URL needs none).
func advertisedDomain(domain string, sandboxAddr net.Addr) string {
	if domain == "" || bareDomain(domain) != domain {
		return domain
	}
	ap, err := netip.ParseAddrPort(sandboxAddr.String())
	if err != nil || ap.Port() == 80 || ap.Port() == 443 {
		return domain
	}
	return net.JoinHostPort(domain, strconv.Itoa(int(ap.Port())))
}
