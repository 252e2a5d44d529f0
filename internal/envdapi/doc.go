// Package envdapi is envd's HTTP contract, the part both sides of it need:
// the protocol version envd advertises, the port it listens on, the body of
// POST /init, the body of GET /metrics and the signature of /files URLs.
//
// envd (the guest agent, package envd) implements it; the host's client
// (envdclient), the sandbox manager, the control plane's traffic proxy and
// the E2B facade (e2bapi) use it. It exists so that none of them imports the
// envd server itself: envd links PTYs, the process manager and the guest's
// file system code, none of which belongs in the control plane. It imports
// nothing of Capsule's, and the dependency rules of internal/deptest keep it
// that way.
//
// The wire shapes are E2B's envd 0.6.x ones: JSON field names and the
// signature format must not change.
package envdapi
