// Package agentproxy is the traffic contract between the control plane's
// proxy (internal/proxy) and the host agent's (internal/agent): the headers
// that carry a sandbox request to the agent that runs the sandbox, the
// header that marks the agent's own errors, and E2B's proxy error body,
// which both sides answer clients with.
//
// It exists so that the control plane does not import the agent's server
// (which links the sandbox manager, the VMM driver and nftables); it imports
// nothing of Capsule's.
package agentproxy

import (
	"encoding/json"
	"net/http"
)

// The traffic headers. A request to the agent that carries SandboxHeader is
// sandbox traffic, whatever its path: the agent forwards it, path, query,
// body and the other headers unchanged, to PortHeader of that sandbox's
// guest. The caller (the control plane's proxy, which has checked the
// client's access) authenticates with TokenHeader ("Bearer <agent token>"),
// not Authorization, which belongs to the client's request. The agent
// removes the three before it forwards the request.
const (
	SandboxHeader = "Capsule-Proxy-Sandbox"
	PortHeader    = "Capsule-Proxy-Port"
	TokenHeader   = "Capsule-Proxy-Authorization"
)

// ErrorHeader marks the agent's own proxy errors (the control plane strips
// it): ErrorNotFound when the agent does not run the sandbox.
const (
	ErrorHeader   = "Capsule-Proxy-Error"
	ErrorNotFound = "sandbox-not-found"
)

// Messages of the proxy errors the E2B SDKs recognise.
const (
	MsgSandboxNotFound = "The sandbox was not found"
	MsgPortClosed      = "The sandbox is running but port is not open"
)

// errorBody is E2B's proxy error body: the SDKs read its fields.
type errorBody struct {
	SandboxID string `json:"sandboxId,omitempty"`
	Message   string `json:"message"`
	Port      int    `json:"port,omitempty"`
	Code      int    `json:"code"`
}

// WriteError writes an E2B-shaped proxy error.
func WriteError(w http.ResponseWriter, status int, sandboxID string, port int, msg string) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(errorBody{SandboxID: sandboxID, Message: msg, Port: port, Code: status})
}
