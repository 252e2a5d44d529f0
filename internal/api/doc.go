// Package api is Capsule's native REST API under /v1: HTTP handlers that
// parse requests, call internal/service and format its answers. Nothing
// here decides anything.
//
// Errors have one JSON shape, {"code":<HTTP status>,"message":"…"}, mapped
// once (writeError) from the service's sentinel errors. An unclassified
// (internal) error is logged with a random error ID and answered 500 with a
// generic message naming that ID: internal details never leak.
//
// Authentication is an API key in X-API-Key or a session JWT in
// "Authorization: Bearer …"; both resolve to a service.Principal checked
// against the database. The routes that act for a user rather than in a
// team (/v1/teams…, /v1/me, /v1/users/search, /v1/auth/switch-team, OAuth
// linking) take a session only: an API key, which belongs to one team, is
// refused with 403. A team route acts on the team of its path, with the
// caller's role there read from the database (not a member: 404). OAuth
// login and its outcomes (token in the URL fragment, #error=… or a JSON
// 400 for a state that does not verify) are described in oauth.go.
//
// IDs: users, teams and API keys travel as prefixed IDs (usr-…, team-…,
// key-…, see internal/wireid), converted only here. A sandbox's ID on the
// wire is its bare 32 lowercase hex digits, the [a-z0-9] form of E2B's
// sandbox IDs, so that the native API, the E2B facade and the host agent
// all name a sandbox the same way.
package api
