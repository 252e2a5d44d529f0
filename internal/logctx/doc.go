// Package logctx is what makes Capsule's logs followable: a request ID
// (and the team and sandbox a request is about) carried in the context, and
// an slog.Handler that attaches them to every record logged with that
// context.
//
// The edges of the tree take the ID: the API server, the E2B facade and
// the traffic proxy accept a well-formed X-Request-Id from the client
// (1–128 characters of [A-Za-z0-9._:-]) or generate one, put it in the
// context (FromHTTP) and echo it in the response's X-Request-Id. The
// control plane's agent client sends the context's ID to the host agent on
// every call in agentapi.RequestIDHeader, and the agent reads it back into
// the context of that call, so one grep for request_id=… finds every line
// that one request caused, on both sides of the RPC.
//
// The package is shaped around the context, not around loggers passed
// down: code keeps logging with its own *slog.Logger and the *Context
// methods (InfoContext, WarnContext …); the binaries wrap their handler once
// (NewHandler) and every such line carries the request's fields, with no
// logger threaded through the call chain.
//
// The keys are the tree's (STYLE.md): request_id, team, sandbox. A record
// that already has one of these keys keeps its own value: the handler adds
// only what is missing.
package logctx
