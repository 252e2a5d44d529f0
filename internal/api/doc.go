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
// against the database. The dashboard (internal/webui, served on this
// origin) holds its session JWT in the HttpOnly, SameSite=Strict cookie
// capsule_session instead (POST /v1/auth/session signs in, DELETE signs
// out), used only when neither header is sent and subject to the CSRF rules
// of session.go (same origin; X-CSRF-Token on unsafe methods). Signing out
// revokes the token on the server (a denylist by its jti, which every
// session authentication reads), for a Bearer token too. The routes that act for a user rather than in a
// team (/v1/teams…, /v1/me…, /v1/users/search, /v1/auth/switch-team, OAuth
// linking and unlinking) take a session only: an API key, which belongs to one team, is
// refused with 403, as it is by POST /v1/api-keys and DELETE
// /v1/api-keys/{id} (a leaked key mints or revokes no keys). A team route
// acts on the team of its path, with the
// caller's role there read from the database (not a member: 404). OAuth
// login and its outcomes (token in the URL fragment, #error=… or a JSON
// 400 for a state that does not verify) are described in oauth.go. A
// disabled user's session or API key is 403 on every route.
//
// The platform admin's routes, /v1/admin/… (admin.go), take the session
// of an active platform admin (service.Admin checks users.is_admin in the
// database on every call); anyone else who is authenticated, an API key
// included, gets 403 before anything else is checked. 403 rather than
// 404: the routes are documented, so hiding them would hide nothing.
//
// Hosts (hosts.go): /v1/hosts and /v1/hosts/{id}… are session-only
// routes; the platform administrator flag and team roles come from the
// database (service.Hosts). The agents' calls (/v1/hosts/register,
// /refresh, /heartbeat: internal/hostapi) take no user credential: the
// registration or refresh token travels in the body, the heartbeat takes
// the host's access JWT, which no user route accepts (nor does the
// heartbeat accept a session or an API key). A refused DELETE names the
// host's live sandboxes in its 409 message (at most 20; the full list is
// at delete-preview): the error keeps the one JSON shape.
//
// IDs: users, teams, API keys, invitations and hosts travel as prefixed IDs
// (usr-…, team-…, key-…, inv-…, host-…, see internal/wireid), converted only here. A sandbox's ID on the
// wire is its bare 32 lowercase hex digits, the [a-z0-9] form of E2B's
// sandbox IDs, so that the native API, the E2B facade and the host agent
// all name a sandbox the same way.
//
// # Exec and files
//
// Processes and files of a running sandbox go through the host agent.
// Another team's sandbox is 404; one that is not running is 409 and the
// message names its state.
//
// POST /v1/sandboxes/{id}/exec runs a command to its end:
// {cmd (run by /bin/sh -c) | argv [program, args…] (exactly one), env {},
// cwd (absolute), user, stdin (the whole input; absent: none), timeout_sec
// (default 60, at most 3600)} → 200 {stdout, stderr, exit_code, signal
// ("SIGKILL"; when a signal ended it, exit_code is then -1), timed_out,
// duration_ms, truncated, error?}. stdout and stderr keep the first 8 MiB
// each (the rest is read and dropped, truncated is true) and are UTF-8
// strings: invalid bytes become U+FFFD, so binary output needs the stream.
// At its timeout the process is killed (timed_out, signal SIGKILL). A
// client that goes away kills it. The JSON body, stdin included, is at most
// 1 MiB.
//
// GET /v1/sandboxes/{id}/exec/stream is a WebSocket. Messages are JSON
// text; data fields are base64. The client's first message, within 30 s:
//
//	{"type":"start", "cmd":"…" | "argv":[…], "env":{}, "cwd":"/…", "user":"…",
//	 "pty":{"cols":80,"rows":24}?, "timeout_sec":0, "stdin":true}
//
// (timeout_sec 0: no limit but the connection's, at most 86400; stdin false
// starts the process with its input closed). Then, from the client:
//
//	{"type":"stdin","data":"…"}        input (to the terminal with a pty)
//	{"type":"close_stdin"}             EOF on stdin
//	{"type":"signal","signal":"SIGTERM"}   SIGTERM or SIGKILL
//	{"type":"resize","cols":…,"rows":…}    a pty's size
//
// and from the server:
//
//	{"type":"started","pid":123}
//	{"type":"stdout"|"stderr"|"pty","data":"…"}
//	{"type":"exit","exit_code":0,"signal":"SIGTERM"?,"timed_out":true?,"error":"…"?}
//	{"type":"error","code":400,"message":"…"}
//
// The server closes the connection normally (1000) after "exit". An error
// message carries the HTTP status the same failure would have; one about
// the start is followed by a close (1008 for a 4xx, 1011 for a 5xx), one
// about a later message (a bad signal, an unknown type) is not: the stream
// goes on. The refusals that can be known before the upgrade (401, 404,
// 409) are plain HTTP answers. Output is sent one message at a time as the
// process makes it: a slow client slows the process' output down (the
// agent, envd and the process' pipes apply back-pressure) and nothing is
// buffered beyond a message; a client that takes nothing for a minute, or
// does not answer pings (every 30 s), is dropped. When the connection ends
// before the process, the process is killed — unless it is kept: a start
// message with "keep_sec" (1 to 3600; a terminal or not) keeps the process
// that long after the connection ends, its output read into a 256 KiB
// scrollback; a connection with ?pid=<pid> sends no start message, gets
// {"type":"attached","pid":…}, the scrollback, then the live output (the
// connection attached before gets {"type":"detached"} and a close). No kept
// terminal with that pid in that sandbox is a 404 before the upgrade.
//
// Authentication is X-API-Key or Authorization as everywhere. A browser,
// which cannot set headers on a WebSocket, offers two subprotocols instead:
// "capsule.exec.v1" and "capsule.token.<API key or session token>"; the
// server selects "capsule.exec.v1" (it never echoes the token), and reads
// the token only when no credential header is present; the dashboard needs
// neither, its cookie authenticates the handshake. Cross-origin browser
// connections are refused (the Origin must be the API's host), before the
// cookie is even read.
//
// Files (paths are absolute guest paths, cleaned; ?user= picks the guest
// user that owns what is written and reads, default the sandbox's):
//
//	PUT    …/files?path=/x/y     raw body streamed to the file (any size; parents
//	                              created) → 200 {path,size}
//	POST   …/files?dir=/x        multipart/form-data; each part's filename is a path
//	                              relative to dir without ".." → 200 [{path,size}],
//	                              streamed part by part; the first bad part stops it
//	GET    …/files?path=/x/y     the content, application/octet-stream with its
//	                              Content-Length; a directory 400, missing 404
//	GET    …/files/list?path=/x&depth=1   {entries:[{name,path,type (file, dir,
//	                              symlink, other),size,mode,modified_at,symlink_target?}]}
//	POST   …/files/mkdir {path,user?}     201 with the entry; 409 when the
//	                              directory exists, 400 when a file does
//	DELETE …/files?path=/x       204, recursive; 404 when nothing is there
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
//
// Request IDs: ServeHTTP takes the client's well-formed X-Request-Id or
// makes one, echoes it in the response's X-Request-Id and puts it in the
// request's context (package logctx), with the team of the credential once
// authenticated; every log line of the request carries them, and the host
// agent's lines of the calls it makes carry the same request_id.
package api
