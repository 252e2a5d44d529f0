// Package agentclient is the control plane's side of hostagent.v1: Connect
// clients of host agents, pooled by host ID.
//
// A Pool creates a host's client when it is first asked for it, from the
// endpoint (URL and bearer token, or for a registered host no token but
// mutual TLS with the control plane's client certificate) that its
// Resolver finds for the host (the hosts table, in the control plane) or
// that Set registered, and keeps it
// until Evict (the host was deleted, moved or got a new token). Clients
// speak HTTP/2 in cleartext (h2c) to http:// agents, HTTP/2 over TLS to
// https:// ones, so that every kind of RPC works, streams included.
//
// Every error a client returns for an RPC is an *Error that errors.Is one
// of this package's classes (ErrNotFound, ErrConflict, …): the service
// layer classifies agent failures without knowing Connect codes.
// errors.As still finds the underlying *connect.Error.
//
// Every call sends the context's request ID (package logctx) in
// agentapi.RequestIDHeader, so that the agent logs the call under the
// request_id of the API request that made it.
package agentclient
