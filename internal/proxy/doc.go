// Package proxy is the control plane's sandbox traffic proxy: it routes
// a request to a port of a sandbox's guest the way E2B's proxy does
// (../shared/spec/e2b-compat.md §3), checks who may reach that port, and
// forwards it through the host agent that runs the sandbox (the agent's
// proxy, internal/agent/proxy.go, relays it to the guest).
//
// Routing (Target): requests to a localhost, IP-literal or sandbox.<x>
// host that carry E2B's E2b-Sandbox-Id/E2b-Sandbox-Port headers go to that
// sandbox and port; otherwise the Host must be {port}-{sandboxID}.{domain}.
//
// Access (Handler.authorize):
//   - envd's port (49983): the sandbox's envd access token in
//     X-Access-Token (constant-time compare), or, without the header, only
//     what envd itself verifies without it: GET /health and GET/POST
//     /files with a signature (a signed file URL). envd's internal routes
//     (/init …) are never reachable.
//   - any other port: open when the sandbox was created with public
//     traffic; otherwise the sandbox's traffic token in
//     e2b-traffic-access-token, or an API key of the owning team in
//     X-API-Key (removed before forwarding: the guest never sees it).
//
// A paused sandbox created with auto-resume is resumed by the Resolver on
// first traffic; proxied requests count as activity for the TTL (except
// envd's GET /health, a liveness probe the SDKs poll).
package proxy
