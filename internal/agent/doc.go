// Package agent is the host agent's RPC server: it serves the
// hostagent.v1 HostAgent service (proto/hostagent/v1) on top of a
// sandbox.Manager, so that the control plane drives a host's sandboxes,
// templates, processes and files through one authenticated contract, on a
// single node as on many.
//
// New returns an http.Handler. The control plane speaks HTTP/2 to it in
// cleartext (h2c, prior knowledge) on the host network, so that many
// streams share a connection: serve the handler with NewServer, or with an
// http.Server whose Protocols are Protocols(). HTTP/1.1 still serves every
// RPC (there are no bidirectional streams), for curl and scripts.
//
// Every RPC needs "Authorization: Bearer <token>". A Verifier decides
// whether a token may call; StaticToken, a shared secret compared in
// constant time, is the only implementation today. A verifier of the JWTs
// that host registration will issue replaces it later without touching the
// handlers (Config.Verifier).
//
// A registered agent (`capsule agent --control-plane …`, package
// agentreg) serves HTTPS instead, and there the caller's TLS client
// certificate is the authentication (Config.ClientCertAuth): the TLS layer
// requires a certificate that chains to the internal CA, and every request,
// RPC or traffic, is refused unless that verified certificate is the
// control plane's (client-auth usage, common name
// hostapi.ControlPlaneCommonName; hostapi.VerifyControlPlane). The agent
// embedded in `capsule serve` keeps the static token over loopback h2c.
//
// Besides the RPCs, the agent proxies sandbox traffic (proxy.go): a
// request carrying agentproxy.SandboxHeader goes, path, body and headers
// unchanged, to agentproxy.PortHeader of that sandbox's guest; the control
// plane's proxy (internal/proxy) authenticates with agentproxy.TokenHeader, so
// the client's own Authorization header reaches the guest untouched. The
// headers and the error body are package agentproxy, the contract both
// proxies import (the control plane never imports this package).
// Connections to guests are pooled per machine.
//
// Errors are mapped to Connect codes in one place (errors.go):
// sandbox.ErrNotFound → NotFound, ErrConflict → FailedPrecondition (or
// AlreadyExists when creating), ErrInvalid → InvalidArgument, ErrCapacity →
// ResourceExhausted; envd's own answers keep their meaning; anything else is
// Internal with only an error ID in the message, and the agent's log holds
// the details under that ID.
//
// Request IDs: every request (RPC or traffic) runs with the control
// plane's request ID in its context (agentapi.RequestIDHeader when
// well-formed, else a fresh one; CarryRequestID), so that the agent's log
// lines of a call carry the request_id of the API request that caused it
// (package logctx). The header never reaches a guest.
//
// Metrics (metrics.go, revision 4): GetSandboxMetrics reads a tier of a
// sandbox's history from the manager's sampler; PauseSandbox's answer
// carries every tier and DestroySandbox's the 24 h tier (read from the
// series taken before the destroy), so that the control plane stores them
// with no second call in between. Collector (telemetry.go) is the agent's
// Prometheus collector: capacity, use, sandboxes by state and the
// sampler's cost, read at scrape time.
//
// Console (console.go, revision 8): GetSandboxConsole answers the tail of a
// sandbox's serial console log (sandbox.Manager.ConsoleTail: the rotated
// file's end, then the current file, from a whole line on when cut), in
// any state; DestroySandbox's answer carries the tail read just before
// the destroy deletes the log, which the control plane keeps as the
// sandbox's logs.
package agent
