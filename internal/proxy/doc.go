// Package proxy is the control plane's sandbox traffic proxy: it routes
// a request to a port of a sandbox's guest the way E2B's proxy does
// (docs/e2b-compat.md §3), checks who may reach that port, and
// forwards it through the host agent that runs the sandbox (the agent's
// proxy, internal/agent/proxy.go, relays it to the guest).
//
// The proxy is served on its own listener (capsule serve -sandbox-listen),
// never on the origin of the API or a dashboard: no byte a sandbox
// produces shares an origin with a session token. The API's listener
// answers requests that Matches with 421.
//
// Routing (Target): requests to a localhost, IP-literal or sandbox.<x>
// host that carry E2B's E2b-Sandbox-Id/E2b-Sandbox-Port headers go to that
// sandbox and port; otherwise the Host must be {port}-{sandboxID}.{domain}.
// A signed /files URL that names no sandbox (the SDKs' downloadUrl and
// uploadUrl on E2B_SANDBOX_URL) goes to the running sandbox whose envd
// token made its signature, found in the signer index (signers.go): no
// HMAC and no database query per request, tokens derived once per
// sandbox, reloads at a bounded rate, one SHA-256 block per candidate.
//
// Access (Handler.authorize):
//   - envd's port (49983): the sandbox's envd access token in
//     X-Access-Token (constant-time compare), or, without the header, only
//     what envd itself verifies without it: GET /health and GET/POST
//     /files with a valid signature (a signed file URL; checked here too,
//     with envd's messages). envd's internal routes (/init …) are never
//     reachable.
//   - any other port: open when the sandbox was created with public
//     traffic; otherwise the sandbox's traffic token in
//     e2b-traffic-access-token, or an API key of the owning team in
//     X-API-Key (removed before forwarding: the guest never sees it).
//
// Auto-resume: a paused sandbox created with auto-resume is resolved
// "asleep" from its record, the request is authorized against that record
// first, and only then is the sandbox resumed (Resolver.Wake): an
// unauthenticated request never resumes a private sandbox, and envd's open
// GET /health never resumes any (it answers 502, not running). Proxied
// requests count as activity for the TTL (except envd's GET /health, a
// liveness probe the SDKs poll).
//
// Answers of envd's /files are downloads, inert in a browser: the proxy
// sets Content-Disposition: attachment (with the file's name),
// X-Content-Type-Options: nosniff and Content-Security-Policy: sandbox;
// default-src 'none' (signed file URLs of every sandbox share the sandbox
// listener's origin).
//
// Request IDs: the proxy takes the client's well-formed X-Request-Id or
// makes one (package logctx), logs with it, sends it to the agent in
// agentapi.RequestIDHeader (replacing whatever the client put there) and
// echoes it in the response's X-Request-Id, unless the sandbox's server
// answers with its own; the client's X-Request-Id reaches the guest as it
// was sent.
package proxy
