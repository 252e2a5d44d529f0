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
// against the database.
//
// IDs: users, teams and API keys travel as prefixed IDs (usr-…, team-…,
// key-…, see internal/wireid), converted only here. A sandbox's ID on the
// wire is its bare 32 lowercase hex digits, the [a-z0-9] form of E2B's
// sandbox IDs, so that the native API, the E2B facade and the host agent
// all name a sandbox the same way.
//
// Routes: every route is registered through Server.handle, which records
// it (Server.Routes), and documented in openapi.yaml (OpenAPI 3.1, served
// at /openapi.yaml and /openapi.json, browsable with the embedded Swagger
// UI at /docs). TestOpenAPICoversRoutes fails on a registered route that
// the document lacks and on a documented one that is not registered;
// TestOpenAPISchemasMatchJSONTypes compares the schemas with the Go types
// the handlers encode. To add a route: handle it in register, add its
// path and operation (operationId, parameters, responses, errors as
// #/components/responses/…) to openapi.yaml, and the schema of any new
// JSON type to the table of that test.
package api
