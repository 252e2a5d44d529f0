// Package agentapi holds the parts of the hostagent.v1 contract that the
// protobuf definition (proto/hostagent) cannot carry: the error metadata by
// which the host agent refines a Connect code, and the header that carries
// the request ID. Both sides import it, the
// agent (internal/agent) to set it and the control plane's client
// (internal/agentclient) to read it, so that neither imports the other. It
// imports nothing of Capsule's.
package agentapi

// ErrorClassHeader is the error metadata key by which the agent refines a
// Connect code: ClassNoSpace on ResourceExhausted means a full data disk
// (agentclient.ErrNoSpace), not exhausted CPU or memory.
const (
	ErrorClassHeader = "Capsule-Error-Class"
	ClassNoSpace     = "no-space"
)

// RequestIDHeader carries the control plane's request ID (logctx) to the
// host agent, on every RPC and on proxied sandbox traffic, so that the
// agent's log lines of the call carry the same request_id. The agent takes
// only a well-formed value and strips the header before traffic reaches a
// guest.
const RequestIDHeader = "Capsule-Request-Id"
