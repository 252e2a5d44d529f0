// Package agentapi holds the parts of the hostagent.v1 contract that the
// protobuf definition (proto/hostagent) cannot carry: the error metadata by
// which the host agent refines a Connect code. Both sides import it, the
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
