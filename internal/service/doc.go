// Package service holds the control plane's business rules, shared by the
// REST API (internal/api) and, later, the E2B facade and the dashboard.
// Handlers parse and format; everything that decides lives here.
//
// Every method takes the request's context first and, where it touches a
// team's resources, the caller's Principal: a resource of another team is
// ErrNotFound, never ErrForbidden, so its existence does not leak.
//
// Errors are classified with the sentinel errors of errors.go (test with
// errors.Is); anything else is an internal error that the API logs and
// hides.
//
// Sandboxes are persisted before and after every agent call: a sandbox is
// inserted as starting (after the team's quotas are checked under the
// team's row lock) before the agent is asked to create it, and becomes
// running, or error, after. In single-node mode there is one host agent,
// named "local", reached through an agentclient.Pool like a remote one.
package service
