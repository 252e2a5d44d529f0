// Package envd is the in-sandbox agent. It speaks E2B's envd protocol exactly
// (docs/e2b-compat.md §5–§7) so that the unmodified E2B SDKs can drive a
// Capsule sandbox:
//
//   - process.Process (process.go, procman.go): start, attach, signal and feed
//     processes, with or without a PTY;
//   - filesystem.Filesystem (filesystem.go, watch.go): stat, list, move,
//     remove, make directories and watch them;
//   - HTTP routes (files.go, routes.go): /files upload and download, /health,
//     /init, /envs, /metrics.
//
// Server holds the mutable agent state that POST /init sets (access token,
// global environment, default user and workdir). Every request passes through
// the access-token check in auth.go; users and paths are resolved as E2B does
// (users.go). The first /init may set a token; after that /init itself
// requires it (X-Access-Token, compared in constant time), so the token
// cannot be replaced, and the sandbox's environment, user and clock cannot
// be changed, by anyone who merely reaches the guest's port.
//
// The server runs as an ordinary process on a host (tests, benchmarks) or as
// PID 1 of a guest (see package guestinit); Config.Guest enables the side
// effects that only make sense inside a guest (setting the clock, installing
// CA certificates).
package envd
