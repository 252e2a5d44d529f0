// Package e2bapi is the E2B-compatible control-plane API: E2B's
// unprefixed REST paths (/sandboxes, /v2/sandboxes, /snapshots,
// /templates, /health) over the same service layer as the native /v1 API,
// so that the unmodified E2B SDKs (npm e2b 2.51.0, Python e2b 2.45) work
// against a Capsule server with
//
//	E2B_API_URL=http://HOST:8080 E2B_SANDBOX_URL=http://HOST:8081 E2B_DOMAIN=<domain> E2B_API_KEY=<key>
//
// (E2B_SANDBOX_URL is the sandbox listener, capsule serve -sandbox-listen:
// sandbox traffic is never served on the API's origin.)
// The wire contract is docs/e2b-compat.md (§4): JSON names,
// status codes and the error branches the SDKs take. capsule serve mounts
// the Handler on the API listener, before the native API (Matches picks E2B's paths
// by their first segment, none of which the native API uses).
//
// # Mapping
//
//   - Auth: the team API key in X-API-KEY (any case; e2b_ + 40 hex
//     digits, the form older SDKs validate). Everything but GET /health
//     needs it; without it, 401.
//   - Errors: {"code": <HTTP status>, "message": …}. Service errors get the
//     native API's status (api.StatusOf: invalid 400, unauthorized 401,
//     forbidden 403, not found 404, conflict 409, quota 429, unavailable
//     503, a host's data disk at its headroom 507); anything unclassified is a 500 naming only an error ID that the
//     log explains. Another team's sandbox is a 404, like a missing one.
//   - IDs: the sandbox ID is the service's wire ID (32 lowercase hex
//     digits: [a-z0-9], stable across pause and resume). E2B's legacy
//     "{id}-{clientID}" path IDs count by the part before '-'. clientID is
//     always "6532622b".
//   - States: E2B knows "running" (our starting, running, resuming) and
//     "paused" (pausing, paused); a stopped, failed or lost sandbox is
//     unknown to E2B: 404 for get, pause, timeout, snapshots; kill of a
//     stopped sandbox is 404 (the SDK's kill() returns false), of a failed
//     or lost one 204 (it is destroyed).
//   - Templates: templateID is a template name the team can use (its own
//     snapshot, a public one, a built-in image such as "base"), in any of
//     E2B's spellings: "name", "name:default" or "<team slug>/name:default"
//     (names.go; the team's slug is its namespace, "default" the tag of
//     the template itself). Create also takes "[<slug>/]name:tag", the
//     version the tag names (tags.go); elsewhere another namespace or tag
//     names nothing (404 for create and delete, an empty list for
//     filters). templateID and alias in responses are the name.
//   - Create (POST /v2/sandboxes; POST /sandboxes with timeout default 15
//     and secure, which changes nothing: every sandbox has an envd access
//     token): answered 201 only once envd runs with /init applied. timeout
//     defaults to 300 s, ≤ 0 is 400. E2B's defaults differ from /v1's:
//     autoPause false (killed at the timeout; true pauses), public traffic
//     on (network.allowPublicTraffic false gives a trafficAccessToken).
//     allow_internet_access and network.allowOut/denyOut are the egress
//     rules (package egress: CIDRs, IPs, domain names and "*.domain";
//     denyOut ["0.0.0.0/0"] is ALL_TRAFFIC; domains in allowOut need it or
//     allow_internet_access false, as in E2B); bad rules, network.rules,
//     network.egressProxy, mcp and volumeMounts are 400; autoPauseMemory false (the SDK's
//     lifecycle.onTimeout {action: 'pause', keepMemory: false}) is stored
//     with the sandbox (service.CreateSandbox.PauseWithoutMemory) and the
//     timeout's pause then keeps the disk only (the resume boots cold);
//     without autoPause, or with autoResume, it is 400 as in E2B; other
//     unknown fields are ignored. The machine shape is the template's (service defaults for
//     images).
//   - Sandbox (create, connect, resume): envdVersion is envdapi.Version,
//     envdAccessToken the service's HMAC of the sandbox ID (stable for its
//     whole life), trafficAccessToken null unless traffic is private,
//     domain the configured sandbox domain with the sandbox listener's port
//     (so that getHost(port) reaches it; null when none; E2B's own domains
//     are refused at start).
//   - Connect (v2 and v1): running → 200 and the deadline moves to at
//     least now + timeout (300 by default in v2, required in v1); paused →
//     resumed, 201; in transition → 409. memory false (the SDK's
//     onResume: 'reboot') resumes a paused sandbox cold from its disk,
//     dropping the memory its pause kept (service.ResumeOptions.Cold); a
//     running one is left running.
//   - Lists: GET /v2/sandboxes filters by state (running,paused; repeated
//     or comma-separated), metadata (E2B's double-encoded form: decode
//     the query value once more, split on '&' into key=value pairs, decode
//     each), startedAfter (RFC 3339 with offsets and fractions: created at
//     or after it; malformed is 400) and template (a name as above; one
//     naming nothing lists nothing); order=asc|desc (by start time, then
//     sandbox ID, so that sandboxes started together keep one order;
//     default desc) pages with limit 1..100 (100) and nextToken, whose
//     next value is in X-Next-Token only when there is another page (a
//     token continues its own order only: 400 otherwise). startedAt is
//     the sandbox's creation time, what the order and startedAfter use,
//     so a listed startedAt given back as startedAfter includes it (also
//     once the JS SDK has cut it to milliseconds). GET /sandboxes lists
//     every running sandbox (metadata filter).
//   - endAt is the sandbox's deadline; a paused sandbox's is when it was
//     paused, a running one without a timeout's is 9999-12-31T23:59:59Z.
//   - Timeouts: POST /sandboxes/{id}/timeout sets the deadline to now +
//     timeout (shorter or longer; ≤ 0 is 400). POST …/refreshes moves it to
//     at least now + duration (0..3600; absent: the sandbox's own timeout).
//     At the deadline the reaper (service.Reaper) kills or pauses the
//     sandbox as it was created to, within the time a pass takes: it
//     sleeps until the next deadline and wakes when one comes earlier
//     (service/deadlines.go), so setTimeout(5000) has isRunning() false
//     6 s later.
//   - Busy: a team past its rate (Config.TeamLimiter, shared with the /v1
//     sandbox lifecycle routes, or Config.TeamRateLimit; serve's
//     -e2b-rate-limit) gets 429 with Retry-After in whole seconds (the JS SDK waits and
//     retries up to 3 times within the request's timeout, then raises
//     RateLimitError); a quota exceeded is 429 without it (waiting does not
//     help); no host able to take a sandbox is 503 (ServiceBusyError).
//   - Pause: 204; already paused (or pausing) 409, which the SDK reads as
//     false. {"memory": false} (the SDK's pause({keepMemory: false})) is
//     a filesystem-only pause: the guest's file systems are synced, its
//     machine stopped, its disk kept; the resume boots cold from it
//     (service.PauseOptions.FilesystemOnly). Resume (deprecated): 201 with
//     a Sandbox, 409 unless paused; memory false boots cold.
//   - Metrics: the sandbox's metrics history (service.Sandboxes.Metrics:
//     live from the host agent while it runs, stored at its pause while
//     paused) within start..end (unix seconds; defaults: its creation and
//     now), clipped to its life — a window before it existed has no
//     sample; up to 10 min every 0.5 s, up to 2 h 30 s means, beyond 5 min
//     means. Only samples with the guest's figures (envd answered) are
//     served: E2B's metrics are the guest's view.
//     GET /sandboxes/metrics?sandbox_ids=a,b (≤ 100) maps each sandbox to
//     its sample of the last 10 s; unknown IDs and sandboxes without one
//     are left out.
//   - Snapshots (snapshots.go): POST /sandboxes/{id}/snapshots {name?}
//     makes a snapshot template of a running sandbox (it keeps running):
//     201 {snapshotID, names}, snapshotID its full name
//     "<team slug>/<name>:default" (usable as templateID; names holds it);
//     a name given again is taken over by the new snapshot; none given:
//     "snapshot-" and 12 hex digits. GET /snapshots lists the team's own
//     snapshots of sandboxes (not public templates, not those its builds
//     made) newest first, then by ID, filtered by sandboxID and name (a
//     name as above; one naming nothing, or a malformed sandbox ID, lists
//     nothing), paged by limit (1..100, 100) and nextToken with
//     X-Next-Token only when there is another page. DELETE
//     /templates/{templateID} deletes a template of the team by any of
//     its names, URL-encoded '/' and ':' included (Go's mux decodes the
//     path value): 204, then 404 (the SDK's deleteSnapshot: true, then
//     false); a public one is 403.
//   - Logs (logs.go): GET /sandboxes/{id}/logs?start=&limit= (v1: unix ms,
//     0..1000, 1000) answers {logs: [{timestamp, line}], logEntries:
//     [{timestamp, level, message, fields}]} oldest first; GET
//     /v2/sandboxes/{id}/logs?cursor=&limit=&direction=&level=&search=
//     answers {logs: [entries]}: cursor unix ms (forward: at or after it,
//     backward: at or before it), direction forward (oldest first) or
//     backward, level the least severe of debug, info, warn, error,
//     search a case-insensitive substring (≤ 256 bytes). Entries are what
//     service.Sandboxes.Logs has: lifecycle events (fields.source
//     "lifecycle", fields.event the audit action, fields.actor), envd's
//     log lines ("envd", their own time and level) and the rest of the
//     serial console ("console"). A sandbox of the team in any state, a
//     killed one's too (its console's tail is kept at the destroy); another
//     team's is 404. Guest output is JSON text only (control characters
//     and terminal escapes removed, HTML escaped by the encoder,
//     X-Content-Type-Options nosniff, a CSP that forbids everything).
//   - Templates: GET /templates lists the built-in images and the team's
//     and public snapshot templates; GET /templates/aliases/{alias} is
//     {templateID, public} (also for a name that only has tagged
//     versions: Template.exists) or 404.
//   - Tags (tags.go, over service's template tags; Template.assignTags,
//     removeTags, getTags): POST /templates/tags {target "name:tag", tags}
//     points the tags at the version target names (201 {buildID, tags};
//     "default" makes it the template itself); DELETE /templates/tags
//     {name, tags} removes them (204; "default" is 400, a tag the template
//     lacks 404), a hidden version no tag names any more is deleted; GET
//     /templates/{templateID}/tags is [{tag, buildID, createdAt}]. The GET
//     routes share one mux pattern (Go's mux sees /templates/aliases/x and
//     /templates/x/tags as overlapping). Bad tags are 400, another team's
//     template 404.
//   - PUT /sandboxes/{id}/network {allowOut, denyOut,
//     allow_internet_access} replaces the egress rules (left out: cleared;
//     allow_internet_access left out is true): 204, applied to a running
//     sandbox's open connections within the call; 404 for another team's
//     or a killed sandbox; rules and egressProxy are 400. The detail's
//     network shows allowOut and denyOut.
//   - Template builds (builds.go, over package builds; the SDK's Template
//     class): POST /v3/templates prepares a waiting build of the name
//     ("name" or "name:tag", plus the tags field; none: "default"; an
//     empty name or tag is 400) and answers 202 {templateID (the name),
//     buildID (bld-…), tags}: the built version gets those tags (with
//     "default" it replaces the template, else it is a hidden version
//     only its tags name); GET
//     /templates/{templateID}/files/{hash} answers 201 {present} or
//     {present:false, url}: a PUT URL on the request's host, signed with
//     an HMAC of the team, the hash and an expiry (1 h) under a key derived
//     from the server secret, which needs no API key; the PUT's tar (gzip
//     or not) is checked and stored as the team's archive of that hash.
//     POST /v2/templates/{templateID}/builds/{buildID} turns the steps into
//     a recipe (internal/recipe): fromImage e2bdev/base (the default) is
//     FROM base then USER user, fromTemplate is FROM <name>, any other
//     image fails the build at step "base" (no registry is reachable);
//     RUN [cmd, user?] (a user of its own switches for that step), COPY
//     [src, dest, owner?, mode?] from its own uploaded archive (the
//     glob-free prefix of src), ENV, WORKDIR, USER; startCmd is START and
//     readyCmd (default: sleep 20 with a start command, else true) the
//     HEALTHCHECK every 2 s for up to 10 minutes, so every template is a
//     snapshot, as E2B's are. Multi-line commands run base64-decoded. GET
//     /templates/{templateID}/builds/{buildID}/status?logsOffset=N answers
//     waiting, building, ready or error, at most 100 log entries after the
//     offset (none once drained) and, on error, reason {message, step:
//     "base", the E2B step's number, or "finalize"}.
//   - Fork (fork.go; the SDK's sandbox.fork() and static Sandbox.fork()):
//     POST /sandboxes/{id}/fork, body SandboxForkRequest:
//     timeout → each fork's timeout in seconds (default 15 as in E2B's
//     schema; ≤ 0 is 400), count → the number of forks (default 1; 1 to
//     service.MaxForks = 16, where E2B allows 100: more is 400). Answer
//     201, a JSON array of SandboxForkResult, one per requested fork in
//     order: {"sandbox": Sandbox} (the object of a create: sandboxID,
//     templateID and alias = the source's template, clientID, envdVersion,
//     the fork's own envdAccessToken, trafficAccessToken, domain) or
//     {"error": {"code": the HTTP status that fork's failure would have
//     had alone (503 no room on the host, 507 its data disk, 500 with an
//     error ID), "message"}}; a failed fork leaves nothing running (its
//     record is in error and not listed). A non-201 answer means no fork
//     was attempted: 404 for another team's sandbox, a malformed ID, a
//     killed, failed or lost one (the SDK's SandboxNotFoundError), 409
//     for a paused or pausing one (E2B forks running sandboxes only), 429
//     when the forks would take the team past its quotas (each fork is a
//     sandbox: running count, vCPUs, memory), 503 when the source's host
//     is unreachable or has no room for them all. Semantics: the source
//     is held (its guest stopped) while its memory is saved and runs on,
//     keeping its ID and deadline (a fork is activity); forks run on the
//     source's host with the source's template, shape, metadata, env vars,
//     lifecycle (autoPause, autoResume) and network settings, and their
//     own ID, envd token, hostname (their ID), kernel RNG state (reseeded
//     by /init) and network slot; their memory is the source's,
//     copy-on-write, and their disk chains onto the source's.
//   - Not supported: volumes. The /volumes routes answer 501, not a 404
//     that the SDK would read as "volume not found" (or, for a delete, as
//     done), and a create's volumeMounts is 400.
//
// Request IDs: as the native API (package logctx), every answer echoes the
// request's X-Request-Id (the client's when well-formed, else a fresh one)
// and the log lines of the request, here and on the host agent, carry it.
package e2bapi
